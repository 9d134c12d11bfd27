"""Syscall rates with and without the kernel sensor, in one run (root).

    .venv/bin/python bench/bench_sensor.py [--seconds S] [--rounds N] [--saturation S]

Loops are small C programs (compiled here with clang, which the sensor
needs anyway) so that Python's own overhead does not hide the sensor's:

* open:    open()+close() of /etc/hostname, outside the watched set;
* open-rel: the same by a relative path, in a directory 8 levels deep that
           no rule watches (the kernel checks the directories above it);
* exec:    fork()+execve("/bin/true")+waitpid();
* connect: TCP connect()+accept()+close() on loopback (SO_LINGER 0, so no
           TIME_WAIT);
* write:   open(O_WRONLY)+close() of a file no rule names, by its absolute path (judged
           by the directories above it too, as a relative open is);
* chmod:   chmod() of a file no rule names, by its absolute path (kmod/bpf/files.bpf.h
           reads the path and looks up its prefix and last component);
* rename:  rename() there and back by relative names (the directories above the cwd are checked);
* unlink:  open(O_CREAT)+close()+unlink() of an absolute path no rule names.
* getppid: the cheapest syscall, which no program watches: what every
           syscall pays once any sys_enter_* tracepoint is attached (the
           sensor's ptrace and bpf hooks are);
* ptrace:  PTRACE_PEEKDATA of a seized child (not protected: not reported),
           gdb's most frequent request;
* signal:  kill(child, SIGWINCH) to a child that is not protected (every
           signal passes the signal_generate hook's filter);
* bpf:     bpf(BPF_PROG_LOAD) of a two-instruction socket filter + close
           (each one reported);
* mount:   mount+umount2(MNT_DETACH: the exec guard may be marking it) of
           a tmpfs in a private mount namespace (each reported twice, and
           news for the exec guard's marker);
* exec-memfd: fork()+execveat(memfd of /bin/true, AT_EMPTY_PATH)+waitpid(),
           under a policy that audits fileless execs (the default kills them).

Each loop runs pinned to CPU 1; the sensor (all hooks, default policy) and
a thread draining it (as the kmod reader would: wait, drain in batches,
decode to wire events) run on CPU 0.  Each round runs each loop without,
then with the sensor; the ratio printed is the median of the rounds' ratios.

Floors: the same open loop with one empty BPF program on
syscalls/sys_exit_openat, the least any syscall-tracepoint sensor can cost
(the sensor sees opens at sys_exit only); and with one that only reads the
path's first 8 bytes from the caller, the least an in-kernel path filter
costs.
And on the getppid loop: floor-exit, one empty program on
syscalls/sys_exit_openat (what the sensor's sys_exit hooks make every
syscall pay), and floor-enter, one on syscalls/sys_enter_ptrace (what any
sys_enter_* hook makes every syscall pay).

Saturation: one core issues calls as fast as it can for S seconds while the
sensor drains: opens of an unwatched path (the kernel filters them all),
connects (one event each), opens of /etc/shadow (audited) without and with
folding of repeats.  Printed: call rate, events drained per second, drops by
kind, and for opens how many calls the events account for.

Storm: for S seconds an open loop on each CPU (/etc/shadow, folding off: one
event per call, far more than the reader drains) beside a fork+exec loop on
CPU 1.  Printed: drops by kind (opens only: the ring keeps room for the
rest), the loop's execs against those drained, and how late they were
drained (from the kernel's timestamp).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kmod import DEFAULT_POLICY, LinuxSensor, Policy  # noqa: E402
from kmod._build import build, cache_dir  # noqa: E402
from kmod._libbpf import BpfObject  # noqa: E402
from wire import Exec, Open  # noqa: E402

EMPTY_BPF_C = r"""
#define SEC(name) __attribute__((section(name), used))
char LICENSE[] SEC("license") = "GPL";
SEC("tracepoint/syscalls/sys_exit_openat")
int empty(void *ctx) { return 0; }
"""

# Any sys_enter_* program makes every syscall call the enter tracepoint's probe.
EMPTY_ENTER_BPF_C = EMPTY_BPF_C.replace("sys_exit_openat", "sys_enter_ptrace")

# What any in-kernel path filter must do at least: find the caller's
# registers and read the path's first bytes from its memory.
PATH_READ_BPF_C = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
__u64 seen;
SEC("tracepoint/syscalls/sys_exit_openat")
int path_read(void *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    __u64 head = 0;
    bpf_probe_read_user(&head, sizeof(head), (void *)PT_REGS_PARM2_SYSCALL(regs));
    seen ^= head;
    return 0;
}
"""

LOOPS_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <linux/bpf.h>
#include <sys/mount.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long word = 42;  /* what the ptrace loop peeks at in its child */

static pid_t idle_child(void) {
    pid_t pid = fork();
    if (pid == 0) { for (;;) pause(); }
    return pid;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *mode = argv[1];
    double secs = atof(argv[2]), t0 = now(), t = t0;
    long n = 0;
    int lfd = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct linger lg = {1, 0};
    if (!strcmp(mode, "connect")) {
        socklen_t len = sizeof(a);
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        bind(lfd, (void *)&a, sizeof(a));
        listen(lfd, 1024);
        getsockname(lfd, (void *)&a, &len);
    }
    pid_t child = 0;
    int memfd = -1;
    union bpf_attr attr;
    struct bpf_insn insns[2] = {{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
                                {.code = BPF_JMP | BPF_EXIT}};
    char *noargs[] = {"true", 0}, *noenv[] = {0};
    if (!strcmp(mode, "ptrace") || !strcmp(mode, "signal"))
        child = idle_child();
    if (!strcmp(mode, "ptrace")) {
        int status;
        if (ptrace(PTRACE_SEIZE, child, 0, 0) || ptrace(PTRACE_INTERRUPT, child, 0, 0)) {
            perror("ptrace"); return 1;
        }
        waitpid(child, &status, __WALL);
    } else if (!strcmp(mode, "bpf")) {
        memset(&attr, 0, sizeof(attr));
        attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
        attr.insn_cnt = 2;
        attr.insns = (unsigned long)insns;
        attr.license = (unsigned long)"GPL";
        strcpy(attr.prog_name, "bench");
    } else if (!strcmp(mode, "mount")) {
        if (unshare(CLONE_NEWNS) || mount(0, "/", 0, MS_REC | MS_PRIVATE, 0)) { perror("unshare"); return 1; }
        mkdir(argv[3], 0700);
    } else if (!strcmp(mode, "memfd")) {
        char buf[65536];
        int in = open("/bin/true", O_RDONLY);
        ssize_t got;
        memfd = memfd_create("bench", 0);
        while ((got = read(in, buf, sizeof(buf))) > 0)
            if (write(memfd, buf, got) != got) { perror("write"); return 1; }
        close(in);
    }
    while (t - t0 < secs) {
        for (int i = 0; i < 64; i++) {
            if (!strcmp(mode, "open")) {
                int fd = open(argv[3], O_RDONLY);
                if (fd < 0) { perror("open"); return 1; }
                close(fd);
            } else if (!strcmp(mode, "write")) {
                int fd = open(argv[3], O_WRONLY);
                if (fd < 0) { perror("open"); return 1; }
                close(fd);
            } else if (!strcmp(mode, "chmod")) {
                if (chmod(argv[3], i & 1 ? 0600 : 0644)) { perror("chmod"); return 1; }
            } else if (!strcmp(mode, "rename")) {
                if (rename(i & 1 ? "y" : "x", i & 1 ? "x" : "y")) { perror("rename"); return 1; }
            } else if (!strcmp(mode, "unlink")) {
                int fd = open(argv[3], O_CREAT | O_WRONLY, 0600);
                if (fd < 0) { perror("open"); return 1; }
                close(fd);
                if (unlink(argv[3])) { perror("unlink"); return 1; }
            } else if (!strcmp(mode, "exec")) {
                pid_t pid = fork();
                if (pid == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
                int status;
                waitpid(pid, &status, 0);
            } else if (!strcmp(mode, "getppid")) {
                syscall(SYS_getppid);
            } else if (!strcmp(mode, "ptrace")) {
                errno = 0;
                ptrace(PTRACE_PEEKDATA, child, &word, 0);
                if (errno) { perror("peekdata"); return 1; }
            } else if (!strcmp(mode, "signal")) {
                kill(child, SIGWINCH);
            } else if (!strcmp(mode, "bpf")) {
                int fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
                if (fd < 0) { perror("bpf"); return 1; }
                close(fd);
            } else if (!strcmp(mode, "mount")) {
                if (mount("bench", argv[3], "tmpfs", 0, 0) || umount2(argv[3], MNT_DETACH)) { perror("mount"); return 1; }
            } else if (!strcmp(mode, "memfd")) {
                pid_t pid = fork();
                if (pid == 0) { syscall(SYS_execveat, memfd, "", noargs, noenv, AT_EMPTY_PATH); _exit(127); }
                int status;
                waitpid(pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status)) { fprintf(stderr, "memfd exec failed\n"); return 1; }
            } else {
                int s = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(s, (void *)&a, sizeof(a))) { perror("connect"); return 1; }
                int c = accept(lfd, 0, 0);
                setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                close(s);
                close(c);
            }
            n++;
        }
        t = now();
    }
    if (child)
        kill(child, SIGKILL);
    printf("%ld %.6f\n", n, t - t0);
    return 0;
}
"""

LOOP_CPU, SENSOR_CPU = 1, 0


def compile_loops(directory: str) -> str:
    src, exe = os.path.join(directory, "loops.c"), os.path.join(directory, "loops")
    Path(src).write_text(LOOPS_C)
    subprocess.run(["clang", "-O2", "-o", exe, src], check=True)
    return exe


def compile_bpf(directory: str, name: str, source: str) -> str:
    src, obj = os.path.join(directory, f"{name}.bpf.c"), os.path.join(directory, f"{name}.bpf.o")
    Path(src).write_text(source)
    build()  # generates vmlinux.h for this kernel, cached
    include = next(cache_dir().glob("btf-*/vmlinux.h")).parent
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
                    f"-I{include}", "-c", src, "-o", obj], check=True)
    return obj


def run_loop(exe: str, mode: str, seconds: float, *args: str, cwd: str | None = None) -> float:
    """Operations per second of one loop, pinned to LOOP_CPU."""
    n, elapsed = count_loop(exe, mode, seconds, *args, cwd=cwd)
    return n / elapsed


def count_loop(exe: str, mode: str, seconds: float, *args: str,
               cwd: str | None = None) -> tuple[int, float]:
    """Operations done by one loop, pinned to LOOP_CPU, and its seconds."""
    return loop_result(start_loop(exe, mode, seconds, *args, cwd=cwd))


def start_loop(exe: str, mode: str, seconds: float, *args: str, cwd: str | None = None,
               cpu: int = LOOP_CPU) -> subprocess.Popen:
    return subprocess.Popen([exe, mode, str(seconds), *args], stdout=subprocess.PIPE, text=True,
                            cwd=cwd, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def loop_result(p: subprocess.Popen) -> tuple[int, float]:
    out, _ = p.communicate()
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, p.args)
    n, elapsed = out.split()
    return int(n), float(elapsed)


class Drainer:
    """What the kmod reader does: wait, drain in batches, decode."""

    def __init__(self, sensor: LinuxSensor):
        self.sensor = sensor
        self.events = 0
        self.opens = 0  # opens the events stand for (folded ones count many)
        self.execs: list[tuple[int, int]] | None = None  # if a list: (ppid, ns late) of each exec
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sensor.wait(0.1)
            events = self.sensor.drain(65536)
            self.events += len(events)
            self.opens += sum(e.count for e in events if type(e) is Open)
            if self.execs is not None:
                now = time.time_ns()
                self.execs += [(e.ppid, now - e.time) for e in events if type(e) is Exec]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per loop and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--saturation", type=float, default=10.0, help="seconds")
    parser.add_argument("--only", nargs="+", metavar="LOOP",
                        help="run only these loops (e.g. chmod rename unlink), no floors, saturation or storm")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_sensor: needs root")
    if os.cpu_count() < 2:
        sys.exit("bench_sensor: needs two CPUs (one for the loops, one for the sensor)")
    os.sched_setaffinity(0, {SENSOR_CPU})
    # label, mode, arguments, working directory ("deep": 5 levels below the bench's
    # directory, under /root/.cache, none of them watched)
    loops = [("open", "open", ("/etc/hostname",), None), ("open-rel", "open", ("f",), "deep"),
             ("exec", "exec", (), None), ("connect", "connect", (), None),
             ("getppid", "getppid", (), None), ("ptrace", "ptrace", (), None),
             ("signal", "signal", (), None), ("bpf", "bpf", (), None),
             ("mount", "mount", ("mnt",), "tmp"), ("exec-memfd", "memfd", (), None)]
    # the exec-memfd loop's policy: the default kills fileless execs, which is no overhead
    policies = {"exec-memfd": Policy.parse(DEFAULT_POLICY.read_text().replace(
        'action = "block"\ndescription = "An image with no name',
        'action = "audit"\ndescription = "An image with no name'))}
    assert policies["exec-memfd"].match_fileless().action == "audit"
    # (without, with) per round; the floors are (without, one floor program), on a loop
    floors = {"floor": ("empty", "open"), "floor+read": ("path_read", "open"),
              "floor-exit": ("empty", "getppid"), "floor-enter": ("empty_enter", "getppid")}
    loops += [("write", "write", ("FILES/x",), "files"), ("chmod", "chmod", ("FILES/x",), "files"),
              ("rename", "rename", (), "files"), ("unlink", "unlink", ("FILES/u",), "files")]  # FILES: no rule names it
    if args.only:
        loops = [loop for loop in loops if loop[0] in args.only]
        floors = {}
    pairs: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in loops}
    pairs.update((f, []) for f in floors)

    # not under /tmp: the default policy blocks executables there
    cache = os.path.expanduser("~/.cache")
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        exe = compile_loops(tmp)
        deep = os.path.join(tmp, "a", "b", "c", "d", "e")
        os.makedirs(deep)
        Path(deep, "f").touch()
        files = os.path.join(tmp, "files")
        os.makedirs(files)
        Path(files, "x").touch()
        sources = {"empty": EMPTY_BPF_C, "path_read": PATH_READ_BPF_C, "empty_enter": EMPTY_ENTER_BPF_C}
        objects = {f: (compile_bpf(tmp, name, sources[name]), loop) for f, (name, loop) in floors.items()}
        for _ in range(args.rounds):
            for label, mode, extra, cwd in loops:
                cwd = {"deep": deep, "files": files, "tmp": tmp}.get(cwd, cwd)
                extra = tuple(a.replace("FILES", files) for a in extra)
                off = run_loop(exe, mode, args.seconds, *extra, cwd=cwd)
                with LinuxSensor(policies.get(label)) as sensor, Drainer(sensor):
                    pairs[label].append((off, run_loop(exe, mode, args.seconds, *extra, cwd=cwd)))
                for floor, (obj, _) in ((f, o) for f, o in objects.items() if o[1] == label):
                    program = BpfObject(obj)
                    try:
                        program.load()
                        program.attach_tracing()
                        pairs[floor].append((off, run_loop(exe, mode, args.seconds, *extra)))
                    finally:
                        program.close()

        print(f"syscall loops on CPU {LOOP_CPU}, sensor on CPU {SENSOR_CPU}, "
              f"{args.rounds} rounds of {args.seconds:g} s; medians, ratio = median of the "
              "rounds' ratios")
        print(f"{'loop':10} {'without /s':>12} {'with /s':>12} {'ratio':>7}")
        for mode, runs in pairs.items():
            off = statistics.median(p[0] for p in runs)
            on = statistics.median(p[1] for p in runs)
            ratio = statistics.median(p[1] / p[0] for p in runs)
            note = {"floor": "   (open loop, one empty program on sys_exit_openat)",
                    "floor+read": "   (the same, reading the path's first 8 bytes)",
                    "floor-exit": "   (getppid loop, one empty program on sys_exit_openat)",
                    "floor-enter": "   (getppid loop, one empty program on sys_enter_ptrace)"}.get(mode, "")
            print(f"{mode:10} {off:12.0f} {on:12.0f} {ratio:7.2f}x{note}")

        if args.only:
            return
        print(f"saturation, {args.saturation:g} s each, calls on one core; for opens, the "
              "calls the events account for (a folded event stands for many):")
        for label, mode, extra, fold in (
                ("open unwatched", "open", ("/etc/hostname",), 1.0),
                ("connect", "connect", (), 1.0),
                ("open /etc/shadow, fold 0", "open", ("/etc/shadow",), 0.0),
                ("open /etc/shadow", "open", ("/etc/shadow",), 1.0)):
            with LinuxSensor(fold=fold) as sensor, Drainer(sensor) as drainer:
                began = time.monotonic()
                calls, seconds = count_loop(exe, mode, args.saturation, *extra)
                # the last folds come out a fold after the last report
                time.sleep(fold + 0.5)
                while sensor.statistics().pending_bytes and time.monotonic() - began < 120:
                    time.sleep(0.05)
                elapsed = time.monotonic() - began
                stats = sensor.statistics()
            accounted = f"{drainer.opens:10d} of {calls} calls" if "shadow" in label else ""
            print(f"  {label:25} {calls / seconds:10.0f} calls/s {drainer.events / elapsed:10.0f} "
                  f"events/s drained {drainer.events:10d} events  drops {drop_text(stats)}"
                  f"  {accounted}")
        if not args.only:
            storm(exe, args.saturation)


def drop_text(stats) -> str:
    return " ".join(f"{kind}={n}" for kind, n in stats.drops.items() if n) or "0"


def storm(exe: str, seconds: float) -> None:
    """Opens of /etc/shadow, folding off, from a loop on each CPU, beside a
    fork+exec loop: the opens outrun the reader, the execs must not be lost."""
    with LinuxSensor(fold=0) as sensor, Drainer(sensor) as drainer:
        drainer.execs = []
        openers = [start_loop(exe, "open", seconds, "/etc/shadow", cpu=cpu)
                   for cpu in (SENSOR_CPU, LOOP_CPU)]
        execs = start_loop(exe, "exec", seconds)
        opens = sum(loop_result(p)[0] for p in openers)
        forks, elapsed = loop_result(execs)
        began = time.monotonic()
        while sensor.statistics().pending_bytes and time.monotonic() - began < 120:
            time.sleep(0.05)
        time.sleep(0.6)  # drops are read every 0.5 s
        stats = sensor.statistics()
    late = sorted(ns for ppid, ns in drainer.execs if ppid == execs.pid)
    print(f"storm, {seconds:g} s: an open loop on each CPU (/etc/shadow, fold 0) beside a "
          "fork+exec loop on CPU 1:")
    print(f"  opens {opens / elapsed:10.0f} calls/s, {drainer.opens} drained, drops {drop_text(stats)}")
    print(f"  execs {forks / elapsed:10.0f} calls/s, {len(late)} of {forks} drained, late by "
          f"{late[len(late) // 2] / 1e6:.0f} ms median, {late[-1] / 1e6:.0f} ms max" if late else
          f"  execs: none of {forks} drained")


if __name__ == "__main__":
    main()
