"""Learned self under the real sensor: a Python "model server" (HTTP on
loopback, reads its model file for each request, asks a feature store) and a
static HTTP service, each in its own cgroup, learned by a real agent; the
same benign load again raises nothing; an attack through the model server (a
shell it spawns, a new outbound connection, a read of /etc/shadow) is
alerted as novel with its technique; the policy proposed from the profile,
pushed through the fleet in audit then block mode to the agent that watches
both workloads, refuses the model server's attack and lets its load run,
while the other workload doing the same (a shell, a new connect) is not
refused: the proposal's rules select the model server's cgroup."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hive import Store
from hive.playbook import Records
from kmod import DEFAULT_POLICY
from kmod._system import cgroup2_root
from tests.kmod.conftest import kernel

from .hosts import enroll, wait_until
from .nodes import free_port

pytestmark = kernel

MODEL_SERVER = r'''
import http.server, json, os, socket, subprocess, sys
model, port, feature_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
open(sys.argv[4], "w").write(str(os.getpid()))  # join the workload's cgroup before anything else

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        out = {}
        if self.path == "/predict":
            with open(model, "rb") as f:
                out["weights"] = len(f.read())
            with socket.create_connection(("127.0.0.1", feature_port), timeout=2) as s:
                out["feature"] = s.recv(16).decode()
        elif self.path.startswith("/attack/"):  # what an exploited handler would do
            try:
                kind = self.path.split("/")[2]
                if kind == "shell":
                    out["shell"] = subprocess.run(["/bin/sh", "-c", "id -u"], capture_output=True, text=True).stdout
                elif kind == "lingering":  # a shell that stays a while, as one an attacker works in
                    out["code"] = subprocess.run(["/bin/sh", "-c", "sleep 20; id -u"], capture_output=True).returncode
                elif kind == "connect":
                    socket.create_connection(("127.0.0.3", feature_port), timeout=2).close()
                elif kind == "secret":
                    out["secret"] = len(open("/etc/shadow").read())
            except OSError as e:
                out["errno"] = e.errno
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def cli(data: Path, *args: str, ok: bool = True) -> str:
    r = subprocess.run([sys.executable, "-m", "node.cli", *args, "--data", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode == 0) == ok, r.stderr
    return r.stdout


def store(data: Path) -> Store:
    return Store(data / "hive.db", readonly=True)


def novel_alerts(data: Path) -> list:
    s = store(data)
    try:
        return s.alerts(level="novel", limit=1000)
    finally:
        s.close()


class Feature:
    """The model server's peer: a feature store answering on loopback."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"f=0.5")


@pytest.fixture
def cgroups():
    root = cgroup2_root() / f"immune-self-{os.getpid()}"
    paths = [root / "model", root / "web"]
    for p in (root, *paths):
        p.mkdir()
    yield root, paths
    for p in (*paths, root):
        for pid in (p / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        wait_until(lambda: not (p / "cgroup.procs").read_text().strip(), timeout=10, what=f"{p} empty")
        p.rmdir()


class Workloads:
    def __init__(self, tmp: Path, cgroups: list[Path], feature: Feature) -> None:
        self.tmp = tmp
        self.model_cg, self.web_cg = cgroups
        self.model = tmp / "model.bin"
        self.model.write_bytes(os.urandom(4096))
        (tmp / "site").mkdir()
        (tmp / "site" / "index.html").write_text("<p>hello</p>")
        (tmp / "server.py").write_text(MODEL_SERVER)
        self.model_port, self.web_port = free_port(), free_port()
        self.feature = feature
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.procs = [
            subprocess.Popen([sys.executable, str(self.tmp / "server.py"), str(self.model), str(self.model_port),
                              str(self.feature.port), str(self.model_cg / "cgroup.procs")]),
            subprocess.Popen([sys.executable, "-c", "import os, sys, runpy; open(sys.argv[1], 'w').write(str(os.getpid())); "
                              "sys.argv = ['http.server', sys.argv[2], '--bind', '127.0.0.1', '--directory', sys.argv[3]]; "
                              "runpy.run_module('http.server', run_name='__main__')",
                              str(self.web_cg / "cgroup.procs"), str(self.web_port), str(self.tmp / "site")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        for port in (self.model_port, self.web_port):
            wait_until(lambda: _listening(port), timeout=10, what=f"a server on {port}")

    def get(self, port: int, path: str) -> dict | str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read().decode()
        return json.loads(body) if port == self.model_port else body

    def benign(self, requests: int = 5) -> None:
        self.start()
        try:
            for _ in range(requests):
                assert self.get(self.model_port, "/predict") == {"weights": 4096, "feature": "f=0.5"}
                assert "hello" in self.get(self.web_port, "/index.html")
        finally:
            self.stop()

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(timeout=10)
        self.procs = []


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_workloads_learned_attack_novel_and_refused_by_the_proposed_policy(tmp_path, start_node, cgroups):
    root, paths = cgroups
    hive_dir, agent_dir = tmp_path / "hive", tmp_path / "agent"
    port = free_port()
    listen = ["--listen", f"tcp://127.0.0.1:{port}"]
    hive = start_node("hive", hive_dir, *listen)
    hive.wait_ready(timeout=120)
    enroll(hive_dir, agent_dir, "self-1")
    # The sensor reports the opens its policy names: the model's folder too.
    policy = tmp_path / "policy.toml"
    policy.write_text(DEFAULT_POLICY.read_text() + f'''
[[rule]]
name = "model-files"
hook = "open"
action = "audit"
match.path = "{tmp_path}/*.bin"
''')
    config = tmp_path / "agent.toml"
    config.write_text("[profile]\nlearn_hours = 0.001\nstable_hours = 0.001\n")  # 3.6 s each
    agent = start_node("agent", agent_dir, "--hive", f"tcp://127.0.0.1:{port}", "--config", str(config),
                       "--scope", f"cgroup:{root}", "--policy", str(policy))
    agent.wait_ready(timeout=120)
    feature = Feature()
    w = Workloads(tmp_path, paths, feature)
    model_w, web_w = (f"cgroup:{os.stat(p).st_ino}" for p in paths)

    # Learning: one run of the benign load, then quiet until both are stable.
    w.benign()

    def states() -> dict[str, str]:
        return {line.split()[1]: line.split()[2] for line in cli(hive_dir, "profile", "list").splitlines()[1:]
                if line.startswith("self-1")}

    wait_until(lambda: states().get(model_w) == "stable" and states().get(web_w) == "stable", timeout=60,
               what="both workloads stable")
    shown = cli(hive_dir, "profile", "show", model_w)
    assert "bind tcp 127.0.0.1:" in shown and f"connect tcp 127.0.0.1:{feature.port}" in shown, shown
    assert "read /tmp/**" in shown or f"read {w.model}" in shown, shown

    # The same benign load again: nothing is novel.
    w.benign()
    time.sleep(3)  # its events have reached the hive by now
    assert novel_alerts(hive_dir) == []

    # The attack through the model server: each new behaviour alerted, tagged.
    w.start()
    try:
        assert w.get(w.model_port, "/attack/shell")["shell"].strip() == "0"
        w.get(w.model_port, "/attack/connect")
        assert w.get(w.model_port, "/attack/secret")["secret"] > 0
    finally:
        w.stop()
    wait_until(lambda: len({a.rule_id for a in novel_alerts(hive_dir)}) >= 3, timeout=30,
               what="three kinds of novelty at the hive")
    alerts = novel_alerts(hive_dir)
    by_rule = {a.rule_id: a for a in alerts}
    assert "attack.t1059" in by_rule["profile.exec"].tags and "sh (parent" in by_rule["profile.exec"].detail, \
        by_rule["profile.exec"].detail
    assert "attack.t1071" in by_rule["profile.connect"].tags and "127.0.0.3" in by_rule["profile.connect"].detail
    assert "attack.t1552.001" in by_rule["profile.read"].tags and "/etc/shadow" in by_rule["profile.read"].detail
    assert "the profile held" in by_rule["profile.connect"].detail
    assert {a.agent for a in alerts} == {"self-1"}
    print(f"\nnovelty: {len(alerts)} alerts: " + "; ".join(a.title for a in alerts))

    # An operator accepts one of them (the handler's own `id`): one command,
    # the agent's profile takes it, and it is no longer novel.
    [id_alert] = [a for a in alerts if "exec /usr/bin/id" in a.title]
    assert "accepting into" in cli(hive_dir, "profile", "accept", id_alert.id[:12])

    def accepted() -> list[dict]:
        return [a for a in map(json.loads, cli(hive_dir, "actions", "--json").splitlines())
                if a["action"] == "update_profile" and a["state"] == "done"]

    wait_until(accepted, timeout=30, what="the agent's answer to update_profile")
    wait_until(lambda: "exec /usr/bin/id (parent /bin/sh" in cli(hive_dir, "profile", "show", model_w), timeout=30,
               what="the accepted item in the profile the hive holds")

    assert f"  cgroup /{root.name}/model\n" in cli(hive_dir, "profile", "show", model_w)
    # The policy proposed from the model server's profile, first in audit mode.
    os.chdir(tmp_path)
    for mode in ("audit", "block"):
        out = tmp_path / f"proposal-{mode}.toml"
        # A cgroup:ID workload: its name says no path, its profile carries
        # the one the agent found when it began learning, so no --cgroup.
        diff = cli(hive_dir, "profile", "propose", model_w, "--mode", mode, "--base", str(policy), "--out", str(out))
        assert f'+action = "{mode}"' in diff
        assert diff.count(f'+match.cgroup = ["/{root.name}/model"]') == diff.count("+[[rule]]") >= 5, diff
        assert "pushed model" in cli(hive_dir, "policy", "push", "model", "--policy", str(out))
        version = 1 if mode == "audit" else 2

        def running() -> int:
            s = store(hive_dir)
            try:
                return next((a.bundle_version for a in s.agents() if a.id == "self-1"), 0)
            finally:
                s.close()

        wait_until(lambda: running() == version, timeout=30, what=f"the agent running the {mode} proposal")
        w.start()
        try:
            for _ in range(3):  # the load runs
                assert w.get(w.model_port, "/predict") == {"weights": 4096, "feature": "f=0.5"}
            shell = w.get(w.model_port, "/attack/shell")
            secret = w.get(w.model_port, "/attack/secret")
            connect = w.get(w.model_port, "/attack/connect")
        finally:
            w.procs[1].terminate()  # the web service is not the proposal's workload
            w.stop()
        if mode == "audit":  # what would have been refused: reported, let through
            assert shell["shell"].strip() == "0" and secret["secret"] > 0
            assert connect.get("errno") == errno.ECONNREFUSED  # nobody listens there; not refused by the sensor

            def audited() -> set[str]:
                s = store(hive_dir)
                try:
                    return {e.rule for e in s.events(agent="self-1", limit=5000) if e.rule.startswith("profile-")}
                finally:
                    s.close()

            wait_until(lambda: {r.split("-", 3)[-1] for r in audited()} >= {"exec-other", "connect-other",
                                                                               "secrets-other"},
                       timeout=30, what="the proposal's audit verdicts on the exec, the connect and the read")
            print(f"audit mode verdicts: {sorted(audited())}")
        else:
            assert shell.get("errno") == errno.EPERM, shell
            assert secret.get("errno") == errno.EPERM, secret
            assert connect.get("errno") == errno.EPERM, connect
            # The other workload on the same agent, doing the same: not the proposal's to refuse.
            other = neighbour(w.web_cg, feature.port)
            assert other == {"connect": errno.ECONNREFUSED, "shell": "0"}, other
            # ... and the model server's load still runs after all that
            w.start()
            try:
                assert w.get(w.model_port, "/predict") == {"weights": 4096, "feature": "f=0.5"}
            finally:
                w.stop()


NEIGHBOUR = r'''
import errno, json, os, socket, subprocess, sys
open(sys.argv[1], "w").write(str(os.getpid()))  # the web workload's cgroup
out = {}
try:
    socket.create_connection(("127.0.0.3", int(sys.argv[2])), timeout=2).close()
    out["connect"] = 0
except OSError as e:
    out["connect"] = e.errno
try:
    out["shell"] = subprocess.run(["/bin/sh", "-c", "id -u"], capture_output=True, text=True).stdout.strip()
except OSError as e:
    out["shell"] = e.errno
print(json.dumps(out))
'''


def neighbour(cgroup: Path, port: int) -> dict:
    """A process of the other workload making the attack's connect and shell."""
    r = subprocess.run([sys.executable, "-c", NEIGHBOUR, str(cgroup / "cgroup.procs"), str(port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_enforcing_workload_has_a_shell_it_spawns_killed_by_the_agent_alone(tmp_path, start_node, cgroups):
    """``enforcing`` made real on the agent: the model server's benign load
    runs untouched; with the hive stopped, a shell it spawns is killed by
    the agent itself, and the novelty alert that reaches the hive when it is
    back says so, with the kill in the audit trail and its result."""
    root, paths = cgroups
    hive_dir, agent_dir = tmp_path / "hive", tmp_path / "agent"
    port = free_port()
    listen = ["--listen", f"tcp://127.0.0.1:{port}"]
    hive = start_node("hive", hive_dir, *listen)
    hive.wait_ready(timeout=120)
    enroll(hive_dir, agent_dir, "self-2")
    config = tmp_path / "agent.toml"
    config.write_text("[profile]\nlearn_hours = 0.001\nstable_hours = 0.001\n")  # 3.6 s each; kill by default
    agent = start_node("agent", agent_dir, "--hive", f"tcp://127.0.0.1:{port}", "--config", str(config),
                       "--scope", f"cgroup:{root}")
    agent.wait_ready(timeout=120)
    w = Workloads(tmp_path, paths, Feature())
    model_w = f"cgroup:{os.stat(paths[0]).st_ino}"

    def state() -> str:
        return next((line.split()[2] for line in cli(hive_dir, "profile", "list").splitlines()[1:]
                     if line.startswith("self-2") and line.split()[1] == model_w), "")

    w.benign()
    wait_until(lambda: state() == "stable", timeout=60, what="the model server stable")
    assert "enforcing" in cli(hive_dir, "profile", "state", model_w, "enforcing")
    wait_until(lambda: state() == "enforcing", timeout=30, what="the model server enforcing on the agent")

    # Its benign load runs untouched (5 requests each, every answer checked).
    w.benign()

    # The hive goes away; a shell the server spawns is killed by the agent alone.
    assert hive.stop() == 0
    w.start()
    try:
        started = time.monotonic()
        answer = w.get(w.model_port, "/attack/lingering")
        elapsed = time.monotonic() - started
        assert answer == {"code": -9}, answer  # SIGKILL, long before its 20 s
        assert w.get(w.model_port, "/predict") == {"weights": 4096, "feature": "f=0.5"}  # the server lives on
    finally:
        w.stop()
    print(f"\nenforcing: the spawned shell killed {elapsed * 1000:.0f} ms after the request, hive down")
    assert "profile.enforce" in agent.log()

    # Back: the alert says what was done; the kill is in the audit trail with its result.
    hive = start_node("hive", hive_dir, *listen)
    hive.wait_ready(timeout=120)

    def reported():
        s = store(hive_dir)
        try:
            return ([a for a in s.alerts(level="novel", limit=1000) if a.detail.startswith("enforced: ")],
                    [a for e in s.events(agent="self-2", kind="edge", limit=1000) if e.answered for a in e.actions],
                    # the kill's own record: the state change left one before it
                    [r for r in Records(s.db).audit(limit=1000)
                     if r.actor == "agent:self-2" and r.what.startswith("kill_process")])
        finally:
            s.close()

    wait_until(lambda: all(reported()), timeout=30, what="the enforced alert, its result and its audit record")
    alerts, results, audit = reported()
    shell = next(a for a in alerts if a.rule_id == "profile.exec" and "exec /usr/bin/dash" in a.title)
    assert shell.edge and shell.agent == "self-2" and "attack.t1059" in shell.tags
    assert shell.detail.startswith("enforced: kill pid ") and "and its children (/usr/bin/dash)" in shell.detail
    pid = int(shell.detail.split()[3])
    assert ("kill_process", True, "killed") in {(a.action, a.ok, a.detail[:6]) for a in results}, results
    assert any(str(pid) in a.detail for a in results if a.ok), (pid, results)
    assert any(r.what.startswith("kill_process") and f'"pid":{pid}' in r.what and "enforcing" in r.why
               for r in audit), audit
