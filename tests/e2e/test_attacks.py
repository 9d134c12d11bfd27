"""The probe's attacks on a real hive process (issue 10), each beside a good
agent that keeps streaming: the hive must stay up, keep acknowledging the
good agent and store its events exactly once, and count what it refused."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import msgspec
import pytest
import zmq

import wire
from actors import Codec, KeyPair, curve_client
from hive import Store
from tests.hostile import nested_junk
from tests.ports import free_port

from .hosts import wait_until

AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)


class Client:
    """A CURVE DEALER: an enrolled agent, or anyone with a fresh key."""

    def __init__(self, endpoint: str, hive_public: bytes, keys: KeyPair | None = None) -> None:
        self.keys = keys or KeyPair.generate()
        self.z = zmq.Context.instance().socket(zmq.DEALER)
        self.z.setsockopt(zmq.LINGER, 0)
        self.z.setsockopt(zmq.SNDTIMEO, 2000)
        curve_client(self.z, self.keys, hive_public)
        self.z.connect(endpoint)

    def send_raw(self, *frames: bytes) -> None:
        self.z.send_multipart(list(frames))

    def recv(self, timeout: float) -> list[bytes] | None:
        if self.z.poll(int(timeout * 1000)):
            return self.z.recv_multipart()
        return None

    def close(self) -> None:
        self.z.close(linger=0)


class GoodAgent(Client):
    """Streams numbered batches and waits for each ack, as a real relay does."""

    def __init__(self, endpoint: str, hive_public: bytes, keys: KeyPair, name: str) -> None:
        super().__init__(endpoint, hive_public, keys)
        self.name = name
        self.stream = uuid.uuid4().hex
        self.seq = 0
        self.send_raw(AGENT.encode(wire.Hello(agent=name, hostname="good", pid=os.getpid())))

    def batch(self, n: int = 10, timeout: float = 15.0, events: list | None = None) -> float:
        """Send one batch of ``n`` events (or of ``events``); the seconds its ack took."""
        self.seq += 1
        if events is None:
            events = [wire.Exec(pid=1000 + i, filename=f"/bin/good-{self.seq}-{i}") for i in range(n)]
        t0 = time.monotonic()
        self.send_raw(AGENT.encode(wire.EventBatch(seq=self.seq, stream=self.stream, events=events)))
        deadline = t0 + timeout
        while (left := deadline - time.monotonic()) > 0:
            frames = self.recv(left)
            if frames is None:
                break
            msg = HIVE.decode(frames[-1])
            if isinstance(msg, wire.Ack) and msg.stream == self.stream and msg.seq >= self.seq:
                assert not msg.resend, msg
                return time.monotonic() - t0
        raise AssertionError(f"batch {self.seq} of {self.name} not acknowledged within {timeout:g}s")


class Hive:
    def __init__(self, tmp: Path, start_node, max_frame: int = 1 << 20) -> None:
        self.data = tmp / "hive"
        self.port, self.enroll_port = free_port(), free_port()
        config = tmp / "hive.toml"
        config.write_text(f'[hive]\nenroll_listen = "tcp://127.0.0.1:{self.enroll_port}"\n'
                          f"max_frame = {max_frame}\n")
        self.node = start_node("hive", self.data, "--config", str(config),
                               "--listen", f"tcp://127.0.0.1:{self.port}")
        self.node.wait_ready()
        self.public = KeyPair.load(self.data / "keys", "hive").public
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.enroll_endpoint = f"tcp://127.0.0.1:{self.enroll_port}"

    def enroll(self, name: str) -> KeyPair:
        keys = KeyPair.generate()
        store = Store(self.data / "hive.db")
        store.enroll(name, keys.public.decode())
        store.close()
        return keys

    def agent(self, name: str) -> GoodAgent:
        return GoodAgent(self.endpoint, self.public, self.enroll(name), name)

    def actors(self) -> dict[str, object]:
        return {a.name: a for a in self.node.status().actors}

    def restarts(self) -> dict[str, int]:
        return {name: a.restarts for name, a in self.actors().items() if a.restarts}

    def stored(self, agent: str) -> list[wire.AnyEvent]:
        store = Store(self.data / "hive.db", readonly=True)
        try:
            return store.events(agent=agent, limit=10**6)
        finally:
            store.close()

    def alive(self) -> None:
        assert self.node.proc.poll() is None, f"the hive exited:\n{self.node.log()}"


@pytest.fixture
def hive(tmp_path, start_node):
    return Hive(tmp_path, start_node)


def good_files(events) -> list[str]:
    return sorted(e.filename for e in events if isinstance(e, wire.Exec) and e.filename.startswith("/bin/good-"))


def test_nested_enrollment_frames_from_anyone_do_not_stop_the_hive(hive):
    good = hive.agent("good")
    good.batch()
    for _ in range(12):  # twice the supervisor's intensity
        c = Client(hive.enroll_endpoint, hive.public)
        c.send_raw(b"", nested_junk({"type": "enroll", "token": "x", "agent": "y"}))
        reply = c.recv(5.0)
        c.close()
        assert reply is not None, "no answer to a malformed enrollment"
        answer = msgspec.msgpack.decode(reply[-1])
        assert answer[1]["ok"] is False and "malformed" in answer[1]["detail"]
        good.batch()
    hive.alive()
    assert hive.restarts() == {}
    assert len(good_files(hive.stored("good"))) == 10 * 13


def test_nested_frame_from_an_enrolled_agent_is_refused_and_counted(hive):
    good, bad = hive.agent("good"), hive.agent("bad")
    for _ in range(12):
        bad.send_raw(nested_junk({"type": "heartbeat"}))
        good.batch()
    hive.alive()
    assert hive.restarts() == {}
    router = hive.actors()["hive.router"]
    assert router.malformed >= 12
    assert len(good_files(hive.stored("good"))) == 10 * 12


@pytest.mark.parametrize("bad", [
    wire.EventBatch(seq=1, events=[wire.Exec(pid=2**63, filename="/bin/huge")]),
    wire.EventBatch(seq=1, events=[wire.Open(time=2**64 - 1, path="/x")]),
    wire.Hello(agent="bad", pid=2**63),
    wire.Heartbeat(spooled=2**64 - 1),
    wire.EventBatch(seq=0, events=[wire.Exec(pid=1, filename="/bin/seq-zero")]),
], ids=["pid", "time", "hello-pid", "heartbeat", "seq-zero"])
def test_values_out_of_range_are_refused_at_the_door(hive, bad):
    good, attacker = hive.agent("good"), hive.agent("bad")
    if isinstance(bad, wire.EventBatch):
        bad.stream = attacker.stream
    for _ in range(8):
        attacker.send_raw(AGENT.encode(bad))
        good.batch()
    hive.alive()
    assert hive.restarts() == {}
    assert hive.actors()["hive.router"].malformed >= 8
    assert len(good_files(hive.stored("good"))) == 80
    assert [e for e in hive.stored("bad") if not isinstance(e, wire.Notice)] == []


def test_strangers_without_curve_are_refused_and_counted(hive):
    good = hive.agent("good")
    good.batch()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", hive.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(512))
        z = zmq.Context.instance().socket(zmq.DEALER)  # NULL mechanism
        z.setsockopt(zmq.LINGER, 0)
        z.connect(hive.endpoint)
        z.send(AGENT.encode(wire.Heartbeat()), zmq.NOBLOCK)
        time.sleep(0.2)
        z.close()
        good.batch()
    hive.alive()
    wait_until(lambda: int(hive.actors()["hive.router"].extra.get("unauthenticated", 0)) >= 5, timeout=10,
               what="the refused connections counted")
    assert "unauthenticated" in hive.node.log()


def test_oversized_frames_are_refused_and_counted(tmp_path, start_node):
    hive = Hive(tmp_path, start_node)  # max_frame 1 MiB, the least a config allows
    good, big = hive.agent("good"), hive.agent("big")
    for _ in range(3):
        big.send_raw(b"\x92\x01" + b"\xc6" + (1 << 20).to_bytes(4, "big") + bytes(1 << 20))
        good.batch()
    hive.alive()
    wait_until(lambda: int(hive.actors()["hive.router"].extra.get("oversized", 0)) >= 1, timeout=10,
               what="the oversized frames counted")
    assert hive.restarts() == {}


def test_a_flood_of_malformed_frames_is_counted_exactly_and_logged_briefly(hive):
    good, bad = hive.agent("good"), hive.agent("bad")
    good.batch()
    before = hive.node.log_path.stat().st_size
    n = 50_000
    for i in range(n):
        bad.send_raw(b"\x92\x01\xc1" + i.to_bytes(4, "big"))  # 0xc1: never valid msgpack
    wait_until(lambda: hive.actors()["hive.router"].malformed >= n, timeout=60, what="every bad frame counted")
    good.batch()
    hive.alive()
    assert hive.actors()["hive.router"].malformed == n
    grown = hive.node.log_path.stat().st_size - before
    assert grown < 64 << 10, f"{n} bad frames wrote {grown} bytes of log"
