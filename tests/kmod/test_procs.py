"""The process and system hooks on the real kernel (kmod/bpf/procs.bpf.h):
ptrace of protected processes refused, signals to them reported, BPF
program loads audited or refused, mounts reported, fileless execs flagged
and refused, and the hooks this kernel cannot have named at start."""

import errno
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from kmod import DEFAULT_POLICY, LinuxSensor, Policy, verdict_line
from kmod._procs import hooks_off
from wire import Bpf, Exec, Mount, Ptrace, Signal

from .conftest import _REASON, collect, drain_for, flush, kernel
from .test_enforcement import with_rules

pytestmark = kernel

_PRELUDE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
libc.syscall.restype = ctypes.c_long
def check(r, what):
    if r == -1:
        e = ctypes.get_errno()
        print(what, "failed", e, flush=True)
        sys.exit(3)
    return r
"""


def python(code: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-c", _PRELUDE + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout)


def state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("State:"))


def test_the_sensor_says_at_start_which_hooks_are_off(caplog):
    """This kernel has no module support: the sensor says so once in its
    log, and in its statistics, instead of attaching nothing silently."""
    if _REASON is not None:
        pytest.skip(_REASON)
    assert "module loading" in hooks_off()
    caplog.set_level(logging.INFO, logger="kmod")
    s = LinuxSensor()
    s.start()
    try:
        why = s.statistics().hooks_off["module loading"]
        assert why.startswith("this kernel has no module support")
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hooks off")]
        assert lines == [f"hooks off: module loading: {why}"]
    finally:
        s.close()


@pytest.fixture(autouse=True)
def default_policy_after(request):
    yield
    if "sensor" in request.fixturenames:
        request.getfixturevalue("sensor").reload(Policy.default())


@pytest.fixture
def protected(sensor):
    """A process the sensor protects (one of the agent's family)."""
    p = subprocess.Popen(["sleep", "60"])
    sensor.exclude(p.pid)
    yield p
    sensor.include(p.pid)
    p.kill()
    p.wait()


# ---- ptrace ----------------------------------------------------------------------

TRACER = """
request, pid = int(sys.argv[1], 0), int(sys.argv[2])
check(libc.ptrace(request, pid, None, None), "attach")
if request == 16:
    os.waitpid(pid, 0x40000000)  # __WALL: its SIGSTOP
libc.ptrace(0x4207, pid, None, None)  # PTRACE_INTERRUPT (seize)
ctypes.set_errno(0)
word = libc.ptrace(2, pid, ctypes.c_void_p(0x400000), None)  # PEEKDATA
print("peeked", word, ctypes.get_errno(), flush=True)
"""


@pytest.mark.parametrize("request_", [16, 0x4206], ids=["attach", "seize"])
def test_ptrace_of_a_protected_process_kills_the_tracer(sensor, protected, request_):
    """The tracer dies at its first request; the protected process stays
    alive and running (not stopped by the attach's SIGSTOP), its memory
    never read.  Several times: the SIGSTOP races the tracer's death."""
    flush(sensor)
    tracers = []
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-S", "-c", _PRELUDE + TRACER, str(request_), str(protected.pid)],
                             stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=10)
        assert p.returncode == -9 and "peeked" not in out
        tracers.append(p.pid)
        time.sleep(0.05)
        assert protected.poll() is None and state(protected.pid) == "S"
    events = collect(sensor, lambda e: isinstance(e, Ptrace) and e.pid in tracers,
                     until=lambda got: len(got) >= 5)
    name = "attach" if request_ == 16 else "seize"
    assert {(e.request, e.target_pid, e.target_comm, e.verdict, e.rule) for e in events} == {
        (name, protected.pid, "sleep", "block", "ptrace-protected")}
    assert verdict_line(events[0]) == (f"IMMUNE: [BLOCKED] ptrace {name} {protected.pid} (sleep) "
                                       f"(pid={events[0].pid})")
    time.sleep(0.2)
    assert state(protected.pid) == "S"


GDB_LIKE = """
child = os.fork()
if child == 0:
    import time
    time.sleep(30)
    os._exit(0)
check(libc.ptrace(16, child, None, None), "attach")
os.waitpid(child, 0x40000000)
ctypes.set_errno(0)
libc.ptrace(2, child, ctypes.c_void_p(0x400000), None)
check(libc.ptrace(17, child, None, None), "detach")
os.kill(child, 9)
os.waitpid(child, 0)
print("traced", child, flush=True)
"""


def test_a_parent_tracing_its_own_child_is_not_refused(sensor):
    """gdb-like: the default rule is for protected processes only; a rule
    with target "any" audits the attach."""
    flush(sensor)
    p = python(GDB_LIKE)
    assert p.returncode == 0 and p.stdout.startswith("traced"), p.stdout + p.stderr
    assert not [e for e in drain_for(sensor, 0.3) if isinstance(e, Ptrace)]

    sensor.reload(with_rules('[[rule]]\nname = "ptrace-any"\nhook = "ptrace"\naction = "audit"\n'
                             'match.target = "any"\n'))
    flush(sensor)
    p = python(GDB_LIKE)
    assert p.returncode == 0, p.stdout + p.stderr
    child = int(p.stdout.split()[1])
    (ev,) = collect(sensor, lambda e: isinstance(e, Ptrace) and e.target_pid == child)
    assert (ev.request, ev.target_pid, ev.verdict, ev.rule, ev.result) == ("attach", child, "audit",
                                                                          "ptrace-any", 0)


# ---- signals -----------------------------------------------------------------------

SENDER = """
import signal, time
pid = int(sys.argv[1])
for sig in (signal.SIGSTOP, signal.SIGCONT, signal.SIGWINCH):
    os.kill(pid, sig)
    time.sleep(0.02)
print(os.getpid(), flush=True)
"""


def test_signals_to_a_protected_process_are_reported_with_their_sender(sensor, protected):
    signal_ignored = subprocess.Popen(["sleep", "60"])  # not protected
    try:
        flush(sensor)
        p = python(SENDER, str(protected.pid))
        q = python(SENDER, str(signal_ignored.pid))
        assert p.returncode == 0 and q.returncode == 0, p.stderr + q.stderr
        sender = int(p.stdout)
        events = collect(sensor, lambda e: isinstance(e, Signal), until=lambda got: len(got) >= 3)
        events += [e for e in drain_for(sensor, 0.3) if isinstance(e, Signal)]
        assert [(e.pid, e.signal, e.target_pid, e.target_comm, e.verdict, e.rule, e.result) for e in events] == [
            (sender, sig, protected.pid, "sleep", "audit", "signal-protected", result)
            for sig, result in ((19, 0), (18, 1), (28, 1))]  # 1: continued or nothing, no handler
        assert verdict_line(events[0]) == f"IMMUNE: [AUDIT] signal SIGSTOP to {protected.pid} (sleep) (pid={sender})"
        assert state(protected.pid) == "S"
    finally:
        signal_ignored.kill()
        signal_ignored.wait()


def test_kill_of_a_protected_process_is_reported(sensor, protected):
    flush(sensor)
    p = subprocess.run(["kill", "-TERM", str(protected.pid)])
    assert p.returncode == 0
    (ev,) = collect(sensor, lambda e: isinstance(e, Signal) and e.target_pid == protected.pid)
    assert (ev.signal, ev.comm) == (15, "kill")
    protected.wait(5)


# ---- BPF program loads -----------------------------------------------------------------

LOADER = """
import struct
insns = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit
lic = ctypes.create_string_buffer(b"GPL")
code = ctypes.create_string_buffer(insns, len(insns))
attr = bytearray(128)
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(code), ctypes.addressof(lic))  # socket_filter
attr[48:64] = b"immune_probe".ljust(16, b"\\0")
buf = ctypes.create_string_buffer(bytes(attr), 128)
fd = check(libc.syscall(321, 5, buf, 128), "bpf")  # BPF_PROG_LOAD
print("loaded", fd, flush=True)
"""


def test_a_bpf_program_load_by_another_process_is_audited(sensor):
    flush(sensor)
    p = subprocess.Popen([sys.executable, "-S", "-c", _PRELUDE + LOADER], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=10)
    assert p.returncode == 0 and out.startswith("loaded"), out
    (ev,) = collect(sensor, lambda e: isinstance(e, Bpf) and e.pid == p.pid)
    assert (ev.command, ev.prog_type, ev.prog_name, ev.verdict, ev.rule) == (
        "prog_load", "socket_filter", "immune_probe", "audit", "bpf-load")
    assert ev.result == int(out.split()[1])
    assert verdict_line(ev) == f"IMMUNE: [AUDIT] bpf prog_load socket_filter immune_probe (pid={p.pid})"


def test_a_bpf_block_rule_kills_the_loader(sensor):
    sensor.reload(with_rules('[[rule]]\nname = "bpf-no-filters"\nhook = "bpf"\naction = "block"\n'
                             'match.prog_type = "socket_filter"\n'))
    flush(sensor)
    p = subprocess.Popen([sys.executable, "-S", "-c", _PRELUDE + LOADER], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=10)
    assert p.returncode == -9 and "loaded" not in out
    (ev,) = collect(sensor, lambda e: isinstance(e, Bpf) and e.pid == p.pid)
    assert (ev.prog_type, ev.prog_name, ev.verdict, ev.rule) == (
        "socket_filter", "immune_probe", "block", "bpf-no-filters")
    assert ev.result == -errno.EAGAIN  # the verifier gave up on the pending SIGKILL: no program ever existed
    assert verdict_line(ev).startswith("IMMUNE: [BLOCKED] bpf prog_load socket_filter immune_probe")


def test_the_sensors_own_loads_are_not_reported(sensor):
    """Another sensor started by this (excluded) process loads a dozen programs."""
    flush(sensor)
    other = LinuxSensor(exclude_pids=())
    other.start()
    other.close()
    assert not [e for e in drain_for(sensor, 0.3) if isinstance(e, Bpf) and e.pid == os.getpid()]


# ---- mounts -----------------------------------------------------------------------------

MOUNTER = """
where = sys.argv[1].encode()
check(libc.mount(b"immune-src", where, b"tmpfs", 6, None), "mount")  # MS_NOSUID | MS_NODEV
check(libc.umount2(where, 2), "umount2")  # MNT_DETACH
print(os.getpid(), flush=True)
"""


def test_a_tmpfs_mounted_and_unmounted_makes_two_events(sensor):
    where = tempfile.mkdtemp(prefix="immune-mnt-")
    try:
        flush(sensor)
        p = python(MOUNTER, where)
        assert p.returncode == 0, p.stdout + p.stderr
        pid = int(p.stdout)
        mounted, unmounted = collect(sensor, lambda e: isinstance(e, Mount) and e.pid == pid,
                                     until=lambda got: len(got) >= 2)
        assert (mounted.call, mounted.source, mounted.target, mounted.fstype, mounted.flags,
                mounted.result, mounted.verdict, mounted.rule) == (
            "mount", "immune-src", where, "tmpfs", 6, 0, "audit", "mount-any")
        assert (unmounted.call, unmounted.target, unmounted.flags, unmounted.result) == (
            "umount", where, 2, 0)
        assert verdict_line(mounted) == f"IMMUNE: [AUDIT] mount immune-src on {where} type tmpfs (pid={pid})"
        assert verdict_line(unmounted) == f"IMMUNE: [AUDIT] umount {where} (pid={pid})"
    finally:
        os.rmdir(where)


def test_mount_rules_select_by_mount_point_and_type(sensor):
    where = tempfile.mkdtemp(prefix="immune-mnt-")
    try:
        sensor.reload(Policy.parse('[[rule]]\nname = "mount-proc"\nhook = "mount"\naction = "audit"\n'
                                   'match.fstype = "proc"\n'))
        flush(sensor)
        p = python(MOUNTER, where)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not [e for e in drain_for(sensor, 0.3) if isinstance(e, Mount)]
    finally:
        os.rmdir(where)


# ---- fileless exec ---------------------------------------------------------------------------

MEMFD_EXEC = """
fd = os.memfd_create("immune-fileless", 0)
os.write(fd, open("/bin/true", "rb").read())
if sys.argv[1] == "execveat":
    argv = (ctypes.c_char_p * 2)(b"true", None)
    envp = (ctypes.c_char_p * 1)(None)
    check(libc.syscall(322, fd, b"", argv, envp, 0x1000), "execveat")  # AT_EMPTY_PATH
else:
    os.execv(f"/proc/self/fd/{fd}", ["true"])
"""

DELETED_EXEC = """
import shutil
path = sys.argv[1]
shutil.copy("/bin/true", path)
fd = os.open(path, os.O_RDONLY)
os.unlink(path)
os.execv(f"/proc/self/fd/{fd}", ["true"])
"""


def run_fileless(how: str, where: Path) -> subprocess.Popen:
    code = DELETED_EXEC if how == "deleted" else MEMFD_EXEC
    p = subprocess.Popen([sys.executable, "-S", "-c", _PRELUDE + code, str(where / "copy") if how == "deleted" else how],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.communicate(timeout=10)
    return p


@pytest.mark.parametrize("how", ["execve", "execveat", "deleted"])
def test_a_fileless_exec_is_flagged_and_refused(sensor, workdir, how):
    """Under the default policy it is killed before its first instruction
    (the caller sees SIGKILL); under an audit rule it runs, flagged."""
    flush(sensor)
    p = run_fileless(how, workdir)
    assert p.returncode == -9
    (ev,) = collect(sensor, lambda e: isinstance(e, Exec) and e.pid == p.pid and e.argv == ["true"])
    exe = f"{workdir}/copy (deleted)" if how == "deleted" else "/memfd:immune-fileless"
    assert (ev.fileless, ev.exe, ev.verdict, ev.rule) == (True, exe, "block", "exec-fileless")
    assert verdict_line(ev) == f"IMMUNE: [BLOCKED] exec {ev.filename} (pid={p.pid})"

    sensor.reload(Policy.parse(DEFAULT_POLICY.read_text().replace(
        'action = "block"\ndescription = "An image with no name', 'action = "audit"\ndescription = "An image with no name')))
    flush(sensor)
    p = run_fileless(how, workdir)
    assert p.returncode == 0
    (ev,) = collect(sensor, lambda e: isinstance(e, Exec) and e.pid == p.pid and e.argv == ["true"])
    assert (ev.fileless, ev.exe, ev.verdict, ev.rule) == (True, exe, "audit", "exec-fileless")


def test_an_ordinary_exec_is_not_fileless(sensor):
    flush(sensor)
    p = subprocess.run(["/bin/true"])
    (ev,) = collect(sensor, lambda e: isinstance(e, Exec) and e.filename == "/bin/true" and e.ppid == os.getpid())
    assert (ev.fileless, ev.verdict) == (False, "allow")
    assert p.returncode == 0


def test_containers_start_under_the_default_policy(sensor, tmp_path):
    """runc 1.1 re-executes itself as `runc init` from a read-only bind mount
    of its own binary (a memfd copy only when it cannot mount): no fileless
    exec, so the default block leaves containers working."""
    from tests import containers

    containers.require()
    flush(sensor)
    with containers.Container(tmp_path, ["sleep", "30"]) as c:
        out = c.run("echo", "inside")
    assert out.returncode == 0 and "inside" in out.stdout
    assert not [e for e in drain_for(sensor, 0.3) if isinstance(e, Exec) and e.fileless]
