"""/metrics in process: the families of one reading rendered in Prometheus
text format and parsed back by prometheus-client's own parser; the route
refuses anonymous scrapes and serves a viewer's bearer token."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import wire
from actors import Status
from actors._stats import Snapshot
from hive import Store
from hive.console import Console, make_app
from hive.console._metrics import Agent, Figures, render
from hive.console._users import Users
from node import Config

PASSWORD = "correct horse battery"


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """name -> {sorted labels: value} for every sample."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def reading() -> Figures:
    actors = [
        Snapshot(name="demo.hive.store", state="running", msgs_in=10, bytes_in=2048, queue_depth=3,
                 extra={"events": 500, "lag_p50_ms": 12.5, "lag_p99_ms": 80.0, "note": "text is left out"}),
        Snapshot(name="demo.agent.sensor", state="running", restarts=2, extra={"events": 900, "drops": 7,
                 "events_exec": 600, "events_open": 300, "drops_open": 7}),
        Snapshot(name="demo.agent.relay", state="running", malformed=1,
                 extra={"spool_bytes": 4096, "spooled": 12, "dropped": 3}),
        Snapshot(name="demo.hive.output-siem", state="running",
                 extra={"kind": "syslog", "sent": 40, "backlog": 5, "failures": 2, "up": 0}),
        Snapshot(name="demo.hive.router", state="restarting"),
    ]
    return Figures(
        status=Status(node="demo", pid=1, started=0.0, ready=True, actors=actors),
        rule_hits={"r-tmp": 4, "r-shadow": 1}, alerts_by_level={"high": 3, "low": 2},
        actions_by_state={"done": 2, "pending_approval": 1}, agents=[Agent("web1", True, 12, 3),
                                                                     Agent("db1", False, 0, 0)],
        requests={("/metrics", 200): 5, ("/metrics", 401): 1}, console={"csrf_refused": 2})


def test_one_reading_renders_every_family():
    m = parse(render(reading()).decode())
    node_actor = lambda actor: (("actor", actor), ("node", "demo"))  # noqa: E731
    assert m["immune_node_up"] == {(("node", "demo"),): 1}
    assert m["immune_actor_messages_in_total"][node_actor("demo.hive.store")] == 10
    assert m["immune_actor_bytes_in_total"][node_actor("demo.hive.store")] == 2048
    assert m["immune_actor_restarts_total"][node_actor("demo.agent.sensor")] == 2
    assert m["immune_actor_malformed_total"][node_actor("demo.agent.relay")] == 1
    assert m["immune_actor_queue_depth"][node_actor("demo.hive.store")] == 3
    assert m["immune_actor_running"][node_actor("demo.hive.router")] == 0
    assert m["immune_actor_stat"][(*node_actor("demo.hive.store"), ("stat", "events"))] == 500
    assert not any(dict(k).get("stat") == "note" for k in m["immune_actor_stat"])
    assert m["immune_sensor_events_total"][node_actor("demo.agent.sensor")] == 900
    by_kind = lambda kind: (("actor", "demo.agent.sensor"), ("kind", kind), ("node", "demo"))  # noqa: E731
    assert m["immune_sensor_kind_events_total"][by_kind("exec")] == 600
    assert m["immune_sensor_kind_events_total"][by_kind("open")] == 300
    assert m["immune_sensor_kind_drops_total"] == {by_kind("open"): 7}
    assert m["immune_drops_total"][(*node_actor("demo.agent.sensor"), ("where", "ring"))] == 7
    assert m["immune_drops_total"][(*node_actor("demo.agent.relay"), ("where", "spool"))] == 3
    assert m["immune_spool_bytes"][node_actor("demo.agent.relay")] == 4096
    assert m["immune_store_lag_seconds"][(*node_actor("demo.hive.store"), ("quantile", "0.99"))] == 0.08
    out = (("kind", "syslog"), ("node", "demo"), ("output", "siem"))
    assert m["immune_output_backlog"][out] == 5 and m["immune_output_failures_total"][out] == 2
    assert m["immune_output_sent_total"][out] == 40 and m["immune_output_up"][out] == 0
    assert m["immune_rule_hits"] == {(("rule", "r-shadow"),): 1, (("rule", "r-tmp"),): 4}
    assert m["immune_alerts"][(("level", "high"),)] == 3
    assert m["immune_actions"][(("state", "pending_approval"),)] == 1
    assert m["immune_agents"] == {(("state", "online"),): 1, (("state", "offline"),): 1}
    assert m["immune_agent_dropped_events_total"][(("agent", "web1"),)] == 3
    assert m["immune_console_requests_total"][(("route", "/metrics"), ("status", "401"))] == 1
    assert m["immune_console_csrf_refused_total"][()] == 2


def test_a_node_that_does_not_answer_is_a_zero_not_an_error():
    m = parse(render(Figures(status_error="no node", store_error="no store")).decode())
    assert m["immune_node_up"] == {(("node", ""),): 0} and m["immune_store_up"] == {(): 0}
    assert "immune_actor_messages_in_total" not in m


@pytest.fixture
def console(store_location, tmp_path):
    store = Store(store_location)
    users = Users(store)
    users.add("vera", "viewer", PASSWORD, actor="t")
    store.ingest([], [wire.Alert(id="a1", rule_id="r1", title="t", level="critical", agent="web1", time=1)])
    console = Console(Config(), store_location, run_dir=tmp_path / "run")
    console.token = users.new_token("vera", actor="t")[1]
    yield console
    console.close()
    store.close()


def client(console) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(console)), base_url="https://console.test")


async def test_an_anonymous_scrape_is_refused_and_a_viewer_token_served(console):
    async with client(console) as c:
        r = await c.get("/metrics")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "error" in r.json()
        r = await c.get("/metrics", headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401
        r = await c.get("/metrics", headers={"Authorization": f"Bearer {console.token}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        m = parse(r.text)
    assert m["immune_node_up"] == {(("node", ""),): 0}  # no node runs in run_dir: said, not failed
    assert m["immune_alerts"] == {(("level", "critical"),): 1}
    assert m["immune_rule_hits"] == {(("rule", "r1"),): 1}
    assert m["immune_console_requests_total"][(("route", "/metrics"), ("status", "401"))] == 2


def test_the_grafana_dashboard_charts_only_metrics_the_console_serves():
    import json
    import re
    from pathlib import Path

    import hive

    dashboard = json.loads((Path(hive.__file__).parent.parent / "services/grafana/immune.json").read_text())
    served = set(parse(render(reading()).decode()))
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bimmune_\w+", target["expr"])}
    assert used and used <= served, used - served
