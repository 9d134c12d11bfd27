"""The cost of connect rules that select workloads (``match.cgroup``), on
the connect hot path, in one run (root).

    .venv/bin/python bench/bench_workloads.py [--seconds S] [--rounds N]

Two loops, pinned to CPU 1, in a cgroup made for it: bench_sensor.py's
connect loop (TCP connect+accept+close on loopback, an event each), and
sendto: UDP datagrams to a loopback socket that never reads them (each
meets the sendmsg4 program, the same lookups as connect, and sends no
event when allowed: the lookups are most of what the sensor adds).  Each
round runs each loop:

* without the sensor;
* default:  the sensor with the default policy (no rule selects a workload:
            the kernel looks up no tag);
* tagged:   the default policy plus a connect rule selecting the loop's
            cgroup (for an address it never connects to): the kernel finds
            the cgroup's tag, then looks up the tag's entries;
* untagged: the same policy, the loop in another cgroup (the tag lookup
            misses: what every other process on the machine pays).

The three sensor settings take turns going first in each round.

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
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sensor import LOOP_CPU, SENSOR_CPU, Drainer, compile_loops, loop_result  # noqa: E402
from kmod import DEFAULT_POLICY, LinuxSensor, Policy  # noqa: E402
from kmod._system import cgroup2_root  # noqa: E402


SENDTO_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = atof(argv[2]);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof(a);
    int r = socket(AF_INET, SOCK_DGRAM, 0), s = socket(AF_INET, SOCK_DGRAM, 0);
    bind(r, (void *)&a, sizeof(a));
    getsockname(r, (void *)&a, &len);
    long n = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        for (int i = 0; i < 1000; i++, n++)
            sendto(s, "x", 1, MSG_DONTWAIT, (void *)&a, sizeof(a));  /* a full buffer drops it: fine */
        t = now();
    }
    printf("%ld %f\n", n, t - start);
    return 0;
}
"""


def run_in(exe: str, seconds: float, cgroup, mode: str = "connect") -> float:
    def place():
        os.sched_setaffinity(0, {LOOP_CPU})
        with open(cgroup / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    p = subprocess.Popen([exe[mode], mode, str(seconds)], stdout=subprocess.PIPE, text=True, preexec_fn=place)
    n, elapsed = loop_result(p)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=9)
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
    loops = ("connect", "sendto")
    runs: dict[tuple[str, str], list[float]] = {(m, k): [] for m in loops
                                                for k in ("without", "default", "tagged", "untagged")}
    try:
        cache = os.path.expanduser("~/.cache")
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            sendto = os.path.join(tmp, "sendto")
            Path(sendto + ".c").write_text(SENDTO_C)
            subprocess.run(["clang", "-O2", "-o", sendto, sendto + ".c"], check=True)
            exe = {"connect": compile_loops(tmp), "sendto": sendto}

            def without():
                for m in loops:
                    runs[m, "without"].append(run_in(exe, args.seconds, tagged_cg, m))

            def default():
                with LinuxSensor() as sensor, Drainer(sensor):
                    for m in loops:
                        runs[m, "default"].append(run_in(exe, args.seconds, tagged_cg, m))

            def tagged():
                with LinuxSensor(selected) as sensor, Drainer(sensor):
                    assert sensor.workloads().cgroups == 1, sensor.workloads()
                    for m in loops:
                        runs[m, "tagged"].append(run_in(exe, args.seconds, tagged_cg, m))
                        runs[m, "untagged"].append(run_in(exe, args.seconds, other_cg, m))

            steps = [without, default, tagged]
            for i in range(args.rounds):  # each first in turn: a drift in the machine's load hits all alike
                for step in steps[i % 3:] + steps[:i % 3]:
                    step()
    finally:
        for p in (tagged_cg, other_cg, root):
            p.rmdir()
    print(f"loops on CPU {LOOP_CPU}, sensor on CPU {SENSOR_CPU}, {args.rounds} rounds of "
          f"{args.seconds:g} s; medians, ratios = median of the rounds' ratios")
    print(f"{'loop':8} {'':10} {'calls/s':>12} {'/without':>9} {'/default':>9}")
    for (m, label), rates in runs.items():
        to_without = statistics.median(r / w for r, w in zip(rates, runs[m, "without"]))
        to_default = statistics.median(r / d for r, d in zip(rates, runs[m, "default"]))
        print(f"{m:8} {label:10} {statistics.median(rates):12.0f} {to_without:8.3f}x {to_default:8.3f}x")


if __name__ == "__main__":
    main()
