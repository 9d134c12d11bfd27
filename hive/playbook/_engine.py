"""The playbook engine: alerts and time in, decisions out.

A plain object with an injected clock (wall-clock seconds: commands carry
their expiry as Unix time to the agent).  It never touches a socket or the
store; the playbook actor feeds it and carries out what it returns::

    engine = PlaybookEngine(report.playbooks, clock=time.time, variables={"webhook": url})
    d = engine.on_alert(alert)            # every alert
    d = engine.on_verdict(verdict, alert) # every stored AI verdict (hive.ai), with its incident's alert
    d = engine.on_result(agent, result)   # every CommandResult
    d = engine.approve(action_id, "alice")  /  engine.reject(action_id, "alice", "false positive")
    d = engine.run(action, "alice")       # an operator's own action (Records.run wrote it)
    d = engine.agent_online(agent)  /  engine.agent_offline(agent)
    d = engine.tick()                     # about once a second: TTL reverts, expiries
    # d.send: (agent, wire command) to deliver; d.local: commands the hive runs
    # itself (Notify); d.actions: Action rows created or changed; d.audit: records

A step's params become the typed command of its action (``_actions``): a
parameter of the wrong type or out of range refuses the action with the
reason.  A block or isolation with a ttl carries it to the agent, which
lifts it itself if the hive's revert never comes.

Every action a playbook asks for becomes an ``Action`` with a state:

    pending_approval -> (approve) -> sent | queued      (reject) -> rejected
    requested (an operator's own action) -> sent | queued | refused
    queued (agent offline) -> sent when it returns, or expired
    sent -> done | failed | active (a block with a ttl) -> reverted
    refused (a guardrail or invalid parameters), dry_run, expired, unanswered

and every decision, refusal, suppression and result is an ``AuditRecord``:
who acted (``playbook:ID``, ``operator:NAME``, ``agent:ID``), what, why, and
the outcome.
"""

from __future__ import annotations

import heapq
import ipaddress
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

import wire

from ._actions import ACTIONS, HERD, MANUAL, Notify, check_guardrails, check_manual, command, plain_params
from ._errors import TemplateError
from ._playbook import Playbook, Step
from ._template import render_value

OPEN_STATES = ("pending_approval", "queued", "sent", "active")
CLOSED_STATES = ("done", "failed", "refused", "rejected", "expired", "dry_run", "reverted", "unanswered")


@dataclass
class Action:
    id: str
    agent: str
    """Empty for an action the hive runs itself (notify)."""
    action: str
    params: dict[str, Any]
    """The command's parameters as plain data (``plain_params``)."""
    state: str
    created: float
    updated: float
    expires: float = 0.0
    """Waiting (approval, offline agent): when it gives up, 0 = never.
    Active: when it is reverted."""
    playbook: str = ""
    alert: str = ""
    reason: str = ""
    """Why it exists (and who approved or rejected it)."""
    result: str = ""
    """The latest outcome, in words."""
    data: dict[str, Any] = field(default_factory=dict)
    """What the agent returned with its result (a rule name, a manifest)."""
    mode: str = "auto"
    ttl: float = 0.0
    wait: float = 0.0
    """How long it may wait for an approval or an offline agent, 0 = never gives up."""
    reverts: str = ""
    """For a revert: the id of the action it undoes."""

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items() if k != "alert")
        where = f"on {self.agent}" if self.agent else "from the hive"
        return f"{self.action}{' ' + params if params else ''} {where}"


@dataclass
class AuditRecord:
    time: float
    actor: str
    what: str
    why: str
    result: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decisions:
    send: list[tuple[str, wire.AnyCommand]] = field(default_factory=list)
    local: list[Notify] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.send or self.local or self.actions or self.audit)

    def extend(self, other: Decisions) -> None:
        self.send += other.send
        self.local += other.local
        self.actions += other.actions
        self.audit += other.audit


@dataclass
class EngineStatistics:
    playbooks: int = 0
    alerts: int = 0
    matched: int = 0
    suppressed: int = 0
    skipped: int = 0
    refused: int = 0
    dry_run: int = 0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    expired: int = 0
    reverted: int = 0
    pending_approval: int = 0
    queued: int = 0
    active: int = 0


def plain(obj: Any) -> Any:
    """A struct as plain data with every field, defaults included (msgspec's
    own conversion drops defaults, and a condition on ``event.verdict`` must
    see ``allow``), its tag under its tag field."""
    if isinstance(obj, msgspec.Struct):
        cfg = obj.__struct_config__
        out = {cfg.tag_field: cfg.tag} if cfg.tag_field and cfg.tag else {}
        out.update((f, plain(getattr(obj, f))) for f in obj.__struct_fields__)
        return out
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def _scope(alert: wire.Alert, variables: Mapping[str, Any]) -> dict[str, Any]:
    a = plain(alert)
    events = a["events"]
    own = [e for e in events if e.get("agent") == alert.agent]
    return {"alert": a, "event": (own or events or [{}])[0], "vars": dict(variables)}


def new_action_id() -> str:
    return "a-" + uuid.uuid4().hex[:16]


class PlaybookEngine:
    """Decides what to do about alerts, and keeps every action until it is
    closed.  ``protected`` are the hive's own addresses (never blocked);
    ``dry_run`` turns every playbook into dry-run; ``command_ttl`` is how long
    an agent may still act on a command after it was sent; ``result_timeout``
    how long a sent command may go unanswered."""

    def __init__(self, playbooks: Iterable[Playbook] = (), *, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = new_action_id, variables: Mapping[str, Any] | None = None,
                 protected: Iterable[str] = (), dry_run: bool = False, command_ttl: float = 300.0,
                 approval_wait: float = 3600.0, offline_wait: float = 3600.0,
                 result_timeout: float = 120.0, max_open: int = 10_000, memory: int = 10_000) -> None:
        self._clock = clock
        self._new_id = new_id
        self.variables = dict(variables or {})
        self._protected = [ipaddress.ip_network(p, strict=False) for p in protected]
        self.dry_run = dry_run
        self.command_ttl = command_ttl
        self.approval_wait = approval_wait
        self.offline_wait = offline_wait
        self.result_timeout = result_timeout
        self.max_open = max_open
        self._memory = memory
        self._playbooks: tuple[Playbook, ...] = ()
        self._open: dict[str, Action] = {}
        self._queues: dict[str, list[str]] = {}
        self._sent_at: dict[str, float] = {}
        self._reverts: list[tuple[float, str]] = []
        self._offline: set[str] = set()
        self._agent_pids: dict[str, frozenset[int]] = {}
        self._known: set[str] = set()
        """Agents the hive told us of (online or not): the only ones an operator may act on."""
        self._seen_alerts: OrderedDict[str, None] = OrderedDict()
        self._last_run: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._runs: dict[str, deque[float]] = {}
        self._noted: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._stats = EngineStatistics()
        self.set_playbooks(playbooks)

    # ---- configuration -----------------------------------------------------------

    def set_playbooks(self, playbooks: Iterable[Playbook]) -> None:
        """Replace the playbooks; limits already counted for an id carry over."""
        self._playbooks = tuple(p for p in playbooks if p.enabled)
        self._stats.playbooks = len(self._playbooks)

    @property
    def playbooks(self) -> tuple[Playbook, ...]:
        return self._playbooks

    # ---- alerts --------------------------------------------------------------------

    def on_alert(self, alert: wire.Alert) -> Decisions:
        d = Decisions()
        if alert.id in self._seen_alerts:
            return d
        self._remember(self._seen_alerts, alert.id, None)
        self._stats.alerts += 1
        now = self._clock()
        scope: dict[str, Any] | None = None
        taken = self._taken_at_edge(alert, now, d)
        for pb in self._playbooks:
            if not pb.trigger.matches(alert.rule_id, alert.tags, alert.level, alert.incident, alert.agent):
                continue
            if scope is None:
                scope = _scope(alert, self.variables)
            why = (f"alert {alert.id} {alert.title!r} ({alert.level}) on {alert.agent or 'no agent'} "
                   f"matched playbook {pb.id}")
            self._run(pb, alert, scope, why, now, d, taken)
        return d

    def _run(self, pb: Playbook, alert: wire.Alert, scope: dict[str, Any], why: str, now: float, d: Decisions,
             taken: frozenset[str] = frozenset()) -> None:
        """Run ``pb``'s steps on ``alert`` if its conditions hold and its limits allow."""
        scope["playbook"] = {"id": pb.id, "title": pb.title}
        if not all(c.holds(scope) for c in pb.conditions):
            return
        self._stats.matched += 1
        try:
            key = str(render_value(pb.limits.key, scope))
        except TemplateError:
            key = ""
        limited = self._limited(pb, key, now)
        if limited:
            self._stats.suppressed += 1
            if self._note_once((pb.id, key, limited.split(":")[0]), now, pb):
                d.audit.append(AuditRecord(now, f"playbook:{pb.id}", f"run playbook {pb.id} for {key or '-'}",
                                           why, f"suppressed: {limited}", {"alert": alert.id}))
            return
        self._count_run(pb, key, now)
        for step in pb.steps:
            if pb.id in taken and step.mode == "auto":
                d.audit.append(AuditRecord(now, f"playbook:{pb.id}", f"step {step.index} {step.action}", why,
                                           "taken at the edge: the agent ran it", {"alert": alert.id}))
                continue
            self._step(pb, step, alert, scope, why, now, d)

    def on_verdict(self, verdict: Mapping[str, Any], alert: wire.Alert) -> Decisions:
        """Run the playbooks whose ``ai_verdict`` trigger ``verdict`` (a
        stored triage: severity, techniques, explanation, playbook,
        confidence, model, incident, id) meets; ``alert`` is its incident's
        alert the steps act on.  Each verdict is acted on once."""
        d = Decisions()
        seen = f"verdict:{verdict.get('id', '')}"
        if seen in self._seen_alerts:
            return d
        self._remember(self._seen_alerts, seen, None)
        now = self._clock()
        scope: dict[str, Any] | None = None
        for pb in self._playbooks:
            if not pb.trigger.matches_verdict(verdict, alert.agent, pb.id):
                continue
            if scope is None:
                scope = _scope(alert, self.variables)
                scope["verdict"] = dict(verdict)
            why = (f"AI verdict on incident {verdict.get('incident', '?')}: {verdict.get('severity')} "
                   f"({verdict.get('confidence')}) from {verdict.get('model') or 'the model'} matched playbook {pb.id}")
            self._run(pb, alert, scope, why, now, d)
        return d

    @staticmethod
    def _taken_at_edge(alert: wire.Alert, now: float, d: Decisions) -> frozenset[str]:
        """The playbooks whose auto steps the agent ran on ``alert`` (its
        Edge event says), each action it took recorded in the audit trail."""
        if not alert.edge:
            return frozenset()
        edge = next((e for e in alert.events if isinstance(e, wire.Edge)), None)
        if edge is None:
            return frozenset()
        by = (f"the profile of {edge.workload}, enforcing" if edge.workload  # a learned-self kill, no playbook
              else f"playbook {', '.join(edge.playbooks) or '?'} (bundle v{edge.bundle})")
        for a in edge.actions:
            d.audit.append(AuditRecord(now, f"agent:{alert.agent}", f"{a.action} {a.detail}",
                                       f"alert {alert.id} {alert.title!r} at the edge, {by}",
                                       "sent at the edge", {"alert": alert.id, "command": a.id}))
        return frozenset(edge.playbooks)

    def _step(self, pb: Playbook, step: Step, alert: wire.Alert, scope: dict[str, Any], why: str,
              now: float, d: Decisions) -> None:
        actor = f"playbook:{pb.id}"
        spec = ACTIONS[step.action]
        detail = {"alert": alert.id, "step": step.index}
        failed = next((c for c in step.when if not c.holds(scope)), None)
        if failed is not None:
            self._stats.skipped += 1
            d.audit.append(AuditRecord(now, actor, f"step {step.index} {step.action}", why,
                                       f"skipped: condition {failed.field} {failed.op} not met", detail))
            return
        try:
            params = render_value(step.params, scope)
            agent = "" if spec.local else str(render_value(step.agent, scope))
        except TemplateError as e:
            self._stats.skipped += 1
            d.audit.append(AuditRecord(now, actor, f"step {step.index} {step.action}", why,
                                       f"skipped: {e}", detail))
            return
        params = {k: v for k, v in params.items() if v not in ("", None)}
        if not spec.local and not agent:
            self._stats.skipped += 1
            d.audit.append(AuditRecord(now, actor, f"step {step.index} {step.action}", why,
                                       "skipped: the alert names no agent to act on", detail))
            return
        try:
            params = plain_params(command(step.action, params, id="check", ttl=step.ttl))
        except ValueError as e:
            refusal: str | None = f"refused: invalid parameters: {e}"
        else:
            refusal = check_guardrails(step.action, params, agent_pids=self._agent_pids.get(agent, frozenset()),
                                       protected=self._protected)
        if refusal is None and len(self._open) >= self.max_open:
            refusal = f"refused: {self.max_open} actions are already open; see immune-node actions --pending"
        if spec.local:
            params["alert"] = scope["alert"]
        mode = "dry-run" if self.dry_run else step.mode
        a = Action(id=self._new_id(), agent=agent, action=step.action, params=params, state="refused",
                   created=now, updated=now, playbook=pb.id, alert=alert.id, reason=why, mode=mode,
                   ttl=step.ttl, wait=step.expires)
        d.actions.append(a)
        if refusal is not None:
            self._stats.refused += 1
            a.result = refusal
            d.audit.append(AuditRecord(now, actor, a.describe(), why, refusal, self._detail(a)))
        elif mode == "dry-run":
            self._stats.dry_run += 1
            a.state = "dry_run"
            a.result = "dry-run: not sent"
            ttl = f", reverted after {a.ttl:g}s" if a.ttl else ""
            d.audit.append(AuditRecord(now, actor, a.describe(), why,
                                       f"dry-run: would send {a.action} to {agent or 'the hive'}{ttl}",
                                       self._detail(a)))
        elif mode == "approval":
            a.state = "pending_approval"
            wait = a.wait or self.approval_wait
            a.expires = now + wait
            a.result = "awaiting approval"
            self._open[a.id] = a
            d.audit.append(AuditRecord(now, actor, a.describe(), why,
                                       f"awaiting approval (immune-node actions --approve {a.id}) "
                                       f"for {wait:g}s", self._detail(a)))
        else:
            self._dispatch(a, now, d, actor, why)

    def _dispatch(self, a: Action, now: float, d: Decisions, actor: str, why: str) -> None:
        """Send now, or queue for an offline agent."""
        a.updated = now
        self._open[a.id] = a
        if not any(x is a for x in d.actions):
            d.actions.append(a)
        if a.agent and a.agent in self._offline:
            a.state = "queued"
            wait = a.wait or (0.0 if a.reverts else self.offline_wait)
            a.expires = now + wait if wait else 0.0
            a.result = "queued: agent offline"
            self._queues.setdefault(a.agent, []).append(a.id)
            d.audit.append(AuditRecord(now, actor, a.describe(), why,
                                       "queued: the agent is offline; sent when it returns"
                                       + (f" within {wait:g}s" if wait else ""), self._detail(a)))
            return
        try:
            cmd = command(a.action, a.params, id=a.id, ttl=a.ttl, expires=int((now + self.command_ttl) * 1e9))
        except ValueError as e:  # a row kept by an older hive, whose checks were looser
            self._stats.refused += 1
            a.state = "refused"
            a.result = f"refused: invalid parameters: {e}"
            self._close(a)
            d.audit.append(AuditRecord(now, actor, a.describe(), why, a.result, self._detail(a)))
            return
        a.state = "sent"
        a.expires = 0.0
        a.result = "sent"
        self._sent_at[a.id] = now
        self._stats.sent += 1
        if isinstance(cmd, Notify):
            d.local.append(cmd)
        else:
            d.send.append((a.agent, cmd))
        d.audit.append(AuditRecord(now, actor, a.describe(), why, "sent", self._detail(a)))

    # ---- results -------------------------------------------------------------------

    def on_result(self, agent: str, result: wire.CommandResult) -> Decisions:
        """``agent`` is who answered ('' for the hive's own actions)."""
        d = Decisions()
        now = self._clock()
        a = self._open.get(result.command)
        actor = f"agent:{agent}" if agent else "hive"
        if a is None or a.agent != agent or a.state not in ("sent", "queued"):
            state = "no such command" if a is None else (
                f"sent to {a.agent or 'the hive'}" if a.agent != agent else f"already {a.state}")
            d.audit.append(AuditRecord(now, actor, f"result for {result.command}", "agent answered",
                                       f"ignored: {state}", {"ok": result.ok, "detail": result.detail}))
            return d
        self._sent_at.pop(a.id, None)
        a.updated = now
        a.data = dict(result.data)
        d.actions.append(a)
        why = f"result of {a.id}"
        if not result.ok:
            self._stats.failed += 1
            a.state = "failed"
            a.result = f"failed: {result.detail}"
            self._close(a)
        elif a.ttl and ACTIONS[a.action].revert:
            self._stats.ok += 1
            a.state = "active"
            a.expires = now + a.ttl
            a.result = f"ok: {result.detail}; reverted at ttl"
            heapq.heappush(self._reverts, (a.expires, a.id))
        else:
            self._stats.ok += 1
            a.state = "done"
            a.result = f"ok: {result.detail}"
            self._close(a)
            undone = self._open.get(a.reverts) if a.reverts else None
            if undone is not None:
                self._stats.reverted += 1
                undone.state = "reverted"
                undone.updated = now
                undone.result = f"reverted by {a.id}"
                self._close(undone)
                d.actions.append(undone)
        d.audit.append(AuditRecord(now, actor, a.describe(), why, a.result, self._detail(a)))
        return d

    # ---- operators -----------------------------------------------------------------

    def approve(self, action_id: str, by: str) -> Decisions:
        return self._decide(action_id, by, approve=True)

    def reject(self, action_id: str, by: str, why: str = "") -> Decisions:
        return self._decide(action_id, by, approve=False, why=why)

    def _decide(self, action_id: str, by: str, *, approve: bool, why: str = "") -> Decisions:
        d = Decisions()
        now = self._clock()
        actor = f"operator:{by}"
        verb = "approve" if approve else "reject"
        a = self._open.get(action_id)
        if a is None or a.state != "pending_approval":
            d.audit.append(AuditRecord(now, actor, f"{verb} {action_id}", why or verb,
                                       "ignored: " + ("no such action awaits approval" if a is None
                                                      else f"it is {a.state}")))
            return d
        if a.expires and now >= a.expires:
            self._expire(a, now, d)
            return d
        if approve:
            a.reason += f"; approved by {by}"
            self._dispatch(a, now, d, actor, f"approved by {by}")
        else:
            a.state = "rejected"
            a.updated = now
            a.reason += f"; rejected by {by}" + (f": {why}" if why else "")
            a.result = "rejected"
            self._close(a)
            d.actions.append(a)
            d.audit.append(AuditRecord(now, actor, a.describe(), why or "rejected", "rejected", self._detail(a)))
        return d

    def run(self, a: Action, by: str) -> Decisions:
        """An operator's own action (a ``requested`` row ``Records.run``
        wrote): checked again here, where the agents' pids are known, as a
        playbook's step is, then sent (or queued for an offline agent)."""
        d = Decisions()
        if a.id in self._open:  # already taken; its row had not been written yet
            return d
        now = self._clock()
        actor = by if a.mode == "herd" else f"operator:{by}"
        agents = {x: self._agent_pids.get(x, frozenset()) for x in self._known}
        refusal = None
        try:
            a.params = check_manual(a.action, a.agent, a.params, a.ttl, agents=agents, protected=self._protected,
                                    allowed=HERD if a.mode == "herd" else MANUAL)
        except ValueError as e:
            refusal = str(e) if str(e).startswith("refused:") else f"refused: {e}"
        if refusal is None and len(self._open) >= self.max_open:
            refusal = f"refused: {self.max_open} actions are already open; see immune-node actions --pending"
        if refusal is not None:
            self._stats.refused += 1
            a.state, a.updated, a.result = "refused", now, refusal
            d.actions.append(a)
            d.audit.append(AuditRecord(now, actor, a.describe(), a.reason, refusal, self._detail(a)))
            return d
        self._dispatch(a, now, d, actor, a.reason)
        return d

    def pending(self) -> list[Action]:
        """Actions awaiting approval, oldest first."""
        return sorted((a for a in self._open.values() if a.state == "pending_approval"), key=lambda a: a.created)

    def action(self, action_id: str) -> Action | None:
        return self._open.get(action_id)

    # ---- agents --------------------------------------------------------------------

    def agent_online(self, agent: str, pids: Iterable[int] = ()) -> Decisions:
        """``agent`` is reachable (again); ``pids`` are its own processes, which
        no playbook may kill."""
        d = Decisions()
        self._known.add(agent)
        if pids:
            self._agent_pids[agent] = frozenset(pids)
        if agent not in self._offline:
            return d
        self._offline.discard(agent)
        now = self._clock()
        for action_id in self._queues.pop(agent, []):
            a = self._open.get(action_id)
            if a is None or a.state != "queued":
                continue
            if a.expires and now >= a.expires:
                self._expire(a, now, d)
            else:
                self._dispatch(a, now, d, "engine", f"agent {agent} is back")
        return d

    def agent_offline(self, agent: str) -> Decisions:
        """Commands it had not answered are queued to be sent again (the
        executor answers a repeated id without running it twice)."""
        d = Decisions()
        self._known.add(agent)
        if agent in self._offline:
            return d
        self._offline.add(agent)
        now = self._clock()
        for a in [a for a in self._open.values() if a.agent == agent and a.state == "sent"]:
            self._sent_at.pop(a.id, None)
            self._dispatch(a, now, d, "engine", f"agent {agent} went offline before answering")
        return d

    # ---- time ----------------------------------------------------------------------

    def tick(self) -> Decisions:
        d = Decisions()
        now = self._clock()
        while self._reverts and self._reverts[0][0] <= now:
            at, action_id = heapq.heappop(self._reverts)
            a = self._open.get(action_id)
            if a is not None and a.state == "active" and a.expires == at:
                self._revert(a, now, d)
        for a in list(self._open.values()):
            if a.state in ("pending_approval", "queued") and a.expires and now >= a.expires:
                self._expire(a, now, d)
            elif a.state == "sent" and a.id in self._sent_at and now - self._sent_at[a.id] >= self.result_timeout:
                sent = self._sent_at.pop(a.id)
                a.state = "unanswered"
                a.updated = now
                a.result = f"no result within {self.result_timeout:g}s"
                self._close(a)
                d.actions.append(a)
                d.audit.append(AuditRecord(now, "engine", a.describe(), f"sent at {sent:.0f}",
                                           a.result, self._detail(a)))
        return d

    def _revert(self, a: Action, now: float, d: Decisions) -> None:
        kind = ACTIONS[a.action].revert
        params: dict[str, Any] = {}
        if kind == "unblock":
            rule = a.data.get("rule")
            if not isinstance(rule, str) or not rule:
                a.state = "failed"
                a.result = "cannot revert: the agent's result named no rule"
                self._close(a)
                d.actions.append(a)
                d.audit.append(AuditRecord(now, "engine", a.describe(), "ttl ran out", a.result, self._detail(a)))
                return
            params["rule"] = rule
        elif kind == "unisolate_container":
            params["container"] = a.params["container"]  # as the isolation named it: the agent knows it so
        a.result = "reverting"
        a.updated = now
        d.actions.append(a)
        r = Action(id=self._new_id(), agent=a.agent, action=kind, params=params, state="sent", created=now,
                   updated=now, playbook=a.playbook, alert=a.alert,
                   reason=f"the ttl of {a.id} ({a.action}, {a.ttl:g}s) ran out", reverts=a.id)
        self._dispatch(r, now, d, "engine", r.reason)

    def _expire(self, a: Action, now: float, d: Decisions) -> None:
        was = a.state
        self._stats.expired += 1
        a.state = "expired"
        a.updated = now
        a.result = "expired: " + ("nobody approved it in time" if was == "pending_approval"
                                  else "the agent did not come back in time")
        if was == "queued" and a.id in self._queues.get(a.agent, ()):
            self._queues[a.agent].remove(a.id)
        self._close(a)
        d.actions.append(a)
        d.audit.append(AuditRecord(now, "engine", a.describe(), f"waited since {a.created:.0f}",
                                   a.result, self._detail(a)))

    def _close(self, a: Action) -> None:
        self._open.pop(a.id, None)

    # ---- restart -------------------------------------------------------------------

    def restore(self, actions: Iterable[Action]) -> None:
        """Take back open actions from the store after a restart.  Approved or
        rejected rows come back as awaiting approval: the caller replays the
        operator's decision (``immune-node actions --approve``) with
        approve()/reject().  Commands that were sent
        cannot be known to have run: they come back closed as unanswered,
        by the caller."""
        for a in actions:
            if a.state in ("approved", "denied"):
                a.state = "pending_approval"
            if a.state not in ("pending_approval", "queued", "active"):
                continue
            self._open[a.id] = a
            if a.state == "queued":
                self._offline.add(a.agent)
                self._queues.setdefault(a.agent, []).append(a.id)
            elif a.state == "active":
                heapq.heappush(self._reverts, (a.expires, a.id))

    # ---- limits --------------------------------------------------------------------

    def _limited(self, pb: Playbook, key: str, now: float) -> str | None:
        lim = pb.limits
        if lim.cooldown:
            last = self._last_run.get((pb.id, key))
            if last is not None and now - last < lim.cooldown:
                return f"cooldown: it ran for {key or '-'} {now - last:.0f}s ago (cooldown {lim.cooldown:g}s)"
        if lim.rate:
            runs = self._runs.get(pb.id)
            if runs is not None:
                while runs and runs[0] <= now - lim.rate[1]:
                    runs.popleft()
                if len(runs) >= lim.rate[0]:
                    return f"rate limit: {lim.rate[0]} runs within {lim.rate[1]:g}s already"
        return None

    def _count_run(self, pb: Playbook, key: str, now: float) -> None:
        if pb.limits.cooldown:
            self._last_run.pop((pb.id, key), None)
            self._remember(self._last_run, (pb.id, key), now)
        if pb.limits.rate:
            self._runs.setdefault(pb.id, deque()).append(now)

    def _note_once(self, key: tuple[str, str, str], now: float, pb: Playbook) -> bool:
        """One audit record per suppression window, not one per alert."""
        until = self._noted.get(key)
        if until is not None and now < until:
            return False
        window = pb.limits.cooldown if key[2] == "cooldown" else (pb.limits.rate or (0, 0))[1]
        self._noted.pop(key, None)
        self._remember(self._noted, key, now + window)
        return True

    def _remember(self, table: OrderedDict, key: Any, value: Any) -> None:
        table[key] = value
        while len(table) > self._memory:
            table.popitem(last=False)

    # ---- introspection -------------------------------------------------------------

    @staticmethod
    def _detail(a: Action) -> dict[str, Any]:
        return {"action": a.id, "alert": a.alert, "agent": a.agent, "mode": a.mode}

    def statistics(self) -> EngineStatistics:
        st = EngineStatistics(**vars(self._stats))
        for a in self._open.values():
            if a.state in ("pending_approval", "queued", "active"):
                setattr(st, a.state, getattr(st, a.state) + 1)
        return st
