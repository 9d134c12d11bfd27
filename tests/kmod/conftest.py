"""Kernel test helpers: real processes (``run_child``), real events
(``collect``).  Kernel tests skip only when not root or without BTF, with
that reason; CI runs as root on a BTF kernel, so there they run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

CHILD = Path(__file__).with_name("_child.py")


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (CAP_BPF, CAP_SYS_ADMIN)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel tests need a kernel with BTF (/sys/kernel/btf/vmlinux)"
    return None


_REASON = _kernel_unavailable()
kernel = [pytest.mark.kernel,
          pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@dataclass
class Child:
    pid: int
    ppid: int
    errno: int | None  # None: it exec'd and never reported back
    returncode: int
    stdout: str
    info: dict


def run_child(*args: str, netns: str | None = None, cwd: str | None = None,
              timeout: float = 10) -> Child:
    cmd = [sys.executable, "-S", str(CHILD), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    lines = p.stdout.splitlines()
    if not lines:
        raise AssertionError(f"child {args} printed nothing; stderr: {p.stderr}")
    first = json.loads(lines[0])
    info: dict = {}
    err = None
    for line in lines[1:]:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            info.update(doc)
            err = doc.get("errno", err)
    return Child(first["pid"], first["ppid"], err, p.returncode, p.stdout, info)


def collect(sensor, keep: Callable, until: Callable[[list], bool] | None = None,
            timeout: float = 3.0) -> list:
    """Drain until the kept events satisfy ``until`` (default: at least one)."""
    until = until or bool
    kept: list = []
    deadline = time.monotonic() + timeout
    while True:
        sensor.wait(0.05)
        kept.extend(e for e in sensor.drain() if keep(e))
        if until(kept):
            return kept
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; kept events: {kept}")


def drain_for(sensor, seconds: float) -> list:
    """Everything drained in the next ``seconds``: to show that nothing more came."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        sensor.wait(0.05)
        out.extend(sensor.drain())
    return out


def flush(sensor) -> None:
    """Drop what is pending, so a test sees only its own events."""
    while sensor.drain(65536):
        pass


def executable_copy(directory: Path, name: str, tag: bytes = b"") -> Path:
    """A fresh copy of /bin/true (a new inode, so nothing cached applies);
    ``tag`` appended to the ELF changes its SHA-256 without breaking it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(Path("/bin/true").read_bytes() + tag)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def sensor():
    """The default policy, whole machine."""
    if _REASON is not None:
        pytest.skip(_REASON)
    from kmod import LinuxSensor

    s = LinuxSensor()
    s.start()
    yield s
    s.close()


@pytest.fixture
def workdir():
    """A scratch directory outside /tmp, /var/tmp and /dev/shm, whose
    executables the default policy lets run."""
    path = Path(tempfile.mkdtemp(prefix="immune-kmod-", dir="/var/lib"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def private_rules(directory: Path, port: int) -> str:
    """Policy TOML no other sensor on the machine shares: blocks exec under
    ``directory`` and connects to ``port``.  Tests that check what is *not*
    refused use it, so that another sensor running at the same time (another
    test suite's agent, say) cannot be mistaken for this one."""
    return f"""
[[rule]]
name = "test-exec"
hook = "exec"
action = "block"
match.path = "{directory}/**"

[[rule]]
name = "test-connect"
hook = "connect"
action = "block"
match.port = {port}
"""


def dropped_script(directory: Path, name: str = "dropped.sh") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\necho ran\n")
    path.chmod(0o755)
    return path
