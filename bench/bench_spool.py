"""Spool append+sync rate against raw write+fdatasync of the same bytes, in one run.

    .venv/bin/python bench/bench_spool.py [--seconds S] [--dir DIR]

For each batch size (events per batch) two cases:

* spool: ``Spool.pack(events)`` and ``Spool.append`` then ``Spool.sync()``
  for every batch (encoding, CRC, index and one fdatasync per batch; a batch
  of 4096 is above ``wire.MAX_BATCH_BYTES`` and is spooled as 4 records);
* grouped: 16 appends per ``sync()``, the relay's group commit under load;
* off-thread: the same, synced as the relay does it: appends on a trio
  thread, the write and fdatasync on a worker thread (``begin_sync``,
  ``SyncJob.run`` in ``trio.to_thread``, ``end_sync``), compared with grouped;

and the baseline: ``os.write`` of the very bytes the spool writes for a batch
(headers and encoded events, prepared before timing) and ``os.fdatasync``, on a
file in the same folder.  Printed: events/s of each and spool/baseline ratio
(grouped is compared with the same baseline, so it can exceed 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

import wire  # noqa: E402
from agent import Spool  # noqa: E402

SIZES = (1, 64, 256, 4096)
GROUP = 16


def make_events(n: int) -> list:
    """Exec events as the relay spools them: with their enrichment."""
    return [
        wire.Exec(time=1_700_000_000_000_000_000 + i, pid=4000 + i, tid=4000 + i, ppid=1, uid=1000, comm="curl",
                  cgroup=4242, filename="/usr/bin/curl", exe="/usr/bin/curl",
                  argv=["curl", "-fsSL", "https://example.org/install.sh"], cwd="/home/dev",
                  image="/usr/bin/curl", cmdline="curl -fsSL https://example.org/install.sh",
                  parent_image="/usr/bin/bash", parent_cmdline="-bash", user="dev",
                  sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                  unit="session-3.scope")
        for i in range(n)
    ]


def append(s: Spool, events: list) -> None:
    """As the relay spools a burst."""
    for packed in s.pack(events):
        s.append(packed)


def spool_rate(folder: str, events: list, seconds: float, group: int) -> float:
    path = tempfile.mkdtemp(dir=folder)
    s = Spool(path, max_bytes=64 << 30)
    try:
        n = 0
        t0 = time.perf_counter()
        while True:
            for _ in range(group):
                append(s, events)
            s.sync()
            n += group * len(events)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return n / elapsed
    finally:
        s.close()
        shutil.rmtree(path)


def off_thread_rate(folder: str, events: list, seconds: float, group: int) -> float:
    path = tempfile.mkdtemp(dir=folder)
    s = Spool(path, max_bytes=64 << 30)
    disk = trio.CapacityLimiter(1)

    async def run() -> float:
        n = 0
        t0 = time.perf_counter()
        while True:
            for _ in range(group):
                append(s, events)
            job = s.begin_sync()
            try:
                await trio.to_thread.run_sync(job.run, limiter=disk)
            finally:
                s.end_sync(job)
            n += group * len(events)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return n / elapsed

    try:
        return trio.run(run)
    finally:
        s.close()
        shutil.rmtree(path)


def raw_rate(folder: str, events: list, seconds: float) -> float:
    # The exact record the spool writes: take it from a spool's segment file.
    probe = tempfile.mkdtemp(dir=folder)
    with Spool(probe) as s:
        append(s, events)
        s.sync()
        (seg,) = [f for f in os.listdir(probe) if f.endswith(".seg")]
        with open(os.path.join(probe, seg), "rb") as f:
            record = f.read()
    shutil.rmtree(probe)
    path = os.path.join(folder, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        n = 0
        t0 = time.perf_counter()
        while True:
            os.write(fd, record)
            os.fdatasync(fd)
            n += len(events)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return n / elapsed
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="per case (default 2)")
    ap.add_argument("--dir", default=None, help="folder to write in (default: the temp folder)")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir)
    try:
        print(f"folder {folder}, {args.seconds:g} s per case, one fdatasync per batch (grouped: per {GROUP})")
        print(f"{'batch':>6} {'raw ev/s':>12} {'spool ev/s':>12} {'ratio':>6} {'grouped ev/s':>13} {'ratio':>6} "
              f"{'off-thread ev/s':>16} {'/grouped':>8}")
        for size in SIZES:
            events = make_events(size)
            raw = raw_rate(folder, events, args.seconds)
            one = spool_rate(folder, events, args.seconds, 1)
            grouped = spool_rate(folder, events, args.seconds, GROUP)
            off = off_thread_rate(folder, events, args.seconds, GROUP)
            print(f"{size:>6} {raw:>12,.0f} {one:>12,.0f} {one / raw:>6.2f} {grouped:>13,.0f} {grouped / raw:>6.2f} "
                  f"{off:>16,.0f} {off / grouped:>8.2f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
