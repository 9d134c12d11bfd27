"""A hive cluster of 1, 2 and 3 nodes against the single-node hive: events/s.

    .venv/bin/python bench/bench_cluster.py [--events N] [--agents N] [--nodes 1,2,3]

In one run, on this machine:

* single: one ``immune-node hive`` as today (no cluster), its own SQLite store;
* cluster k: a fresh three-server JetStream cluster (replicas 3) and k
  ``immune-node hive --role all`` nodes sharing one SQLite store file and
  one identity key; the agents are spread over the k nodes' routers.

The agents are processes (``bench_pipeline.agent_proc``: batches of 256
events, a window of 32 unacknowledged).  Two rates per case: *acked*, the
events over the time until every batch was acknowledged (single: stored;
cluster: held by JetStream), and *stored*, the events over the time until
the store holds every one (what matters end to end).  Ratios are against
the single node's stored rate in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from actors import KeyPair, query_status  # noqa: E402
from bench_pipeline import BATCH, agent_proc  # noqa: E402
from tests.natsd import NatsCluster  # noqa: E402
from tests.ports import free_port  # noqa: E402


def wait_ready(data: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a hive node exited with {proc.returncode}; see {data}/hive.log")
        try:
            if query_status(data / "run", timeout=0.5).ready:
                return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"a hive node did not start within {timeout}s; see {data}/hive.log")


def stored(db: Path) -> int:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return c.execute("SELECT coalesce(sum(events), 0) FROM streams").fetchone()[0]
    finally:
        c.close()


def enroll(db: Path, agents: int) -> list[tuple[bytes, bytes]]:
    from hive import Store

    s = Store(db)
    keys = []
    try:
        for i in range(agents):
            k = KeyPair.generate()
            s.enroll(f"bench-{i}", k.public.decode())
            keys.append((k.public, k.secret))
    finally:
        s.close()
    return keys


def drive(endpoints: list[str], keys: list, server: bytes, events: int, db: Path) -> tuple[float, float]:
    """(acked events/s, stored events/s)"""
    agents = len(keys)
    per_agent = max(1, events // agents // BATCH)
    total = per_agent * agents * BATCH
    ctx = mp.get_context("fork")
    ready = [ctx.Event() for _ in range(agents)]
    go = ctx.Event()
    procs = [ctx.Process(target=agent_proc, args=(endpoints[i % len(endpoints)], per_agent, f"s{i}-{time.time_ns()}",
                                                  keys[i], server, 0.0, ready[i], go)) for i in range(agents)]
    for p in procs:
        p.start()
    for r in ready:
        r.wait()
    before = stored(db)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    acked = time.perf_counter() - t0
    while stored(db) < before + total:
        time.sleep(0.05)
    done = time.perf_counter() - t0
    return total / acked, total / done


def node_config(folder: Path, store: Path, port: int, nats: list[str] | None, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (f'[node]\ndata = "{folder}"\nlog_level = "warning"\n[store]\nurl = "sqlite://{store}"\n'
            f'[hive]\nlisten = "tcp://127.0.0.1:{port}"\nenroll_listen = "tcp://127.0.0.1:{free_port()}"\n'
            f'[console]\nenabled = false\n')
    if nats:
        servers = ", ".join(f'"{u}"' for u in nats)
        text += f'[cluster]\nnats = [{servers}]\nnode = "{name}"\npartitions = 16\n'
    f = folder / "immune.toml"
    f.write_text(text)
    return f


def run_case(tmp: Path, nodes: int, agents: int, events: int, clustered: bool) -> tuple[float, float]:
    tmp.mkdir(parents=True)
    db = tmp / "shared.db"
    first = tmp / "node1"
    hive_keys = KeyPair.load_or_create(first / "keys", "hive")
    import fleet

    fleet.SigningKey.load_or_create(first / "keys")
    nats = NatsCluster(tmp / "nats").start() if clustered else None
    procs: list[tuple[Path, subprocess.Popen]] = []
    try:
        from hive import Store

        Store(db).close()
        keys = enroll(db, agents)
        endpoints = []
        for i in range(nodes):
            folder = tmp / f"node{i + 1}"
            if i:
                shutil.copytree(first / "keys", folder / "keys", dirs_exist_ok=True)
            port = free_port()
            cfg = node_config(folder, db, port, nats.urls if nats else None, f"node{i + 1}")
            log = open(folder / "hive.log", "ab")
            procs.append((folder, subprocess.Popen([sys.executable, "-m", "node.cli", "hive", "--config", str(cfg)],
                                                   cwd=ROOT, stdout=log, stderr=log)))
            endpoints.append(f"tcp://127.0.0.1:{port}")
        for folder, p in procs:
            wait_ready(folder, p)
        time.sleep(2 if clustered else 0.5)  # leases taken
        drive(endpoints, keys, hive_keys.public, min(events, 50_000), db)  # warm-up
        return drive(endpoints, keys, hive_keys.public, events, db)
    finally:
        for _, p in procs:
            p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if nats:
            nats.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000, help="events per case")
    ap.add_argument("--agents", type=int, default=6)
    ap.add_argument("--nodes", default="1,2,3")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        single_acked, single = run_case(base / "single", 1, args.agents, args.events, clustered=False)
        print(f"{'case':<12} {'acked ev/s':>11} {'stored ev/s':>12} {'vs single':>10}")
        print(f"{'single':<12} {single_acked:>11,.0f} {single:>12,.0f} {1:>9.2f}x")
        for k in (int(x) for x in args.nodes.split(",")):
            acked, st = run_case(base / f"cluster{k}", k, args.agents, args.events, clustered=True)
            print(f"{f'cluster {k}':<12} {acked:>11,.0f} {st:>12,.0f} {st / single:>9.2f}x", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"({args.agents} agents, {args.events:,} events per case, {os.cpu_count()} cores; "
          "three NATS servers with every cluster case)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
