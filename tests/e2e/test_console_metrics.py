"""A real ``immune-node hive`` with its console and two outputs: /metrics
scraped over HTTPS with a viewer's token (httpx) and parsed by
prometheus-client's parser, an anonymous scrape refused; alerts reach a TCP
syslog listener and a rotating file, and a restarted hive resumes each
output from its cursor."""

from __future__ import annotations

import json
import ssl
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import wire
from hive import Store
from tests.e2e.nodes import IMMUNE_NODE, RunningNode
from tests.hive.outputs.receivers import ThreadedSyslog
from tests.kmod.conftest import kernel
from tests.ports import free_port, tcp_endpoint

PASSWORD = "correct horse battery"
pytestmark = pytest.mark.slow


def add_alerts(db, first: int, n: int) -> None:
    store = Store(db)
    try:
        store.ingest([], [wire.Alert(id=f"a{i}", rule_id="r-e2e", title=f"alert {i}", level="high", agent="web1",
                                     tags=["attack.t1059"], time=time.time_ns()) for i in range(first, first + n)])
    finally:
        store.close()


def wait_for(predicate, timeout=30.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def scrape(node, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(verify=ssl.create_default_context(cafile=node.data / "console.crt")) as c:
        return c.get(f"https://127.0.0.1:{node.console_port}/metrics", headers=headers)


def samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_metrics_and_outputs_of_a_real_hive_across_a_restart(tmp_path):
    data = tmp_path / "hive"
    data.mkdir()
    subprocess.run([*IMMUNE_NODE, "users", "add", "prom", "--role", "viewer", "--data", str(data)],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60)
    token = subprocess.run([*IMMUNE_NODE, "users", "token", "prom", "--data", str(data)], text=True, check=True,
                           capture_output=True, timeout=60).stdout.strip()
    port = free_port()
    listener = ThreadedSyslog(port)
    archive = tmp_path / "archive" / "alerts.json"
    archive.parent.mkdir()
    config = tmp_path / "immune.toml"
    config.write_text(f'''
[[outputs]]
name = "siem"
kind = "syslog"
target = "tcp://127.0.0.1:{port}"
retry_max = 1.0

[[outputs]]
name = "archive"
kind = "file"
target = "{archive}"
max_mb = 1
keep = 2
''')
    listen = tcp_endpoint()
    node = RunningNode("hive", data, "--config", str(config), "--listen", listen)
    try:
        node.wait_ready(120)
        add_alerts(data / "hive.db", 0, 5)
        wait_for(lambda: len(listener.messages) >= 5, what="5 alerts at the syslog listener")

        assert scrape(node, None).status_code == 401
        r = scrape(node, token)
        assert r.status_code == 200, r.text
        m = samples(r.text)
        names = {dict(s.labels).get("actor", "").rpartition(".")[2] for s in m["immune_actor_messages_in_total"]}
        assert {"store", "router", "registry", "console", "output-siem", "output-archive"} <= names
        assert all(s.value == 1 for s in m["immune_actor_running"])
        sent = {s.labels["output"]: s.value for s in m["immune_output_sent_total"]}
        assert sent == {"siem": 5, "archive": 5}
        assert {s.labels["output"]: s.value for s in m["immune_output_backlog"]} == {"siem": 0, "archive": 0}
        assert [s.value for s in m["immune_rule_hits"] if s.labels["rule"] == "r-e2e"] == [5]
        assert [s.value for s in m["immune_alerts"] if s.labels["level"] == "high"] == [5]
        assert any(s.labels["route"] == "/metrics" and s.labels["status"] == "401"
                   for s in m["immune_console_requests_total"])
    finally:
        assert node.stop() == 0

    add_alerts(data / "hive.db", 5, 3)  # while the hive is down
    node = RunningNode("hive", data, "--config", str(config), "--listen", listen)
    try:
        node.wait_ready(120)
        wait_for(lambda: len(listener.messages) >= 8, what="the 3 alerts stored while the hive was down")
        add_alerts(data / "hive.db", 8, 2)
        wait_for(lambda: len(listener.messages) >= 10, what="2 more alerts")
        time.sleep(1)  # nothing more comes: each was sent once
        assert [d["event"]["id"] for d in listener.docs] == [f"a{i}" for i in range(10)]
        lines = [json.loads(line) for line in archive.read_text().splitlines()]
        assert [d["event"]["id"] for d in lines] == [f"a{i}" for i in range(10)]
        assert lines[0]["ecs"]["version"] and lines[0]["threat"]["technique"]["id"] == ["T1059"]
        assert "output.start output=siem kind=syslog" in node.log()
    finally:
        assert node.stop() == 0
        listener.close()


def test_a_demo_shows_its_agent_actors_sensor_and_spool(tmp_path, start_node):
    data = tmp_path / "demo"
    data.mkdir()
    subprocess.run([*IMMUNE_NODE, "users", "add", "prom", "--role", "viewer", "--data", str(data)],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60)
    token = subprocess.run([*IMMUNE_NODE, "users", "token", "prom", "--data", str(data)], text=True, check=True,
                           capture_output=True, timeout=60).stdout.strip()
    node = start_node("demo", data, "--listen", tcp_endpoint())
    node.wait_ready(120)
    def sensor_counted() -> bool:
        subprocess.run(["/bin/true"], check=True)  # an exec for the sensor (its kinds are counted each second)
        m = samples(scrape(node, token).text)
        return any(s.value > 0 for s in m.get("immune_sensor_events_total", [])) and any(
            s.labels["kind"] == "exec" and s.value > 0 for s in m.get("immune_sensor_kind_events_total", []))

    wait_for(sensor_counted, what="the sensor's events in /metrics")
    m = samples(scrape(node, token).text)
    actors = {s.labels["actor"] for s in m["immune_actor_messages_in_total"]}
    assert {"demo.agent.relay", "demo.agent.sensor", "demo.hive.store", "demo.hive.console"} <= actors
    assert {s.labels["where"] for s in m["immune_drops_total"]} == {"ring", "spool"}
    assert m["immune_spool_bytes"] and m["immune_store_events_total"][0].value > 0
    assert {s.labels["state"]: s.value for s in m["immune_agents"]}["online"] == 1
    assert node.stop() == 0


for _mark in kernel:  # the sensor's: root, BTF, and the shared lock's marker
    test_a_demo_shows_its_agent_actors_sensor_and_spool = _mark(test_a_demo_shows_its_agent_actors_sensor_and_spool)
