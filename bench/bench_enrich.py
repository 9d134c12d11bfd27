"""What the process table's enrichment costs per event, by kind.

    .venv/bin/python bench/bench_enrich.py [--repeat 7]

A ProcessTable seeded from this machine's /proc (and its dpkg database)
enriches, on this thread, in a loop: an Open of this process (the commonest
kind), a SetId of it (the id history: ``SetId.held``), and a fork, exec and
exit of a new child (the package lookup, the session, the ids at exec).
Printed: ns per event (the cycle: per cycle of three), the best of the
repeats.  Compare two trees by running each (``git archive REV | tar -x``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import timeit

sys.path.insert(0, os.getcwd())  # the tree it is run from

import wire  # noqa: E402
from agent import ProcessTable  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    table = ProcessTable()
    table.seed()
    me, parent = os.getpid(), os.getppid()
    opened = wire.Open(pid=me, ppid=parent, uid=0, path="/etc/hosts")
    setid = wire.SetId(pid=me, ppid=parent, uid=0, euid=0, call="setresuid", old=0, new=0)
    table.enrich(opened)
    table.enrich(setid)
    children = itertools.count(4_000_000)

    def cycle() -> None:
        child = next(children)
        table.enrich(wire.Fork(pid=me, ppid=parent, child_pid=child))
        table.enrich(wire.Exec(pid=child, ppid=me, uid=0, filename="/usr/bin/true", exe="/usr/bin/true",
                               argv=["true"]))
        table.enrich(wire.Exit(pid=child, ppid=me))

    for name, fn, n in (("open", lambda: table.enrich(opened), 200_000),
                        ("setid", lambda: table.enrich(setid), 200_000),
                        ("fork+exec+exit", cycle, 20_000)):
        best = min(timeit.repeat(fn, number=n, repeat=args.repeat)) / n * 1e9
        print(f"{name:15} {best:8.0f} ns")


if __name__ == "__main__":
    main()
