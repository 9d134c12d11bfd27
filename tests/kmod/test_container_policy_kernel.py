"""A policy rule that selects a container's image, enforced for real: the
sensor loaded, a runc container started after it, the same file exec'd
inside (refused) and on the host (not refused by that rule).  Under the
kernel lock, as every test that loads the sensor."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from kmod import LinuxSensor, Policy, Scope
from tests import containers
from wire import Connect, Exec

from .conftest import _REASON, collect, drain_for, free_port, kernel

pytestmark = kernel


def test_a_rule_on_the_image_refuses_an_exec_in_that_container_only(tmp_path):
    if _REASON is not None:
        pytest.skip(_REASON)
    containers.require()
    image = f"immune-test/{uuid.uuid4().hex[:8]}:1"
    # The file is on the container's root, a directory of the host's root
    # filesystem, which the guard marks.  fanotify names it by its path in
    # the container or on the host, depending on the kernel's view: both.
    policy = Policy.parse(f'''
[[rule]]
name = "exec-in-image"
hook = "exec"
action = "block"
match.path = ["/opt/echo", "/**/rootfs/opt/echo"]
match.container_image = "immune-test/*"
match.container_runtime = "runc"
''')
    sensor = LinuxSensor(policy)
    sensor.start()
    try:
        with containers.Container(tmp_path, ["sleep", "120"],
                                  annotations={"org.opencontainers.image.ref.name": image}) as c:
            tool = c.rootfs / "opt" / "echo"  # busybox runs the applet its name says
            tool.parent.mkdir()
            shutil.copy2(containers.BUSYBOX, tool)
            # The host first: an allow it cached on the file would let the container's exec through.
            host = subprocess.run([str(tool), "host ran"], capture_output=True, text=True, timeout=10)
            assert (host.returncode, host.stdout) == (0, "host ran\n")
            inside = c.run("/opt/echo", "inside ran")
            assert inside.returncode != 0 and "inside ran" not in inside.stdout
            assert "operation not permitted" in inside.stderr.lower(), inside.stderr
            again = subprocess.run([str(tool), "host ran"], capture_output=True, text=True, timeout=10)
            assert again.returncode == 0
            assert c.run("/bin/echo", "still alive").stdout == "still alive\n"  # only that file, only there

            blocked = collect(sensor, lambda e: isinstance(e, Exec) and e.verdict == "block")
            (ev,) = blocked
            assert (ev.rule, ev.result) == ("exec-in-image", -errno.EPERM)
            assert ev.filename == "/opt/echo"
            later = [e for e in drain_for(sensor, 0.3) if isinstance(e, Exec) and e.rule == "exec-in-image"]
            assert later == []  # the host's two execs: no verdict of that rule
    finally:
        sensor.close()


def test_a_connect_rule_on_the_image_refuses_that_container_only(tmp_path):
    """A connect rule selecting an image, on a sensor watching the whole
    machine: the container started after the policy loaded is known by its
    runtime's state (written after its cgroup), and its cgroup's tag set
    then; the host's same connect is not refused."""
    if _REASON is not None:
        pytest.skip(_REASON)
    containers.require()
    image = f"immune-test/{uuid.uuid4().hex[:8]}:1"
    port = free_port()
    policy = Policy.parse(f'''
[[rule]]
name = "image-c2"
hook = "connect"
action = "block"
match.port = {port}
match.container_image = "immune-test/*"
''')
    sensor = LinuxSensor(policy)
    sensor.start()
    try:
        with containers.Container(tmp_path, ["sleep", "120"],
                                  annotations={"org.opencontainers.image.ref.name": image}) as c:
            deadline = time.monotonic() + 5
            while sensor.workloads().cgroups < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            stats = sensor.workloads()
            assert stats.cgroups >= 1, stats
            print(f"\ncontainer cgroup tagged {stats.window_max_us / 1000:.1f} ms after its mkdir")
            inside = c.run("nc", "127.0.0.1", str(port))
            assert "operation not permitted" in inside.stderr.lower(), inside.stderr
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.connect(("127.0.0.1", port))  # the host: no listener, and no refusal of ours
            (ev,) = collect(sensor, lambda e: isinstance(e, Connect) and e.port == port and e.verdict == "block")
            assert ev.rule == "image-c2"
    finally:
        sensor.close()


def test_a_sensor_scoped_to_a_container_refuses_its_connects_only(tmp_path):
    """A scope, as well as a rule's selector: the sock programs attach to
    the container's cgroup."""
    if _REASON is not None:
        pytest.skip(_REASON)
    containers.require()
    image = f"immune-test/{uuid.uuid4().hex[:8]}:1"
    port = free_port()
    policy = Policy.parse(f'[[rule]]\nname = "c2"\nhook = "connect"\naction = "block"\nmatch.port = {port}\n')
    with containers.Container(tmp_path, ["sleep", "120"],
                              annotations={"org.opencontainers.image.ref.name": image}) as c:
        sensor = LinuxSensor(policy, scope=Scope.container(f"image={image}"))
        sensor.start()
        try:
            inside = c.run("nc", "127.0.0.1", str(port))
            assert "operation not permitted" in inside.stderr.lower(), inside.stderr
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.connect(("127.0.0.1", port))  # the host: no listener, and no refusal of ours
            (ev,) = collect(sensor, lambda e: isinstance(e, Connect) and e.port == port)
            assert (ev.verdict, ev.rule, ev.address) == ("block", "c2", "127.0.0.1")
            assert [e for e in drain_for(sensor, 0.3) if isinstance(e, Connect) and e.port == port] == []
        finally:
            sensor.close()
