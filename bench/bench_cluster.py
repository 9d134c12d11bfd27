"""A hive cluster of 1, 2 and 3 nodes against the single-node hive: events/s.

    .venv/bin/python bench/bench_cluster.py [--events N] [--agents N] [--nodes 1,2,3] [--store sqlite|pg]

In one run, on this machine:

* single: one ``immune-node hive`` as today (no cluster), its own SQLite store;
* cluster k: a fresh three-server JetStream cluster (replicas 3) and k
  ``immune-node hive --role all`` nodes sharing one store and one identity
  key; the agents are spread over the k nodes' routers.  The store is a
  SQLite file, or with ``--store pg`` a database (a schema of its own per
  case) on one private PostgreSQL 15 server started for the run with fsync
  and synchronous commits on, as in production.

Per case it also reads from /proc the CPU seconds the servers spent while
the events went through (hive nodes, nats-servers, PostgreSQL; the agents
apart): *ev/cpu-s* is events per CPU second of them all, the rate one fully
busy core would carry with the work spread as it was.

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

from _proc import cpu_seconds, postmaster  # noqa: E402
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


def stored(db: Path | str) -> int:
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db, autocommit=True) as c:
            return int(c.execute("SELECT coalesce(sum(events), 0) FROM streams").fetchone()[0])
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return c.execute("SELECT coalesce(sum(events), 0) FROM streams").fetchone()[0]
    finally:
        c.close()


def enroll(db: Path | str, agents: int) -> list[tuple[bytes, bytes]]:
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


def drive(endpoints: list[str], keys: list, server: bytes, events: int, db: Path | str,
          servers: dict[str, list[int]] | None = None) -> tuple[float, float, dict[str, float]]:
    """(acked events/s, stored events/s, CPU seconds of each group of ``servers``' trees)"""
    servers = servers or {}
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
    cpu0 = {k: cpu_seconds(v) for k, v in servers.items()}
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    acked = time.perf_counter() - t0
    while stored(db) < before + total:
        time.sleep(0.05)
    done = time.perf_counter() - t0
    return total / acked, total / done, {k: cpu_seconds(v) - cpu0[k] for k, v in servers.items()}


def node_config(folder: Path, store: Path | str, port: int, nats: list[str] | None, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    url = store if isinstance(store, str) else f"sqlite://{store}"
    text = (f'[node]\ndata = "{folder}"\nlog_level = "warning"\n[store]\nurl = "{url}"\n'
            f'[hive]\nlisten = "tcp://127.0.0.1:{port}"\nenroll_listen = "tcp://127.0.0.1:{free_port()}"\n'
            f'[console]\nenabled = false\n')
    if nats:
        servers = ", ".join(f'"{u}"' for u in nats)
        text += f'[cluster]\nnats = [{servers}]\nnode = "{name}"\npartitions = 16\n'
    f = folder / "immune.toml"
    f.write_text(text)
    return f


def run_case(tmp: Path, nodes: int, agents: int, events: int, clustered: bool,
             pg: object | None = None) -> tuple[float, float, float]:
    """(acked ev/s, stored ev/s, events per CPU second of the servers); ``pg``: a tests.pgserver.PgServer."""
    tmp.mkdir(parents=True)
    db: Path | str = pg.fresh_schema() if pg is not None else tmp / "shared.db"
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
        servers = {"hive": [p.pid for _, p in procs]}
        if nats:
            servers["nats"] = [s.proc.pid for s in nats.servers]
        if pg is not None:
            servers["pg"] = [postmaster(pg.data)]
        acked, rate, cpu = drive(endpoints, keys, hive_keys.public, events, db, servers)
        total = max(1, events // agents // BATCH) * agents * BATCH
        wall = total / rate
        return acked, rate, {"all": total / sum(cpu.values()), **{k: v / wall for k, v in cpu.items()}}
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
    ap.add_argument("--store", choices=("sqlite", "pg"), default="sqlite",
                    help="the clustered nodes' shared store (the single node's is SQLite either way)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    pg = None
    if args.store == "pg":
        from tests import pgserver

        if why := pgserver.missing():
            sys.exit(f"bench_cluster: {why}")
        pg = pgserver.start(durable=True)
    load = os.getloadavg()
    try:
        def cores(cpu: dict[str, float]) -> str:
            return " ".join(f"{k} {cpu.get(k, 0):.2f}" for k in ("hive", "nats", "pg"))

        single_acked, single, single_cpu = run_case(base / "single", 1, args.agents, args.events, clustered=False)
        print(f"{'case':<16} {'acked ev/s':>11} {'stored ev/s':>12} {'vs single':>10} {'ev/cpu-s':>9}  cores busy")
        print(f"{'single sqlite':<16} {single_acked:>11,.0f} {single:>12,.0f} {1:>9.2f}x {single_cpu['all']:>9,.0f}  "
              f"{cores(single_cpu)}")
        for k in (int(x) for x in args.nodes.split(",")):
            acked, st, cpu = run_case(base / f"cluster{k}", k, args.agents, args.events, clustered=True, pg=pg)
            print(f"{f'cluster {k} {args.store}':<16} {acked:>11,.0f} {st:>12,.0f} {st / single:>9.2f}x "
                  f"{cpu['all']:>9,.0f}  {cores(cpu)}", flush=True)
    finally:
        if pg is not None:
            from tests import pgserver

            pgserver.stop(pg)
        shutil.rmtree(base, ignore_errors=True)
    print(f"({args.agents} agents, {args.events:,} events per case, {os.cpu_count()} cores; three NATS servers "
          f"with every cluster case; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
