"""The relay actor against a scripted hive: a real ROUTER with CURVE and a
ZAP handler, a fake sensor PUSHing event batches, a fake executor."""

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import msgspec
import pytest
import trio
import zmq

import wire
from actors import Child, Codec, Context, KeyPair, Runtime, StartError, Supervisor, curve_server, zap_handler
from agent import ProcessTable, Spool, relay
from tests.ports import tcp_endpoint

AGENT_CODEC = Codec(wire.AgentMessage)
HIVE_CODEC = Codec(wire.HiveMessage)
GONE_PID = 4_000_000  # not running: the table knows it only from a fork event


class ScriptedHive:
    """Stores a batch only if it is the next of its stream, acknowledges
    lower ones again, asks for a resend on a gap (the hive's contract)."""

    def __init__(self, keys: KeyPair, endpoint: str, enrolled: dict[bytes, str]) -> None:
        self.keys = keys
        self.endpoint = endpoint
        self.enrolled = enrolled
        self.last: dict[str, int] = {}
        self.stored: list[wire.Event] = []
        self.received: list[tuple[str, int]] = []
        self.hellos: list[wire.Hello] = []
        self.heartbeats: list[wire.Heartbeat] = []
        self.results: list[wire.CommandResult] = []
        self.sizes: list[int] = []
        """Bytes of each EventBatch frame received."""
        self.users: set[str] = set()
        self.lose: set[int] = set()
        """Seqs to treat as never arrived, once each."""
        self.ack_up_to: int | None = None
        """Store everything but acknowledge nothing above this."""
        self.refuse = ""
        """Take nothing, and answer every Hello and batch with this reason."""
        self.peer: bytes | None = None
        self.outbox: list[list[bytes]] = []
        self.changed = trio.Event()

    def supervisor(self) -> Supervisor:
        return Supervisor([
            Child("zap", zap_handler, args={"authorize": lambda key, addr, domain: self.enrolled.get(key)}),
            Child("router", self.router),
        ])

    async def router(self, ctx: Context, *, task_status) -> None:
        d = ctx.duplex(zmq.ROUTER, codec=AGENT_CODEC)
        curve_server(d.sock.zmq, self.keys)
        d.sock.copy = False
        d.sock.bind(self.endpoint)
        async with trio.open_nursery() as n:
            await n.start(d.pump)
            task_status.started()
            while True:
                for ident, frame in await d.recv():
                    self.users.add(frame.get("User-Id"))
                    self.peer = ident.bytes
                    msg = d.decode(frame.bytes)
                    if isinstance(msg, wire.EventBatch):
                        self.sizes.append(len(frame.bytes))
                    if msg is not None:
                        reply = self.handle(msg)
                        if reply is not None:
                            await d.send([self.peer, HIVE_CODEC.encode(reply)])
                while self.outbox:
                    await d.send([self.peer, *self.outbox.pop(0)])
                self.changed.set()
                self.changed = trio.Event()

    def handle(self, msg):
        if self.refuse and isinstance(msg, (wire.Hello, wire.EventBatch)):
            if isinstance(msg, wire.EventBatch):
                self.received.append((msg.stream, msg.seq))
            return wire.Ack(seq=0, stream=getattr(msg, "stream", ""), refused=self.refuse)
        if isinstance(msg, wire.Hello):
            self.hellos.append(msg)
        elif isinstance(msg, wire.Heartbeat):
            self.heartbeats.append(msg)
        elif isinstance(msg, wire.CommandResult):
            self.results.append(msg)
        elif isinstance(msg, wire.EventBatch):
            self.received.append((msg.stream, msg.seq))
            if msg.seq in self.lose:
                self.lose.discard(msg.seq)
                return None
            last = self.last.get(msg.stream, 0)
            if msg.seq == last + 1:
                self.stored.extend(msg.events)
                self.last[msg.stream] = last = msg.seq
            elif msg.seq > last + 1:
                return wire.Ack(seq=last, stream=msg.stream, resend=True)
            if self.ack_up_to is not None and last > self.ack_up_to:
                return None
            return wire.Ack(seq=last, stream=msg.stream)
        return None

    def send(self, msg) -> None:
        self.outbox.append([HIVE_CODEC.encode(msg)])

    async def wait(self, condition, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not condition():
                with trio.move_on_after(0.05):
                    await self.changed.wait()


class Rig:
    def __init__(self, tmp_path) -> None:
        self.runtime = Runtime()
        self.root = Context(self.runtime, "t")
        self.hive_keys = KeyPair.generate()
        self.agent_keys = KeyPair.generate()
        self.agent_keys.save(tmp_path / "keys", "agent")
        self.endpoint = tcp_endpoint()
        self.hive = ScriptedHive(self.hive_keys, self.endpoint, {self.agent_keys.public: "agent-1"})
        tag = uuid.uuid4().hex[:8]
        self.args = dict(
            agent_id="agent-1", hive_endpoint=self.endpoint, keys_dir=tmp_path / "keys",
            hive_public=self.hive_keys.public, spool_dir=tmp_path / "spool", spool_bytes=1 << 20, batch=64,
            heartbeat=0.2, ack_timeout=0.5, events_endpoint=f"inproc://events-{tag}",
            commands_endpoint=f"inproc://commands-{tag}", results_endpoint=f"inproc://results-{tag}",
        )
        self.sensor = None
        self.next_id = 0

    @property
    def stats(self):
        return self.runtime.registry["t.agent.relay"]

    async def start_hive(self, nursery) -> trio.CancelScope:
        # The ZAP endpoint is a fixed inproc name; the previous test's socket
        # may still be closing in ZeroMQ's reaper thread.
        for _ in range(50):
            try:
                return await nursery.start(self._run, "hive", self.hive.supervisor())
            except StartError:
                await trio.sleep(0.1)
        raise RuntimeError("the scripted hive did not start")

    async def start_agent(self, nursery, **overrides) -> trio.CancelScope:
        sup = Supervisor([Child("relay", relay, args={**self.args, **overrides})])
        return await nursery.start(self._run, "agent", sup)

    async def _run(self, name, sup, *, task_status) -> None:
        with trio.CancelScope() as scope:
            await sup(self.root.child(name), task_status=_Started(task_status, scope))

    async def emit(self, batches: int, per_batch: int = 50) -> None:
        """Be the sensor: events numbered in `tid` so order can be checked."""
        if self.sensor is None:
            self.sensor = self.root.socket(zmq.PUSH, codec=AGENT_CODEC, connect=self.args["events_endpoint"])
        for _ in range(batches):
            evs = [wire.Open(pid=os.getpid(), ppid=os.getppid(), uid=os.getuid(), tid=self.next_id + i,
                             path=f"/etc/f{self.next_id + i}") for i in range(per_batch)]
            self.next_id += per_batch
            await self.sensor.send(wire.EventBatch(seq=1, events=evs))


class _Started:
    """Hands the cancel scope of a started tree back to the test."""

    def __init__(self, status, scope) -> None:
        self.status, self.scope = status, scope

    def started(self, value=None) -> None:
        self.status.started(self.scope)


def real_events(stored):
    return [e for e in stored if isinstance(e, wire.Open)]


async def test_batches_arrive_in_order_enriched_and_acks_empty_the_spool(tmp_path):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.emit(20)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 1000)
        await rig.hive.wait(lambda: rig.stats.extra.get("spooled") == 0 and len(rig.hive.heartbeats) >= 3)
        n.cancel_scope.cancel()
    h = rig.hive
    assert [e.tid for e in h.stored] == list(range(1000))
    assert h.users == {"agent-1"}
    (stream,) = {s for s, _ in h.received}
    # A batch queued before the handshake is sent again after it: the hive
    # may see a seq twice, never store it twice.
    assert sorted({q for _, q in h.received}) == list(range(1, h.last[stream] + 1))
    assert h.last[stream] >= 1000 // 64  # batches of at most `batch` events
    e = h.stored[0]
    assert e.image == os.path.realpath(sys.executable)
    assert e.user == pwd.getpwuid(os.getuid()).pw_name
    assert e.cmdline == " ".join(sys.orig_argv)
    assert e.sha256 and len(e.sha256) == 64
    assert h.hellos[0].agent == "agent-1" and h.hellos[0].hostname == socket.gethostname()
    assert h.heartbeats[-1].spooled == 0 and h.heartbeats[-1].dropped == 0
    assert rig.stats.extra["accepted"] == 1000 and rig.stats.extra["acked"] == h.last[stream]
    segs = list((tmp_path / "spool").glob("*.seg"))
    assert len(segs) == 1  # acknowledged segments are gone


async def test_a_resend_request_rewinds_and_nothing_is_stored_twice(tmp_path):
    rig = Rig(tmp_path)
    rig.hive.lose = {3}
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.emit(30, per_batch=20)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 600)
        await rig.hive.wait(lambda: rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    assert [e.tid for e in rig.hive.stored] == list(range(600))
    assert rig.stats.extra["resends"] >= 1
    assert rig.hive.lose == set()


async def test_a_lost_batch_nobody_asks_for_is_sent_again_when_acks_stall(tmp_path):
    rig = Rig(tmp_path)
    rig.hive.lose = {1}  # and nothing follows it to reveal the gap
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.emit(1, per_batch=10)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 10 and rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    assert [e.tid for e in rig.hive.stored] == list(range(10))
    assert rig.stats.extra["resends"] >= 1 and rig.hive.lose == set()


async def test_a_restarted_relay_resends_only_what_was_not_acknowledged(tmp_path):
    rig = Rig(tmp_path)
    rig.hive.ack_up_to = 4
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        agent = await rig.start_agent(n)
        await rig.emit(20, per_batch=64)
        # the acks of 1..4 may still be on their way when the last batch is stored
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 1280 and rig.stats.extra.get("acked") == 4)
        agent.cancel()
        await trio.sleep(0.2)
        seen = len(rig.hive.received)
        rig.hive.ack_up_to = None
        await rig.start_agent(n)
        await rig.hive.wait(lambda: rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    again = [q for _, q in rig.hive.received[seen:]]
    assert again and min(again) == 5  # 1..4 were acknowledged and deleted
    assert [e.tid for e in rig.hive.stored] == list(range(1280))


async def test_a_stopping_relay_spools_what_the_sensor_handed_on_last(tmp_path):
    """The sensor stops first and hands on its last events without waiting;
    the relay, stopping next, spools them before it goes, and they reach
    the hive when it is back."""
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        agent = await rig.start_agent(n)
        await rig.emit(1)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 50)
        last = [wire.Open(pid=os.getpid(), tid=50 + i, path=f"/etc/f{50 + i}") for i in range(30)]
        # as the reader does at its end: hand on without waiting, close
        # (linger 0), and the relay is stopped next, with no checkpoint between
        assert rig.sensor.try_send(wire.EventBatch(seq=1, events=last))
        rig.sensor.close()
        rig.sensor = None
        agent.cancel()
        await trio.sleep(0.2)
        assert len(rig.hive.stored) == 50
        await rig.start_agent(n)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 80)
        n.cancel_scope.cancel()
    assert [e.tid for e in rig.hive.stored] == list(range(80))


async def test_commands_reach_the_executor_and_results_reach_the_hive(tmp_path):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        executor_in = rig.root.socket(zmq.PULL, codec=HIVE_CODEC, connect=rig.args["commands_endpoint"])
        executor_out = rig.root.socket(zmq.PUSH, codec=AGENT_CODEC, connect=rig.args["results_endpoint"])
        await rig.emit(1)
        await rig.hive.wait(lambda: rig.hive.peer is not None)
        rig.hive.send(wire.KillProcess(id="c-expired", pid=1, expires=1))
        rig.hive.send(wire.KillProcess(id="c-1", pid=4242, expires=time.time_ns() + 60_000_000_000))
        await rig.emit(1)  # the scripted hive sends its outbox when it hears from the agent
        with trio.fail_after(5):
            (cmd,) = await executor_in.recv()
        assert cmd == wire.KillProcess(id="c-1", pid=4242, expires=cmd.expires)
        await executor_out.send(wire.CommandResult(command="c-1", ok=True, detail="killed"))
        await rig.hive.wait(lambda: len(rig.hive.results) >= 2)
        n.cancel_scope.cancel()
    by_id = {r.command: r for r in rig.hive.results}
    assert by_id["c-1"] == wire.CommandResult(command="c-1", ok=True, detail="killed")
    assert by_id["c-expired"].ok is False and "expired" in by_id["c-expired"].detail
    assert rig.stats.extra["expired"] == 1


async def test_garbage_from_the_hive_is_counted_and_changes_nothing(tmp_path):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.emit(1)
        await rig.hive.wait(lambda: rig.hive.peer is not None)
        rig.hive.outbox += [[b"\x00garbage"], [AGENT_CODEC.encode(wire.Heartbeat())], [b"\x92\x01\xc0"]]
        await rig.emit(5)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 300)
        await rig.hive.wait(lambda: rig.stats.malformed >= 3)
        await rig.emit(5)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 550 and rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    assert rig.stats.malformed == 3 and rig.stats.restarts == 0
    assert [e.tid for e in rig.hive.stored] == list(range(550))


async def test_a_full_spool_drops_the_oldest_and_the_count_reaches_the_hive(tmp_path):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_agent(n, spool_bytes=128 << 10)  # the hive is down
        await rig.emit(60, per_batch=50)
        with trio.fail_after(10):  # a loaded machine takes longer to spool them all
            while not rig.stats.extra.get("dropped"):
                await trio.sleep(0.02)
        await rig.start_hive(n)
        await rig.hive.wait(
            lambda: any(isinstance(e, wire.Notice) for e in rig.hive.stored) and rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    events = real_events(rig.hive.stored)
    notices = [e for e in rig.hive.stored if isinstance(e, wire.Notice)]
    assert all(e.what == "spool_dropped" for e in notices)
    lost = sum(e.count for e in notices)
    assert lost > 0 and len(events) + lost == 3000  # each event delivered or counted
    tids = [e.tid for e in events]
    assert tids == sorted(set(tids)) and tids[-1] == 2999  # the newest kept, nothing twice
    assert rig.stats.extra["dropped"] == lost


async def test_an_unenrolled_agent_is_refused_and_says_so(tmp_path):
    rig = Rig(tmp_path)
    rig.hive.enrolled.clear()
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.emit(2)
        with trio.fail_after(5):
            while not rig.stats.extra.get("refused"):
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    assert rig.hive.stored == [] and rig.hive.hellos == []


async def test_a_hive_that_refuses_the_agent_s_wire_version_is_said_once_and_the_spool_keeps_everything(
        tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    rig = Rig(tmp_path)
    rig.hive.refuse = "the agent speaks wire version 4, the hive 3, which takes 2 to 3: upgrade the hive first"
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.emit(3)
        await rig.hive.wait(lambda: len(rig.hive.received) >= 6, timeout=10)  # sent again after the ack timeout
        assert rig.stats.extra["hive_refuses"] == rig.hive.refuse
        assert rig.stats.last_error == f"the hive refuses this agent: {rig.hive.refuse}"
        assert rig.stats.extra["acked"] == 0 and rig.stats.extra["spooled"] == 150
        refusals = [r.getMessage() for r in caplog.records if "uplink.refused" in r.getMessage()]
        assert len(refusals) == 1 and "upgrade the hive first" in refusals[0], refusals
        rig.hive.refuse = ""  # the hive upgraded: everything spooled arrives, once
        await rig.hive.wait(lambda: len(rig.hive.stored) == 150, timeout=10)
        with trio.fail_after(5):
            while rig.stats.extra["hive_refuses"]:
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    assert [e.tid for e in rig.hive.stored] == list(range(150))
    assert any("uplink.accepted" in r.getMessage() for r in caplog.records)


class PoisonedTable(ProcessTable):
    """Crashes the relay once, on an event with the path /poison."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def enrich_all(self, events):
        events = list(events)
        if self.armed and any(getattr(e, "path", "") == "/poison" for e in events):
            self.armed = False
            raise RuntimeError("poisoned event")
        return super().enrich_all(events)


async def test_a_crashed_relay_is_restarted_at_once_and_keeps_what_it_accepted(tmp_path):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n, table=PoisonedTable())
        await rig.emit(4)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 200)
        rig.hive.ack_up_to = 0  # what follows is stored but not acknowledged before the crash
        await rig.emit(2)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 300)
        await rig.sensor.send(wire.EventBatch(seq=1, events=[wire.Open(pid=1, path="/poison")]))
        with trio.fail_after(5):
            while rig.stats.restarts < 1 or rig.stats.state != "running":
                await trio.sleep(0.02)
        rig.hive.ack_up_to = None
        # An inproc connection does not survive its binder: the sensor connects again.
        rig.sensor.close()
        rig.sensor = None
        await rig.emit(2)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 400 and rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    assert [e.tid for e in rig.hive.stored] == list(range(400))
    assert rig.stats.restarts == 1


# ---- the trio thread, which also drains the sensor, never waits for a disk ----------------


async def longest_stall(seconds: float) -> float:
    """How late, at worst, this trio thread ran a task that asked to run
    every 5 ms, over ``seconds``."""
    worst, end = 0.0, trio.current_time() + seconds
    while (asked := trio.current_time()) < end:
        await trio.sleep(0.005)
        worst = max(worst, trio.current_time() - asked - 0.005)
    return worst


@pytest.fixture
def freezable(tmp_path):
    """A small ext4 filesystem of its own (a loop device), which
    ``fsfreeze`` can stop: every write to it then waits until it is thawed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    image, mnt = tmp_path / "fs.img", tmp_path / "fs"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    for cmd in (["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(mnt)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a loop filesystem here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], capture_output=True)
        subprocess.run(["umount", str(mnt)], check=True)


async def test_a_frozen_disk_stalls_the_spool_not_the_trio_thread(tmp_path, freezable):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n, spool_dir=freezable / "spool", spool_bytes=64 << 20)
        await rig.emit(2)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 100 and rig.stats.extra.get("acked") == 2)
        subprocess.run(["fsfreeze", "--freeze", str(freezable)], check=True)
        # Thawed from another thread: a test whose trio thread is stuck in a write cannot.
        thaw = threading.Timer(3.0, subprocess.run, (["fsfreeze", "--unfreeze", str(freezable)],))
        thaw.start()
        try:
            await rig.emit(2)
            stall = await longest_stall(1.0)
            assert len(rig.hive.stored) == 100  # not durable yet, so not sent
        finally:
            thaw.cancel()
            subprocess.run(["fsfreeze", "--unfreeze", str(freezable)], capture_output=True)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 200)
        n.cancel_scope.cancel()
    print(f"longest stall of the trio thread with the spool's disk frozen: {stall * 1000:.1f} ms")
    assert stall < 0.2
    assert [e.tid for e in rig.hive.stored] == list(range(200))


async def test_hashing_a_large_executable_does_not_stall_the_trio_thread(tmp_path):
    big = tmp_path / "big-tool"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # a hole: no disk, only hashing time (about 0.9 s here)
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n, table=ProcessTable(hash_limit=2 << 30))
        await rig.emit(1)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 50)
        await rig.sensor.send(wire.EventBatch(seq=2, events=[
            wire.Exec(pid=4_194_000, tid=4_194_000, filename=str(big), exe=str(big))]))
        stall = await longest_stall(1.5)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 51)
        n.cancel_scope.cancel()
    print(f"longest stall of the trio thread while a 1 GiB file was hashed: {stall * 1000:.1f} ms")
    assert rig.hive.stored[-1].sha256 == hashlib.sha256(bytes(1 << 30)).hexdigest()
    # Hashed on this thread, it would stall for the whole hash (0.9 s); a loaded
    # machine's scheduling alone has delayed it by up to 0.15 s.
    assert stall < 0.3


async def test_a_reloaded_policy_reaches_the_hive_in_a_new_hello(tmp_path):
    rig = Rig(tmp_path)
    digest = hashlib.sha256(b"new policy").hexdigest()
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n, policy_version="p.toml:0123456789ab")
        await rig.emit(1)
        await rig.hive.wait(lambda: rig.hive.hellos)
        await rig.sensor.send(wire.EventBatch(seq=2, events=[wire.Notice(
            what="policy_reloaded", detail=f"/etc/immune/p.toml: 3 rules, sha256 {digest}")]))
        await rig.hive.wait(lambda: len(rig.hive.hellos) >= 2 and rig.hive.stored and isinstance(rig.hive.stored[-1], wire.Notice))
        n.cancel_scope.cancel()
    assert rig.hive.hellos[0].policy_version == "p.toml:0123456789ab"
    assert rig.hive.hellos[-1].policy_version == f"p.toml:{digest[:12]}"
    assert rig.hive.stored[-1].what == "policy_reloaded"  # and the notice itself, in order


async def test_a_restarted_relay_says_the_policy_version_in_force_then(tmp_path):
    rig = Rig(tmp_path)
    versions = iter(["p.toml:0123456789ab", "p.toml:ba9876543210"])  # as the sensor's policy changes
    rig.args["policy_version"] = lambda: next(versions)  # node/_trees.py gives the relay's Child this
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        agent = await rig.start_agent(n)
        await rig.hive.wait(lambda: rig.hive.hellos)
        agent.cancel()
        await rig.start_agent(n)
        await rig.hive.wait(lambda: len(rig.hive.hellos) >= 2)
        n.cancel_scope.cancel()
    assert [h.policy_version for h in rig.hive.hellos] == ["p.toml:0123456789ab", "p.toml:ba9876543210"]


# ---- what the relay accepted, the hive takes ---------------------------------------------


@pytest.fixture
def scratch():
    """A folder outside /tmp, /var/tmp and /dev/shm (where a sensor's default
    policy, if one runs on this machine, refuses execs), as bytes."""
    folder = tempfile.mkdtemp(prefix="immune-relay-", dir="/var/lib" if os.access("/var/lib", os.W_OK) else None)
    yield os.fsencode(folder)
    shutil.rmtree(folder, ignore_errors=True)


async def test_a_process_named_in_bytes_that_are_not_utf8_cannot_stall_the_stream(tmp_path, scratch):
    # A real process: its executable's name is not UTF-8 (readlink gives
    # surrogates, which msgspec cannot encode at all), its command line is
    # 100 KB and not UTF-8 either.
    exe = scratch + b"/sh-\xff\xfe"
    shutil.copy("/bin/sh", exe)
    argv = [exe, b"-c", b"read x", b"name", b"\xfe" * 100_000]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE)
    grandchild = GONE_PID
    rig = Rig(tmp_path)
    try:
        async with trio.open_nursery() as n:
            await rig.start_hive(n)
            # The table keeps 100 KB of command line, so that the wire's bound cuts it.
            await rig.start_agent(n, table=ProcessTable(cmdline_limit=200_000))
            rig.sensor = rig.root.socket(zmq.PUSH, codec=AGENT_CODEC, connect=rig.args["events_endpoint"])
            await rig.sensor.send(wire.EventBatch(seq=1, events=[
                wire.Open(pid=child.pid, ppid=os.getpid(), path="/etc/hosts"),
                wire.Fork(pid=child.pid, ppid=os.getpid(), child_pid=grandchild),
                wire.Open(pid=grandchild, ppid=child.pid, path="/etc/passwd"),
            ]))
            await rig.hive.wait(lambda: len(rig.hive.stored) >= 3 and rig.stats.extra.get("spooled") == 0)
            n.cancel_scope.cancel()
    finally:
        child.kill()
        child.wait()
    opened, forked, child_opened = rig.hive.stored  # each decoded by the hive's codec
    image = os.fsdecode(scratch) + "/sh-\ufffd\ufffd"  # as the kernel sensor spells it
    assert opened.image == forked.image == child_opened.image == child_opened.parent_image == image
    assert len(opened.cmdline) == wire.MAX_CMDLINE and opened.cmdline.endswith("\u2026")
    assert opened.cmdline.startswith(f"{image} -c read x name \ufffd\ufffd")
    assert child_opened.parent_cmdline == opened.cmdline
    assert rig.stats.restarts == 0


# ---- a batch is always one the hive takes -----------------------------------------------


@pytest.fixture
def long_cmdline():
    """A real process whose command line is 16 KiB long."""
    child = subprocess.Popen(["/bin/sh", "-c", "read x", "name", "x" * (16 << 10)], stdin=subprocess.PIPE)
    yield child.pid
    child.kill()
    child.wait()


async def emit_long(rig, pid: int, n: int, per_batch: int = 250) -> None:
    rig.sensor = rig.sensor or rig.root.socket(zmq.PUSH, codec=AGENT_CODEC, connect=rig.args["events_endpoint"])
    for first in range(0, n, per_batch):
        await rig.sensor.send(wire.EventBatch(seq=1, events=[
            wire.Open(pid=pid, tid=i, path=f"/etc/f{i}") for i in range(first, min(first + per_batch, n))]))


async def test_a_burst_of_long_command_lines_is_spooled_in_batches_within_the_byte_bound(tmp_path, long_cmdline):
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        # Batches of 256 such events were 4.2 MiB: above the hive's default max_frame.
        await rig.start_agent(n, batch=256, spool_bytes=64 << 20, table=ProcessTable(cmdline_limit=wire.MAX_CMDLINE))
        await emit_long(rig, long_cmdline, 1000)
        await rig.hive.wait(lambda: len(rig.hive.stored) >= 1000 and rig.stats.extra.get("spooled") == 0)
        n.cancel_scope.cancel()
    h = rig.hive
    assert [e.tid for e in h.stored] == list(range(1000))
    assert all(len(e.cmdline) == wire.MAX_CMDLINE for e in h.stored)  # 16 KiB each
    assert max(h.sizes) <= wire.MAX_BATCH_BYTES and len(h.sizes) >= 1000 * (16 << 10) // wire.MAX_BATCH_BYTES


def least_max_frame() -> int:
    from node._config import HiveConfig

    (field,) = [f for f in msgspec.inspect.type_info(HiveConfig).fields if f.name == "max_frame"]
    return field.type.ge


async def test_a_hive_at_the_least_max_frame_stores_a_burst_of_long_command_lines(tmp_path, long_cmdline):
    """The hive's own door (store, registry, ZAP, router) at the least
    ``hive.max_frame`` a config may give it."""
    from hive import Store, registry_actor, router_actor, store_actor, zap_authorizer

    rig = Rig(tmp_path)
    db = tmp_path / "hive.db"
    store = Store(db)
    store.enroll("agent-1", rig.agent_keys.public.decode())
    store.close()
    hive = Supervisor([
        Child("store", store_actor, args={"path": db}),
        Child("registry", registry_actor, args={"path": db}),
        Child("zap", zap_handler, args={"authorize": zap_authorizer(db)}),
        Child("router", router_actor, args={"path": db, "keys": rig.hive_keys, "listen": rig.endpoint,
                                             "max_frame": least_max_frame()}),
    ], strategy="rest_for_one")

    async with trio.open_nursery() as n:
        await n.start(rig._run, "hive", hive)
        await rig.start_agent(n, batch=256, spool_bytes=64 << 20, table=ProcessTable(cmdline_limit=wire.MAX_CMDLINE))
        await emit_long(rig, long_cmdline, 2000)
        with trio.fail_after(30):
            while rig.stats.extra.get("spooled") != 0 or rig.stats.extra.get("accepted") != 2000:
                await trio.sleep(0.1)
        n.cancel_scope.cancel()
    store = Store(db, readonly=True)
    events = store.events(agent="agent-1", kind="open", limit=5000)
    store.close()
    assert sorted(e.tid for e in events) == list(range(2000))  # each once
    assert rig.runtime.registry["t.hive.router"].extra.get("oversized", 0) == 0


# ---- a spooled batch the hive refuses does not stall the stream -------------------------


async def test_a_spooled_batch_beyond_the_contract_is_fitted_and_delivered(tmp_path):
    """Spooled by an earlier version, before the wire's bounds: the hive's
    decoder refuses it, the relay sends it again fitted."""
    with Spool(tmp_path / "spool") as spool:
        spool.append([wire.Open(pid=1, tid=0, path="/etc/a")])
        spool.append([wire.Open(pid=1, tid=1, path="/" + "p" * 10_000, cmdline="c" * 100_000)])
        spool.append([wire.Open(pid=1, tid=2, path="/etc/b")])
        spool.sync()
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.hive.wait(lambda: rig.stats.extra.get("spooled") == 0 and len(rig.hive.stored) >= 3)
        n.cancel_scope.cancel()
    assert [e.tid for e in rig.hive.stored] == [0, 1, 2]
    fitted = rig.hive.stored[1]
    assert len(fitted.path) == wire.MAX_PATH and fitted.path.endswith(wire.CUT)
    assert len(fitted.cmdline) == wire.MAX_CMDLINE
    assert rig.stats.extra["repaired"] == 1 and rig.stats.extra["dropped"] == 0


async def test_a_spooled_batch_no_fit_can_save_is_skipped_counted_and_the_rest_delivered(tmp_path):
    with Spool(tmp_path / "spool") as spool:
        spool.append([wire.Open(pid=1, tid=0, path="/etc/a")])
        spool.append([wire.Open(pid=2 ** 63, tid=1, path="/etc/x"), wire.Open(pid=1, tid=2, path="/etc/y")])
        for i in range(3, 6):
            spool.append([wire.Open(pid=1, tid=i, path="/etc/b")])
        spool.sync()
    rig = Rig(tmp_path)
    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n)
        await rig.hive.wait(lambda: any(isinstance(e, wire.Notice) for e in rig.hive.stored)
                            and rig.stats.extra.get("spooled") == 0, timeout=20)
        n.cancel_scope.cancel()
    assert [e.tid for e in real_events(rig.hive.stored)] == [0, 3, 4, 5]
    (notice,) = [e for e in rig.hive.stored if isinstance(e, wire.Notice)]
    assert (notice.what, notice.count) == ("spool_dropped", 2)
    assert rig.stats.extra["unsendable"] == 1 and rig.stats.extra["restreams"] == 1


async def test_the_uplink_fails_over_to_the_next_hive_node_and_back_storing_each_batch_once(tmp_path):
    """Two hive nodes with one store (their seq marks and events shared) and
    one key: the first is stopped under load, the relay moves to the second
    and goes on; once the first is back a probe finds it and the relay
    returns to it."""
    rig = Rig(tmp_path)
    a = rig.hive
    b = ScriptedHive(rig.hive_keys, tcp_endpoint(), a.enrolled)
    b.last, b.stored = a.last, a.stored  # the shared store
    zap = Supervisor([Child("zap", zap_handler, args={"authorize": lambda key, addr, domain: a.enrolled.get(key)})])
    stats = lambda: rig.stats.extra  # noqa: E731
    async with trio.open_nursery() as n:
        await n.start(rig._run, "zap", zap)
        on_a = await n.start(rig._run, "a", Supervisor([Child("router", a.router)]))
        await n.start(rig._run, "b", Supervisor([Child("router", b.router)]))
        await rig.start_agent(n, hive_endpoint="", hive_endpoints=[a.endpoint, b.endpoint], failover_after=0.3,
                              probe_every=0.3)
        await rig.emit(10, per_batch=20)
        await a.wait(lambda: len(a.stored) >= 200 and stats().get("spooled") == 0)
        assert stats()["hive"] == a.endpoint and not b.hellos
        on_a.cancel()  # node A dies; events keep coming
        await rig.emit(20, per_batch=20)
        # A may have stored the lot before it died, and its last acks can
        # still reach the relay after the move: wait for B's handshake too.
        await b.wait(lambda: len(b.stored) >= 600 and stats().get("spooled") == 0 and b.hellos)
        assert stats()["hive"] == b.endpoint and stats()["hive_moves"] == 1 and b.hellos
        received_on_a = len(a.received)
        a.changed = trio.Event()
        await n.start(rig._run, "a", Supervisor([Child("router", a.router)]))  # A is back
        await a.wait(lambda: stats().get("hive") == a.endpoint and stats().get("connected") == 1)
        await rig.emit(10, per_batch=20)
        await a.wait(lambda: len(a.stored) >= 800 and stats().get("spooled") == 0)
        n.cancel_scope.cancel()
    assert [e.tid for e in real_events(a.stored)] == list(range(800))  # each once, in order
    assert len(a.received) > received_on_a  # the last ones went to A again
    assert stats()["hive_moves"] == 2 and stats()["probes"] >= 1 and len(a.hellos) == 2
