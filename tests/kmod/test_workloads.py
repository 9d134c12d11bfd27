"""Rules that select a workload by its cgroup (``match.cgroup``), enforced
for real: connect and bind in the kernel by the cgroup's tag, exec and open
by the fanotify guard.  A process in a cgroup made here is refused, one
outside it is not; a cgroup made after the policy loaded is covered too.
Under the kernel lock, as every test that loads the sensor."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
import uuid

import pytest

from kmod import LinuxSensor, Policy
from kmod._system import cgroup2_root
from wire import Bind, Connect

from .conftest import _REASON, collect, free_port, kernel, run_child

pytestmark = kernel


class Cgroups:
    """cgroups made under the v2 root for one test, removed after it."""

    def __init__(self):
        self.root = cgroup2_root()
        self.base = f"immune-wl-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.made: list = []

    def make(self, rel: str):
        path = self.root / self.base / rel if rel else self.root / self.base
        path.mkdir(parents=True)
        self.made.append(path)
        return path

    def rel(self, path) -> str:
        return "/" + str(path.relative_to(self.root))

    def close(self):
        for path in sorted(self.made, key=lambda p: -len(p.parts)):
            for _ in range(50):  # a child just gone may still count as a member for a moment
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.fixture
def cgroups():
    if _REASON is not None:
        pytest.skip(_REASON)
    c = Cgroups()
    c.make("")
    yield c
    c.close()


def sock_policy(glob: str, port: int) -> Policy:
    return Policy.parse(f'''
[[rule]]
name = "wl-connect"
hook = "connect"
action = "block"
match = {{ cgroup = "{glob}", address = "127.0.0.0/8", port = {port} }}

[[rule]]
name = "wl-bind"
hook = "bind"
action = "block"
match = {{ cgroup = "{glob}", port = {port} }}

[[rule]]
name = "everyone-audit"
hook = "connect"
action = "audit"
match = {{ address = "127.0.0.0/8", port = {port} }}
''')


def listener(port: int) -> socket.socket:
    s = socket.create_server(("127.0.0.2", port))
    return s


def test_connect_and_bind_refused_in_the_selected_cgroup_only(cgroups):
    port = free_port()
    inside = cgroups.make("model.service")
    sub = cgroups.make("model.service/worker")  # a unit's sub-cgroup is the unit's
    other = cgroups.make("other.service")
    with LinuxSensor(sock_policy(cgroups.rel(inside), port)) as sensor, listener(port):
        for where in (inside, sub):
            c = run_child("cgroup", str(where), "connect", "127.0.0.2", str(port))
            assert c.errno == errno.EPERM, (where, c.stdout)
        for where in (other, None):  # another workload, and the test's own cgroup
            prefix = ("cgroup", str(where)) if where else ()
            c = run_child(*prefix, "connect", "127.0.0.2", str(port))
            assert c.errno == 0, (where, c.stdout)
        # bind: the selected workload cannot take the port; the other can
        port2 = free_port()
        with_bind = sock_policy(cgroups.rel(inside), port2)
        sensor.reload(with_bind)
        assert run_child("cgroup", str(inside), "bind", "127.0.0.3", str(port2)).errno == errno.EPERM
        assert run_child("cgroup", str(other), "bind", "127.0.0.3", str(port2)).errno == 0
        assert run_child("cgroup", str(inside), "bind", "::1", str(port2)).errno == errno.EPERM  # the IPv6 trie
        assert run_child("cgroup", str(other), "bind", "::1", str(port2)).errno == 0
        events = collect(sensor, lambda e: isinstance(e, (Connect, Bind)) and e.port in (port, port2),
                         until=lambda evs: len(evs) >= 8)
        verdicts = sorted((type(e).__name__, e.verdict, e.rule) for e in events)
        assert verdicts == [("Bind", "allow", ""), ("Bind", "allow", ""),
                            ("Bind", "block", "wl-bind"), ("Bind", "block", "wl-bind"),
                            ("Connect", "audit", "everyone-audit"), ("Connect", "audit", "everyone-audit"),
                            ("Connect", "block", "wl-connect"), ("Connect", "block", "wl-connect")]


def test_a_cgroup_made_after_the_policy_loaded_is_covered(cgroups):
    """A unit restarted gets a new cgroup: tagged at its mkdir by its whole
    path (no wildcard), or by the workload thread for a glob."""
    port = free_port()
    exact = cgroups.rel(cgroups.root / cgroups.base / "late.service")
    globbed = cgroups.rel(cgroups.root / cgroups.base) + "/batch-*.service"
    policy = Policy.parse(f'''
[[rule]]
name = "exact"
hook = "connect"
action = "block"
match = {{ cgroup = "{exact}", port = {port} }}

[[rule]]
name = "globbed"
hook = "connect"
action = "block"
match = {{ cgroup = "{globbed}", port = {port} }}
''')
    with LinuxSensor(policy) as sensor, listener(port):
        late = cgroups.make("late.service")  # no gap: tagged before mkdir returns
        assert run_child("cgroup", str(late), "connect", "127.0.0.2", str(port)).errno == errno.EPERM
        inner = cgroups.make("late.service/inner")  # and its sub-cgroups, from their parent
        assert run_child("cgroup", str(inner), "connect", "127.0.0.2", str(port)).errno == errno.EPERM
        # The kernel gave both the right tag at mkdir: the thread, told of them, changed nothing.
        deadline = time.monotonic() + 2
        while sensor.workloads().news < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sensor.workloads().news >= 2 and sensor.workloads().corrected == 0, sensor.workloads()
        batch = cgroups.make("batch-7.service")
        deadline = time.monotonic() + 2
        while sensor.workloads().corrected < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        stats = sensor.workloads()
        assert stats.corrected >= 1 and 0 < stats.window_last_us < 1_000_000, stats
        print(f"\nglob-selected cgroup tagged {stats.window_last_us:.0f} us after its mkdir")
        assert run_child("cgroup", str(batch), "connect", "127.0.0.2", str(port)).errno == errno.EPERM
        bystander = cgroups.make("web.service")
        assert run_child("cgroup", str(bystander), "connect", "127.0.0.2", str(port)).errno == 0
        events = collect(sensor, lambda e: isinstance(e, Connect) and e.port == port,
                         until=lambda evs: len(evs) >= 4)
        assert sorted(e.rule for e in events) == ["", "exact", "exact", "globbed"]


def test_order_holds_across_workloads(cgroups):
    """First matching rule wins, for a workload's rules and everyone's alike:
    an earlier audit for everyone beats a later block of the workload's."""
    port = free_port()
    inside = cgroups.make("a.service")
    policy = Policy.parse(f'''
[[rule]]
name = "first-audit"
hook = "connect"
action = "audit"
match = {{ address = "127.0.0.2", port = {port} }}

[[rule]]
name = "then-block"
hook = "connect"
action = "block"
match = {{ cgroup = "{cgroups.rel(inside)}", address = "127.0.0.0/8" }}
''')
    with LinuxSensor(policy) as sensor, listener(port):
        assert run_child("cgroup", str(inside), "connect", "127.0.0.2", str(port)).errno == 0
        with socket.create_server(("127.0.0.3", port)):
            assert run_child("cgroup", str(inside), "connect", "127.0.0.3", str(port)).errno == errno.EPERM
            assert run_child("connect", "127.0.0.3", str(port)).errno == 0
        events = collect(sensor, lambda e: isinstance(e, Connect) and e.port == port,
                         until=lambda evs: len(evs) >= 3)
        assert sorted((e.address, e.rule) for e in events) == [
            ("127.0.0.2", "first-audit"), ("127.0.0.3", ""), ("127.0.0.3", "then-block")]


def test_exec_and_open_select_the_cgroup(cgroups, tmp_path):
    inside = cgroups.make("model.service")
    other = cgroups.make("other.service")
    tool = tmp_path / "tool"
    shutil.copy2("/bin/true", tool)
    secret = tmp_path / "secret"
    secret.write_text("key")
    policy = Policy.parse(f'''
[[rule]]
name = "no-tool"
hook = "exec"
action = "block"
match = {{ cgroup = "{cgroups.rel(inside)}", path = "{tool}" }}

[[rule]]
name = "no-secret"
hook = "open"
action = "block"
match = {{ cgroup = "{cgroups.rel(inside)}", path = "{secret}" }}
''')
    with LinuxSensor(policy):
        # outside first: a verdict cached on the file for everyone would let the inside through
        assert run_child("cgroup", str(other), "open", str(secret)).errno == 0
        assert run_child("cgroup", str(other), "exec", str(tool)).returncode == 0
        assert run_child("cgroup", str(inside), "open", str(secret)).errno == errno.EPERM
        assert run_child("cgroup", str(inside), "exec", str(tool)).errno == errno.EPERM
        assert run_child("open", str(secret)).errno == 0
        assert run_child("exec", str(tool)).returncode == 0


HOLDER = """
import socket, sys
open(sys.argv[2], "w").write(__import__("os").getpid().__str__())  # join the cgroup first
s = socket.create_connection(("127.0.0.2", int(sys.argv[1])))
print("connected", flush=True)
s.settimeout(10)
try:
    print("closed" if s.recv(1) == b"" else "data", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"""


def test_a_reload_cuts_the_selected_workloads_connections_only(cgroups):
    """A block of a workload's peer added at runtime ends that workload's
    open connections to it (the cut iterator finds the socket's cgroup
    tag); another workload's connection to the same peer lives on."""
    import subprocess
    import sys

    inside, other = cgroups.make("model.service"), cgroups.make("web.service")
    with socket.create_server(("127.0.0.2", 0)) as server, LinuxSensor(Policy.parse("")) as sensor:
        port = server.getsockname()[1]
        holders, peers = {}, []
        try:
            for name, where in (("inside", inside), ("other", other)):
                holders[name] = subprocess.Popen(
                    [sys.executable, "-S", "-c", HOLDER, str(port), str(where / "cgroup.procs")],
                    stdout=subprocess.PIPE, text=True)
                assert holders[name].stdout.readline().strip() == "connected"
                peers.append(server.accept()[0])  # kept open: the holder waits on it
            sensor.reload(Policy.parse(f'''
[[rule]]
name = "model-peer"
hook = "connect"
action = "block"
match = {{ cgroup = "{cgroups.rel(inside)}", address = "127.0.0.2", port = {port} }}
'''))
            assert holders["inside"].stdout.readline().strip() == "ConnectionAbortedError"
            peers[1].sendall(b"x")  # the other workload's connection lives on
            assert holders["other"].stdout.readline().strip() == "data"
        finally:
            for s in peers:
                s.close()
            for p in holders.values():
                p.kill()
                p.wait()
