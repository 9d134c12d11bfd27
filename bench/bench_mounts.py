"""The exec guard in containers (issue 11), in one run (root; runc and
busybox-static for the container part):

    .venv/bin/python bench/bench_mounts.py [--mounts N] [--seconds S] [--rounds R]

* mount to marked: N tmpfs mounts, each in a new mount namespace (unshare,
  private propagation, as a container runtime does), the sensor (default
  policy) in a process of its own on CPU 0.  "Marked" is seen from outside:
  the sensor's fanotify group lists the new superblock in its fdinfo
  (polled), timed from the mount call's return (CLOCK_BOOTTIME both).  Also
  the guard's own account: from the kernel's news of the mount to the
  namespace's scan done.
* exec rate inside a runc container: fork+exec of /bin/true (busybox) by
  bench_sensor.py's loop program (linked static) inside it, without and with
  the sensor; the same loop on the host beside it.
* the namespace ids in every record header (mntns, pidns, vpid): the exec
  and connect loops of bench_sensor.py with the sensor filling them and not
  (LinuxSensor(namespaces=False)), against no sensor; and the run time per
  run of the BPF programs that fill a header for them (BPF_ENABLE_STATS),
  which the rest of the machine's calls do not skew.

Loops run on CPU 1; each round runs each case without, then with; ratios are
the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_sensor import LOOP_CPU, LOOPS_C, SENSOR_CPU, compile_loops, count_loop  # noqa: E402

CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x20000, 0x4000, 0x40000


# ---- the sensor, in a process of its own ------------------------------------------------


def serve_sensor(namespaces: bool) -> None:
    """--serve-sensor: start a sensor (default policy), drain it as the kmod
    reader would, say where it is, and on stdin's end say what the guard saw."""
    from kmod import LinuxSensor

    os.sched_setaffinity(0, {SENSOR_CPU})
    with LinuxSensor(namespaces=namespaces) as sensor:
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                sensor.wait(0.1)
                sensor.drain(65536)

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        print(json.dumps({"programs": sensor.attachments()["programs"]}), flush=True)
        sys.stdin.read()
        stop.set()
        drainer.join()
        print(json.dumps({"latencies": sensor.guard.mark_latencies(),
                          "stats": sensor.statistics().fanotify}), flush=True)


class Sensor:
    """The sensor process, for a ``with`` block."""

    def __init__(self, namespaces: bool = True):
        self._args = [sys.executable, os.path.abspath(__file__), "--serve-sensor"] + \
            ([] if namespaces else ["--no-namespaces"])
        self.report: dict = {}

    def __enter__(self) -> Sensor:
        self.proc = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.programs = json.loads(self.proc.stdout.readline())["programs"]
        self.fanotify = next(f"/proc/{self.proc.pid}/fdinfo/{fd}"
                             for fd in os.listdir(f"/proc/{self.proc.pid}/fd")
                             if os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") == "anon_inode:[fanotify]")
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self.proc.communicate(timeout=60)
        self.report = json.loads(out.splitlines()[-1])


# ---- mount to marked ---------------------------------------------------------------------


def boottime() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def mount_in_new_namespace(where: str) -> tuple[int, int, tuple[int, int]]:
    """A child that mounts a tmpfs on ``where`` in a new mount namespace
    and holds it: (the superblock's device, the mount's return time, (its
    pid, the pipe that holds it))."""
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(hold_w)
            if libc.unshare(CLONE_NEWNS) or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
                os._exit(1)
            if libc.mount(b"tmpfs", where.encode(), b"tmpfs", 0, None):
                os._exit(2)
            mounted = boottime()
            os.write(w, struct.pack("QQ", os.stat(where).st_dev, mounted))
            os.read(hold_r, 1)  # until the parent lets go
        finally:
            os._exit(0)
    os.close(w)
    os.close(hold_r)
    data = os.read(r, 16)
    os.close(r)
    if len(data) != 16:
        raise RuntimeError("the mounting child failed")
    dev, mounted = struct.unpack("QQ", data)
    return dev, mounted, (pid, hold_w)


def marked_at(fdinfo: str, dev: int, deadline: float) -> int | None:
    """When the group lists ``dev`` (kernel encoding) as a filesystem mark."""
    needle = f"fanotify sdev:{os.major(dev) << 20 | os.minor(dev):x} "
    while time.monotonic() < deadline:
        with open(fdinfo) as f:
            if needle in f.read():
                return boottime()
    return None


def mount_latency(n: int, tmp: str) -> None:
    where = os.path.join(tmp, "mnt")
    os.makedirs(where, exist_ok=True)
    outside, held, missed = [], [], 0
    with Sensor() as sensor:
        try:
            for _ in range(n):
                dev, mounted, hold = mount_in_new_namespace(where)
                held.append(hold)
                seen = marked_at(sensor.fanotify, dev, time.monotonic() + 2)
                if seen is None:
                    missed += 1
                else:
                    outside.append(seen - mounted)
        finally:
            for pid, hold_w in held:  # a byte: later children hold copies of this pipe
                os.write(hold_w, b"x")
                os.close(hold_w)
                os.waitpid(pid, 0)
    own = sensor.report["latencies"]
    stats = sensor.report["stats"]
    print(f"mount to marked: {n} tmpfs mounts, each in a new mount namespace (held until the end)")
    print(f"  seen outside (fdinfo lists it)   {pct_text(outside)}"
          + (f"  ({missed} never marked in 2 s)" if missed else ""))
    print(f"  the guard's own (news to scan)   {pct_text(own)}")
    print(f"  mount news {stats['mount_news']}, coalesced {stats['coalesced']}, "
          f"namespace scans {stats['scans']}, filesystems marked {stats['filesystems']}")


def pct_text(ns: list[int]) -> str:
    if not ns:
        return "none"
    s = sorted(ns)

    def at(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] / 1000

    return f"p50 {at(0.5):7.0f} us  p99 {at(0.99):7.0f} us  max {s[-1] / 1000:7.0f} us"


# ---- exec rates ---------------------------------------------------------------------------


def compile_static_loops(tmp: str) -> str:
    """bench_sensor.py's loops, linked static: they run in a busybox root too."""
    src, exe = os.path.join(tmp, "loops-static.c"), os.path.join(tmp, "loops-static")
    Path(src).write_text(LOOPS_C)
    subprocess.run(["clang", "-O2", "-static", "-o", exe, src], check=True)
    return exe


def container_loop(container, seconds: float) -> tuple[int, float]:
    done = container.run("/bin/loops", "exec", str(seconds), timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"the loop in the container failed: {done.stderr.strip()}")
    n, elapsed = done.stdout.split()
    return int(n), float(elapsed)


class BpfStats:
    """Run time of BPF programs while this lives (BPF_ENABLE_STATS)."""

    def __enter__(self) -> BpfStats:
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        self._fd = libbpf.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
        if self._fd < 0:
            raise OSError(-self._fd, "bpf_enable_stats")
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)

    @staticmethod
    def runs(ids: list[int]) -> dict[str, tuple[int, int]]:
        """(run time ns, runs) of these programs, by name."""
        shown = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True,
                                          text=True, check=True).stdout)
        wanted = set(ids)
        return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
                for p in shown if p["id"] in wanted}


def ratios(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            statistics.median(p[1] / p[0] for p in pairs))


def exec_rates(tmp: str, seconds: float, rounds: int) -> None:
    from tests.containers import Container

    exe = compile_static_loops(tmp)
    host: list[tuple[float, float]] = []
    inside: list[tuple[float, float]] = []
    with Container(Path(tmp), ["sleep", "100000"]) as container:
        loop = container.rootfs / "bin" / "loops"
        loop.write_bytes(Path(exe).read_bytes())
        loop.chmod(0o755)
        for _ in range(rounds):
            off_host = rate(count_loop(exe, "exec", seconds))
            off_inside = rate(container_loop(container, seconds))
            with Sensor():
                host.append((off_host, rate(count_loop(exe, "exec", seconds))))
                inside.append((off_inside, rate(container_loop(container, seconds))))
    print(f"exec rate, fork+exec of /bin/true, {rounds} rounds of {seconds:g} s (target >= 0.95x):")
    print(f"  {'where':22} {'without /s':>11} {'with /s':>11} {'ratio':>7}")
    for label, pairs in (("host", host), ("runc container", inside)):
        off, on, ratio = ratios(pairs)
        print(f"  {label:22} {off:11.0f} {on:11.0f} {ratio:7.2f}x")


def rate(result: tuple[int, float]) -> float:
    return result[0] / result[1]


# The programs that fill a header for the loops' calls.
HEADER_PROGRAMS = ("sched_exec", "on_fork", "on_exit", "connect4")


def namespace_cost(tmp: str, seconds: float, rounds: int) -> None:
    """bench_sensor's exec and connect loops: without a sensor, with one
    that leaves the namespace ids out, with one that reads them; and the
    run time per run of the programs that fill their headers."""
    loops = compile_loops(tmp)
    modes = ("exec", "connect")
    rates: dict[tuple[str, bool], list[float]] = {(m, ns): [] for m in modes for ns in (False, True)}
    per_run: dict[tuple[str, bool], list[float]] = {(p, ns): [] for p in HEADER_PROGRAMS
                                                    for ns in (False, True)}
    with BpfStats():
        for _ in range(rounds):
            for namespaces in (False, True):
                off = {m: rate(count_loop(loops, m, seconds)) for m in modes}
                with Sensor(namespaces=namespaces) as sensor:
                    before = BpfStats.runs(sensor.programs)
                    for m in modes:
                        rates[m, namespaces].append(rate(count_loop(loops, m, seconds)) / off[m])
                    after = BpfStats.runs(sensor.programs)
                for name in HEADER_PROGRAMS:
                    ns, n = (a - b for a, b in zip(after[name], before[name]))
                    if n:
                        per_run[name, namespaces].append(ns / n)
    print(f"namespace ids in every header, {rounds} rounds of {seconds:g} s, loops of "
          "bench_sensor.py (ratio to no sensor):")
    print(f"  {'loop':10} {'without ids':>12} {'with ids':>10}")
    for m in modes:
        print(f"  {m:10} {statistics.median(rates[m, False]):11.2f}x "
              f"{statistics.median(rates[m, True]):9.2f}x")
    print(f"  {'program':10} {'ns per run without':>19} {'with':>7} {'cost':>6}")
    for name in HEADER_PROGRAMS:
        without, with_ = (statistics.median(per_run[name, ns] or [0]) for ns in (False, True))
        print(f"  {name:10} {without:19.0f} {with_:7.0f} {with_ - without:+6.0f}")
    print("  (and 8 bytes more per record: the header is 72 bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mounts", type=int, default=200, help="mounts for the latency")
    parser.add_argument("--seconds", type=float, default=2.0, help="per loop and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-sensor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-namespaces", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sensor:
        return serve_sensor(not args.no_namespaces)
    if os.geteuid() != 0:
        sys.exit("bench_mounts: needs root")
    if os.cpu_count() < 2:
        sys.exit("bench_mounts: needs two CPUs (one for the loops, one for the sensor)")
    os.sched_setaffinity(0, {LOOP_CPU})
    # not under /tmp: the default policy blocks executables there
    cache = os.path.expanduser("~/.cache")
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        mount_latency(args.mounts, tmp)
        exec_rates(tmp, args.seconds, args.rounds)
        namespace_cost(tmp, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
