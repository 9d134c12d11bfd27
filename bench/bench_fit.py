"""What fitting events into the wire's bounds costs the relay's intake.

    .venv/bin/python bench/bench_fit.py [--rounds N] [--batch N]

The relay's intake of one sensor batch as agent/_relay.py does it, the disk
left out: decode the frame the kmod reader sent (the contract's decoder),
enrich the events (a ProcessTable over this machine's /proc, hashing done
in the same thread), fit them (``wire.fit_all(events, ENRICHED)``), append
them to a spool as agent/_relay.py does (``Spool.pack`` into batches of at
most 256 events and ``wire.MAX_BATCH_BYTES``, then ``append``: encoding and
CRC; the fsync is not timed).  Printed, in
ns per event, the median of the rounds: intake without the fit, the fit,
and their ratio; and for comparison ``wire.fit_all`` of every field.

Batches:

* open: Open events of this process, the commonest kind under load;
* exec: Exec events as bench_spool.py's, by this process;
* hostile: Open events of a real process whose executable's name is not
  UTF-8 and whose command line is 100 KB: every event is rewritten (the
  name's bytes replaced, the 8192 characters the table keeps fit already);
* long: Open events of a real process whose command line is 16 KiB of ASCII,
  kept whole (a table keeping 16384 characters): about 33 KiB per event, so
  a batch of 256 is split by bytes.

Large batches make the figures depend on glibc's allocation history (its
mmap threshold follows the largest block freed); to compare two versions,
pin it: MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec  # noqa: E402

import wire  # noqa: E402
from actors import Codec  # noqa: E402
from agent import ProcessTable, Spool  # noqa: E402
from agent._proctable import ENRICHED  # noqa: E402

CODEC = Codec(wire.AgentMessage)


def frame(events: list) -> bytes:
    return CODEC.encode(wire.EventBatch(seq=1, events=events))


def batches(size: int, hostile_pid: int, long_pid: int) -> dict[str, bytes]:
    me, parent = os.getpid(), os.getppid()
    exe = os.path.realpath(sys.executable)
    return {
        "open": frame([wire.Open(time=1, pid=me, tid=me, ppid=parent, uid=0, comm="python3", path=f"/etc/f{i}",
                                 verdict="audit", rule="etc-read") for i in range(size)]),
        "exec": frame([wire.Exec(time=1, pid=me, tid=me, ppid=parent, uid=0, comm="curl", cgroup=4242,
                                 filename=exe, exe=exe, argv=["curl", "-fsSL", "https://example.org/install.sh"],
                                 cwd="/home/dev") for _ in range(size)]),
        "hostile": frame([wire.Open(time=1, pid=hostile_pid, tid=hostile_pid, ppid=me, path=f"/etc/f{i}")
                          for i in range(size)]),
        "long": frame([wire.Open(time=1, pid=long_pid, tid=long_pid, ppid=me, path=f"/etc/f{i}")
                       for i in range(size)]),
    }


def run(data: bytes, table: ProcessTable, spool: Spool, rounds: int, batch: int) -> tuple[float, float, float]:
    """Median ns/event of (intake without the fit, the relay's fit, the fit of every field)."""
    plain, fitted, full = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        events = CODEC.decode(data).events
        table.enrich_all(events)  # the few files to hash are hashed by the first round, then cached
        t1 = time.perf_counter()
        copy = [msgspec.structs.replace(e) for e in events]
        t2 = time.perf_counter()
        wire.fit_all(events, ENRICHED)
        t3 = time.perf_counter()
        for packed in spool.pack(events, batch):
            spool.append(packed)
        t4 = time.perf_counter()
        wire.fit_all(copy)
        t5 = time.perf_counter()
        spool.sync()
        n = len(events)
        plain.append((t1 - t0 + t4 - t3) / n)
        fitted.append((t3 - t2) / n)
        full.append((t5 - t4) / n)
    return tuple(statistics.median(x) * 1e9 for x in (plain, fitted, full))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200, help="batches per kind (default 200)")
    ap.add_argument("--batch", type=int, default=256, help="events per batch (default 256, the relay's)")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-fit-", dir="/var/lib" if os.access("/var/lib", os.W_OK) else None)
    exe = os.fsencode(folder) + b"/sh-\xff\xfe"
    shutil.copy("/bin/sh", exe)
    hostile = subprocess.Popen([exe, "-c", "read x", "name", b"\xfe" * 100_000], stdin=subprocess.PIPE)
    long = subprocess.Popen(["/bin/sh", "-c", "read x", "name", "x" * (16 << 10)], stdin=subprocess.PIPE)
    spool = Spool(os.path.join(folder, "spool"), max_bytes=1 << 30)
    try:
        time.sleep(0.1)  # the shell has started
        table, whole = ProcessTable(), ProcessTable(cmdline_limit=wire.MAX_CMDLINE)
        table.seed()
        whole.seed()
        print(f"{args.batch} events per batch, median of {args.rounds} batches, ns per event")
        print(f"{'batch':>8} {'intake':>8} {'+ fit':>8} {'ratio':>6} {'fit every field':>16}")
        for kind, data in batches(args.batch, hostile.pid, long.pid).items():
            t = whole if kind == "long" else table
            run(data, t, spool, 5, args.batch)  # warm the table, the plans and the caches
            plain, fitted, full = run(data, t, spool, args.rounds, args.batch)
            print(f"{kind:>8} {plain:>8.0f} {fitted:>8.0f} {(plain + fitted) / plain:>6.3f} {full:>16.0f}",
                  flush=True)
    finally:
        for child in (hostile, long):
            child.kill()
            child.wait()
        spool.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
