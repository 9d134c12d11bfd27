"""The cost of connect rules that select workloads (``match.cgroup``), on
the connect hot path, in one run (root).

    .venv/bin/python bench/bench_workloads.py [--seconds S] [--rounds N]

bench_sensor.py's connect loop (TCP connect+accept+close on loopback),
pinned to CPU 1, in a cgroup made for it.  Each round runs it:

* without the sensor;
* default:  the sensor with the default policy (no rule selects a workload:
            the kernel looks up no tag);
* tagged:   the default policy plus a connect rule selecting the loop's
            cgroup (for an address it never connects to): the kernel finds
            the cgroup's tag, then looks up the tag's entries;
* untagged: the same policy, the loop in another cgroup (the tag lookup
            misses: what every other process on the machine pays).

Printed: each rate and its ratio to "without" (the median of the rounds'
ratios), and tagged/default, untagged/default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sensor import LOOP_CPU, SENSOR_CPU, Drainer, compile_loops, loop_result  # noqa: E402
from kmod import DEFAULT_POLICY, LinuxSensor, Policy  # noqa: E402
from kmod._system import cgroup2_root  # noqa: E402


def run_in(exe: str, seconds: float, cgroup) -> float:
    def place():
        os.sched_setaffinity(0, {LOOP_CPU})
        with open(cgroup / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    p = subprocess.Popen([exe, "connect", str(seconds)], stdout=subprocess.PIPE, text=True, preexec_fn=place)
    n, elapsed = loop_result(p)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_workloads: needs root")
    os.sched_setaffinity(0, {SENSOR_CPU})
    root = cgroup2_root() / f"immune-bench-wl-{uuid.uuid4().hex[:6]}"
    tagged_cg, other_cg = root / "model.service", root / "other.service"
    for p in (root, tagged_cg, other_cg):
        p.mkdir()
    selected = Policy.parse(DEFAULT_POLICY.read_text() + f'''
[[rule]]
name = "bench-workload"
hook = "connect"
action = "block"
match.address = "192.0.2.0/24"
match.cgroup = "/{root.name}/model.service"
''')
    runs: dict[str, list[float]] = {k: [] for k in ("without", "default", "tagged", "untagged")}
    try:
        cache = os.path.expanduser("~/.cache")
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            exe = compile_loops(tmp)
            for _ in range(args.rounds):
                runs["without"].append(run_in(exe, args.seconds, tagged_cg))
                with LinuxSensor() as sensor, Drainer(sensor):
                    runs["default"].append(run_in(exe, args.seconds, tagged_cg))
                with LinuxSensor(selected) as sensor, Drainer(sensor):
                    assert sensor.workloads().cgroups == 1, sensor.workloads()
                    runs["tagged"].append(run_in(exe, args.seconds, tagged_cg))
                    runs["untagged"].append(run_in(exe, args.seconds, other_cg))
    finally:
        for p in (tagged_cg, other_cg, root):
            p.rmdir()
    print(f"connect loop on CPU {LOOP_CPU}, sensor on CPU {SENSOR_CPU}, {args.rounds} rounds of "
          f"{args.seconds:g} s; medians, ratios = median of the rounds' ratios")
    print(f"{'':10} {'connects/s':>12} {'/without':>9} {'/default':>9}")
    for label, rates in runs.items():
        to_without = statistics.median(r / w for r, w in zip(rates, runs["without"]))
        to_default = statistics.median(r / d for r, d in zip(rates, runs["default"]))
        print(f"{label:10} {statistics.median(rates):12.0f} {to_without:8.3f}x {to_default:8.3f}x")


if __name__ == "__main__":
    main()
