"""A running node's own log: JSON lines with ECS names, or journald's native
socket (a real systemd-journald, in a mount namespace of the test's own)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.e2e.nodes import IMMUNE_NODE, RunningNode
from tests.ports import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private journald needs root (mount namespaces)")

JOURNALD = "/lib/systemd/systemd-journald"


def test_a_hive_and_its_child_processes_log_json_lines(tmp_path):
    node = RunningNode("hive", tmp_path / "hive", "--listen", f"tcp://127.0.0.1:{free_port()}",
                       "--log-format", "json")
    try:
        node.wait_ready(60)
    finally:
        assert node.stop() == 0
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    starts = [r for r in lines if r.get("event", {}).get("action") == "child.start"]
    assert starts and all(r["log"]["level"] in ("debug", "info", "warning", "error") for r in lines)
    assert "child" in starts[0]["immune"]
    # sentinel and correlate run in child processes: they log the same way
    assert {r["process"]["pid"] for r in lines} - {node.pid}, "no JSON line from a child process"


def _in_private_journal(tmp_path, command: list[str], *, journald: bool = True) -> subprocess.Popen:
    """``command`` in a mount namespace whose /run/systemd, /run/log and
    /var/log are private, with a systemd-journald of its own."""
    pidfile = tmp_path / "journald.pid"
    # journald's output to /dev/null: it outlives the command and would hold the pipes open
    start = (f"{JOURNALD} >/dev/null 2>&1 & echo $! > {pidfile}; "
             "for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done; "
             ) if journald else ""
    # An empty /var/log: the journal is kept in /run/log/journal, in memory.
    script = ("set -e; for d in /run/systemd /run/log /var/log; do mkdir -p $d; mount -t tmpfs tmpfs $d; done; "
              f"{start}exec \"$@\"")
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not os.path.exists(JOURNALD) and not os.environ.get("CI"),
                    reason="systemd-journald is not installed (CI fails instead of skipping)")
def test_a_hive_logs_to_journald_with_its_fields(tmp_path):
    data = tmp_path / "hive"
    listen = free_port()
    free_port()  # not the console's: the enrollment endpoint is listen's port + 1
    proc = _in_private_journal(tmp_path, [*IMMUNE_NODE, "hive", "--data", str(data), "--log-to", "journald",
                                          "--listen", f"tcp://127.0.0.1:{listen}",
                                          "--console-listen", f"https://127.0.0.1:{free_port()}"])
    journald = 0
    try:
        for _ in range(100):
            if (tmp_path / "journald.pid").exists() and (tmp_path / "journald.pid").read_text().strip():
                journald = int((tmp_path / "journald.pid").read_text())
                break
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        entries: list[dict] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            out = subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "journalctl", "-o", "json", "--no-pager",
                                  "SYSLOG_IDENTIFIER=immune-node"], capture_output=True, text=True)
            entries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            if len({e["_PID"] for e in entries}) > 1 and any(e.get("IMMUNE_EVENT") == "child.start" for e in entries):
                break
            time.sleep(0.5)
        starts = [e for e in entries if e.get("IMMUNE_EVENT") == "child.start"]
        assert starts, entries[:5]
        assert starts[0]["PRIORITY"] == "6" and starts[0]["IMMUNE_CHILD"] and starts[0]["IMMUNE_LOGGER"]
        assert len({e["_PID"] for e in entries}) > 1, "no entry from a child process"
        # nothing of it went to stderr
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and err == "", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if journald:
            try:
                os.kill(journald, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_no_journald_is_one_clear_line(tmp_path):
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is missing")
    proc = _in_private_journal(tmp_path, [*IMMUNE_NODE, "hive", "--data", str(tmp_path / "hive"),
                                          "--log-to", "journald"], journald=False)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err == ("immune-node: cannot log to journald at /run/systemd/journal/socket: No such file or "
                   "directory (is systemd-journald running?)\n")
