"""A running demo node follows its policy file: an edit is enforced without a
restart and shown by the hive as the agent's policy version; a broken edit
and SIGHUP neither stop the node nor lift the policy in force."""

import errno
import hashlib
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from hive import Store
from kmod import DEFAULT_POLICY
from tests.kmod.conftest import kernel

from .hosts import exec_errno, wait_until
from .nodes import free_port

pytestmark = kernel


def policy_version(data: Path) -> str:
    store = Store(data / "hive.db")
    try:
        return next((a.policy_version for a in store.agents()), "")
    finally:
        store.close()


@pytest.fixture
def scripts():
    """A folder outside /tmp (whose executables the default policy refuses)."""
    folder = Path(tempfile.mkdtemp(prefix="immune-e2e-", dir="/var/lib"))
    script = folder / "blocked" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    yield script
    shutil.rmtree(folder, ignore_errors=True)


def test_a_running_agent_follows_its_policy_file(tmp_path, start_node, scripts):
    policy = tmp_path / "edge.toml"
    policy.write_text(DEFAULT_POLICY.read_text())
    config = tmp_path / "immune.toml"
    config.write_text(f'[sensor]\npolicy = "{policy}"\n')
    data = tmp_path / "data"
    node = start_node("demo", data, "--listen", f"tcp://127.0.0.1:{free_port()}", "--config", str(config))
    node.wait_ready(timeout=120)
    first = f"edge.toml:{hashlib.sha256(policy.read_bytes()).hexdigest()[:12]}"
    wait_until(lambda: policy_version(data) == first, what="the first policy version")
    assert exec_errno(scripts) == 0

    policy.write_text(DEFAULT_POLICY.read_text() + f'\n[[rule]]\nname = "e2e-block"\nhook = "exec"\n'
                                                   f'action = "block"\nmatch.path = "{scripts.parent}/**"\n')
    wait_until(lambda: exec_errno(scripts) == errno.EPERM, timeout=3, what="the edited policy enforced")
    second = f"edge.toml:{hashlib.sha256(policy.read_bytes()).hexdigest()[:12]}"
    wait_until(lambda: policy_version(data) == second, what="the hive showing the new version")

    good = policy.read_text()
    policy.write_text(good.replace('action = "block"', 'action = "deny"'))
    wait_until(lambda: "policy.refused" in node.log(), what="the broken edit refused")
    node.proc.send_signal(signal.SIGHUP)  # asks again: refused again, and the node lives on
    wait_until(lambda: node.log().count("policy.refused") >= 2, what="SIGHUP handled")
    assert node.proc.poll() is None
    assert exec_errno(scripts) == errno.EPERM  # the good policy is still in force
    assert policy_version(data) == second
    assert node.stop() == 0
