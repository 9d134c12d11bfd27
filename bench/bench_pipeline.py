"""Agents -> hive router -> store: events/s, lag, and the ratio to raw pyzmq.

    .venv/bin/python bench/bench_pipeline.py [--events N] [--agents 1,4,16]

For each agent count, in one run:

* raw: the same agent processes push the same batches over plain pyzmq
  through a three-hop pipeline (DEALER -> ROUTER -> PUSH -> PULL, the last hop
  decoding the batch and acknowledging it), no encryption, no disk;
* hive: a real ``immune-node hive`` (CURVE, ZAP, typed decoding, SQLite
  commits with synchronous=FULL, acks after commit).

Each agent is its own process sending batches of 256 events with a window of
unacknowledged batches.  Then the hive is driven at half the measured rate
to read the lag from event creation to store commit (p50/p99, from the store
actor's statistics).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

import wire  # noqa: E402
from actors import Codec, KeyPair, curve_client, query_status  # noqa: E402

BATCH = 256
WINDOW = 32
AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(seq: int, stream: str) -> wire.EventBatch:
    now = time.time_ns()
    return wire.EventBatch(seq=seq, stream=stream, events=[
        wire.Exec(time=now, pid=1000 + i, ppid=1, comm="bash", filename="/usr/bin/ls",
                  argv=["ls", "-la", "/srv/data"], image="/usr/bin/ls", cmdline="ls -la /srv/data",
                  user="www-data", verdict="allow")
        for i in range(BATCH)
    ])


def agent_proc(endpoint: str, batches: int, stream: str, keys: tuple[bytes, bytes] | None,
               server: bytes | None, rate: float, ready, go) -> None:
    """One agent: send ``batches`` batches, at most WINDOW unacknowledged."""
    z = zmq.Context().socket(zmq.DEALER)
    z.setsockopt(zmq.LINGER, 0)
    if keys:
        curve_client(z, KeyPair(*keys), server)
    z.connect(endpoint)
    ready.set()
    go.wait()
    acked = sent = 0
    interval = BATCH / rate if rate else 0.0
    t_next = time.monotonic()
    while acked < batches:
        while sent < batches and sent - acked < WINDOW:
            if interval:
                delay = t_next - time.monotonic()
                if delay > 0:
                    if z.poll(delay * 1000):
                        break
                    t_next += interval
                else:
                    t_next += interval
            sent += 1
            z.send(AGENT.encode(make_batch(sent, stream)))
        if z.poll(100):
            ack = HIVE.decode(z.recv())
            if isinstance(ack, wire.Ack):
                acked = max(acked, ack.seq)
    z.close()


def raw_hive(endpoint: str, stop: threading.Event) -> None:
    """Three hops of plain pyzmq: ROUTER -> PUSH -> PULL (decode) -> ack."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind("inproc://raw-store")
    push.connect("inproc://raw-store")
    acks = ctx.socket(zmq.PAIR)
    acks_in = ctx.socket(zmq.PAIR)
    acks_in.bind("inproc://raw-acks")
    acks.connect("inproc://raw-acks")

    def store() -> None:
        while not stop.is_set():
            if pull.poll(100):
                ident, frame = pull.recv_multipart()
                batch = AGENT.decode(frame)
                acks.send_multipart([ident, HIVE.encode(wire.Ack(seq=batch.seq, stream=batch.stream))])

    t = threading.Thread(target=store, daemon=True)
    t.start()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(acks_in, zmq.POLLIN)
    while not stop.is_set():
        for sock, _ in poller.poll(100):
            if sock is router:
                push.send_multipart(router.recv_multipart())
            else:
                router.send_multipart(acks_in.recv_multipart())
    t.join()
    for s in (router, push, pull, acks, acks_in):
        s.close(0)


def drive(endpoint: str, agents: int, events: int, keys=None, server=None, rate: float = 0.0) -> float:
    per_agent = max(1, events // agents // BATCH)
    ctx = mp.get_context("fork")
    ready = [ctx.Event() for _ in range(agents)]
    go = ctx.Event()
    procs = [ctx.Process(target=agent_proc, args=(
        endpoint, per_agent, f"s{i}-{time.time_ns()}", keys[i] if keys else None, server,
        rate / agents if rate else 0.0, ready[i], go)) for i in range(agents)]
    for p in procs:
        p.start()
    for r in ready:
        r.wait()
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    return per_agent * agents * BATCH / (time.perf_counter() - t0)


def start_hive(data: Path, port: int, agents: int) -> tuple[subprocess.Popen, list, bytes]:
    from hive import Store

    data.mkdir(parents=True, exist_ok=True)
    hive_keys = KeyPair.load_or_create(data / "keys", "hive")
    store = Store(data / "hive.db")
    keys = []
    for i in range(agents):
        k = KeyPair.generate()
        store.enroll(f"bench-{i}", k.public.decode())
        keys.append((k.public, k.secret))
    store.close()
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "hive", "--data", str(data),
                             "--listen", f"tcp://127.0.0.1:{port}", "--log-level", "warning"], cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if query_status(data / "run", timeout=0.5).ready:
                return proc, keys, hive_keys.public
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the hive did not start")


def store_stats(data: Path) -> dict:
    for a in query_status(data / "run").actors:
        if a.name == "hive.store":
            return a.extra
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events per case")
    ap.add_argument("--agents", default="1,4,16")
    args = ap.parse_args()
    print(f"{'agents':>6} {'raw pyzmq ev/s':>15} {'hive ev/s':>11} {'ratio':>6} {'half-rate p50':>14} {'p99':>8}")
    for n in (int(x) for x in args.agents.split(",")):
        port = free_port()
        stop = threading.Event()
        t = threading.Thread(target=raw_hive, args=(f"tcp://127.0.0.1:{port}", stop))
        t.start()
        time.sleep(0.2)
        raw = drive(f"tcp://127.0.0.1:{port}", n, args.events)
        stop.set()
        t.join()

        tmp = Path(tempfile.mkdtemp(prefix="bench-hive-"))
        port = free_port()
        proc, keys, server = start_hive(tmp, port, n)
        try:
            ours = drive(f"tcp://127.0.0.1:{port}", n, args.events, keys, server)
            # The store's lag figures cover its last 5 s of commits: let the
            # full-rate run fall out of them.
            time.sleep(6)
            half = drive(f"tcp://127.0.0.1:{port}", n, int(ours / 2 * 8), keys, server, rate=ours / 2)
            time.sleep(1.2)
            st = store_stats(tmp)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{n:>6} {raw:>15,.0f} {ours:>11,.0f} {ours / raw:>5.2f}x "
              f"{st.get('lag_p50_ms', float('nan')):>11.1f} ms {st.get('lag_p99_ms', float('nan')):>5.1f} ms"
              f"   (half rate achieved {half:,.0f} ev/s; detection skipped {st.get('detect_skipped', 0):,} "
              f"of {st.get('events', 0):,} stored)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
