"""What an open block rule costs the other files of its folder (root):

    .venv/bin/python bench/bench_open_guard.py [--seconds S] [--rounds R]

An open block rule on one file marks the file and its folder's children
(kmod/_policy.py ``open_marks``): a file replaced by a rename is a new
inode, which only the folder's mark sees.  So every other file of that
folder is asked about at its first open, and then cached on its inode until
it changes; a file with several names (hard links) is never cached, since
the cache is on the inode and another of its names may be blocked.

A child process opens and closes one file in a loop for ``--seconds``:

* baseline: a file in a folder no rule names (no mark);
* cached: another file of the guarded file's folder;
* linked: a file of that folder with a second name (asked every time).

Each round runs the three, in that order, with the sensor (this process)
guarding; the ratios are the median of the rounds' ratios to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOOP = """
import os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(200):
        os.close(os.open(path, os.O_RDONLY))
    n += 200
print(n / seconds)
"""


def rate(path: Path, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-S", "-c", LOOP, str(path), str(seconds)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_open_guard: needs root (a fanotify group and BPF programs)", file=sys.stderr)
        return 1
    from kmod import LinuxSensor, Policy

    with tempfile.TemporaryDirectory(prefix="bench-open-guard-") as d:
        root = Path(d)
        (root / "plain").mkdir()
        (root / "guarded").mkdir()
        baseline, cached, linked = root / "plain" / "file", root / "guarded" / "file", root / "guarded" / "linked"
        for f in (baseline, cached, linked, root / "guarded" / "secret"):
            f.write_text("x")
        os.link(linked, root / "plain" / "linked-alias")
        policy = Policy.parse(f'[[rule]]\nname = "secret"\nhook = "open"\naction = "block"\n'
                              f'match.path = "{root / "guarded" / "secret"}"\n')
        rows: dict[str, list[float]] = {"baseline": [], "cached": [], "linked": []}
        with LinuxSensor(policy) as sensor:
            for _ in range(args.rounds):
                for name, path in (("baseline", baseline), ("cached", cached), ("linked", linked)):
                    rows[name].append(rate(path, args.seconds))
                sensor.drain()
            counts = sensor.statistics().fanotify
    base = rows["baseline"]
    print(f"opens/s, median of {args.rounds} rounds of {args.seconds:g} s (a child's open+close loop):")
    for name, got in rows.items():
        ratio = statistics.median(g / b for g, b in zip(got, base))
        print(f"  {name:9} {statistics.median(got):>10,.0f}/s  {ratio:.3f}x baseline")
    print(f"guard: {counts['allowed']} asked and allowed, {counts['cached']} cached, "
          f"{counts['linked']} not cached for a second name")
    return 0


if __name__ == "__main__":
    sys.exit(main())
