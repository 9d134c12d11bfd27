"""The summary of an incident a model reads: plain data, bounded, redacted.

``summarize(...)`` takes what the store holds (the incident, its alerts with
their events, the process tree of each alert, the hosts involved, the
playbooks the model may recommend) and keeps what an analyst would read:
who ran what, where, under which rule.  ``summary_text`` redacts every
string (``_redact``) and encodes it within ``max_bytes``, dropping the
least telling parts first (deep tree nodes, then later events, then later
alerts), so a huge incident still makes one bounded request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from ._redact import redact_all

MAX_ALERTS = 20
MAX_EVENTS = 5
"""Events shown per alert (an alert keeps up to 16)."""
MAX_TREE = 24
"""Process tree nodes shown per alert."""
MAX_TEXT = 2000
"""Characters of one string (a command line) kept."""
MAX_BYTES = 64 * 1024

# Event fields that tell an analyst nothing (ids of the task's kernel bookkeeping).
_NOISE = {"tid", "cgroup", "gid", "euid", "agent", "mnt_ns", "pid_ns", "ns_pid", "argv_truncated"}
_LEVEL_ORDER = ("critical", "high", "medium", "low", "informational")


def _when(ns_or_s: float) -> str:
    seconds = ns_or_s / 1e9 if ns_or_s > 1e12 else ns_or_s
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else ""


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "...(cut)"
    if isinstance(value, list):
        return [_cut(v) for v in value[:64]]
    return value


def event_view(event: Any) -> dict[str, Any]:
    """An event as the fields that say something, empty and zero ones left out."""
    data = msgspec.to_builtins(event)
    out: dict[str, Any] = {"kind": data.pop("kind", type(event).__name__.lower())}
    if "time" in data:
        out["time"] = _when(data.pop("time"))
    # Arguments one by one would hide a secret from the redaction that
    # knows it by its neighbour (``--password``, ``X``): the command line whole.
    argv = data.pop("argv", None)
    if argv and not data.get("cmdline"):
        data["cmdline"] = " ".join(argv)
    for key, value in data.items():
        if key in _NOISE or value in ("", 0, [], {}, None, False) or (key == "verdict" and value == "allow"):
            continue
        out[key] = _cut(value)
    return out


def tree_view(nodes: Iterable[Any]) -> list[dict[str, Any]]:
    """A process tree's nodes (``hive.console._read.ProcessNode``), nearest the alert's process first."""
    rows = sorted(nodes, key=lambda n: abs(n.depth))[:MAX_TREE]
    out = []
    for n in sorted(rows, key=lambda n: n.depth):
        row = {"depth": n.depth, "pid": n.pid, "ppid": n.ppid, "image": n.image, "cmdline": _cut(n.cmdline),
               "user": n.user, "sha256": n.sha256}
        if n.verdicts:
            row["verdicts"] = list(n.verdicts)
        out.append({k: v for k, v in row.items() if v not in ("", None)})
    return out


def summarize(incident: Any, alerts: Sequence[Any], *, trees: Mapping[str, Iterable[Any]] | None = None,
              hosts: Iterable[Any] = (), playbooks: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """The summary of ``incident`` (``hive.correlate.Incident``) as plain data.
    ``alerts`` are its stored alerts, ``trees`` each alert's process tree
    nodes by alert id, ``hosts`` the store's rows of its agents
    (``AgentRow``), ``playbooks`` (id, title) of those the model may
    recommend."""
    trees = trees or {}
    agents = set(incident.agents) | {a.agent for a in alerts}
    ranked = sorted(alerts, key=lambda a: (_LEVEL_ORDER.index(a.level) if a.level in _LEVEL_ORDER else 9, a.time))
    # The incident's own times are the correlator's monotonic clock: its
    # alerts' and events' times say when things happened.
    times = sorted(a.time for a in alerts if a.time)
    return {
        "incident": {
            "id": incident.id, "title": incident.title, "level": incident.level, "hosts": list(incident.agents),
            "first_alert": _when(times[0]) if times else "", "last_alert": _when(times[-1]) if times else "",
            "links": [{"from": a, "to": b, "port": port} for a, b, port in incident.edges],
            "timeline": [{"time": _when(t.event_time), "host": t.agent, "what": t.what,
                          "summary": _cut(t.summary)} for t in incident.timeline[-40:]],
        },
        "alerts": [{
            "id": a.id, "rule": a.rule_id, "title": a.title, "level": a.level, "tags": list(a.tags),
            "host": a.agent, "time": _when(a.time), "hits": a.count, "detail": _cut(a.detail),
            "events": [event_view(e) for e in a.events[:MAX_EVENTS]],
            "process_tree": tree_view(trees.get(a.id, ())),
        } for a in ranked[:MAX_ALERTS]],
        "alerts_not_shown": max(0, len(ranked) - MAX_ALERTS),
        "hosts": [{"id": h.id, "hostname": h.hostname, "os": h.os, "kernel": h.kernel,
                   "addresses": list(h.addresses), "agent_version": h.agent_version,
                   "policy": h.policy_version, "online": h.online}
                  for h in hosts if h.id in agents],
        "playbooks": [{"id": pid, "title": title} for pid, title in playbooks],
    }


_encode = msgspec.json.Encoder().encode


def summary_text(summary: dict[str, Any], max_bytes: int = MAX_BYTES) -> str:
    """``summary`` redacted and encoded as JSON within ``max_bytes`` (as
    near as it can come: one alert with one event, one process and strings
    of 256 characters is the least it sends)."""
    # Redacted before anything is cut, so a cut never leaves half a secret
    # its pattern no longer recognises.
    clean = redact_all(summary)
    while True:
        text = _encode(clean)
        if len(text) <= max_bytes or not _shrink(clean):
            return text.decode()


def _shrink(summary: dict[str, Any]) -> bool:
    """Drop one least telling part; False when nothing is left to drop."""
    alerts = summary.get("alerts", [])
    for alert in reversed(alerts):
        if len(alert["process_tree"]) > 1:
            tree = alert["process_tree"]
            tree.remove(max(tree, key=lambda n: abs(n["depth"])))
            return True
    for alert in reversed(alerts):
        if len(alert["events"]) > 1:
            alert["events"].pop()
            return True
    if len(alerts) > 1:
        alerts.pop()
        summary["alerts_not_shown"] = summary.get("alerts_not_shown", 0) + 1
        return True
    timeline = summary.get("incident", {}).get("timeline", [])
    if timeline:
        timeline.pop(0)
        return True
    return _shorten(summary, 256)


def _shorten(value: Any, most: int) -> bool:
    """Cut every string in ``value`` to ``most`` characters; False if none was longer."""
    changed = False
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, v in list(items):
        if isinstance(v, str) and len(v) > most:
            value[key] = v[:most] + "...(cut)"
            changed = True
        elif isinstance(v, (dict, list)):
            changed = _shorten(v, most) or changed
    return changed
