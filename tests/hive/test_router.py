"""The hive's door with real CURVE sockets: exactly-once storage, and every
kind of bad peer refused, logged and counted while the others are served."""

import socket
import time

import pytest
import trio
import zmq

import wire
from actors import Child, Codec, KeyPair, Supervisor, curve_client, zap_handler
from tests.ports import tcp_endpoint
from hive import Store, enroll_actor, registry_actor, router_actor, store_actor, zap_authorizer

AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)


class Hive:
    def __init__(self, tmp_path, max_frame=1 << 20):
        self.db = tmp_path / "hive.db"
        Store(self.db).close()
        self.keys = KeyPair.generate()
        self.listen, self.enroll_listen = tcp_endpoint(), tcp_endpoint()
        self.tree = Supervisor([
            Child("store", store_actor, args={"path": self.db}),
            Child("registry", registry_actor, args={"path": self.db, "heartbeat_timeout": 1.0}),
            Child("zap", zap_handler, args={"authorize": zap_authorizer(self.db)}),
            Child("router", router_actor, args={"path": self.db, "keys": self.keys, "listen": self.listen,
                                                 "max_frame": max_frame}),
            Child("enroll", enroll_actor, args={"path": self.db, "keys": self.keys, "listen": self.enroll_listen}),
        ], strategy="rest_for_one")

    def enroll(self, name):
        keys = KeyPair.generate()
        s = Store(self.db)
        s.enroll(name, keys.public.decode())
        s.close()
        return keys


class Agent:
    def __init__(self, runtime, hive, keys):
        self.z = runtime.zmq.socket(zmq.DEALER)
        self.z.setsockopt(zmq.LINGER, 0)
        curve_client(self.z, keys, hive.keys.public)
        # A refused key's socket has no connection to queue on, so a send
        # would block for ever: give up instead (the message goes nowhere).
        self.z.setsockopt(zmq.SNDTIMEO, 500)
        self.z.connect(hive.listen)

    def send(self, msg):
        try:
            self.z.send(AGENT.encode(msg))
        except zmq.Again:
            pass

    async def replies(self, n, timeout=5.0):
        out = []
        with trio.move_on_after(timeout):
            while len(out) < n:
                try:
                    out.append(HIVE.decode(self.z.recv(zmq.NOBLOCK)))
                except zmq.Again:
                    await trio.sleep(0.01)
        return out

    def close(self):
        self.z.close()


def events(n, pid=1):
    return [wire.Exec(time=time.time_ns() + i, pid=pid, filename="/bin/true", argv=["true"]) for i in range(n)]


@pytest.fixture
async def hive(tmp_path, root_ctx_factory):
    h = Hive(tmp_path)
    async with trio.open_nursery() as n:
        await n.start(h.tree, root_ctx_factory())
        yield h
        n.cancel_scope.cancel()


@pytest.fixture
def root_ctx_factory(runtime):
    from actors import Context
    return lambda: Context(runtime, "hive")


async def test_batches_are_stored_once_and_acknowledged(hive, runtime):
    a = Agent(runtime, hive, hive.enroll("web-1"))
    a.send(wire.Hello(agent="web-1", hostname="web-1.example"))
    for seq in (1, 2, 2, 1, 3):
        a.send(wire.EventBatch(seq=seq, stream="st", events=events(10, pid=seq)))
    a.send(wire.EventBatch(seq=5, stream="st", events=events(10)))  # 4 is missing
    acks = await a.replies(6)
    a.close()
    assert [(x.seq, x.resend) for x in acks] == [(1, False), (2, False), (2, False), (2, False), (3, False), (3, True)]
    s = Store(hive.db, readonly=True)
    assert len(s.events(agent="web-1", kind="exec", limit=1000)) == 30
    assert sorted({e.pid for e in s.events(agent="web-1", kind="exec", limit=100)}) == [1, 2, 3]
    assert runtime.registry["hive.store"].extra["duplicates"] == 2


async def test_unenrolled_and_revoked_keys_are_refused_while_others_are_served(hive, runtime, caplog):
    good = Agent(runtime, hive, hive.enroll("good"))
    stranger = Agent(runtime, hive, KeyPair.generate())
    doomed_keys = hive.enroll("doomed")
    doomed = Agent(runtime, hive, doomed_keys)
    doomed.send(wire.EventBatch(seq=1, stream="d", events=events(1)))
    assert [x.seq for x in await doomed.replies(1)] == [1]

    s = Store(hive.db)
    s.revoke("doomed")  # as `immune-node enroll revoke` does, on a running hive
    s.close()
    await trio.sleep(1.5)
    doomed.send(wire.EventBatch(seq=2, stream="d", events=events(1)))
    stranger.send(wire.EventBatch(seq=1, stream="x", events=events(1)))
    good.send(wire.EventBatch(seq=1, stream="g", events=events(4)))
    assert [x.seq for x in await good.replies(1)] == [1]
    assert await doomed.replies(1, timeout=0.5) == []
    assert await stranger.replies(1, timeout=0.5) == []
    for x in (good, stranger, doomed):
        x.close()
    st = Store(hive.db, readonly=True)
    assert len(st.events(agent="good", kind="exec")) == 4 and len(st.events(agent="doomed", kind="exec")) == 1
    assert runtime.registry["hive.zap"].extra["refused"] >= 1
    # A revoked key's open connection is refused message by message, or the
    # reconnect is refused by ZAP; either way it is logged.
    refused = runtime.registry["hive.router"].extra["revoked"] + runtime.registry["hive.zap"].extra["refused"]
    assert refused >= 2
    assert any(getattr(r, "event", "") == "auth.refused" for r in caplog.records)


async def test_garbage_oversized_and_wrongly_typed_frames_are_counted(tmp_path, runtime, caplog):
    from actors import Context
    h = Hive(tmp_path, max_frame=4096)
    async with trio.open_nursery() as n:
        await n.start(h.tree, Context(runtime, "hive"))
        a = Agent(runtime, h, h.enroll("a"))
        a.z.send(b"\xc1\x00garbage")
        a.z.send(HIVE.encode(wire.Ack(seq=1)))  # a hive message, from an agent
        a.z.send_multipart([b"two", b"frames"])
        a.send(wire.EventBatch(seq=1, stream="s", events=events(2)))
        acks = await a.replies(1)
        # Above the limit, ZeroMQ drops the connection before buffering the
        # frame; the agent's socket connects again and goes on.
        a.z.send(b"x" * 10_000)
        st = runtime.registry["hive.router"]
        with trio.fail_after(5):
            while st.extra["oversized"] < 1:
                await trio.sleep(0.05)
        with trio.fail_after(10):
            while len(acks) < 2:
                a.send(wire.EventBatch(seq=2, stream="s", events=events(2)))
                acks += await a.replies(1, timeout=0.5)
        a.close()
        with trio.fail_after(5):
            while st.extra["disconnects"] < 1:
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    assert [x.seq for x in acks] == [1, 2]
    assert st.malformed == 2  # garbage and the wrong type
    assert st.extra["oversized"] == 1 and st.extra["wrong_type"] == 1 and st.extra["unauthenticated"] == 0
    assert st.extra["connections"] == 2 and st.extra["disconnects"] == 1  # the agent's own close at the end
    assert st.restarts == 0
    assert any(getattr(r, "event", "") == "frame.refused" and r.fields["why"] == "oversized" for r in caplog.records)


async def test_enrollment_with_a_one_time_token(hive, runtime):
    s = Store(hive.db)
    token = s.new_token()
    s.close()
    keys = KeyPair.generate()

    async def enroll(name, secret):
        z = runtime.zmq.socket(zmq.REQ)
        z.setsockopt(zmq.LINGER, 0)
        curve_client(z, keys, hive.keys.public)
        z.connect(hive.enroll_listen)
        z.send(Codec(wire.Enroll).encode(wire.Enroll(token=secret, agent=name)))
        try:
            with trio.fail_after(5):
                while True:
                    try:
                        return Codec(wire.Enrolled).decode(z.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        await trio.sleep(0.01)
        finally:
            z.close()

    assert await enroll("db-1", token) == wire.Enrolled(ok=True, agent="db-1")
    again = await enroll("db-1", token)
    assert again.ok is False and again.detail == "token already used"
    a = Agent(runtime, hive, keys)
    a.send(wire.EventBatch(seq=1, stream="s", events=events(1)))
    assert [x.seq for x in await a.replies(1)] == [1]
    a.close()


async def test_silent_agent_goes_offline_and_that_is_an_event(hive, runtime):
    a = Agent(runtime, hive, hive.enroll("quiet"))
    a.send(wire.Hello(agent="quiet"))
    with trio.fail_after(10):
        while True:
            await trio.sleep(0.2)
            rows = {r.id: r for r in Store(hive.db, readonly=True).agents()}
            if rows["quiet"].last_seen and not rows["quiet"].online:
                break
    a.close()
    notices = [e.what for e in Store(hive.db, readonly=True).events(agent="quiet", kind="notice")]
    assert "agent_offline" in notices


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    import subprocess
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs (tests run as root): {r.stderr}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


async def test_a_full_disk_at_the_hive_stores_nothing_acks_nothing_and_loses_nothing(tiny_disk, runtime, caplog):
    from actors import Context
    h = Hive(tiny_disk)
    async with trio.open_nursery() as n:
        await n.start(h.tree, Context(runtime, "hive"))
        a = Agent(runtime, h, h.enroll("a"))
        a.send(wire.EventBatch(seq=1, stream="s", events=events(5)))
        assert [x.seq for x in await a.replies(1)] == [1]
        # A reader in the middle of a transaction keeps SQLite from reusing
        # the WAL's space, so even small writes (the registry's) need more.
        reader = Store(h.db, readonly=True)
        reader.db.execute("BEGIN")
        reader.agents()
        filler = tiny_disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # the disk fills up
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        big = wire.EventBatch(seq=2, stream="s", events=[wire.Exec(time=time.time_ns() + i, argv=["x" * 500] * 4)
                                                          for i in range(200)])
        a.send(wire.Hello(agent="a", hostname="full"))  # the registry cannot write it either
        for _ in range(12):  # as a relay resends: more than the agent's budget in flight, but each refused
            a.send(big)
            await trio.sleep(0.2)
        assert await a.replies(1, timeout=2.5) == []  # not stored, so not acknowledged
        store_stats = runtime.registry["hive.store"]
        assert "full" in store_stats.last_error
        assert any(getattr(r, "event", "") == "store.write_failed" for r in caplog.records)
        registry = runtime.registry["hive.registry"]
        assert registry.extra["store_errors"] >= 1 and registry.restarts == 0 and "full" in registry.last_error
        reader.close()
        filler.unlink()  # space again: the agent sends what was never acknowledged
        a.send(big)
        # Acknowledged at the first send: each failed write gave its bytes
        # back, so the agent's budget at the door is free again.
        assert [x.seq for x in await a.replies(1)] == [2]
        a.close()
        with trio.fail_after(5):  # the registry's next write
            while {r.id: r.hostname for r in Store(h.db, readonly=True).agents()}["a"] != "full":
                await trio.sleep(0.1)
        n.cancel_scope.cancel()
    s = Store(tiny_disk / "hive.db", readonly=True)
    assert len(s.events(agent="a", kind="exec", limit=1000)) == 205
    assert runtime.registry["hive.store"].restarts == 0 and runtime.registry["hive.registry"].restarts == 0


@pytest.mark.parametrize("victim", ["store", "registry", "zap", "router", "enroll"])
async def test_after_any_restart_the_hive_acks_and_stores_again(hive, runtime, victim):
    a = Agent(runtime, hive, hive.enroll("steady"))
    a.send(wire.EventBatch(seq=1, stream="s", events=events(2)))
    assert [x.seq for x in await a.replies(1)] == [1]
    runtime.request_restart(victim)
    with trio.fail_after(10):
        while runtime.registry[f"hive.{victim}"].restarts < 1 or any(
                runtime.registry[f"hive.{n}"].state != "running" for n in ("store", "registry", "zap", "router", "enroll")):
            await trio.sleep(0.02)
    # The agent's connection may have gone with the router: resend until acked, as a relay does.
    acks = []
    with trio.fail_after(10):
        while not acks:
            a.send(wire.EventBatch(seq=2, stream="s", events=events(2)))
            acks = await a.replies(1, timeout=0.5)
    assert [x.seq for x in acks] == [2]
    a.close()
    assert len(Store(hive.db, readonly=True).events(agent="steady", kind="exec")) == 4


async def test_strangers_at_both_doors_are_counted_and_logged_briefly(hive, runtime, caplog):
    good = Agent(runtime, hive, hive.enroll("good"))
    strangers = []
    for door in (hive.listen, hive.enroll_listen):
        host, port = door.removeprefix("tcp://").rsplit(":", 1)
        for _ in range(10):  # plain TCP, an HTTP request
            with socket.create_connection((host, int(port))) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        for _ in range(5):  # a port scan
            socket.create_connection((host, int(port))).close()
        for _ in range(5):  # ZeroMQ without CURVE
            z = runtime.zmq.socket(zmq.DEALER)
            z.setsockopt(zmq.LINGER, 0)
            z.connect(door)
            strangers.append(z)
    for _ in range(5):  # CURVE with a key nobody enrolled (the enroll door takes any key)
        strangers.append(Agent(runtime, hive, KeyPair.generate()).z)
    good.send(wire.EventBatch(seq=1, stream="g", events=events(1)))
    assert [x.seq for x in await good.replies(1)] == [1]
    router, enroll = runtime.registry["hive.router"], runtime.registry["hive.enroll"]
    with trio.fail_after(10):
        while router.extra["unauthenticated"] < 25 or enroll.extra["unauthenticated"] < 20:
            await trio.sleep(0.05)
    await trio.sleep(0.5)
    for z in strangers:
        z.close()
    good.close()
    # The NULL and unenrolled clients try again and again: each try is one more.
    assert router.extra["unauthenticated"] >= 25 and enroll.extra["unauthenticated"] >= 20
    assert router.extra["oversized"] == 0 and enroll.extra["oversized"] == 0
    refused = [r for r in caplog.records if getattr(r, "event", "") == "frame.refused"
               and r.fields["why"] == "unauthenticated"]
    assert 1 <= len(refused) <= 5


async def test_a_kill_of_the_agents_own_pid_is_refused_at_the_door_right_after_its_hello(hive, runtime):
    from actors import Context
    from hive import DELIVER, RESULTS, Deliver, Result
    from hive._actors import internal_codec

    ctx = Context(runtime, "playbook")
    deliver = ctx.socket(zmq.PUSH, connect=DELIVER, codec=internal_codec())
    results = ctx.socket(zmq.PULL, connect=RESULTS, codec=internal_codec())
    a = Agent(runtime, hive, hive.enroll("web-1"))
    a.send(wire.Hello(agent="web-1", pid=4242))
    a.send(wire.Heartbeat())  # so the router knows where web-1 is
    await trio.sleep(0.3)  # the router has the Hello (the registry may not have written it yet)
    await deliver.send(Deliver(agent="web-1", command=wire.KillProcess(id="k1", pid=4242)))
    await deliver.send(Deliver(agent="web-1", command=wire.KillProcess(id="k2", pid=4343)))
    with trio.fail_after(5):
        [refused] = await results.recv()
    assert isinstance(refused, Result) and refused.agent == "web-1"
    assert refused.result.command == "k1" and not refused.result.ok
    assert "is the agent itself" in refused.result.detail
    [cmd] = await a.replies(1)
    assert cmd.id == "k2"  # the other kill went out
    assert runtime.registry["hive.router"].extra["commands_refused"] == 1
    a.close()
    ctx.close()


async def test_a_frame_of_exactly_max_frame_bytes_is_taken(tmp_path, runtime):
    from actors import Context
    h = Hive(tmp_path, max_frame=4096)
    async with trio.open_nursery() as n:
        await n.start(h.tree, Context(runtime, "hive"))
        a = Agent(runtime, h, h.enroll("a"))

        def batch(seq, size):
            b = wire.EventBatch(seq=seq, stream="s", events=[wire.Exec(filename="x")])
            b.events[0].filename = "x" * (size - len(AGENT.encode(b)) - 1)  # a fixstr's header is 2 bytes shorter
            assert len(AGENT.encode(b)) == size
            return b

        a.send(batch(1, 4096))
        assert [x.seq for x in await a.replies(1)] == [1]
        a.send(batch(2, 4096 + 8))  # above the limit, within the encryption's overhead
        a.send(batch(2, 4000))
        assert [x.seq for x in await a.replies(1)] == [2]
        a.close()
        n.cancel_scope.cancel()
    st = runtime.registry["hive.router"].extra
    assert st["oversized"] == 1 and st["connections"] == 1  # refused, and the connection kept


async def test_the_router_waits_out_a_held_name_without_blocking_the_trio_thread(tmp_path, runtime):
    """A restarted router binds the inproc names its previous run is
    releasing: it waits for them asynchronously (it used to retry on the trio
    thread, blocking it, and fail after 0.25 s)."""
    from actors import Context
    from hive import DELIVER

    db = tmp_path / "hive.db"
    Store(db).close()
    holder = runtime.zmq.socket(zmq.PULL)
    holder.setsockopt(zmq.LINGER, 0)
    holder.bind(DELIVER)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    ctx = Context(runtime, "router")
    try:
        async with trio.open_nursery() as n:
            n.start_soon(ticker)

            async def release():
                await trio.sleep(0.5)
                holder.close()

            n.start_soon(release)
            start = trio.current_time()
            await n.start(lambda task_status: router_actor(ctx, task_status=task_status, path=db,
                                                            keys=KeyPair.generate(), listen=tcp_endpoint()))
            assert trio.current_time() - start >= 0.5
            assert ticks >= 20  # the trio thread went on while the router waited
            n.cancel_scope.cancel()
    finally:
        ctx.close()
        holder.close()
