"""`immune-node agent --standalone`: the seed's four tested lines, from the
real launcher, with the real pids of the processes that made the calls."""

import errno
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.kmod.conftest import kernel, run_child

from .nodes import IMMUNE_NODE

pytestmark = kernel


def wait_for_line(path: Path, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in path.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} not printed; stdout was:\n{path.read_text()[-3000:]}")


@pytest.fixture
def standalone(tmp_path, start_node):
    out = tmp_path / "stdout"
    with open(out, "wb") as f:
        node = start_node("agent", tmp_path / "data", "--standalone", stdout=f)
        node.wait_ready(timeout=120)
    yield node, out
    assert node.stop() == 0


def test_the_seeds_four_lines(standalone):
    node, out = standalone
    script = Path("/tmp/test.sh")
    script.write_text("#!/bin/sh\necho should not run\n")
    script.chmod(0o755)
    try:
        child = run_child("exec", str(script))
        assert child.errno == errno.EPERM
        wait_for_line(out, f"IMMUNE: [BLOCKED] exec /tmp/test.sh (pid={child.pid})")
    finally:
        script.unlink()

    child = run_child("connect", "127.0.0.1", "4444")
    assert child.errno == errno.EPERM
    wait_for_line(out, f"IMMUNE: [BLOCKED] connect 127.0.0.1:4444 (pid={child.pid})")

    child = run_child("open", "/etc/shadow")
    assert child.errno == 0
    wait_for_line(out, f"IMMUNE: [AUDIT] open /etc/shadow (pid={child.pid})")

    child = run_child("setuid", "65534")
    assert child.errno == 0
    wait_for_line(out, f"IMMUNE: [AUDIT] setuid 0->65534 (pid={child.pid})")


def test_tap_shows_the_sensors_events(standalone, tmp_path):
    node, _ = standalone
    tap = subprocess.Popen([*IMMUNE_NODE, "tap", "agent.sensor", "--data", str(tmp_path / "data"), "--count", "1"],
                           stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # the watcher's subscription reaches the node
        child = run_child("open", "/etc/shadow")
        line = tap.communicate(timeout=15)[0].splitlines()[0]
    finally:
        tap.kill()
    doc = json.loads(line)
    assert doc["topic"] == "agent.sensor" and doc["msg"]["type"] == "events"
    # Some event of the machine: the open above, or anything that ran meanwhile.
    assert doc["msg"]["events"] and child.pid > 0
