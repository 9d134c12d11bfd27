"""A sensor process stopped by SIGTERM or killed by SIGKILL leaves nothing
behind: none of its programs or links stay in the kernel, and no call is
refused any more.  The sensor runs in its own process: ``python -m kmod run``
with rules of its own (see ``private_rules``)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kmod._libbpf import link_exists, prog_exists

from .conftest import dropped_script, free_port, kernel, private_rules, run_child

pytestmark = kernel


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def private(workdir):
    """(policy file, a script it blocks, a port it blocks, with a listener)."""
    port = free_port()
    policy = workdir / "policy.toml"
    policy.write_text(private_rules(workdir / "blocked", port))
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(16)
        yield policy, dropped_script(workdir / "blocked"), port


def assert_nothing_left(info, script, port):
    # the kernel frees programs asynchronously once their last reference goes
    wait_for(lambda: not any(map(prog_exists, info["programs"])), 5, "programs to unload")
    assert not any(map(link_exists, info["links"]))
    ran = run_child("exec", str(script), timeout=5)
    assert ran.returncode == 0 and "ran" in ran.stdout
    assert run_child("connect", "127.0.0.1", str(port)).errno == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_sensor_leaves_nothing(sig, private, tmp_path):
    policy, script, port = private
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "kmod", "run", "--policy", str(policy),
                             "--ready", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "the sensor to start")
        assert proc.poll() is None, proc.stderr.read()
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["programs"] and info["links"]

        blocked = run_child("exec", str(script))
        assert blocked.errno == errno.EPERM
        assert run_child("connect", "127.0.0.1", str(port)).errno == errno.EPERM

        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, err
        assert f"IMMUNE: [BLOCKED] exec {script} (pid={blocked.pid})" in out.splitlines()
    else:
        assert proc.returncode == -signal.SIGKILL
    assert_nothing_left(info, script, port)


FORKING_AGENT = """
import json, os, sys, time
import kmod
sensor = kmod.LinuxSensor(sys.argv[1])
sensor.start()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(json.dumps(dict(child=child, **sensor.attachments())), flush=True)
time.sleep(60)
"""


def test_forked_child_does_not_keep_the_sensor_alive(private):
    """A child forked without exec holds copies of every descriptor; if it
    kept them, the programs and the fanotify group would outlive the agent,
    and execs would wait for answers nobody gives."""
    policy, script, port = private
    proc = subprocess.Popen([sys.executable, "-c", FORKING_AGENT, str(policy)],
                            stdout=subprocess.PIPE, text=True)
    child = None
    try:
        info = json.loads(proc.stdout.readline())
        child = info["child"]
        assert run_child("exec", str(script)).errno == errno.EPERM
        proc.kill()
        proc.wait()
        os.kill(child, 0)  # the forked child still runs
        assert_nothing_left(info, script, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_frozen_agent_is_killed_by_its_lifeline_so_execs_go_on(private, tmp_path):
    """SIGSTOP stops the responder and the watchdog alike; the lifeline, a
    process outside the agent, kills it, and the kernel lets execs through."""
    policy, script, port = private
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "kmod", "run", "--policy", str(policy), "--ready", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "the sensor to start")
        assert proc.poll() is None, proc.stderr.read()
        assert run_child("exec", str(script)).errno == errno.EPERM
        proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        ran = run_child("exec", "/bin/true", timeout=30)  # would hang for ever without the lifeline
        waited = time.monotonic() - t0
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ran.returncode == 0 and waited < 5.0, waited
    assert proc.returncode == -signal.SIGKILL
    assert "has not run for 2s (stopped or frozen)" in proc.stderr.read()
