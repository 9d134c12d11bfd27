"""Every kind of event, its fields checked against what the test knows to be
true: the pid and ppid of the real process, its ids, argv, paths, addresses."""

import errno
import os
import socket
import subprocess
import sys

import pytest

from kmod import verdict_line
from wire import Bind, Connect, Exec, Exit, Fork, Open, SetId

from .conftest import collect, drain_for, flush, kernel, run_child

pytestmark = kernel


def of(pid, kind, **fields):
    def keep(e):
        return isinstance(e, kind) and e.pid == pid and all(
            getattr(e, k) == v for k, v in fields.items())
    return keep


def test_exec_fields(sensor, tmp_path):
    flush(sensor)
    child = run_child("exec", "/bin/echo", "a", "b c", "", cwd=str(tmp_path))
    assert child.errno is None and child.returncode == 0
    (ev,) = collect(sensor, of(child.pid, Exec, filename="/bin/echo"))
    assert ev.ppid == os.getpid()
    assert (ev.uid, ev.euid, ev.gid) == (0, 0, 0)
    assert ev.argv == ["/bin/echo", "a", "b c", ""] and not ev.argv_truncated
    assert ev.exe == os.path.realpath("/bin/echo")
    assert ev.cwd == os.path.realpath(tmp_path)
    assert (ev.comm, ev.result, ev.verdict) == ("echo", 0, "allow")
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        assert ev.cgroup != 0 and f.read()  # same cgroup as us: a real id
    assert ev.tid == ev.pid


def test_exec_after_dropping_privileges(sensor):
    flush(sensor)
    child = run_child("drop", "65534", "65534", "exec", "/bin/true")
    assert child.returncode == 0
    events = collect(sensor, lambda e: e.pid == child.pid and isinstance(e, (Exec, SetId)),
                     until=lambda evs: any(isinstance(e, Exec) and e.filename == "/bin/true"
                                           for e in evs))
    setids = [(e.call, e.old, e.new, e.result) for e in events if isinstance(e, SetId)]
    assert setids == [("setgid", 0, 65534, 0), ("setuid", 0, 65534, 0)]
    ex = events[-1]
    assert (ex.uid, ex.euid, ex.gid) == (65534, 65534, 65534)


def test_setid_of_a_thread_older_than_the_sensor(tmp_path):
    """The old id comes from what the sensor remembered of the thread (the
    set*id calls are seen at sys_exit only); threads that existed before it
    started are remembered by the iterator it runs at start."""
    from kmod import LinuxSensor

    code = ("import os, sys\n"
            "print(os.getpid(), flush=True); sys.stdin.readline()\n"
            "os.setresgid(1234, 1234, 1234); os.setresuid(4321, 4321, 4321)\n")
    old = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        pid = int(old.stdout.readline())
        with LinuxSensor() as s:
            old.stdin.write("go\n")
            old.stdin.flush()
            assert old.wait(10) == 0
            events = collect(s, of(pid, SetId), until=lambda evs: len(evs) == 2)
    finally:
        old.kill()
        old.wait()
    assert [(e.call, e.old, e.new, e.result) for e in events] == [
        ("setresgid", 0, 1234, 0), ("setresuid", 0, 4321, 0)]
    assert verdict_line(events[1]) == f"IMMUNE: [AUDIT] setresuid 0->4321 (pid={pid})"


def test_opens_by_relative_path_are_judged_by_the_file(sensor):
    """`cd /etc; cat shadow` and `cat ../etc/shadow` are the same read of
    /etc/shadow as `cat /etc/shadow`; a relative open of a file no rule
    names is not reported."""
    flush(sensor)
    here = run_child("open", "shadow", cwd="/etc")
    up = run_child("open", "../etc/gshadow", cwd="/var")
    plain = run_child("open", "hostname", cwd="/etc")
    assert (here.errno, up.errno, plain.errno) == (0, 0, 0)
    events = collect(sensor, lambda e: isinstance(e, Open) and e.pid in (here.pid, up.pid, plain.pid),
                     until=lambda evs: len(evs) >= 2)
    events += [e for e in drain_for(sensor, 0.3)
               if isinstance(e, Open) and e.pid in (here.pid, up.pid, plain.pid)]
    assert sorted((e.pid, e.path, e.rule, e.verdict) for e in events) == sorted([
        (here.pid, "/etc/shadow", "open-credentials", "audit"),
        (up.pid, "/etc/gshadow", "open-credentials", "audit")])
    ev = next(e for e in events if e.pid == here.pid)
    assert ev.result >= 0 and ev.ppid == os.getpid()
    assert verdict_line(ev) == f"IMMUNE: [AUDIT] open /etc/shadow (pid={here.pid})"


def test_a_refused_relative_open_is_reported_with_its_path(sensor):
    """An unprivileged `cd /etc; cat shadow` fails: there is no file to judge,
    so the directory it started from and the name as given are."""
    flush(sensor)
    child = run_child("drop", "65534", "65534", "open", "shadow", cwd="/etc")
    missing = run_child("open", "no-such-file", cwd="/etc")
    assert (child.errno, missing.errno) == (errno.EACCES, errno.ENOENT)
    events = collect(sensor, lambda e: isinstance(e, Open) and e.pid in (child.pid, missing.pid))
    events += [e for e in drain_for(sensor, 0.3)
               if isinstance(e, Open) and e.pid in (child.pid, missing.pid)]
    assert [(e.pid, e.path, e.result, e.rule, e.euid) for e in events] == [
        (child.pid, "/etc/shadow", -errno.EACCES, "open-credentials", 65534)]
    assert verdict_line(events[0]) == f"IMMUNE: [AUDIT] open /etc/shadow (pid={child.pid})"


def test_relative_opens_deep_under_a_recursive_rule(workdir):
    from kmod import LinuxSensor, Policy

    deep = workdir / "watched" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "secret").write_text("x")
    (workdir / "other").mkdir()
    (workdir / "other" / "secret").write_text("x")
    policy = Policy.parse(f'[[rule]]\nname="mine"\nhook="open"\naction="audit"\n'
                          f'match.path="{workdir}/watched/**"')
    with LinuxSensor(policy) as s:
        inside = run_child("open", "a/b/secret", cwd=str(workdir / "watched"))
        outside = run_child("open", "secret", cwd=str(workdir / "other"))
        events = collect(s, lambda e: isinstance(e, Open) and e.pid in (inside.pid, outside.pid))
        events += [e for e in drain_for(s, 0.3)
                   if isinstance(e, Open) and e.pid in (inside.pid, outside.pid)]
    assert [(e.pid, e.path, e.rule) for e in events] == [(inside.pid, str(deep / "secret"), "mine")]


def test_failed_setid_reports_its_result(sensor):
    flush(sensor)
    child = run_child("drop", "65534", "65534", "setresgid", "0", "0", "0")
    assert child.errno == errno.EPERM
    (ev,) = collect(sensor, of(child.pid, SetId, call="setresgid"))
    assert (ev.old, ev.new, ev.result) == (65534, 0, -errno.EPERM)


def test_argv_is_bounded_and_flagged(sensor):
    flush(sensor)
    args = [f"{i:04d}" + "x" * 60 for i in range(40)]
    child = run_child("exec", "/bin/true", *args)
    (ev,) = collect(sensor, of(child.pid, Exec, filename="/bin/true"))
    assert ev.argv_truncated
    assert ev.argv[:10] == ["/bin/true", *args[:9]]
    assert len("\0".join(ev.argv)) <= 1024


def test_fork_and_exit(sensor):
    flush(sensor)
    child = run_child("fork", "7")
    grandchild = child.info["child"]
    events = collect(sensor, lambda e: e.pid in (child.pid, grandchild),
                     until=lambda evs: sum(isinstance(e, Exit) for e in evs) == 2)
    fork = next(e for e in events if isinstance(e, Fork))
    assert (fork.pid, fork.child_pid, fork.ppid) == (child.pid, grandchild, os.getpid())
    assert (fork.verdict, fork.rule) == ("audit", "process-fork")
    assert verdict_line(fork) == f"IMMUNE: [AUDIT] fork {grandchild} (pid={child.pid})"
    exits = {e.pid: e for e in events if isinstance(e, Exit)}
    assert exits[grandchild].code == 7 and exits[grandchild].ppid == child.pid
    assert exits[child.pid].code == 0


def test_open_fields(sensor):
    flush(sensor)
    child = run_child("open", "/etc/shadow")
    (ev,) = collect(sensor, of(child.pid, Open))
    assert ev.path == "/etc/shadow" and ev.result >= 0
    assert ev.flags & os.O_ACCMODE == os.O_RDONLY
    assert (ev.uid, ev.ppid, ev.comm) == (0, os.getpid(), "python")


def test_opens_outside_the_watched_paths_are_not_reported(sensor):
    flush(sensor)
    child = run_child("open", "/etc/passwd")
    with pytest.raises(AssertionError, match="timed out"):
        collect(sensor, of(child.pid, Open), timeout=0.3)


@pytest.fixture
def listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_allowed_connect_fields(sensor, listener):
    flush(sensor)
    child = run_child("connect", "127.0.0.1", str(listener))
    assert child.errno == 0
    (ev,) = collect(sensor, of(child.pid, Connect))
    assert (ev.family, ev.address, ev.port, ev.protocol) == (2, "127.0.0.1", listener, "tcp")
    assert (ev.verdict, ev.rule, ev.ppid) == ("allow", "", os.getpid())
    assert verdict_line(ev) is None


@pytest.mark.parametrize("host", ["::1", "::ffff:127.0.0.1"])
def test_ipv6_connect_blocked(sensor, host):
    flush(sensor)
    child = run_child("connect", host, "4444")
    assert child.errno == errno.EPERM
    (ev,) = collect(sensor, of(child.pid, Connect))
    assert (ev.family, ev.address, ev.verdict, ev.rule) == (10, host, "block", "connect-c2-ports")
    assert verdict_line(ev) == f"IMMUNE: [BLOCKED] connect [{host}]:4444 (pid={child.pid})"


def test_udp_connect_and_bind_blocked(sensor):
    flush(sensor)
    udp = run_child("connect", "127.0.0.1", "31337", "udp")
    assert udp.errno == errno.EPERM
    (ev,) = collect(sensor, of(udp.pid, Connect))
    assert ev.protocol == "udp" and ev.verdict == "block"
    bound = run_child("bind", "127.0.0.1", "4444")
    assert bound.errno == errno.EPERM
    (ev,) = collect(sensor, of(bound.pid, Bind))
    assert (ev.address, ev.port, ev.rule) == ("127.0.0.1", 4444, "bind-c2-ports")
    assert verdict_line(ev) == f"IMMUNE: [BLOCKED] bind 127.0.0.1:4444 (pid={bound.pid})"



def test_udp_sendto_meets_the_connect_rules(sensor):
    """Unconnected UDP: refused by a connect rule and reported; an allowed
    datagram is not reported (one event per DNS query would be noise)."""
    flush(sensor)
    blocked = run_child("sendto", "127.0.0.1", "4444")
    assert blocked.errno == errno.EPERM
    (ev,) = collect(sensor, of(blocked.pid, Connect))
    assert (ev.protocol, ev.port, ev.address, ev.verdict, ev.rule) == \
        ("udp", 4444, "127.0.0.1", "block", "connect-c2-ports")
    assert verdict_line(ev) == f"IMMUNE: [BLOCKED] connect 127.0.0.1:4444 (pid={blocked.pid})"
    blocked6 = run_child("sendto", "::1", "31337")
    assert blocked6.errno == errno.EPERM
    allowed = run_child("sendto", "127.0.0.1", "9")
    assert allowed.errno == 0
    events = collect(sensor, lambda e: e.pid in (blocked6.pid, allowed.pid) and isinstance(e, Connect),
                     until=lambda evs: any(e.pid == blocked6.pid for e in evs), timeout=2)
    assert [(e.pid, e.family, e.verdict) for e in events] == [(blocked6.pid, socket.AF_INET6, "block")]

def test_allowed_bind_is_reported(sensor):
    flush(sensor)
    child = run_child("bind", "::1", "0")
    assert child.errno == 0
    (ev,) = collect(sensor, of(child.pid, Bind))
    assert (ev.family, ev.address, ev.verdict) == (10, "::1", "allow")


def test_statistics_count_and_report_no_drops(sensor, listener):
    flush(sensor)
    child = run_child("connect", "127.0.0.1", str(listener))
    collect(sensor, of(child.pid, Connect))
    stats = sensor.statistics()
    assert stats.events["exec"] > 0 and stats.events["connect"] > 0
    assert set(stats.drops.values()) == {0}
    assert stats.watchdog == "armed" and stats.fanotify["denied"] == 0
