"""What the container identity costs the relay's enrichment, per exec and per event.

    .venv/bin/python bench/bench_container_identity.py [--rounds N] [--events N]

Root, runc and busybox-static: a real runc container runs ``sleep`` with an
image annotation.  A ProcessTable (this machine's /proc) enriches batches of
256 events as the relay does (``enrich_all``, the hashing job run in the same
thread), for the container's process and for a host process:

* open: Open events, the commonest kind under load (the table's per-event path);
* exec: successful Exec events of the same file (the per-exec path: the
  image, command line and hash looked up again, and the container's identity).

Then the resolver alone (``kmod.Containers.of_pid``): a hit by cgroup id (an
event's, or the table's exec), by pid (/proc/PID/cgroup read, the container's
cgroup directory stat'd: what the fanotify guard pays when a rule selects
containers), and a first lookup (runc's state.json read and parsed).

Printed, in ns per event or lookup, the median of the rounds.  To compare with an
older version, run a copy of this file (and tests/containers.py) placed in
that version's tree (``git archive REV | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wire  # noqa: E402
from agent import ProcessTable  # noqa: E402
from tests.containers import Container  # noqa: E402


def batches(pid: int, cgroup: int, kind: str, n: int) -> list[list]:
    if kind == "open":
        make = lambda: wire.Open(pid=pid, ppid=1, cgroup=cgroup, path="/etc/hosts")  # noqa: E731
    else:
        make = lambda: wire.Exec(pid=pid, ppid=1, cgroup=cgroup, filename="/bin/sleep",  # noqa: E731
                                 exe="/bin/busybox", argv=["sleep", "60"])
    return [[make() for _ in range(256)] for _ in range(max(1, n // 256))]


def run(table: ProcessTable, work: list[list]) -> float:
    t = time.perf_counter_ns()
    for batch in work:
        job = table.enrich_all(batch)
        if job is not None:
            job.run()
            table.complete(job)
    return (time.perf_counter_ns() - t) / sum(len(b) for b in work)


def lookup(fn, n: int) -> float:
    t = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--events", type=int, default=51200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, \
            Container(Path(d), ["sleep", "600"], annotations={"org.opencontainers.image.ref.name": "bench/img:1"}) as c:
        table = ProcessTable()
        table.seed()
        root = table.cgroup_root
        mine = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        subjects = {"container": (c.pid, os.stat(f"{root}/{c.id}").st_ino),
                    "host": (os.getpid(), os.stat(root + mine).st_ino)}  # the cgroup ids the kernel reports
        first = wire.Open(pid=c.pid, cgroup=subjects["container"][1], path="/x")
        table.enrich(first)
        print(f"container event: container={first.container!r} "
              f"runtime={getattr(first, 'container_runtime', '-')!r} image={getattr(first, 'container_image', '-')!r}")
        for who, (pid, cgroup) in subjects.items():
            for kind in ("open", "exec"):
                work = batches(pid, cgroup, kind, args.events)
                times = [run(table, work) for _ in range(args.rounds)]
                print(f"{who:9} {kind:4}  {statistics.median(times):7.0f} ns/event  "
                      f"(min {min(times):.0f}, max {max(times):.0f})")
        try:
            from kmod import Containers
        except ImportError:
            return  # a version before the resolver
        pid, cgroup = subjects["container"]
        warm = Containers()
        for what, fn in (("by cgroup id", lambda: warm.of_pid(pid, cgroup)),
                         ("by pid", lambda: warm.of_pid(pid)),
                         ("first", lambda: Containers().of_pid(pid))):
            n = 200 if what == "first" else 20000
            times = [lookup(fn, n) for _ in range(args.rounds)]
            print(f"resolver  {what:12}  {statistics.median(times):7.0f} ns/lookup")


if __name__ == "__main__":
    main()
