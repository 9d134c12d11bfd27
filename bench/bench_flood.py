"""The hive under each attack of issue 10 and under floods of maximum-size
frames: its memory, and a good agent's ack latency beside it, against a
baseline measured in the same run.

    .venv/bin/python bench/bench_flood.py [--max-frame BYTES] [--connections N] [--seconds S]
                                          [--phases PHASE ...]

One real ``immune-node hive`` (``max_frame`` as given) and a good agent that
sends batches of 10 events one at a time and times each ack.  Phases of
``--seconds`` each, in order:

* baseline: the good agent alone;
* garbage: ``--connections`` attacker connections (enrolled keys, each its
  own process: a compromised agent can send what it likes) send frames of
  exactly ``max_frame`` bytes that are not msgpack, as fast as the hive
  takes them;
* oversized: the same with frames one byte above ``max_frame`` (ZeroMQ
  drops each such connection; the attackers' sockets connect again);
* valid: frames of about ``max_frame`` holding a valid batch of
  ``wire.MAX_BATCH`` events, which the hive stores;
* nested: 2 KB frames of 2000 nested msgpack arrays (once a RecursionError
  that crashed the router);
* enroll-nested: the same at the enrollment door, from fresh keys (anyone
  holding an enrollment token's hive key can connect there);
* range: valid msgpack batches with a pid of 2**63 (once a crash of the
  store's group commit);
* malformed: 8-byte frames that are not msgpack, as fast as possible;
* strangers: plain TCP connections that send an HTTP request and close;
* after: the good agent alone again.

For each phase: the hive process's resident memory (VmRSS sampled every
0.1 s: the largest, and at the end), the largest sum over its detection
children (sentinel, correlate), and the good agent's p50/p99 ack latency,
with the ratio to the baseline's p99.  The attackers run at nice 19: a
real attacker's CPU is elsewhere.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

import wire  # noqa: E402
from actors import Codec, KeyPair, curve_client, query_status  # noqa: E402
from tests.hostile import nested_junk  # noqa: E402
from tests.ports import free_port  # noqa: E402

PHASES = ("baseline", "garbage", "oversized", "valid", "nested", "enroll-nested", "range", "malformed",
          "strangers", "after")

AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def client(endpoint: str, keys: tuple[bytes, bytes], server: bytes) -> zmq.Socket:
    z = zmq.Context.instance().socket(zmq.DEALER)
    z.setsockopt(zmq.LINGER, 0)
    z.setsockopt(zmq.SNDTIMEO, 100)
    curve_client(z, KeyPair(*keys), server)
    z.connect(endpoint)
    return z


def valid_frame(seq: int, stream: str, max_frame: int) -> bytes:
    """A batch of MAX_BATCH events whose frame is just under ``max_frame``."""
    n = wire.MAX_BATCH
    base = len(AGENT.encode(wire.EventBatch(seq=seq, stream=stream, events=[
        wire.Exec(time=time.time_ns(), pid=1, filename="/bin/x", argv=[""]) for _ in range(n)])))
    pad = max(0, (max_frame - base) // n - 3)  # a string's header takes up to 3 bytes more than an empty one's
    frame = AGENT.encode(wire.EventBatch(seq=seq, stream=stream, events=[
        wire.Exec(time=time.time_ns(), pid=1, filename="/bin/x", argv=["a" * pad]) for _ in range(n)]))
    assert len(frame) <= max_frame, (len(frame), max_frame)
    return frame


def frames(kind: str, max_frame: int):
    """The endless frames of one attacker of ``kind``."""
    stream, seq = uuid.uuid4().hex, 0
    fixed = {
        "garbage": b"\xc1" * max_frame,
        "oversized": b"\xc1" * (max_frame + 1),
        "nested": nested_junk({"type": "heartbeat"}),
        "enroll-nested": nested_junk({"type": "enroll", "token": "x", "agent": "y"}),
        "malformed": b"\x92\x01\xc1junk!",
    }.get(kind)
    while True:
        seq += 1
        if fixed is not None:
            yield fixed
        elif kind == "valid":
            yield valid_frame(seq, stream, max_frame)
        elif kind == "range":
            yield AGENT.encode(wire.EventBatch(seq=seq, stream=stream, events=[
                wire.Exec(pid=2**63, filename="/bin/huge")] * 64))


def attacker(endpoint: str, enroll: str, keys: tuple[bytes, bytes], server: bytes, kind: str, max_frame: int,
             stop) -> None:
    # At the lowest priority: a real attacker's CPU is elsewhere, and here the
    # attackers' encryption would otherwise take the CPU from the hive.
    os.nice(19)
    if kind == "strangers":
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            except OSError:
                pass
        return
    if kind == "enroll-nested":  # anyone: a fresh key, the enrollment door
        new = KeyPair.generate()
        z = client(enroll, (new.public, new.secret), server)
        prefix = [b""]
    else:
        z = client(endpoint, keys, server)
        prefix = []
    for frame in frames(kind, max_frame):
        if stop.is_set():
            break
        try:
            z.send_multipart([*prefix, frame])
        except zmq.Again:
            continue
        while z.poll(0):
            z.recv_multipart()  # acks, enrollment answers
    z.close()


class GoodAgent(threading.Thread):
    def __init__(self, endpoint: str, keys: tuple[bytes, bytes], server: bytes) -> None:
        super().__init__(daemon=True)
        self.z = client(endpoint, keys, server)
        self.z.setsockopt(zmq.SNDTIMEO, -1)
        self.stream = uuid.uuid4().hex
        self.samples: list[tuple[float, float]] = []
        """(when, seconds the ack took)."""
        self.timeouts = 0
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            events = [wire.Exec(time=time.time_ns(), pid=1000 + i, filename="/bin/good") for i in range(10)]
            t0 = time.monotonic()
            self.z.send(AGENT.encode(wire.EventBatch(seq=seq, stream=self.stream, events=events)))
            while True:
                if not self.z.poll(5000):
                    self.timeouts += 1
                    seq -= 1  # send it again
                    break
                msg = HIVE.decode(self.z.recv())
                if isinstance(msg, wire.Ack) and msg.stream == self.stream and msg.seq >= seq:
                    self.samples.append((t0, time.monotonic() - t0))
                    break
            time.sleep(0.01)
        self.z.close()

    def latency(self, start: float, end: float) -> tuple[float, float, int]:
        lat = sorted(d for t, d in self.samples if start <= t < end)
        if not lat:
            return float("nan"), float("nan"), 0
        return lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, len(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-frame", type=int, default=4 << 20)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                    help="which phases to run, in this order (the first is the baseline)")
    args = ap.parse_args()

    from hive import Store

    data = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    port, enroll_port = free_port(), free_port()
    (data / "hive.toml").write_text(f"[hive]\nmax_frame = {args.max_frame}\n"
                                    f'enroll_listen = "tcp://127.0.0.1:{enroll_port}"\n')
    hive_keys = KeyPair.load_or_create(data / "keys", "hive")
    store = Store(data / "hive.db")
    keys = []
    for i in range(args.connections + 1):
        k = KeyPair.generate()
        store.enroll(f"flood-{i}", k.public.decode())
        keys.append((k.public, k.secret))
    store.close()
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "hive", "--data", str(data), "--config",
                             str(data / "hive.toml"), "--listen", f"tcp://127.0.0.1:{port}",
                             "--log-level", "warning"], cwd=ROOT, stderr=open(data / "hive.log", "wb"))
    endpoint, enroll = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{enroll_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if query_status(data / "run", timeout=0.5).ready:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the hive did not start")
            time.sleep(0.2)
        good = GoodAgent(endpoint, keys[0], hive_keys.public)
        good.start()
        time.sleep(1.0)
        ctx = mp.get_context("fork")
        rows = []
        for phase in args.phases:
            stop = ctx.Event()
            procs = [] if phase in ("baseline", "after") else [
                ctx.Process(target=attacker, args=(endpoint, enroll, keys[1 + i], hive_keys.public, phase,
                                                   args.max_frame, stop)) for i in range(args.connections)]
            for p in procs:
                p.start()
            t0 = time.monotonic()
            peak = peak_children = 0
            kids = children(proc.pid)
            while time.monotonic() - t0 < args.seconds:
                peak = max(peak, rss_kb(proc.pid))
                peak_children = max(peak_children, sum(rss_kb(c) for c in kids))
                time.sleep(0.1)
            t1 = time.monotonic()
            stop.set()
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
            p50, p99, n = good.latency(t0, t1)
            rows.append((phase, peak, rss_kb(proc.pid), peak_children, p50, p99, n))
            time.sleep(1.0)
        good.stop.set()
        good.join(10)
        actors = {a.name: a for a in query_status(data / "run").actors}
        router, enroll_door = actors["hive.router"], actors["hive.enroll"]
        restarts = {name: a.restarts for name, a in actors.items() if a.restarts}
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)

    base_p99 = rows[0][5]
    print(f"max_frame {args.max_frame} bytes, {args.connections} attacker connections, {args.seconds:g} s per phase")
    print(f"{'phase':>13} {'RSS peak MB':>12} {'RSS end MB':>11} {'children MB':>12} {'good p50 ms':>12} "
          f"{'good p99 ms':>12} {'p99 ratio':>10} {'acks':>6}")
    for phase, peak, end, kids, p50, p99, n in rows:
        print(f"{phase:>13} {peak / 1024:>12.1f} {end / 1024:>11.1f} {kids / 1024:>12.1f} {p50:>12.1f} "
              f"{p99:>12.1f} {p99 / base_p99:>9.2f}x {n:>6}")
    extra = router.extra
    print(f"good agent: {good.timeouts} acks not within 5 s; router: malformed {router.malformed}, "
          f"oversized {extra.get('oversized')}, unauthenticated {extra.get('unauthenticated')}, "
          f"connections {extra.get('connections')}; enroll door: malformed {enroll_door.malformed}; "
          f"actor restarts: {restarts or 'none'}")


if __name__ == "__main__":
    main()
