"""Alerts and events as Elastic Common Schema documents: the shape SIEMs
(Elastic, OpenSearch, Splunk's and Sentinel's ECS mappings) already parse.

Plain functions of a stored record; what ECS has no field for goes under
``immune.``.  A document is built once per record and sent as is by every
kind of output (a file line, a syslog message, a webhook body).
"""

from __future__ import annotations

import datetime
from typing import Any

import wire

ECS_VERSION = "8.11.0"

SEVERITY = {"informational": 1, "novel": 21, "low": 21, "medium": 47, "high": 73, "critical": 99}
"""An alert's level as ``event.severity`` (the risk scores Elastic's detection rules use);
a learned profile's novelty (``novel``) as low: a change, not a verdict."""

# What ECS calls each kind of event: (event.category, event.type).
_CATEGORY: dict[str, tuple[list[str], list[str]]] = {
    "exec": (["process"], ["start"]),
    "fork": (["process"], ["start"]),
    "exit": (["process"], ["end"]),
    "open": (["file"], ["access"]),
    "file": (["file"], ["change"]),
    "setid": (["iam"], ["change"]),
    "connect": (["network"], ["connection", "start"]),
    "bind": (["network"], ["connection"]),
    "ptrace": (["process"], ["access"]),
    "signal": (["process"], ["info"]),
    "bpf": (["host"], ["change"]),
    "mount": (["file"], ["change"]),
    "notice": (["host"], ["info"]),
    "edge": (["intrusion_detection"], ["info"]),
}


def timestamp(ns: int) -> str:
    """RFC 3339 in UTC with microseconds (what both ECS and RFC 5424 take)."""
    seconds, rest = divmod(ns, 10**9)  # in integers: a float of ns rounds the microseconds
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).replace(microsecond=rest // 1000)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def attack(tags: list[str]) -> dict[str, Any]:
    """``threat.*`` from Sigma's ATT&CK tags: ``attack.t1059.004`` is
    technique T1059 and sub-technique T1059.004, ``attack.execution`` the
    tactic Execution; other tags (groups, software, CAR) are not ATT&CK
    techniques and stay in ``tags`` only."""
    techniques: list[str] = []
    subtechniques: list[str] = []
    tactics: list[str] = []
    for tag in tags:
        head, _, name = tag.lower().partition(".")
        if head != "attack" or not name:
            continue
        number, dot, sub = name.partition(".")
        if number[:1] == "t" and number[1:].isdigit():
            technique = number.upper()
            if technique not in techniques:
                techniques.append(technique)
            if dot and sub.isdigit():
                subtechniques.append(f"{technique}.{sub}")
        elif name.replace("_", "").replace("-", "").isalpha():
            tactics.append(name.replace("_", " ").replace("-", " ").title())
    if not (techniques or tactics):
        return {}
    threat: dict[str, Any] = {"framework": "MITRE ATT&CK"}
    if techniques:
        threat["technique"] = {"id": techniques}
        if subtechniques:
            threat["technique"]["subtechnique"] = {"id": subtechniques}
    if tactics:
        threat["tactic"] = {"name": tactics}
    return threat


def alert_doc(alert: wire.Alert, host: str = "") -> dict[str, Any]:
    """The ECS document of a stored alert; ``host`` is its agent's host
    name if the hive knows it (else the agent's id stands for it)."""
    when = alert.time or alert.last_seen
    doc: dict[str, Any] = {
        "@timestamp": timestamp(when),
        "ecs": {"version": ECS_VERSION},
        "message": alert.title,
        "event": {
            "kind": "alert", "module": "immune", "dataset": "immune.alert", "id": alert.id,
            "category": ["intrusion_detection"], "type": ["info"],
            "severity": SEVERITY.get(alert.level, SEVERITY["medium"]),
        },
        "log": {"level": alert.level},
        "rule": {"id": alert.rule_id, "name": alert.title},
        "tags": list(alert.tags),
        "immune": {"alert": {"id": alert.id, "count": alert.count, "incident": alert.incident,
                             "edge": alert.edge, "events": len(alert.events)}},
    }
    if alert.detail:
        doc["immune"]["alert"]["detail"] = alert.detail
    if alert.last_seen and alert.last_seen != when:
        doc["event"]["end"] = timestamp(alert.last_seen)
    if alert.agent:
        doc["host"] = {"name": host or alert.agent}
        doc["agent"] = {"id": alert.agent, "type": "sentinel-immune"}
    threat = attack(list(alert.tags))
    if threat:
        doc["threat"] = threat
    if alert.events:
        # The event that made the rule fire: its process, user, file or peer.
        first = alert.events[0]
        _subject(doc, first)
        doc["event"]["action"] = type(first).__struct_config__.tag
        doc["event"]["outcome"] = "failure" if first.verdict == "block" else "success"
        doc["immune"]["verdict"] = first.verdict
    return doc


def event_doc(event: wire.Event, host: str = "") -> dict[str, Any]:
    """The ECS document of a stored event."""
    kind = type(event).__struct_config__.tag
    category, types = _CATEGORY.get(kind, (["host"], ["info"]))
    doc: dict[str, Any] = {
        "@timestamp": timestamp(event.time),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "event", "module": "immune", "dataset": f"immune.{kind}", "action": kind,
                  "category": category, "type": types,
                  "outcome": "failure" if event.verdict == "block" else "success"},
        "immune": {"verdict": event.verdict},
    }
    if event.rule:
        doc["rule"] = {"name": event.rule}
    if event.agent:
        doc["host"] = {"name": host or event.agent}
        doc["agent"] = {"id": event.agent, "type": "sentinel-immune"}
    _subject(doc, event)
    return doc


def _subject(doc: dict[str, Any], e: wire.Event) -> None:
    """The process, user, container and object of ``e`` into ``doc``."""
    process: dict[str, Any] = {}
    if e.pid:
        process["pid"] = e.pid
    if e.tid and e.tid != e.pid:
        process["thread"] = {"id": e.tid}
    executable = getattr(e, "exe", "") or getattr(e, "filename", "") or e.image
    if executable:
        process["executable"] = executable
    if e.comm:
        process["name"] = e.comm
    if e.cmdline:
        process["command_line"] = e.cmdline
    if e.cwd:
        process["working_directory"] = e.cwd
    parent: dict[str, Any] = {}
    if e.ppid:
        parent["pid"] = e.ppid
    if e.parent_image:
        parent["executable"] = e.parent_image
    if e.parent_cmdline:
        parent["command_line"] = e.parent_cmdline
    if parent:
        process["parent"] = parent
    if process:
        doc["process"] = process
    user: dict[str, Any] = {"id": str(e.uid)}
    if e.user:
        user["name"] = e.user
    if e.euid != e.uid:
        user["effective"] = {"id": str(e.euid)}
    doc["user"] = user
    if e.container:
        container: dict[str, Any] = {"id": e.container}
        if e.container_name:
            container["name"] = e.container_name
        if e.container_image:
            container["image"] = {"name": e.container_image}
        if e.container_runtime:
            container["runtime"] = e.container_runtime
        doc["container"] = container
    path = getattr(e, "path", "") or (getattr(e, "target", "") if isinstance(e, wire.Mount) else "")
    if path:
        doc["file"] = {"path": path}
    if isinstance(e, wire.Connect):
        doc["destination"] = {"ip": e.address, "port": e.port}
        if e.hostname:
            doc["destination"]["domain"] = e.hostname
        if e.src_address:
            doc["source"] = {"ip": e.src_address, "port": e.src_port}
        doc["network"] = {"transport": e.protocol}
    elif isinstance(e, wire.Bind):
        doc["source"] = {"ip": e.address, "port": e.port}
        doc["network"] = {"transport": e.protocol}
