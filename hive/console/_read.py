"""The console's read model: what every page and API route shows, as plain
functions over the hive's :class:`~hive._store.Store` (and the response
records on its connection) returning msgspec Structs.

Pages render these Structs and the API encodes the same ones as JSON, so the
two never disagree.  Nothing here touches a socket or the event loop: the
console runs each call in a worker thread (``Console.read``).

Lists are newest first and paged by a cursor (``before``: the row id the next
page starts below), so a page costs the same however deep it is and rows
arriving meanwhile never shift it.  Query parameters are parsed here too
(:func:`alert_query`, :func:`event_query`), so the pages and the API refuse
bad input with the same one-line reason (:class:`QueryError`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

import wire
from hive import present
from hive._sql import DB_ERRORS
from hive._store import Store, StoreError, _decode_alert, _decode_event, _decode_incident
from hive.correlate import Incident
from hive.playbook import Records, RecordsError, check_playbooks
from hive.playbook._engine import CLOSED_STATES, OPEN_STATES, Action, AuditRecord

LEVELS = ("informational", "novel", "low", "medium", "high", "critical")
"""Sigma's levels, least first, and "novel": a workload did what its
learned profile never held (agent/_profile.py), which says nothing of malice."""
MAX_PAGE = 500
"""The largest page a caller may ask for."""
TREE_DEPTH = 64
"""How far up (ancestors) and down (descendants) a process tree goes."""
TREE_NODES = 300
"""The most processes one tree shows; the rest are counted in ``cut``."""
TREE_SCAN = 50_000
"""The most of an agent's events one process lookup reads (see _process_events)."""
TEXT_SCAN = 20_000
"""The most events one text-filtered page reads before it answers with what it
found and a cursor to go on from (a rare word in a million events must not
hold a worker for seconds)."""


class QueryError(ValueError):
    """A query parameter the console refuses; the message says which and why."""


class Struct(msgspec.Struct, kw_only=True):
    pass


# -- overview ------------------------------------------------------------------------


class Bucket(Struct):
    start: int
    """Unix ns where this bucket starts."""
    levels: dict[str, int]
    """Alerts raised in it by level (their repeats counted)."""


class RuleCount(Struct):
    rule_id: str
    title: str
    level: str
    hits: int


class Overview(Struct):
    agents_online: int
    agents_total: int
    alerts_total: int
    bucket_seconds: int
    buckets: list[Bucket]
    """Oldest first, the last one holding now."""
    top_rules: list[RuleCount]
    actions_pending: int
    incidents: int


def overview(store: Store, *, now: float | None = None, hours: int = 24, buckets: int = 24,
             top: int = 10) -> Overview:
    now = time.time() if now is None else now
    width = max(1, hours * 3600 // buckets)
    end = (int(now) // width + 1) * width
    start = end - width * buckets
    rows = _read(store.db, "SELECT (time / ?) * ?, level, sum(count) FROM alerts WHERE time >= ? "
                 "GROUP BY 1, 2", (width * 10**9, width, start * 10**9))
    counts: dict[int, dict[str, int]] = {start + i * width: {} for i in range(buckets)}
    for bucket, level, n in rows:
        if bucket in counts:
            counts[bucket][level] = n
    agents = _read(store.db, "SELECT count(*), coalesce(sum(online), 0) FROM agents "
                   "WHERE revoked IS NULL AND (last_seen IS NOT NULL OR public_key IS NOT NULL)", ())[0]
    top_rules = [RuleCount(rule_id=r, title=t, level=lv, hits=n) for r, t, lv, n in _read(
        store.db, "SELECT rule_id, max(title), max(level), sum(count) FROM alerts GROUP BY rule_id "
        "ORDER BY 4 DESC, 1 LIMIT ?", (top,))]
    return Overview(
        agents_online=agents[1], agents_total=agents[0],
        alerts_total=_read(store.db, "SELECT count(*) FROM alerts", ())[0][0],
        bucket_seconds=width,
        buckets=[Bucket(start=b * 10**9, levels=lv) for b, lv in sorted(counts.items())],
        top_rules=top_rules,
        actions_pending=_read(store.db, "SELECT count(*) FROM commands WHERE state='pending_approval'", ())[0][0],
        incidents=_read(store.db, "SELECT count(*) FROM incidents", ())[0][0],
    )


# -- query parameters --------------------------------------------------------------------


class AlertQuery(Struct):
    level: str = ""
    rule: str = ""
    agent: str = ""
    since: int = 0
    """Unix ns; 0: any time."""
    text: str = ""
    """Words the title or rule id contains (case-insensitive)."""
    incident: str = ""
    before: int = 0
    """The cursor: only alerts whose ``seq`` is below it; 0: from the newest."""
    limit: int = 50


class EventQuery(Struct):
    agent: str = ""
    kind: str = ""
    verdict: str = ""
    pid: int = 0
    text: str = ""
    """Words the event's description, image or command line contains."""
    since: int = 0
    before: int = 0
    """Only events whose id is below it (paging back)."""
    after: int = 0
    """Only events whose id is above it (the live tail), oldest first."""
    limit: int = 50


_VERDICTS = ("allow", "audit", "block")
_TEXT = 200
"""The longest filter word or name accepted."""


def _text(params: Mapping[str, str], key: str) -> str:
    value = params.get(key, "").strip()
    if len(value) > _TEXT:
        raise QueryError(f"{key}: at most {_TEXT} characters")
    if any(ord(c) < 32 for c in value):
        raise QueryError(f"{key}: control characters are not allowed")
    return value


def _int(params: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise QueryError(f"{key}: {value[:40]!r} is not a whole number")
    n = int(value)
    if not low <= n <= high:
        raise QueryError(f"{key}: {n} is not between {low} and {high}")
    return n


def _one_of(params: Mapping[str, str], key: str, allowed: Sequence[str]) -> str:
    value = _text(params, key)
    if value and value not in allowed:
        raise QueryError(f"{key}: {value[:40]!r} is not one of {', '.join(allowed)}")
    return value


def _since(params: Mapping[str, str]) -> int:
    value = _text(params, "since")
    if not value:
        return 0
    try:
        return present.parse_since(value)
    except present.SinceError as e:
        raise QueryError(str(e).removeprefix("--")) from None


_ALERT_KEYS = frozenset(AlertQuery.__struct_fields__)
_EVENT_KEYS = frozenset(EventQuery.__struct_fields__)
_INT64 = 2**63 - 1


def _known(params: Mapping[str, str], keys: frozenset[str]) -> None:
    unknown = sorted(k for k in params if k not in keys)
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0][:40]!r}: expected {', '.join(sorted(keys))}")


def alert_query(params: Mapping[str, str]) -> AlertQuery:
    """The alert filter a page or API request asks for; :class:`QueryError` if
    any parameter is unknown or malformed.  Empty values mean "any"."""
    _known(params, _ALERT_KEYS)
    return AlertQuery(
        level=_one_of(params, "level", LEVELS), rule=_text(params, "rule"), agent=_text(params, "agent"),
        since=_since(params), text=_text(params, "text"), incident=_text(params, "incident"),
        before=_int(params, "before", 0, 0, _INT64), limit=_int(params, "limit", 50, 1, MAX_PAGE))


def event_query(params: Mapping[str, str]) -> EventQuery:
    _known(params, _EVENT_KEYS)
    q = EventQuery(
        agent=_text(params, "agent"), kind=_one_of(params, "kind", wire.EVENT_KINDS),
        verdict=_one_of(params, "verdict", _VERDICTS), pid=_int(params, "pid", 0, 0, 2**32 - 1),
        text=_text(params, "text"), since=_since(params), before=_int(params, "before", 0, 0, _INT64),
        after=_int(params, "after", 0, 0, _INT64), limit=_int(params, "limit", 50, 1, MAX_PAGE))
    if q.before and q.after:
        raise QueryError("before and after: give one of them")
    return q


# -- alerts --------------------------------------------------------------------------------


class AlertRow(Struct):
    seq: int
    """The alert's row in the store: the paging cursor and the live feed's mark."""
    id: str
    time: int
    agent: str
    rule_id: str
    title: str
    level: str
    incident: str
    count: int
    last_seen: int


class AlertPage(Struct):
    items: list[AlertRow]
    next: int = 0
    """Pass as ``before`` for the next (older) page; 0: this is the last."""


_ALERT_COLUMNS = "rowid, id, time, agent, rule_id, title, level, incident, count, last_seen"


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def alerts(store: Store, q: AlertQuery = AlertQuery()) -> AlertPage:
    """A page of alerts, newest first (by when the store got them), without
    their events (those are in :func:`alert`)."""
    where, args = _equal((("level", q.level), ("rule_id", q.rule), ("agent", q.agent), ("incident", q.incident),
                          ("time >=", q.since), ("rowid <", q.before)))
    if q.text:
        where.append("(title LIKE ? ESCAPE '\\' OR rule_id LIKE ? ESCAPE '\\')")
        args += [_like(q.text)] * 2
    sql = f"SELECT {_ALERT_COLUMNS} FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
    rows = _read(store.db, sql + " ORDER BY rowid DESC LIMIT ?", [*args, q.limit + 1])
    items = [AlertRow(seq=r[0], id=r[1], time=r[2], agent=r[3], rule_id=r[4], title=r[5], level=r[6],
                      incident=r[7], count=r[8], last_seen=r[9]) for r in rows[:q.limit]]
    return AlertPage(items=items, next=items[-1].seq if len(rows) > q.limit else 0)


def latest_alert(store: Store) -> int:
    """The newest alert's ``seq`` (0: none): what the live feed polls."""
    return _read(store.db, "SELECT coalesce(max(rowid), 0) FROM alerts", ())[0][0]


class AlertDetail(Struct):
    seq: int
    alert: wire.Alert
    """With its events (and its repeats' events, up to the store's bound)."""
    actions: list[ActionView]


def alert(store: Store, alert_id: str) -> AlertDetail | None:
    rows = _read(store.db, "SELECT rowid, body, incident, count, last_seen FROM alerts WHERE id=?", (alert_id,))
    if not rows:
        return None
    seq, body, incident, count, last_seen = rows[0]
    a = _decode_alert(body)
    a.incident, a.count, a.last_seen = incident, count, last_seen
    acts = [_action(x) for x in _read(store.db, f"SELECT {_ACTION_COLUMNS} FROM commands WHERE alert=? "
                                      "ORDER BY created DESC LIMIT 100", (alert_id,))]
    return AlertDetail(seq=seq, alert=a, actions=acts)


# -- process tree ------------------------------------------------------------------------------


class ExecStep(Struct):
    time: int
    image: str
    cmdline: str
    verdict: str
    result: int
    sha256: str = ""


class ProcessNode(Struct):
    pid: int
    ppid: int
    depth: int
    """0: the alert's process; negative: its ancestors; positive: its descendants."""
    image: str = ""
    cmdline: str = ""
    user: str = ""
    uid: int = 0
    sha256: str = ""
    started: int = 0
    """Unix ns of its fork or first exec seen (0: before anything stored)."""
    exited: int = 0
    exit_code: int | None = None
    execs: list[ExecStep] = []
    """Its execs seen, oldest first, with their verdicts (a refused exec too)."""
    verdicts: list[str] = []
    """The verdicts other than allow among its events."""
    known: bool = True
    """False: nothing of it is stored but what its child's events say."""


class ProcessTree(Struct):
    agent: str
    pid: int
    nodes: list[ProcessNode]
    """Ancestors (eldest first), the process, then its descendants depth-first."""
    cut: int = 0
    """Processes left out because the tree reached TREE_NODES."""


def _command(e: Any) -> str:
    if isinstance(e, wire.Exec) and e.argv:
        return " ".join(e.argv)
    return e.cmdline


def _process_events(db: Any, agent: str, pid: int, low: int, high: int, *,
                    backwards: bool = False) -> list[Any]:
    """``pid``'s exec, fork and exit events on ``agent`` between ``low`` and
    ``high``, oldest first.  Found through the (agent, time) index, reading
    at most TREE_SCAN of the agent's events from ``low`` on (``backwards``:
    from ``high`` back): a busy host's window is cut, never slow.  (An index
    by pid would make this exact, at a third of the store's write rate.)"""
    order = "DESC" if backwards else "ASC"
    rows = _read(db, "SELECT time, id, body FROM (SELECT time, id, pid, kind, body FROM events "
                 f"WHERE agent=? AND time BETWEEN ? AND ? ORDER BY time {order} LIMIT ?) AS scan "
                 "WHERE pid=? AND kind IN ('exec', 'fork', 'exit') LIMIT 2000", (agent, low, high, TREE_SCAN, pid))
    return [_decode_event(b) for _, _, b in sorted(rows)]


def _node(pid: int, depth: int, events: Sequence[Any], fallback: Any = None) -> ProcessNode:
    n = ProcessNode(pid=pid, ppid=0, depth=depth)
    first = events[0] if events else fallback
    if first is not None:
        n.ppid, n.image, n.cmdline, n.user, n.uid, n.sha256 = (
            first.ppid, first.image, first.cmdline, first.user, first.uid, first.sha256)
    verdicts: list[str] = []
    for e in events:
        if e.verdict != "allow" and e.verdict not in verdicts:
            verdicts.append(e.verdict)
        if isinstance(e, wire.Exec):
            image = e.exe or e.filename or e.image
            n.execs.append(ExecStep(time=e.time, image=image, cmdline=_command(e), verdict=e.verdict,
                                    result=e.result, sha256=e.sha256))
            if e.result == 0:  # what it became; a refused exec leaves it as it was
                n.image, n.cmdline, n.sha256 = image, _command(e), e.sha256 or n.sha256
            n.user, n.uid = e.user or n.user, e.uid
            n.started = n.started or e.time
        elif isinstance(e, wire.Exit):
            n.exited, n.exit_code = e.time, e.code
    n.verdicts = verdicts
    return n


def process_tree(store: Store, agent: str, pid: int, when: int, *, window: int = 3600 * 10**9) -> ProcessTree:
    """The process ``pid`` on ``agent`` around ``when`` (Unix ns), from the
    stored exec, fork and exit events: its ancestors by parent pid, then its
    children by its forks, each with its command lines, user, hashes and
    verdicts.  ``window`` bounds how far from ``when`` a pid is taken to be
    the same process (pids are reused)."""
    db = store.db
    own = (_process_events(db, agent, pid, when - window, when, backwards=True)
           + _process_events(db, agent, pid, when + 1, when + window))
    before = [e for e in own if e.time <= when]
    # Its life ends at its exit after ``when``; a pid is reused only after that.
    end = next((e.time for e in own if isinstance(e, wire.Exit) and e.time >= when), when + window)
    start = next((e.time for e in reversed(before) if isinstance(e, wire.Exit) and e.time < when), when - window)
    mine = [e for e in own if start < e.time <= end]
    me = _node(pid, 0, mine)
    me.started = me.started or (mine[0].time if mine else 0)
    ancestors: list[ProcessNode] = []
    child, child_start = me, me.started or when
    seen = {pid}
    for depth in range(1, TREE_DEPTH + 1):
        parent_pid = child.ppid
        if parent_pid <= 0 or parent_pid in seen:
            break
        seen.add(parent_pid)
        theirs = _process_events(db, agent, parent_pid, child_start - window, child_start, backwards=True)
        # Only its events since its last exit before the child started.
        exits = [i for i, e in enumerate(theirs) if isinstance(e, wire.Exit)]
        if exits:
            theirs = theirs[exits[-1] + 1:]
        if theirs:
            parent = _node(parent_pid, -depth, theirs)
        else:
            # Nothing stored of it: what the child's events say of its parent.
            source = mine[0] if child is me and mine else None
            parent = ProcessNode(pid=parent_pid, ppid=0, depth=-depth, known=False,
                                 image=getattr(source, "parent_image", ""),
                                 cmdline=getattr(source, "parent_cmdline", ""))
        ancestors.append(parent)
        child, child_start = parent, parent.started or child_start
    nodes = list(reversed(ancestors)) + [me]
    cut = _descendants(db, agent, me, mine, end, window, nodes, seen)
    return ProcessTree(agent=agent, pid=pid, nodes=nodes, cut=cut)


def _descendants(db: Any, agent: str, root: ProcessNode, root_events: list[Any], root_end: int,
                 window: int, nodes: list[ProcessNode], seen: set[int]) -> int:
    cut = 0
    stack = [(root_events, 1)]
    while stack:
        events, depth = stack.pop()
        forks = [e for e in events if isinstance(e, wire.Fork) and e.child_pid and e.child_pid not in seen]
        found = []
        for f in forks:
            seen.add(f.child_pid)
            if len(nodes) >= TREE_NODES or depth > TREE_DEPTH:
                cut += 1
                continue
            theirs = _process_events(db, agent, f.child_pid, f.time, f.time + window)
            end = next((i for i, e in enumerate(theirs) if isinstance(e, wire.Exit)), None)
            if end is not None:
                theirs = theirs[:end + 1]
            n = _node(f.child_pid, depth, theirs, fallback=f)
            n.ppid, n.started = f.pid, f.time
            if not any(isinstance(e, wire.Exec) and e.result == 0 for e in theirs):
                # Forked, never exec'd (or refused): it runs its parent's program.
                n.image, n.cmdline = n.image or f.image, n.cmdline or f.cmdline
            nodes.append(n)
            found.append(theirs)
        stack.extend((theirs, depth + 1) for theirs in reversed(found))
    # Depth-first order: a child right under its parent.
    ordered: list[ProcessNode] = []
    by_parent: dict[int, list[ProcessNode]] = {}
    head = [n for n in nodes if n.depth <= 0]
    for n in nodes:
        if n.depth > 0:
            by_parent.setdefault(n.ppid, []).append(n)

    def walk(pid: int) -> None:
        for c in by_parent.get(pid, []):
            ordered.append(c)
            walk(c.pid)

    walk(root.pid)
    nodes[:] = head + ordered
    return cut


def alert_process(store: Store, alert_id: str) -> ProcessTree | None:
    """The process tree of the process an alert is about (its first event's)."""
    rows = _read(store.db, "SELECT body, agent FROM alerts WHERE id=?", (alert_id,))
    if not rows:
        return None
    a = _decode_alert(rows[0][0])
    event = next((e for e in a.events if e.pid), None)
    if event is None:
        return ProcessTree(agent=a.agent, pid=0, nodes=[])
    return process_tree(store, event.agent or a.agent, event.pid, event.time or a.time)


# -- incidents -----------------------------------------------------------------------------


class IncidentRow(Struct):
    id: str
    title: str
    level: str
    opened: float
    updated: float
    agents: list[str]
    links: int
    alerts: int


def incidents(store: Store, limit: int = 100) -> list[IncidentRow]:
    return [IncidentRow(id=i.id, title=i.title, level=i.level, opened=i.opened, updated=u, agents=i.agents,
                        links=len(i.edges), alerts=len(i.alerts))
            for i, u in ((_decode_incident(b), u) for b, u in _read(
                store.db, "SELECT body, updated FROM incidents ORDER BY updated DESC LIMIT ?", (limit,)))]


def incident(store: Store, incident_id: str) -> Incident | None:
    rows = _read(store.db, "SELECT body FROM incidents WHERE id=?", (incident_id,))
    return _decode_incident(rows[0][0]) if rows else None


class TriageView(Struct):
    """One AI triage of an incident: the model's verdict, or why there is none."""

    id: int
    time: float
    state: str
    """done (a verdict) or failed (``reason`` says why)."""
    requested_by: str
    model: str
    severity: str
    confidence: float
    techniques: list[str]
    explanation: str
    playbook: str
    """The playbook the model recommends ("" for none); it runs only if a playbook's ai_verdict trigger says so."""
    reason: str
    seconds: float
    calls: int


class IncidentTriage(Struct):
    incident: str
    enabled: bool
    """[ai] url is set: triages can be asked for."""
    pending: bool
    """A triage was asked for and is not done yet."""
    triages: list[TriageView]
    """Newest first."""


def incident_triage(store: Store, incident_id: str, enabled: bool, limit: int = 20) -> IncidentTriage | None:
    """The AI triages of an incident (None: no such incident)."""
    if store.incident(incident_id) is None:
        return None
    views = [TriageView(id=r.id, time=r.time, state=r.state, requested_by=r.requested_by, model=r.model,
                        severity=r.severity, confidence=r.confidence, techniques=list(r.verdict.get("techniques", [])),
                        explanation=r.verdict.get("explanation", ""), playbook=r.verdict.get("playbook", ""),
                        reason=r.reason, seconds=r.seconds, calls=r.calls)
             for r in store.triage(incident_id, limit)]
    return IncidentTriage(incident=incident_id, enabled=enabled, pending=store.triage_requested(incident_id),
                          triages=views)


# -- agents ------------------------------------------------------------------------------------


class AgentView(Struct):
    id: str
    state: str
    """online, offline, enrolled (never seen) or revoked."""
    hostname: str
    addresses: list[str]
    os: str
    kernel: str
    agent_version: str
    policy_version: str
    bundle_version: int
    bundle_detail: str
    wire_version: int | None
    spooled: int
    dropped: int
    first_seen: float | None
    last_seen: float | None
    labels: dict[str, str]


def agents(store: Store) -> list[AgentView]:
    labels = store.labels()
    return [AgentView(
        id=r.id, state="revoked" if r.revoked else "online" if r.online else "offline" if r.last_seen else "enrolled",
        hostname=r.hostname, addresses=r.addresses, os=r.os, kernel=r.kernel, agent_version=r.agent_version,
        policy_version=r.policy_version, bundle_version=r.bundle_version, bundle_detail=r.bundle_detail,
        wire_version=r.wire_version, spooled=r.spooled, dropped=r.dropped, first_seen=r.first_seen,
        last_seen=r.last_seen, labels=labels.get(r.id, {})) for r in store.agents()]


# -- actions -------------------------------------------------------------------------------------


class ActionView(Struct):
    id: str
    agent: str
    action: str
    params: dict[str, Any]
    state: str
    mode: str
    created: float
    updated: float
    expires: float
    playbook: str
    alert: str
    reason: str
    result: str
    data: dict[str, Any]
    ttl: float
    reverts: str


class AuditView(Struct):
    time: float
    actor: str
    what: str
    why: str
    result: str
    detail: dict[str, Any]


class Actions(Struct):
    pending: list[ActionView]
    """Awaiting an operator's approval, oldest waiting first."""
    recent: list[ActionView]
    """Every other action, newest first."""
    audit: list[AuditView]


_ACTION_COLUMNS = "id, agent, action, params, state, created, updated, expires, playbook, alert, reason, result"
ACTION_STATES = ("approved", "denied", "requested", *OPEN_STATES, *CLOSED_STATES)
"""Every state an action row can be in: the engine's, and an operator's
decision or own action not yet carried out."""


def _view(a: Action) -> ActionView:
    return ActionView(id=a.id, agent=a.agent, action=a.action, params=a.params, state=a.state, mode=a.mode,
                      created=a.created, updated=a.updated, expires=a.expires, playbook=a.playbook, alert=a.alert,
                      reason=a.reason, result=a.result, data=a.data, ttl=a.ttl, reverts=a.reverts)


def _action(row: Sequence) -> ActionView:
    from hive.playbook._records import _action as decode

    return _view(decode(row))


def actions(store: Store, *, state: str = "", limit: int = 100, audit: int = 100) -> Actions:
    records = Records(store.db)
    try:
        pending = records.actions(states=["pending_approval"], limit=1000)
        recent = [a for a in records.actions(states=[state] if state else (), limit=limit)
                  if state or a.state != "pending_approval"]
        trail = records.audit(limit=audit)
    except RecordsError as e:
        raise StoreError(str(e)) from None
    return Actions(pending=[_view(a) for a in reversed(pending)], recent=[_view(a) for a in recent],
                   audit=[_audit(r) for r in trail])


def _audit(r: AuditRecord) -> AuditView:
    return AuditView(time=r.time, actor=r.actor, what=r.what, why=r.why, result=r.result, detail=r.detail)


def action(store: Store, action_id: str) -> tuple[ActionView, list[AuditView]] | None:
    records = Records(store.db)
    try:
        found = records.actions(action_id=action_id, limit=1)
        trail = records.audit(action_id=action_id, limit=200) if found else []
    except RecordsError as e:
        raise StoreError(str(e)) from None
    return (_view(found[0]), [_audit(r) for r in trail]) if found else None


# -- rules and playbooks ----------------------------------------------------------------------------


class RuleView(Struct):
    id: str
    title: str
    level: str
    source: str
    hits: int
    suppressed_by: list[str]


class Failure(Struct):
    path: str
    reason: str
    id: str = ""
    title: str = ""
    kind: str = ""


class Rules(Struct):
    loaded: list[RuleView]
    failed: list[Failure]
    folders: list[str]


_rule_lock = threading.Lock()
_rule_cache: Any = None


def rules(store: Store, folders: Sequence[Path]) -> Rules:
    """The Sigma rules the hive loads from ``folders`` (parsed files cached by
    their stamps, so a page view re-reads only changed files), with their
    hits in the stored alerts."""
    global _rule_cache
    from hive.sigma import RuleError, listing, load_rules
    from hive.sigma._loader import RuleCache

    with _rule_lock:
        _rule_cache = _rule_cache or RuleCache()
        try:
            report = load_rules([f for f in folders if Path(f).exists()], _rule_cache).report
        except RuleError as e:
            return Rules(loaded=[], failed=[Failure(path="", reason=str(e))], folders=[str(f) for f in folders])
    hits = store.alert_hits()
    loaded = [RuleView(id=r.id, title=r.title, level=r.level, source=r.source, hits=hits.get(r.id, 0),
                       suppressed_by=list(r.suppressed_by)) for r in listing(report, folders)]
    failed = [Failure(path=str(f.path or ""), reason=f.reason, id=f.rule_id, title=f.title, kind=f.kind)
              for f in report.failures]
    return Rules(loaded=loaded, failed=failed, folders=[str(f) for f in folders])


class PlaybookView(Struct):
    id: str
    title: str
    path: str
    enabled: bool
    mode: str
    steps: list[str]
    """Each step's action, with its mode where it is not automatic."""
    actions: int
    """Actions it has created that the store still holds."""


class Playbooks(Struct):
    loaded: list[PlaybookView]
    failed: list[Failure]


def playbooks(store: Store, folders: Sequence[Path]) -> Playbooks:
    report = check_playbooks(*folders)
    counts = dict(_read(store.db, "SELECT playbook, count(*) FROM commands GROUP BY playbook", ()))
    views = [PlaybookView(id=p.id, title=p.title, path=str(p.path or ""), enabled=p.enabled, mode=p.mode,
                          steps=[s.action + (f" [{s.mode}]" if s.mode != "auto" else "") for s in p.steps],
                          actions=counts.get(p.id, 0))
             for p in [*report.playbooks, *report.disabled]]
    failed = [Failure(path=str(f.path or ""), reason=f.reason) for f in report.failures]
    return Playbooks(loaded=views, failed=failed)


# -- events ------------------------------------------------------------------------------------------


class EventRow(Struct):
    id: int
    time: int
    agent: str
    kind: str
    pid: int
    verdict: str
    image: str
    user: str
    container: str
    summary: str
    """What it did, in words (as ``immune-node events`` says it)."""


class EventPage(Struct):
    items: list[EventRow]
    next: int = 0
    """``before`` for the next older page (0: no more); with ``after``, the
    newest id seen, to poll from."""
    scanned: int = 0
    """Events read to find these (a text filter reads at most TEXT_SCAN a page)."""


def _row(event_id: int, e: Any) -> EventRow:
    return EventRow(id=event_id, time=e.time, agent=e.agent, kind=type(e).__struct_config__.tag, pid=e.pid,
                    verdict=e.verdict, image=e.image or getattr(e, "filename", ""), user=e.user,
                    container=present.container_label(e), summary=present.describe(e))


def _matches(row: EventRow, e: Any, words: str) -> bool:
    text = " ".join((row.summary, row.image, e.cmdline, e.comm, row.user, row.container)).lower()
    return words in text


def events(store: Store, q: EventQuery = EventQuery()) -> EventPage:
    """A page of events: newest first (``before``), or with ``after`` the
    ones after that id, oldest first (the live tail)."""
    where, args = _equal((("agent", q.agent), ("kind", q.kind), ("verdict", q.verdict), ("pid", q.pid),
                          ("time >=", q.since)))
    forward = bool(q.after)
    cursor = q.after if forward else q.before
    items: list[EventRow] = []
    scanned, last = 0, 0
    chunk = q.limit + 1 if not q.text else 2000
    words = q.text.lower()
    while True:
        page_where = list(where)
        if cursor:
            page_where.append("id > ?" if forward else "id < ?")
        sql = "SELECT id, body FROM events" + (" WHERE " + " AND ".join(page_where) if page_where else "")
        sql += f" ORDER BY id {'ASC' if forward else 'DESC'} LIMIT ?"
        rows = _read(store.db, sql, [*args, *([cursor] if cursor else []), chunk])
        for event_id, body in rows:
            scanned += 1
            e = _decode_event(body)
            row = _row(event_id, e)
            if words and not _matches(row, e, words):
                last = event_id
                continue
            if len(items) == q.limit:
                return EventPage(items=items, next=items[-1].id, scanned=scanned)
            items.append(row)
            last = event_id
        if len(rows) < chunk:
            return EventPage(items=items, next=last if forward else 0, scanned=scanned)
        cursor = rows[-1][0]
        if scanned >= TEXT_SCAN:
            # Gave up for this page: go on from where it stopped.
            return EventPage(items=items, next=cursor, scanned=scanned)


def changes(store: Store) -> tuple:
    """A stamp that moves whenever an alert is stored, an action changes or an
    agent comes or goes: what the live pages poll."""
    return _read(store.db, "SELECT (SELECT coalesce(max(rowid), 0) FROM alerts), "
                 "(SELECT coalesce(max(updated), 0) FROM commands), (SELECT count(*) FROM commands), "
                 "(SELECT coalesce(sum(online), 0) FROM agents)", ())[0]


def latest_event(store: Store) -> int:
    return _read(store.db, "SELECT coalesce(max(id), 0) FROM events", ())[0][0]


# -- plumbing ------------------------------------------------------------------------------------------


def _equal(conditions: Iterable[tuple[str, Any]]) -> tuple[list[str], list[Any]]:
    """SQL conditions and their arguments for the filters given a value
    (empty or 0: any); a bare column name compares with ``=``."""
    where, args = [], []
    for column, value in conditions:
        if value:
            where.append(f"{column} ?" if " " in column else f"{column} = ?")
            args.append(value)
    return where, args


def _read(db: Any, sql: str, args: Iterable) -> list[tuple]:
    try:
        return db.execute(sql, tuple(args)).fetchall()
    except DB_ERRORS as e:
        raise StoreError(f"cannot read the store: {e}") from None
