"""Fleet policy end to end: a bundle pushed at the hive to a label reaches
the agents that carry it, is enforced by their sensor without a restart,
and a tampered, replayed or broken one is refused while the last good one
stays in force."""

import errno
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest

import fleet
from hive import Store
from kmod import DEFAULT_POLICY
from tests.kmod.conftest import kernel

from .hosts import exec_errno, wait_until
from .nodes import free_port

pytestmark = kernel

BLOCK = '''
[[rule]]
name = "fleet-block-{tag}"
hook = "exec"
action = "block"
match.path = ["{folder}/**"]
'''


def cli(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "node.cli", *args, "--data", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert not check or r.returncode == 0, r.stderr
    return r


def agent_row(data: Path):
    store = Store(data / "hive.db", readonly=True)
    try:
        return store.agents()[0]
    finally:
        store.close()


@pytest.fixture
def script():
    """An executable outside /tmp (whose executables the default policy refuses)."""
    folder = Path(tempfile.mkdtemp(prefix="immune-fleet-", dir="/var/lib"))
    path = folder / "run.sh"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def forge(data: Path, version_from: Path | None = None, *, key: fleet.SigningKey | None = None,
          policy: str = "", name: str = "web", labels=None) -> int:
    """Put a bundle in the store as a broken or hostile hive would: signed by
    ``key`` (default: the hive's own), or the bytes of ``version_from``'s row."""
    store = Store(data / "hive.db")
    try:
        if version_from is not None:
            old = next(r for r in store.bundles() if r.version == version_from)
            return store.push_bundle(name, old.labels, lambda v: old.signed, actor="test")
        key = key or fleet.SigningKey.load_or_create(data / "keys")
        return store.push_bundle(name, labels or {"role": "web"}, lambda v: fleet.encode(key.sign(
            fleet.Bundle(name=name, version=v, labels=labels or {"role": "web"}, policy=policy))), actor="test")
    finally:
        store.close()


def test_a_pushed_policy_is_enforced_where_its_labels_are_and_bad_ones_are_refused(tmp_path, start_node, script):
    data = tmp_path / "data"
    node = start_node("demo", data, "--listen", f"tcp://127.0.0.1:{free_port()}")
    node.wait_ready(timeout=120)
    agent = socket.gethostname()
    wait_until(lambda: agent_row(data).online, what="the agent online")
    assert exec_errno(script) == 0

    # A bundle for role=web: this agent is not labelled so yet, so it does not get it.
    policy = tmp_path / "web.toml"
    policy.write_text(DEFAULT_POLICY.read_text() + BLOCK.format(tag="a", folder=script.parent))
    out = cli(data, "policy", "push", "web", "--labels", "role=web", "--policy", str(policy), "--note", "t").stdout
    assert "pushed web v1 for role=web" in out and "0 agents carry these labels" in out
    cli(data, "agents", "label", agent, "role=db")
    wait_until(lambda: agent_row(data).online, what="the agent still online")
    assert agent_row(data).bundle_version == 0 and exec_errno(script) == 0

    # Labelled role=web: it gets v1 and its sensor enforces it, without a restart.
    assert cli(data, "agents", "label", agent, "role=web").stdout.strip() == f"{agent}: role=web"
    wait_until(lambda: agent_row(data).bundle_version == 1, timeout=20, what="the agent running bundle v1")
    assert exec_errno(script) == errno.EPERM
    row = agent_row(data)
    assert row.policy_version.startswith("bundle v1:") and row.bundle_detail == ""
    table = cli(data, "agents").stdout
    assert " v1 " in table and "role=web" in table

    # Tampered (signed by another key), replayed (v1's bytes again) and broken
    # (a policy that does not parse) bundles: each refused, v1 stays in force.
    for make, why in ((lambda: forge(data, key=fleet.SigningKey.generate()), "its signature is not the hive's"),
                      (lambda: forge(data, version_from=1), "version 1 is not newer than the version running (1)"),
                      (lambda: forge(data, policy="[[rule]\n"), "its policy does not load")):
        v = make()
        wait_until(lambda: why in agent_row(data).bundle_detail, timeout=20, what=f"v{v} refused: {why}")
        assert agent_row(data).bundle_version == 1 and exec_errno(script) == errno.EPERM
    assert "bundles refused:" in cli(data, "agents").stdout

    # A good v5 lifts the block; history says who runs what.
    cli(data, "policy", "push", "web", "--labels", "role=web", "--policy", str(DEFAULT_POLICY))
    wait_until(lambda: agent_row(data).bundle_version == 5, timeout=20, what="the agent running bundle v5")
    wait_until(lambda: exec_errno(script) == 0, timeout=10, what="the block lifted")
    history = [json.loads(line) for line in cli(data, "policy", "history", "--json").stdout.splitlines()]
    assert [(h["version"], h["agents"]) for h in history][:2] == [(5, [agent]), (4, [])]
    assert cli(data, "policy", "diff", "web", "--labels", "role=web", "--policy", str(DEFAULT_POLICY)).stdout \
        == "web v5: no change\n"

    # Restarted, the agent runs its kept bundle before the hive says anything.
    assert node.stop() == 0
    kept = msgspec.msgpack.decode((data / "fleet" / "current.bundle").read_bytes(), type=fleet.Signed)
    assert fleet.verify(kept, (data / "keys" / "bundle.pub").read_bytes()).version == 5
