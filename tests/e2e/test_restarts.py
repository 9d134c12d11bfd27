"""Each actor of a real hive restarted in turn while agents stream: acks
resume within seconds, and every batch sent is stored exactly once."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest
import zmq

import actors
import wire
from actors import Codec, KeyPair, curve_client
from hive import Store
from tests.ports import free_port

from .hosts import wait_until

AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)
VICTIMS = ["store", "registry", "zap", "router", "enroll", "playbook", "correlate", "sentinel"]
RESUME = 5.0
"""Seconds without an ack that a restart may cause."""
SPACING = 7.0
"""Seconds between two restarts: the hive's supervisor allows 5 restarts in 30 s."""


class Streamer(threading.Thread):
    """A scripted agent: numbered batches of marked events, up to ``window``
    unacknowledged, sent again from the first unacknowledged one after a
    second without progress or when the hive asks (as a relay does)."""

    def __init__(self, endpoint: str, hive_public: bytes, keys: KeyPair, name: str, window: int = 8) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.hive_public, self.keys, self.name, self.window = endpoint, hive_public, keys, name, window
        self.stream = uuid.uuid4().hex
        self.acked = 0
        self.sent = 0
        """The highest seq made so far."""
        self.progress: list[tuple[float, int]] = []
        """(monotonic time, acked) at each step forward."""
        self.stop_making = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def batch(self, seq: int) -> bytes:
        events = [wire.Exec(time=time.time_ns(), pid=1000 + i, filename=f"/bin/{self.name}-{seq}-{i}")
                  for i in range(5)]
        return AGENT.encode(wire.EventBatch(seq=seq, stream=self.stream, events=events))

    def run(self) -> None:
        z = zmq.Context.instance().socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        curve_client(z, self.keys, self.hive_public)
        z.connect(self.endpoint)
        try:
            z.send(AGENT.encode(wire.Hello(agent=self.name, hostname=self.name)))
            next_seq, last_progress = 1, time.monotonic()
            while not (self.stop_making.is_set() and self.acked >= self.sent):
                limit = self.sent if self.stop_making.is_set() else self.acked + self.window
                while next_seq <= limit:
                    try:
                        z.send(self.batch(next_seq), zmq.NOBLOCK)
                    except zmq.Again:  # no connection right now
                        break
                    self.sent = max(self.sent, next_seq)
                    next_seq += 1
                now = time.monotonic()
                if z.poll(50):
                    msg = HIVE.decode(z.recv())
                    if isinstance(msg, wire.Ack) and msg.stream == self.stream:
                        if msg.seq > self.acked:
                            self.acked, last_progress = msg.seq, now
                            self.progress.append((now, msg.seq))
                        if msg.resend:
                            next_seq = self.acked + 1
                if now - last_progress > 1.0 and self.acked < self.sent:
                    next_seq, last_progress = self.acked + 1, now
        except BaseException as e:  # noqa: BLE001  (reported by the test)
            self.error = e
        finally:
            z.close()
            self.done.set()

    def acked_since(self, t: float) -> bool:
        return bool(self.progress) and self.progress[-1][0] > t

    def longest_stall(self, start: float, end: float) -> float:
        """The longest time without a step forward within [start, end]."""
        times = [start] + [when for when, _ in self.progress if start < when < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))


@pytest.mark.slow
def test_every_hive_actor_restarted_under_load_loses_and_duplicates_nothing(tmp_path, start_node):
    data = tmp_path / "hive"
    port, enroll_port = free_port(), free_port()
    config = tmp_path / "hive.toml"
    config.write_text(f'[hive]\nenroll_listen = "tcp://127.0.0.1:{enroll_port}"\n')
    hive = start_node("hive", data, "--config", str(config), "--listen", f"tcp://127.0.0.1:{port}")
    hive.wait_ready(timeout=120)
    public = KeyPair.load(data / "keys", "hive").public
    streamers = []
    for name in ("alpha", "beta"):
        keys = KeyPair.generate()
        store = Store(data / "hive.db")
        store.enroll(name, keys.public.decode())
        store.close()
        streamers.append(Streamer(f"tcp://127.0.0.1:{port}", public, keys, name))
    for s in streamers:
        s.start()
    wait_until(lambda: all(s.acked >= 20 for s in streamers), timeout=30, what="both agents streaming")

    resumed = {}
    for victim in VICTIMS:
        before = {a.name: a.restarts for a in hive.status().actors}
        t0 = time.monotonic()
        assert actors.request_restart(data / "run", victim) == f"hive.{victim}"
        wait_until(lambda: all(a.state == "running" for a in hive.status().actors)
                   and {a.name: a.restarts for a in hive.status().actors}[f"hive.{victim}"] > before[f"hive.{victim}"],
                   timeout=120, what=f"the hive running again after {victim}")
        wait_until(lambda: all(s.acked_since(t0) for s in streamers), timeout=30,
                   what=f"acks after {victim} restarted")
        time.sleep(max(0.0, SPACING - (time.monotonic() - t0)))
        resumed[victim] = max(s.longest_stall(t0, time.monotonic()) for s in streamers)
        assert hive.proc.poll() is None, f"the hive exited after {victim}:\n{hive.log()}"

    for s in streamers:
        s.stop_making.set()
    for s in streamers:
        assert s.done.wait(60), f"{s.name} still has unacknowledged batches"
        assert s.error is None, s.error
    slow = {victim: round(t, 2) for victim, t in resumed.items() if t > RESUME}
    assert slow == {}, f"acks stalled too long (seconds): {slow}"

    store = Store(data / "hive.db", readonly=True)
    try:
        for s in streamers:
            names = collections.Counter(e.filename for e in store.events(agent=s.name, kind="exec", limit=10**7))
            expected = {f"/bin/{s.name}-{seq}-{i}" for seq in range(1, s.sent + 1) for i in range(5)}
            assert set(names) == expected, f"{s.name}: {len(expected - set(names))} events missing"
            assert max(names.values()) == 1, f"{s.name}: duplicates {[n for n, c in names.items() if c > 1][:5]}"
    finally:
        store.close()
    status = {a.name: a for a in hive.status().actors}
    assert all(status[f"hive.{v}"].restarts >= 1 for v in VICTIMS)
    print("longest stall of acks (s):", {v: round(t, 2) for v, t in resumed.items()},
          "batches:", {s.name: s.sent for s in streamers})
