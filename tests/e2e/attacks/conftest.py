"""One demo node for the whole attack suite, and what the procedures need around it.

The node runs the default policy, the built-in pack and SigmaHQ's rules, with every playbook
in dry-run: a reverse shell's playbook would otherwise kill the shell and block the address it
called, and a credential playbook collect evidence, between procedures that must not see each
other's answers (the playbooks are proven in tests/e2e/test_response.py)."""

from __future__ import annotations

import http.server
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmod import cgroup2_mount
from tests.e2e.nodes import RunningNode, free_port

WATCHED_FOLDERS = ("/root/.ssh", "/etc/sudoers.d")
"""Folders the default policy watches that may not exist: the sensor watches folders that exist
when its policy loads, so they are made (and removed after) before the node starts."""
FAKE_KEYS = ("/root/.ssh/id_rsa", "/root/.ssh/id_ed25519")
"""Keys for the procedures to steal (cp reads only a file that exists): made where absent,
with text no SSH client can use, and removed after."""


@dataclass(frozen=True)
class AttackNode:
    db: Path
    pid: int
    """The node's pid: the agent, whose family the sensor protects."""


@pytest.fixture(scope="module")
def attack_node(tmp_path_factory):
    """One demo node for a module's simulations, stopped at its end: its sensor's
    machine-wide policy (execs under /tmp, fileless execs) must not outlive them,
    or later tests of the same session run under it."""
    made = []
    for folder in map(Path, WATCHED_FOLDERS):
        if not folder.exists():
            folder.mkdir(mode=0o700 if folder.name == ".ssh" else 0o755)
            made.append(folder)
    for key in map(Path, FAKE_KEYS):
        if not key.exists():
            key.write_text("not a key: SENTINEL IMMUNE attack simulation\n")
            key.chmod(0o600)
            made.append(key)
    data = tmp_path_factory.mktemp("attack-node")
    config = data / "immune.toml"
    config.write_text("[hive]\ndry_run = true\n")
    node = RunningNode("demo", data, "--config", str(config), "--listen", f"tcp://127.0.0.1:{free_port()}")
    try:
        node.wait_ready(timeout=120)
        yield AttackNode(data / "hive.db", node.pid)
        assert node.stop() == 0
    finally:
        node.kill()
        for path in reversed(made):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def web(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving payload.sh (a harmless script) and tool."""
    root = tmp_path_factory.mktemp("web")
    (root / "payload.sh").write_text("true\n")
    shutil.copy("/bin/true", root / "tool")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **kw: _Quiet(*a, directory=str(root), **kw))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def victim():
    """A process of ours for the procedures that read or trace another process."""
    proc = subprocess.Popen(["sleep", "3600"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def attack_root():
    home = Path(pwd.getpwuid(0).pw_dir)
    root = Path(tempfile.mkdtemp(prefix="immune-attacks-", dir=home if home.is_dir() else "/root"))
    saved = {Path("/root/.ssh/authorized_keys"): root / "authorized_keys.saved",
             Path("/root/.bash_history"): root / "bash_history.saved"}
    for path, backup in saved.items():
        if path.exists() and not path.is_symlink():
            shutil.copy2(path, backup)
    yield root
    for path, backup in saved.items():
        if backup.exists():
            path.unlink(missing_ok=True)
            shutil.copy2(backup, path)
    shutil.rmtree(root, ignore_errors=True)


class Cgroup:
    """A cgroup v2 folder of one procedure: the events of its processes carry its id."""

    def __init__(self) -> None:
        root = cgroup2_mount("/proc")
        if not root:
            pytest.fail("needs a cgroup v2 hierarchy to tell a procedure's events apart")
        self.path = Path(root) / f"immune-attack-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        self.id = os.stat(self.path).st_ino

    def remove(self) -> None:
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:  # a straggler still in it
                subprocess.run(["sleep", "0.1"])
