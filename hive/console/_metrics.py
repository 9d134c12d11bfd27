"""``/metrics``: the hive in Prometheus text format, for a viewer's bearer
token (Prometheus' ``authorization`` setting).

Each scrape reads afresh: the node's actor statistics (through its control
socket, as ``immune-node status`` does), the store's figures (rule hits,
alerts by level, actions by state, agents), and the console's own request
counters; then a collector over that one reading renders it.  Nothing is
kept in prometheus-client's global registry, so two consoles in one
process (the tests) never mix their figures.  Blocking reads run in worker
threads, never on the trio thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from actors import ActorError, Status, query_status

from .._store import Store, StoreError
from ._auth import allow

STATUS_TIMEOUT = 2.0
"""Seconds the node's control socket may take to answer a scrape."""


@dataclass
class Agent:
    id: str
    online: bool
    spooled: int
    dropped: int


@dataclass
class Figures:
    """One scrape's reading, rendered by :func:`families`."""

    status: Status | None = None
    status_error: str = ""
    store_error: str = ""
    rule_hits: dict[str, int] = field(default_factory=dict)
    alerts_by_level: dict[str, int] = field(default_factory=dict)
    actions_by_state: dict[str, int] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    console: dict[str, int] = field(default_factory=dict)
    """The console's own counters (csrf_refused, login_failures, logins_throttled)."""
    read_seconds: float = 0.0


def read_store(store: Store) -> dict[str, Any]:
    """The store's part of a scrape (blocking)."""
    db = store.db
    return {
        "rule_hits": store.alert_hits(),
        "alerts_by_level": dict(db.execute("SELECT level, count(*) FROM alerts GROUP BY level").fetchall()),
        "actions_by_state": dict(db.execute("SELECT state, count(*) FROM commands GROUP BY state").fetchall()),
        "agents": [Agent(a.id, a.online, a.spooled, a.dropped) for a in store.agents() if a.revoked is None],
    }


async def gather(console: Any) -> Figures:
    """Read everything a scrape shows (off the trio thread)."""
    started = time.perf_counter()
    f = Figures(requests=dict(console.requests), console={
        "csrf_refused": console.csrf_refused, "login_failures": console.throttle.failures,
        "logins_throttled": console.throttle.refused})
    try:
        f.status = await trio.to_thread.run_sync(query_status, console.run_dir, STATUS_TIMEOUT)
    except (ActorError, zmq.ZMQError) as e:  # no node in run_dir, or it did not answer in time
        f.status_error = str(e)
    try:
        for key, value in (await console.read(read_store)).items():
            setattr(f, key, value)
    except StoreError as e:
        f.store_error = str(e)
    f.read_seconds = time.perf_counter() - started
    return f


# Snapshot counters as (metric name, Snapshot field, help).
_ACTOR_COUNTERS = (
    ("immune_actor_messages_in", "msgs_in", "Messages the actor received."),
    ("immune_actor_messages_out", "msgs_out", "Messages the actor sent."),
    ("immune_actor_bytes_in", "bytes_in", "Bytes the actor received."),
    ("immune_actor_bytes_out", "bytes_out", "Bytes the actor sent."),
    ("immune_actor_malformed", "malformed", "Malformed messages the actor refused."),
    ("immune_actor_restarts", "restarts", "Times the actor's supervisor restarted it."),
    ("immune_actor_exits", "exits", "Times the actor exited with an error."),
    ("immune_actor_escalations", "escalations", "Times a supervisor gave up and escalated."),
)


def _short(actor: str) -> str:
    """``demo.hive.output-siem`` -> ``output-siem``."""
    return actor.rpartition(".")[2]


def families(f: Figures) -> Iterator[Metric]:
    """The metric families of one reading (a plain function, tested without sockets)."""
    up = GaugeMetricFamily("immune_node_up", "1 if the node answered the scrape's status request.", labels=["node"])
    node = f.status.node if f.status else ""
    up.add_metric([node], 1 if f.status else 0)
    yield up
    if f.status is not None:
        yield from _actor_families(f.status)
    yield from _store_families(f)
    requests = CounterMetricFamily("immune_console_requests", "Requests the console answered, by route and status.",
                                   labels=["route", "status"])
    for (route, status), n in sorted(f.requests.items()):
        requests.add_metric([route, str(status)], n)
    yield requests
    for key, text in (("csrf_refused", "Unsafe requests refused for a missing or wrong CSRF token."),
                      ("login_failures", "Failed console logins."),
                      ("logins_throttled", "Console logins refused by the throttle.")):
        c = CounterMetricFamily(f"immune_console_{key}", text)
        c.add_metric([], f.console.get(key, 0))
        yield c
    took = GaugeMetricFamily("immune_scrape_read_seconds", "Seconds this scrape took to read the node and the store.")
    took.add_metric([], f.read_seconds)
    yield took


def _actor_families(status: Status) -> Iterator[Metric]:
    labels = ["node", "actor"]
    for name, attr, text in _ACTOR_COUNTERS:
        c = CounterMetricFamily(name, text, labels=labels)
        for s in status.actors:
            c.add_metric([status.node, s.name], getattr(s, attr))
        yield c
    depth = GaugeMetricFamily("immune_actor_queue_depth", "Messages waiting in the actor's queues.", labels=labels)
    running = GaugeMetricFamily("immune_actor_running", "1 if the actor is running.", labels=labels)
    stat = GaugeMetricFamily("immune_actor_stat", "Each numeric figure in the actor's own statistics.",
                             labels=[*labels, "stat"])
    for s in status.actors:
        depth.add_metric([status.node, s.name], s.queue_depth)
        running.add_metric([status.node, s.name], 1 if s.state == "running" else 0)
        for key, value in sorted(s.extra.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stat.add_metric([status.node, s.name, key], value)
    yield from (depth, running, stat)

    # The figures dashboards chart, under their own names.
    sensor_events = CounterMetricFamily("immune_sensor_events", "Events the kernel sensor read.", labels=labels)
    drops = CounterMetricFamily("immune_drops", "Events lost before the hive, by where: the sensor's ring "
                                "buffer (ring) or a full agent spool (spool).", labels=[*labels, "where"])
    kind_events = CounterMetricFamily("immune_sensor_kind_events", "Events the kernel sensor read, by kind "
                                      "(counted about once a second).", labels=[*labels, "kind"])
    kind_drops = CounterMetricFamily("immune_sensor_kind_drops", "Records the sensor's ring buffer had no room "
                                     "for, by kind.", labels=[*labels, "kind"])
    spool = GaugeMetricFamily("immune_spool_bytes", "Bytes in the agent's disk spool.", labels=labels)
    spooled = GaugeMetricFamily("immune_spool_events", "Events in the agent's disk spool.", labels=labels)
    lag = GaugeMetricFamily("immune_store_lag_seconds", "From an event's creation on the agent to its commit in "
                            "the store, over the last seconds.", labels=[*labels, "quantile"])
    stored = CounterMetricFamily("immune_store_events", "Events the store wrote.", labels=labels)
    out_labels = ["node", "output", "kind"]
    out_sent = CounterMetricFamily("immune_output_sent", "Records the output's receiver took.", labels=out_labels)
    out_backlog = GaugeMetricFamily("immune_output_backlog", "Records stored and not yet taken by the output's "
                                    "receiver.", labels=out_labels)
    out_failures = CounterMetricFamily("immune_output_failures", "Failed deliveries of the output.",
                                       labels=out_labels)
    out_up = GaugeMetricFamily("immune_output_up", "1 if the output's last delivery succeeded.", labels=out_labels)
    for s in status.actors:
        short, x, key = _short(s.name), s.extra, [status.node, s.name]
        if short == "sensor" and "events" in x:
            sensor_events.add_metric(key, x["events"])
            drops.add_metric([*key, "ring"], x.get("drops", 0))
            for name, n in x.items():
                family, _, kind = name.partition("_")
                if kind and family in ("events", "drops"):
                    (kind_events if family == "events" else kind_drops).add_metric([*key, kind], n)
        elif short == "relay" and "spool_bytes" in x:
            drops.add_metric([*key, "spool"], x.get("dropped", 0))
            spool.add_metric(key, x["spool_bytes"])
            spooled.add_metric(key, x.get("spooled", 0))
        elif short == "store" and "events" in x:
            stored.add_metric(key, x["events"])
            for q, stat_key in (("0.5", "lag_p50_ms"), ("0.99", "lag_p99_ms")):
                if stat_key in x:
                    lag.add_metric([*key, q], float(x[stat_key]) / 1000)
        elif short.startswith("output-") and "backlog" in x:
            k = [status.node, short.removeprefix("output-"), str(x.get("kind", ""))]
            out_sent.add_metric(k, x["sent"])
            out_backlog.add_metric(k, x["backlog"])
            out_failures.add_metric(k, x["failures"])
            out_up.add_metric(k, x["up"])
    yield from (sensor_events, kind_events, kind_drops, drops, spool, spooled, lag, stored, out_sent, out_backlog, out_failures, out_up)


def _store_families(f: Figures) -> Iterator[Metric]:
    store_up = GaugeMetricFamily("immune_store_up", "1 if the scrape could read the store.")
    store_up.add_metric([], 0 if f.store_error else 1)
    yield store_up
    yield _by("immune_rule_hits", "Hits of each rule that its stored alerts stand for (repeats counted; falls "
              "as retention deletes alerts).", "rule", f.rule_hits)
    yield _by("immune_alerts", "Alerts in the store, by level.", "level", f.alerts_by_level)
    yield _by("immune_actions", "Response actions in the store, by state (their outcome once closed).", "state",
              f.actions_by_state)
    online = GaugeMetricFamily("immune_agents", "Enrolled agents, by whether they are online.", labels=["state"])
    online.add_metric(["online"], sum(a.online for a in f.agents))
    online.add_metric(["offline"], sum(not a.online for a in f.agents))
    yield online
    spooled = GaugeMetricFamily("immune_agent_spooled_events", "Events in each agent's spool (its last "
                                "heartbeat).", labels=["agent"])
    dropped = CounterMetricFamily("immune_agent_dropped_events", "Events each agent lost: ring and spool drops "
                                  "(its last heartbeat).", labels=["agent"])
    for a in f.agents:
        spooled.add_metric([a.id], a.spooled)
        dropped.add_metric([a.id], a.dropped)
    yield from (spooled, dropped)


def _by(name: str, text: str, label: str, counts: dict[str, int]) -> Metric:
    gauge = GaugeMetricFamily(name, text, labels=[label])
    for key, n in sorted(counts.items()):
        gauge.add_metric([key], n)
    return gauge


class _Reading:
    """A prometheus-client collector over one reading."""

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        return families(self.figures)


def render(figures: Figures) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reading(figures))  # type: ignore[arg-type]
    return generate_latest(registry)


@allow("viewer")
async def metrics(request: Any) -> Any:
    from starlette.responses import Response

    figures = await gather(request.app.state.console)
    # The classic text format: every Prometheus since 2.0 reads it.
    return Response(render(figures), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def routes() -> list:
    from starlette.routing import Route

    return [Route("/metrics", metrics, methods=["GET"])]
