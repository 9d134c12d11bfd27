"""Events/s into the hive's store on PostgreSQL, against the SQLite store as
the baseline measured in the same run.

    .venv/bin/python bench/bench_pg.py [--events N] [--batch N] [--commit N] [--writers 1,2,3]

The events are what agents send (execs with a command line, 256 to a
batch, a stream per agent), written through ``Store.ingest`` in group
commits of ``--commit`` batches, as the store actor does: SQLite in WAL
mode with ``synchronous=FULL`` in a temporary folder, and a private
PostgreSQL 15 server (fsync and synchronous commits on) started for the
run on loopback.  ``--writers`` runs that many writer processes at once
against the one PostgreSQL database, each its own hive node with its own
agents (the figure is the sum).  Each writer's batches are encoded before
the clock starts; the clock covers ``ingest`` only (encoding each event's
body, the transaction, COPY or INSERT, the commit).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wire  # noqa: E402
from hive import Ingest, Store  # noqa: E402


def batches(node: int, events: int, size: int) -> list[Ingest]:
    now = time.time_ns()
    out, seqs = [], {}
    for i in range(events // size):
        agent = f"n{node}-agent{i % 16}"
        seqs[agent] = seqs.get(agent, 0) + 1
        out.append(Ingest(agent=agent, stream="s", seq=seqs[agent], events=[
            wire.Exec(time=now + i * size + j, pid=1000 + j, ppid=1, uid=1000, filename="/usr/bin/curl",
                      argv=["curl", "-s", f"https://example.org/{i}/{j}"], cwd="/home/app", user="app")
            for j in range(size)]))
    return out


def write(location: str, node: int, events: int, size: int, commit: int, start=None) -> tuple[int, float]:
    work = batches(node, events, size)
    store = Store(location, checkpoint_by_hand=False)
    try:
        if start is not None:
            start.wait()
        t0 = time.perf_counter()
        stored = 0
        for i in range(0, len(work), commit):
            done = store.ingest(work[i:i + commit])
            stored += sum(len(b.events) for b in done.stored)
        return stored, time.perf_counter() - t0
    finally:
        store.close()


def _worker(location, node, events, size, commit, start, results):
    results.put(write(location, node, events, size, commit, start))


def parallel(location: str, writers: int, events: int, size: int, commit: int) -> float:
    """Events/s of ``writers`` processes writing at once (total events over the slowest's time)."""
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(location, 100 * writers + n, events, size, commit, start, results))
             for n in range(writers)]
    for p in procs:
        p.start()
    done = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    assert sum(n for n, _ in done) == writers * (events // size) * size, "events lost"
    return sum(n for n, _ in done) / max(t for _, t in done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000, help="events per writer")
    ap.add_argument("--batch", type=int, default=256, help="events per agent batch")
    ap.add_argument("--commit", type=int, default=16, help="batches per group commit")
    ap.add_argument("--writers", default="1,2,3", help="numbers of PostgreSQL writer processes to run")
    args = ap.parse_args()
    from tests import pgserver

    why = pgserver.missing()
    if why:
        sys.exit(f"bench_pg: {why}")
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = pgserver.start(durable=True)
    try:
        n, t = write(str(folder / "hive.db"), 0, args.events, args.batch, args.commit)
        sqlite = n / t
        print(f"sqlite (synchronous=FULL), 1 writer: {sqlite:,.0f} events/s ({n:,} in {t:.2f} s)")
        for writers in [int(w) for w in args.writers.split(",")]:
            url = server.fresh_schema()
            rate = parallel(url, writers, args.events, args.batch, args.commit)
            store = Store(url)
            try:  # the whole schema: events, their indexes, streams
                per_event = store.backend.size(store) / store.count_events()
            finally:
                store.close()
            print(f"postgresql, {writers} writer{'s' if writers > 1 else ''}: {rate:,.0f} events/s "
                  f"({rate / writers:,.0f} per writer), {rate / sqlite:.2f}x sqlite; "
                  f"{per_event:,.0f} bytes/event stored, indexes included")
    finally:
        pgserver.stop(server)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
