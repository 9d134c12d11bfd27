"""The sentinel's rule engine: wire events in, wire alerts out.

A plain object with an injected clock; the sentinel actor feeds it and calls
``tick()`` about once a second.
"""

from __future__ import annotations

import hashlib
import heapq
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter, perf_counter_ns
from dataclasses import dataclass
from pathlib import Path

from hive._messages import ALERT_EVENTS, Repeat, SigmaHit
from hive.correlate import CorrelationHit, CorrelatorStatistics, SigmaCorrelator
from wire import Alert, Edge

from ._compile import Rule, SigmaEvent
from ._fields import sigma_events
from ._index import RuleIndex
from ._loader import LoadReport, RuleCache, RuleSet, load_rules, signature
from ._suppress import SUPPRESS_WINDOW, Suppressor, SuppressorStatistics, suppression_key

_EMPTY = RuleSet(RuleIndex(()), (), frozenset(), LoadReport())
SAMPLE = 16
"""One event in this many has each of its rule tests timed (``RuleEngine.slowest``)."""


@dataclass(frozen=True, slots=True)
class RuleCost:
    """Where detection time went: one rule's tests since the rules were loaded, estimated
    from every ``SAMPLE``-th event."""

    id: str
    title: str
    tests: int
    seconds: float


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    events: int
    """Wire events processed."""
    skipped: int
    """Events of a batch left unchecked because the batch ran over its time budget."""
    evaluated: int
    """Rule tests run (what the index did not spare)."""
    matched: int
    alerts: int
    rules: int
    correlations: int
    failed: int
    """Rules that did not load at the last (re)load."""
    suppression: SuppressorStatistics
    correlation: CorrelatorStatistics
    slowest: tuple[RuleCost, ...] = ()
    """The rules that took the most time in all, slowest first."""


class RuleEngine:
    """Detection (Sigma rules, indexed) plus Sigma correlation plus repeat suppression.

    ``suppress_window`` seconds: a rule hitting the same subject on the same agent
    again (its ``suppression_key``) within that time of its alert raises no new
    alert but a ``Repeat`` of it, which the store counts on that alert, keeping
    its events; the playbooks never see it.

    ``partitioned``: in a hive cluster Sigma correlation is partitioned by
    (correlation rule, group).  The sentinel's engine then keeps no windows:
    each hit a correlation reads becomes a ``SigmaHit`` (``routed()``) for
    the partition's owner, whose engine (also ``partitioned``) takes them in
    ``correlate()``, raises the correlations' alerts and routes their own
    hits on to the correlations reading them.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 suppress_window: float = SUPPRESS_WINDOW, max_suppressed: int = 100_000,
                 max_groups: int = 10_000, max_events: int = 10,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex, partitioned: bool = False) -> None:
        self._clock = clock
        self._partitioned = partitioned
        self._routed: list[SigmaHit] = []
        self._at: float | None = None
        """While a routed hit is taken: its time, the engine's clock."""
        self._new_id = new_id
        self._max_groups = max_groups
        self._max_events = max_events
        self._suppressor = Suppressor(suppress_window, clock=self._time, capacity=max_suppressed)
        self._cache = RuleCache()
        self._set = _EMPTY
        self._correlator = self._new_correlator(_EMPTY)
        self._correlated = self._correlator.sources()
        self._events = self._skipped = self._evaluated = self._matched = self._alerts = 0
        self._hits: dict[str, int] = {}
        """rule id -> hits (alerts and repeats) since the engine was made."""
        self._key = ""
        """The batch being evaluated's identity, if given (see process_batch)."""
        self._hit_no = 0
        """Hits routed to correlation partitions so far in this batch."""
        self._edge: dict[tuple, Edge] = {}
        """The batch's alerts raised at the edge, by (agent, rule, pid, time) of their event."""
        self._batch: dict[tuple, object] = {}
        """The batch's events by (agent, pid, time), while edge alerts are in it."""
        self._costs: dict[Rule, list[int]] = {}
        """rule -> [tests, nanoseconds] of the timed events."""

    # -- rules ----------------------------------------------------------

    @property
    def rules(self) -> RuleSet:
        return self._set

    def load(self, *paths: Path | str) -> LoadReport:
        """Replace the rules with those under ``paths`` (files or directories).

        Raises RuleError, keeping the current rules, if a path does not exist.
        Correlation windows start over; suppression carries on.  Reading a few hundred
        rules takes a fraction of a second: an actor may ``prepare`` in a worker thread
        and ``install`` in its own instead.
        """
        return self.install(self.prepare(*paths))

    def prepare(self, *paths: Path | str) -> RuleSet:
        """Read and compile the rules under ``paths`` without using them yet (one call
        at a time: it updates the engine's cache of parsed files)."""
        return load_rules(paths, self._cache)

    def install(self, rules: RuleSet) -> LoadReport:
        """Use a prepared rule set from now on."""
        self._set = rules
        self._costs = {}
        self._correlator = self._new_correlator(rules)
        self._correlated = self._correlator.sources()
        return rules.report

    def reload(self) -> LoadReport:
        """Load the same paths again (only changed files are re-read)."""
        return self.load(*self._set.paths)

    def changed(self) -> bool:
        """Whether a file under the loaded paths was added, removed or modified."""
        paths = self._set.paths
        return bool(paths) and signature(paths) != self._set.signature

    def _new_correlator(self, rules: RuleSet) -> SigmaCorrelator:
        return SigmaCorrelator(rules.correlations, clock=self._time, max_groups=self._max_groups,
                               max_events=self._max_events, chain=not self._partitioned)

    def _time(self) -> float:
        return self._clock() if self._at is None else self._at

    # -- events -----------------------------------------------------------

    def process(self, event) -> list[Alert | Repeat]:
        """Alerts for one wire event, and Repeats of alerts raised before."""
        # Timing every test would cost a fifth of detection: time every SAMPLE-th event's.
        timed = not self._events % SAMPLE
        self._events += 1
        alerts: list[Alert | Repeat] = []
        if type(event) is Edge:
            if not event.answered:
                alerts.append(self._edge_alert(event))
            return alerts
        if self._edge:
            self._batch[(event.agent, event.pid, event.time)] = event
        index, silent, correlated = self._set.index, self._set.silent, self._correlated
        for category, fields in sigma_events(event):
            view = SigmaEvent(category, fields, event)
            for rule in index.candidates(view):
                self._evaluated += 1
                if timed:
                    start = perf_counter_ns()
                    hit = rule.match(view)
                    self._charge(rule, perf_counter_ns() - start)
                else:
                    hit = rule.match(view)
                if not hit:
                    continue
                self._matched += 1
                if rule.id not in silent:
                    hit_alert = self._hit_alert(rule, view, event)
                    if hit_alert is not None:
                        alerts.append(hit_alert)
                if rule.id in correlated:
                    weight = getattr(event, "count", 1)  # a folded wire.Open
                    if self._partitioned:
                        self._hit_no += 1
                        self._route(rule.id, fields, [event], weight, self._clock(),
                                    self._key and f"{self._key}/{self._hit_no}")
                        continue
                    for hit in self._correlator.observe(rule.id, fields, (event,), weight):
                        self._add_correlation_alert(hit, alerts)
        return alerts

    def _route(self, rule_id: str, fields: Mapping[str, object], events: list, weight: int, now: float,
               key: str) -> None:
        """A hit of ``rule_id`` for each correlation reading it, to its owner
        (``key``: unique to this hit of ``rule_id``, or empty)."""
        for rule, group, value in self._correlator.route(rule_id, fields):
            self._routed.append(SigmaHit(correlation=rule.id, group=list(group), value=value, weight=weight,
                                         time=now, events=events, key=key and f"{key}/{rule.id}"))

    def routed(self) -> list[SigmaHit]:
        """The hits for correlation partitions since the last call (``partitioned``)."""
        out, self._routed = self._routed, []
        return out

    def correlate(self, hit: SigmaHit) -> list[Alert | Repeat] | None:
        """A routed hit added to its correlation's window at its own time
        (``partitioned``, on the owner of its partition): the alerts it
        raises, its correlations' own hits left in ``routed()``; None if
        the correlation rule is not loaded here, or the hit's group is not
        one of its groups (another number of values)."""
        rule = self._correlator.rule(hit.correlation)
        if rule is None or len(hit.group) != len(rule.group_by):
            return None
        alerts: list[Alert | Repeat] = []
        self._at, self._key = hit.time, hit.key
        try:
            for c in self._correlator.apply(hit.correlation, tuple(hit.group), hit.value, tuple(hit.events),
                                            hit.weight):
                self._add_correlation_alert(c, alerts)
        finally:
            self._at, self._key = None, ""
        return alerts

    def process_batch(self, events: Sequence, budget: float | None = None, key: str = "") -> list[Alert | Repeat]:
        """Alerts for a batch of wire events.  ``key``: the batch's identity
        in a hive cluster (agent/stream/seq), from which its alerts' ids are
        made: a batch evaluated again by another sentinel (the first died
        before acknowledging it) raises alerts with the same ids, which
        JetStream, the store and the playbooks' claims take as copies.  Once ``budget`` seconds have gone on the
        batch, the events after it are not checked but counted (``skipped``; the first
        is always checked): a slow
        rule or a flood of costly events delays detection by a bounded time, and what
        it costs is seen in the statistics rather than in a stalled pipeline."""
        alerts: list[Alert | Repeat] = []
        deadline = None if budget is None else perf_counter() + budget
        self._edge = {(e.agent, e.rule_id, e.pid, e.time): e for e in events if type(e) is Edge and not e.answered}
        self._key, self._hit_no = key, 0
        try:
            for done, event in enumerate(events):
                if done and deadline is not None and perf_counter() > deadline:
                    self._skipped += len(events) - done
                    break
                alerts.extend(self.process(event))
        finally:
            self._edge, self._batch, self._key = {}, {}, ""
        return _coalesced(alerts)

    def _alert_id(self, rule_id: str, *subject: object) -> str:
        """A new alert's id: random, or within a keyed batch the same for the
        same rule on the same subject (see :meth:`process_batch`)."""
        if not self._key:
            return self._new_id()
        return hashlib.blake2b("\x1f".join(map(str, (self._key, rule_id, *subject))).encode(),
                               digest_size=16).hexdigest()

    def _charge(self, rule: Rule, ns: int) -> None:
        cost = self._costs.get(rule)
        if cost is None:
            self._costs[rule] = [1, ns]
        else:
            cost[0] += 1
            cost[1] += ns

    @property
    def skipped(self) -> int:
        """Events left unchecked by ``process_batch`` for want of time, in all."""
        return self._skipped

    def tick(self) -> list[Alert | Repeat]:
        """Expire windows; alerts of correlations judged when their window closed.

        Call about once a second.
        """
        self._suppressor.expire()
        alerts: list[Alert | Repeat] = []
        # A partition's owner gives an alert of a window it closed an id from
        # its content, the same if the next owner closes it again.
        self._key = "expired" if self._partitioned else ""
        try:
            for hit in self._correlator.expire():
                self._add_correlation_alert(hit, alerts)
        finally:
            self._key = ""
        return alerts

    def hits(self) -> dict[str, int]:
        """Rule id -> hits since the engine was made (alerts and their repeats;
        a rule that only feeds correlations counts its matches)."""
        return dict(self._hits)

    def _count(self, rule_id: str) -> None:
        self._hits[rule_id] = self._hits.get(rule_id, 0) + 1

    def statistics(self) -> EngineStatistics:
        report = self._set.report
        return EngineStatistics(
            events=self._events, skipped=self._skipped, evaluated=self._evaluated,
            matched=self._matched, alerts=self._alerts, rules=len(report.rules),
            correlations=len(report.correlations), failed=report.failed,
            suppression=self._suppressor.statistics(),
            correlation=self._correlator.statistics(), slowest=self.slowest())

    def slowest(self, n: int = 3) -> tuple[RuleCost, ...]:
        """The ``n`` rules that took the most time since the rules were loaded
        (estimated from the timed events)."""
        top = heapq.nlargest(n, self._costs.items(), key=lambda item: item[1][1])
        return tuple(RuleCost(rule.id, rule.title, tests * SAMPLE, ns * SAMPLE / 1e9)
                     for rule, (tests, ns) in top)

    # -- alerts -----------------------------------------------------------

    def _hit_alert(self, rule: Rule, view: SigmaEvent, event) -> Alert | Repeat | None:
        """The rule's alert on ``event``, a Repeat of one before, or None
        when the agent raised it already (its Edge event, later in the
        batch, makes the alert; its repeats count on it from here on)."""
        fields = view.fields
        self._count(rule.id)
        key = (rule.id, *(fields.get(name) for name in suppression_key(rule)))
        first = self._suppressor.repeat_of(key)
        if first is not None:
            return _repeat(first, event.time, [event])
        edge = self._edge.get((event.agent, rule.id, event.pid, event.time)) if self._edge else None
        if edge is not None:
            self._suppressor.admit(key, edge.alert)
            return None
        detail = " ".join(f"{name}={fields[name]}" for name in sorted(rule.fields)
                          if name in fields)
        alert = Alert(id=self._alert_id(rule.id, event.agent, event.pid, event.time), rule_id=rule.id,
                      title=rule.title, level=rule.level, tags=list(rule.tags), agent=event.agent, time=event.time, events=[event],
                      detail=detail)
        self._suppressor.admit(key, alert.id)
        self._alerts += 1
        return alert

    def _edge_alert(self, edge: Edge) -> Alert:
        """The alert of an Edge event: raised and answered by the agent, filed
        under the agent's id with the event it came from."""
        self._count(edge.rule_id)
        self._alerts += 1
        source = self._batch.get((edge.agent, edge.pid, edge.time))
        done = ", ".join(a.action for a in edge.actions) or "nothing"
        return Alert(id=edge.alert, rule_id=edge.rule_id, title=edge.title, level=edge.level or "medium",
                     tags=list(edge.tags), agent=edge.agent, time=edge.time,
                     events=[source, edge] if source is not None else [edge], edge=True,
                     detail=edge.detail or f"taken at the edge (bundle v{edge.bundle}): {done}")

    def _add_correlation_alert(self, hit: CorrelationHit, alerts: list[Alert | Repeat]) -> None:
        rule = hit.rule
        last = max((e.time for e in hit.events), default=0)
        if self._partitioned and rule.id in self._correlated:
            # Its own hit, to the correlations reading it (their partitions
            # may be other nodes'), keyed by what it is made of.
            self._route(rule.id, hit.group, list(hit.events[-ALERT_EVENTS:]), 1, hit.time,
                        self._key and f"{self._key}/{rule.id}/{_digest(hit.group, last)}")
        if rule.id in self._set.silent:
            return
        self._count(rule.id)
        key = (rule.id, *(hit.group.get(name) for name in suppression_key(rule)))
        first = self._suppressor.repeat_of(key)
        if first is not None:
            alerts.append(_repeat(first, last, list(hit.events)))
            return
        agents = sorted({e.agent for e in hit.events})
        group = " ".join(f"{k}={v}" for k, v in hit.group.items())
        detail = f"{rule.type} {hit.value:g} within {rule.timespan:g}s"
        if group:
            detail += f" for {group}"
        if len(agents) > 1:
            detail += f" on {', '.join(agents)}"
        alert = Alert(
            id=self._alert_id(rule.id, group, agents, last), rule_id=rule.id, title=rule.title, level=rule.level,
            tags=list(rule.tags), agent=agents[0] if len(agents) == 1 else "",
            time=last, events=list(hit.events), detail=detail)
        self._suppressor.admit(key, alert.id)
        self._alerts += 1
        alerts.append(alert)


def _digest(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _repeat(first: tuple[str, int], time: int, events: list) -> Repeat:
    """A Repeat of the alert ``first`` names, its events left out once the alert
    has no room for them (its own and ALERT_EVENTS - 1 repeats' at least)."""
    alert, n = first
    return Repeat(alert=alert, time=time, events=events if n < ALERT_EVENTS else [])


def _coalesced(out: list[Alert | Repeat]) -> list[Alert | Repeat]:
    """One Repeat per alert: a rule hitting on every event of a batch sends its
    store one message, not thousands.  Each stays after its alert."""
    merged: dict[str, Repeat] = {}
    kept: list[Alert | Repeat] = []
    for m in out:
        if isinstance(m, Repeat):
            into = merged.get(m.alert)
            if into is not None:
                into.count += m.count
                into.time = max(into.time, m.time)
                into.events.extend(m.events[:max(0, ALERT_EVENTS - len(into.events))])
                continue
            merged[m.alert] = m
        kept.append(m)
    return kept
