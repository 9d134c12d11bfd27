"""What the herd actor does each tick, as one plain object over ``Intel``:
publish what the hive learned, push and lift the blocks enforced
indicators call for, match new events, forget what expired long ago.

Each step costs one small query when nothing changed (the latest command,
incident, event, pulled entry and the agents), so an idle hive stays idle:
the rest runs only when its inputs moved or a deadline (an expiry) came."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._intel import Intel, matchable
from ._match import Matcher
from ._stix import RuleTexts

MAX_TTL = 365 * 86400.0
PRUNE_EVERY = 600.0
KEEP_EXPIRED = 7 * 86400.0
"""Expired indicators stay listed (and served, for peers that were away) this long."""


@dataclass
class Step:
    published: int = 0
    sent: list[str] = field(default_factory=list)
    lifted: list[str] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)
    in_force: int = 0
    moved: bool = False
    """Anything it reads changed since the step before."""


class Cycle:
    def __init__(self, intel: Intel, key: Any, *, share_for: float, hive_name: str = "",
                 rules: RuleTexts | None = None) -> None:
        self.intel = intel
        self.key = key
        self.share_for = share_for
        self.hive_name = hive_name
        self.rules = rules
        self.marks: tuple = ()
        self.matcher = Matcher({})
        self.next_deadline = 0.0
        self.pruned_at = 0.0
        # Events from before the first start are not matched: the herd's
        # alerts are about what happens once an indicator is known.
        self.position = int(intel.state("events", "") or intel.last_event())

    def step(self, now: float) -> Step:
        out = Step()
        marks = self.intel.marks()
        was, self.marks = self.marks, marks
        out.moved = marks != was
        if not was or marks[:2] != was[:2]:  # commands or incidents moved
            out.published = self.intel.publish(self.key, now=now, share_for=self.share_for,
                                               hive_name=self.hive_name, rules=self.rules)
        if not was or marks[3:] != was[3:] or marks[0] != was[0] or now >= self.next_deadline:
            out.sent, out.lifted = self._enforce(now)
        if marks[2] > self.position:
            out.alerts = self._match(marks[2])
        if now - self.pruned_at >= PRUNE_EVERY:
            self.pruned_at = now
            self.intel.prune(now=now, keep_expired=KEEP_EXPIRED)
        out.in_force = len(self.matcher)
        return out

    def _enforce(self, now: float) -> tuple[list[str], list[str]]:
        """Push the blocks an enforced entry calls for to every agent that
        lacks one, lift those of entries no longer enforced, and rebuild the
        matcher; the next deadline is the first expiry to come."""
        intel = self.intel
        entries = intel.entries()
        pushed = intel.pushed()
        agents = intel.agents()
        sent, lifted = [], []
        deadlines = [until for _, until in pushed.values() if until > now]
        for e in entries:
            src = e.enforced(now)
            deadlines += [s.valid_until for s in e.live(now)]
            for agent in agents:
                have = pushed.get((e.key, agent))
                if src is not None:
                    if have is None or have[1] <= now:  # never sent, or its block ran out: send it
                        sent.append(intel.push(e, src, agent, now=now, max_ttl=MAX_TTL))
                elif have is not None and have[1] > now:  # revoked, or no enforce peer holds it any more
                    why = f"herd: {e.key} " + (f"revoked by {e.revoked_by}" if e.revoked is not None
                                               else "no longer enforced by any peer")
                    lifted_id = intel.lift(e.key, agent, now=now, why=why)
                    if lifted_id:
                        lifted.append(lifted_id)
        self.matcher = Matcher(matchable(entries, now), intel.block_rules())
        self.next_deadline = min(deadlines, default=now + 3600.0)
        return sent, lifted

    def _match(self, last: int) -> list[Any]:
        alerts: list[Any] = []
        if not len(self.matcher):  # nothing in force: nothing to read
            self.position = last
        else:
            while self.position < last:
                events, self.position = self.intel.events_after(self.position)
                for _id, event in events:
                    hit = self.matcher.match(event)
                    if hit is not None:
                        alerts.append(Matcher.alert(event, *hit))
                if not events and self.position < last:
                    break  # rows deleted meanwhile
        self.intel.raise_alerts(alerts)
        self.intel.set_state("events", str(self.position))
        return alerts
