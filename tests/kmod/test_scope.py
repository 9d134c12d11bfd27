"""Scope: a sensor scoped to a network namespace or a cgroup reports and
acts on the processes inside it, and on nothing outside."""

import errno
import os
import subprocess
import sys
import time

import pytest

from kmod import LinuxSensor, Policy, Scope
from kmod._system import cgroup2_root
from wire import Connect, Exec, Notice

from .conftest import (_REASON, collect, drain_for, dropped_script, flush, free_port, kernel,
                       private_rules, run_child)

pytestmark = kernel


@pytest.fixture(scope="module")
def netns():
    if _REASON is not None:
        pytest.skip(_REASON)
    name = f"immune-kmod-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def private(workdir):
    """Rules of this test's own (see ``private_rules``): a blocked script and port."""
    port = free_port()
    return Policy.parse(private_rules(workdir / "blocked", port)), \
        dropped_script(workdir / "blocked"), port


def test_netns_scope_sees_inside_only(netns, private):
    policy, script, port = private
    with LinuxSensor(policy, scope=Scope.netns(f"/run/netns/{netns}")) as sensor:
        flush(sensor)
        inside = [run_child("connect", "127.0.0.1", str(port), netns=netns),
                  run_child("exec", str(script), netns=netns),
                  run_child("exec", "/bin/true", netns=netns)]
        outside = [run_child("connect", "127.0.0.1", str(port)),
                   run_child("exec", str(script)),
                   run_child("exec", "/bin/true")]
        assert [c.errno for c in inside[:2]] == [errno.EPERM, errno.EPERM]
        assert inside[2].returncode == 0
        assert outside[0].errno == errno.ECONNREFUSED  # not ours to block
        assert outside[1].returncode == 0 and "ran" in outside[1].stdout
        assert outside[2].returncode == 0

        inside_pids = {c.pid for c in inside}
        events = collect(sensor, lambda e: True, until=lambda evs: sum(
            isinstance(e, Exec) and e.filename == "/bin/true" for e in evs) >= 1)
        events += drain_for(sensor, 0.3)
        strangers = {(type(e).__name__, e.pid, getattr(e, "filename", "")) for e in events
                     if e.pid not in inside_pids}
        assert not strangers, f"events from outside the namespace: {strangers}"
        blocked = {(type(e).__name__, e.rule) for e in events if e.verdict == "block"}
        assert blocked == {("Connect", "test-connect"), ("Exec", "test-exec")}
        assert sensor.statistics().fanotify["denied"] == 1


@pytest.fixture
def cgroup():
    if _REASON is not None:
        pytest.skip(_REASON)
    path = cgroup2_root() / f"immune-kmod-{os.getpid()}"
    path.mkdir()
    yield path
    path.rmdir()


def test_cgroup_scope_sees_members_only(cgroup, private):
    policy, _, port = private
    with LinuxSensor(policy, scope=Scope.cgroup(cgroup)) as sensor:
        flush(sensor)
        member = run_child("cgroup", str(cgroup), "connect", "127.0.0.1", str(port))
        stranger = run_child("connect", "127.0.0.1", str(port))
        assert member.errno == errno.EPERM
        assert stranger.errno == errno.ECONNREFUSED
        events = collect(sensor, lambda e: isinstance(e, Connect))
        events += [e for e in drain_for(sensor, 0.2) if isinstance(e, Connect)]
        assert [(e.pid, e.verdict) for e in events] == [(member.pid, "block")]
        assert events[0].cgroup == os.stat(cgroup).st_ino


PAIR = """
import os, socket, sys
if sys.argv[3]:
    open(sys.argv[3], "w").write(str(os.getpid()))  # join a cgroup first
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
peer, _ = server.accept()
print("connected", flush=True)
client.settimeout(float(sys.argv[2]))
try:
    print("closed" if client.recv(1) == b"" else "data", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"""


def reset_on_reload(sensor, ours: tuple, theirs: tuple) -> tuple[str, str]:
    """Two processes each hold a connection to themselves: ours (on a port
    P, in the scope) and theirs (on P + 1, outside it), each given as
    (command prefix, receive timeout, cgroup.procs to join or "").  A reload
    blocks both ports: only ours may be noticed as cut; returns what each
    connection then saw."""
    port = free_port()
    procs = [subprocess.Popen([*prefix, sys.executable, "-S", "-c", PAIR, str(port + i), timeout, cg],
                              stdout=subprocess.PIPE, text=True)
             for i, (prefix, timeout, cg) in enumerate([ours, theirs])]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["connected", "connected"]
        sensor.reload(Policy.parse(f'[[rule]]\nname="cut"\nhook="connect"\naction="block"\n'
                                   f'match.address="127.0.0.1"\nmatch.port=[{port}, {port + 1}]'))
        seen = tuple(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    cuts = [e.detail for e in drain_for(sensor, 0.3) if isinstance(e, Notice) and e.what == "connection_cut"]
    assert cuts == [f"tcp connection to 127.0.0.1:{port} reset (rule cut)"]
    return seen


def test_netns_scope_resets_connections_inside_only(netns):
    """A block added at runtime ends the namespace's connections to that
    address, and not the same connections outside it."""
    with LinuxSensor(scope=Scope.netns(f"/run/netns/{netns}")) as sensor:
        seen = reset_on_reload(sensor, (["ip", "netns", "exec", netns], "10", ""), ([], "1.5", ""))
    assert seen == ("ConnectionAbortedError", "TimeoutError")  # theirs untouched


def test_cgroup_scope_resets_its_members_connections_only(cgroup):
    """A member of the scope's cgroup and a stranger in the same namespace
    hold the same kind of connection: a block added at runtime resets the
    member's only."""
    with LinuxSensor(scope=Scope.cgroup(cgroup)) as sensor:
        seen = reset_on_reload(sensor, ([], "10", f"{cgroup}/cgroup.procs"), ([], "1.5", ""))
    assert seen == ("ConnectionAbortedError", "TimeoutError")  # the stranger's untouched
