"""Detection and response on the agent itself (issue 13's edge).

The rules and playbooks of the hive's bundle run here on the agent's own
events before they are spooled, with the hive's own engines (plain
objects): a rule's alert goes to the playbooks at once, and the steps the
agent can take alone (auto mode, an action on this host) are handed to its
executor without a round trip, also while the hive is unreachable.  What
was decided travels up as a ``wire.Edge`` event right behind the event it
came from, so the hive files one alert for both and does not act again;
approval-mode steps are left to the hive.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

import fleet
import wire

log = logging.getLogger("immune.agent.edge")


class EdgeError(Exception):
    """A bundle's rules or playbooks cannot run here; the message says why."""


@dataclass
class EdgeDecisions:
    events: list[wire.Edge] = field(default_factory=list)
    """To spool right behind the events they came from."""
    commands: list[wire.Command] = field(default_factory=list)
    """For this agent's executor, now."""


def alert_id(agent: str, rule_id: str, event: wire.Event) -> str:
    """One id for the alert a rule raises on an event, whoever raises it."""
    key = f"{agent}\0{rule_id}\0{event.pid}\0{event.time}\0{event.__struct_config__.tag}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Edge:
    def __init__(self, agent: str, *, clock: Callable[[], float] = time.time, protected: Sequence[str] = (),
                 wake: Callable[[frozenset[str]], None] | None = None) -> None:
        """``protected``: addresses no edge playbook may block or cut (the
        hive's, loopback), as the hive's own playbook engine is told.
        ``wake``: told the sensor's event kinds the rules read whenever the
        rules change, for the sensor to deliver those at once (the fast path)."""
        from hive.playbook import PlaybookEngine
        from hive.sigma import RuleEngine

        self.agent = agent
        self.version = 0
        """The bundle whose rules and playbooks run (0: none)."""
        self._clock = clock
        self._rules = RuleEngine()
        self._playbooks = PlaybookEngine((), clock=clock, new_id=lambda: f"edge-{uuid.uuid4().hex[:24]}",
                                         protected=protected)
        self.alerts = self.commands = 0
        self._queued: list[wire.Command] = []
        self._wake = wake or (lambda kinds: None)

    @property
    def active(self) -> bool:
        return bool(self._rules.rules.report.rules)

    def kinds(self) -> frozenset[str]:
        """The sensor's event kinds the installed rules read."""
        from hive.sigma import SENSOR_KINDS

        return frozenset().union(*(SENSOR_KINDS[r.category] for r in self._rules.rules.index.rules))

    def install(self, bundle: fleet.Bundle | None, folder: Path) -> str:
        """Run ``bundle``'s rules and playbooks from now on (its files are
        written under ``folder``); raises EdgeError, keeping those in force,
        if one does not load.  Returns what runs, in a few words."""
        from hive.playbook import PlaybookError, parse_playbook

        if bundle is None or not (bundle.rules or bundle.playbooks):
            self._rules.install(self._rules.prepare())
            self._playbooks.set_playbooks(())
            self.version = bundle.version if bundle else 0
            self._wake(self.kinds())
            return "no edge rules"
        try:
            playbooks = [parse_playbook(text, f"bundle v{bundle.version}: {name}")
                         for name, text in sorted(bundle.playbooks.items())]
        except PlaybookError as e:
            raise EdgeError(f"a playbook does not load: {e}") from None
        rules_dir = Path(folder) / f"edge-v{bundle.version}"
        shutil.rmtree(rules_dir, ignore_errors=True)
        rules_dir.mkdir(parents=True)
        for name, text in bundle.rules.items():
            (rules_dir / name).write_text(text, encoding="utf-8")
        prepared = self._rules.prepare(rules_dir)
        if prepared.report.failures:
            raise EdgeError(f"{prepared.report.failed} rules do not load, e.g. {prepared.report.failures[0]}")
        self._rules.install(prepared)
        self._playbooks.set_playbooks(playbooks)
        for old in Path(folder).glob("edge-v*"):
            if old != rules_dir:
                shutil.rmtree(old, ignore_errors=True)
        self.version = bundle.version
        self._wake(self.kinds())
        return f"{len(prepared.report.rules)} edge rules, {len(playbooks)} edge playbooks"

    def process(self, events: Sequence[wire.Event]) -> EdgeDecisions:
        out = EdgeDecisions()
        if not self.active:
            return out
        for ev in events:
            if isinstance(ev, (wire.Notice, wire.Edge)):
                continue
            for alert in self._rules.process(ev):
                if isinstance(alert, wire.Alert):
                    self._decide(alert, ev, out)
        return out

    def _decide(self, alert: wire.Alert, ev: wire.Event, out: EdgeDecisions) -> None:
        alert.id = alert_id(self.agent, alert.rule_id, ev)
        alert.agent = self.agent
        d = self._playbooks.on_alert(alert)
        mine = [c for agent, c in d.send if agent == self.agent]
        ran = sorted({a.playbook for a in d.actions if a.state in ("sent", "queued") and a.agent == self.agent})
        self.alerts += 1
        self.commands += len(mine)
        out.commands += mine
        out.events.append(wire.fit(wire.Edge(
            time=ev.time, pid=ev.pid, tid=ev.tid, ppid=ev.ppid, uid=ev.uid, euid=ev.euid, gid=ev.gid,
            comm=ev.comm, cgroup=ev.cgroup, verdict="audit", alert=alert.id, rule_id=alert.rule_id,
            title=alert.title, level=alert.level, tags=alert.tags, playbooks=ran, bundle=self.version,
            actions=[wire.EdgeAction(id=c.id, action=c.action, detail=_params(c)) for c in mine])))
        for a in d.actions:  # the hive's audit trail gets them from the Edge event; the log here
            if a.agent == self.agent and a.state in ("sent", "queued"):
                log.warning("edge.action alert=%s rule=%s playbook=%s action=%s id=%s", alert.id, alert.rule_id,
                            a.playbook, a.action, a.id)

    def answered(self, result: wire.CommandResult) -> wire.Edge:
        """The Edge event that reports an edge command's result (the engine
        closes the action, or keeps a block with a ttl to lift it in time)."""
        a = self._playbooks.action(result.command)
        d = self._playbooks.on_result(self.agent, result)
        self._queued += [c for agent, c in d.send if agent == self.agent]
        return wire.fit(wire.Edge(time=time.time_ns(), verdict="audit", answered=True, bundle=self.version,
                                  alert=a.alert if a else "", playbooks=[a.playbook] if a else [], actions=[
            wire.EdgeAction(id=result.command, action=a.action if a else "", detail=result.detail, ok=result.ok)]))

    def tick(self) -> list[wire.Command]:
        """About once a second: blocks whose ttl ran out are lifted (their
        ``unblock``), and whatever an answer made due."""
        d = self._playbooks.tick()
        due, self._queued = self._queued + [c for agent, c in d.send if agent == self.agent], []
        return due


def _params(c: wire.Command) -> str:
    return msgspec.json.encode({k: v for k, v in msgspec.structs.asdict(c).items()
                                if k not in ("id", "expires") and v not in ("", None, [], 0)}).decode()
