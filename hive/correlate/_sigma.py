"""Sigma correlation rules over detection hits: event_count, value_count,
temporal and temporal_ordered, with group-by, aliases and a timespan.

Windows, per correlation rule and group (the values of its group-by fields):

* ``gte``/``gt`` conditions, and temporal expressions without ``not``, are
  *rising*: a sliding window over the last ``timespan`` seconds is tested on each
  hit, the correlation fires as soon as the condition holds, and the group starts
  over.  Only as many hits as the threshold needs are kept.
* ``lt``/``lte``/``eq``/``neq`` conditions, and temporal expressions with
  ``not``, are *settling*: a window opens at the group's first hit, lasts
  ``timespan``, and is judged when it closes (``expire()``, or the group's next
  hit after that).

Time is the injected clock (the hive's receipt time), not the events' own
clocks, which differ between hosts.  State is bounded: at most ``max_groups``
groups per correlation rule (the least recently hit is evicted and counted) and
at most ``max_events`` events kept per group for the alert.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
import dataclasses
from dataclasses import dataclass
from pathlib import Path

TYPES = ("event_count", "value_count", "temporal", "temporal_ordered")
OPERATORS = ("gte", "gt", "lte", "lt", "eq", "neq")
_RISING = ("gte", "gt")
MAX_COUNT = 10_000
"""A condition's count: a group keeps up to that many hit times or values until it is
judged (SigmaHQ's correlations count to a few dozen)."""
MAX_DEPTH = 8
"""Correlations of correlations of ...: a hit runs up the chain in nested calls."""


@dataclass(frozen=True, slots=True)
class CorrelationRule:
    """One Sigma correlation rule, resolved to the ids of the rules it correlates."""

    id: str
    title: str
    type: str
    rules: tuple[str, ...]
    """Ids of the detection (or correlation) rules whose hits it counts, in order."""
    timespan: float
    """Seconds."""
    group_by: tuple[str, ...] = ()
    op: str = "gte"
    count: float = 1
    field: str = ""
    """The field whose distinct values value_count counts."""
    aliases: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    """Group-by name -> rule id -> that rule's field holding the value."""
    expression: object = None
    """Temporal only: a boolean expression over rule ids, as nested tuples
    ``("and"|"or", a, b, ...)``, ``("not", a)`` or a rule id."""
    generate: bool = False
    """Whether the correlated rules' own hits are also alerts."""
    name: str = ""
    level: str = "medium"
    tags: tuple[str, ...] = ()
    path: Path | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"correlation type {self.type!r} is not one of {', '.join(TYPES)}")
        if self.op not in OPERATORS:
            raise ValueError(f"correlation operator {self.op!r} is not one of "
                             f"{', '.join(OPERATORS)}")
        if not self.rules:
            raise ValueError("a correlation needs at least one rule")
        if self.timespan <= 0:
            raise ValueError("a correlation timespan must be positive")
        if not 0 <= self.count <= MAX_COUNT:
            raise ValueError(f"a correlation counts from 0 to {MAX_COUNT} (MAX_COUNT), "
                             f"not {self.count:g}")
        if self.type == "value_count" and not self.field:
            raise ValueError("value_count needs a field")
        if self.type == "temporal_ordered" and (self.expression is not None
                                                or (self.op, self.count) != ("gte", len(self.rules))):
            raise ValueError("temporal_ordered only supports its default condition: "
                             "every rule, in order")

    @property
    def rising(self) -> bool:
        """Judged on each hit (True) or when its window closes (False)."""
        if self.expression is not None:
            return not _has_not(self.expression)
        return self.op in _RISING


def _has_not(expression) -> bool:
    if isinstance(expression, str):
        return False
    return expression[0] == "not" or any(_has_not(e) for e in expression[1:])


def _holds(expression, seen) -> bool:
    if isinstance(expression, str):
        return expression in seen
    op, *args = expression
    if op == "not":
        return not _holds(args[0], seen)
    if op == "and":
        return all(_holds(a, seen) for a in args)
    return any(_holds(a, seen) for a in args)


def _compare(op: str, value: float, bound: float) -> bool:
    if op == "gte":
        return value >= bound
    if op == "gt":
        return value > bound
    if op == "lte":
        return value <= bound
    if op == "lt":
        return value < bound
    if op == "eq":
        return value == bound
    return value != bound


@dataclass(frozen=True, slots=True)
class CorrelationHit:
    """A correlation rule whose condition held for one group."""

    rule: CorrelationRule
    group: dict[str, object]
    """Group-by field -> value."""
    value: float
    """The count, distinct-value count or number of correlated rules seen."""
    events: tuple
    """The most recent contributing events (at most ``max_events``)."""
    time: float


class _Group:
    """One group's window, holding only what its verdict needs."""

    __slots__ = ("opened", "count", "times", "seen", "stage", "events")

    def __init__(self, now: float, keep: int, max_events: int) -> None:
        self.opened = now
        self.count = 0
        """Settling event_count: hits in the window."""
        self.times: deque = deque(maxlen=keep)
        """Rising event_count: times of the last hits, no more than the threshold needs."""
        self.seen: OrderedDict = OrderedDict()
        """value_count: value -> last time; temporal: rule id -> last time."""
        self.stage: dict[int, float] = {}
        """temporal_ordered: step -> start time of the latest in-order run reaching it."""
        self.events: deque = deque(maxlen=max_events)


@dataclass(slots=True)
class CorrelatorStatistics:
    hits: int = 0
    groups: int = 0
    evicted: int = 0
    """Groups dropped because a rule had max_groups of them."""


class SigmaCorrelator:
    """Feeds detection hits through Sigma correlation rules."""

    def __init__(self, rules: Iterable[CorrelationRule], *, clock: Callable[[], float],
                 max_groups: int = 10_000, max_events: int = 10, chain: bool = True) -> None:
        if max_groups < 1 or max_events < 1:
            raise ValueError("max_groups and max_events must be at least 1")
        self._clock = clock
        self._max_groups = max_groups
        self._max_events = max_events
        self.rules: tuple[CorrelationRule, ...] = tuple(rules)
        self._by_source: dict[str, list[CorrelationRule]] = {}
        for rule in self.rules:
            for source in dict.fromkeys(rule.rules):
                self._by_source.setdefault(source, []).append(rule)
        self._groups: dict[str, OrderedDict] = {r.id: OrderedDict() for r in self.rules}
        self._by_id = {r.id: r for r in self.rules}
        self._chain = chain
        """Whether a correlation's hit feeds the correlations reading it here
        (False: its owner routes it, as in a hive cluster)."""
        self._stats = CorrelatorStatistics()

    def sources(self) -> frozenset[str]:
        """Ids of the rules whose hits the correlator wants."""
        return frozenset(self._by_source)

    def observe(self, rule_id: str, fields: Mapping[str, object],
                events: tuple = (), weight: int = 1) -> list[CorrelationHit]:
        """A hit of rule ``rule_id`` on an event with these Sigma fields.
        ``weight``: how many occurrences the event stands for (an open the
        sensor folded with its repeats has a ``count``); event_count rules
        count them all."""
        hits: list[CorrelationHit] = []
        for rule, key, value in self.route(rule_id, fields):
            hits.extend(self.apply(rule.id, key, value, events, weight))
        return hits

    def route(self, rule_id: str, fields: Mapping[str, object]) -> list[tuple[CorrelationRule, tuple, object]]:
        """Where a hit of rule ``rule_id`` goes, without touching any window:
        for each correlation rule reading it, the group (its group-by values,
        through the aliases) and the value it adds (value_count: the field's
        value; otherwise the rule's id).  A hive cluster partitions
        correlation by (correlation rule, group) with this."""
        out = []
        for rule in self._by_source.get(rule_id, ()):
            if rule.type == "value_count":
                value = fields.get(rule.field)
                if value is None:
                    continue  # an event without the field adds no value to count
            else:
                value = rule_id
            out.append((rule, tuple(fields.get(rule.aliases.get(g, {}).get(rule_id, g)) for g in rule.group_by),
                        value))
        return out

    def rule(self, rule_id: str) -> CorrelationRule | None:
        """This correlator's correlation rule ``rule_id``, if it has it."""
        return self._by_id.get(rule_id) if rule_id in self._groups else None

    def apply(self, rule_id: str, key: tuple, value: object, events: tuple = (), weight: int = 1,
              now: float | None = None) -> list[CorrelationHit]:
        """A routed hit (see :meth:`route`) added to correlation rule
        ``rule_id``'s window of group ``key``, at ``now`` (default: the clock)."""
        rule = self._by_id[rule_id]
        now = self._clock() if now is None else now
        hits: list[CorrelationHit] = []
        groups = self._groups[rule.id]
        group = groups.get(key)
        if group is not None and not rule.rising and now - group.opened > rule.timespan:
            del groups[key]
            hits.extend(self._settle(rule, key, group, now))
            group = None
        if group is None:
            group = groups[key] = _Group(now, self._keep(rule), self._max_events)
            if len(groups) > self._max_groups:
                groups.popitem(last=False)
                self._stats.evicted += 1
        else:
            groups.move_to_end(key)
        group.events.extend(events)
        fired = self._add(rule, group, value, now, weight)
        if fired is not None:
            del groups[key]
            hits.extend(self._emit(rule, key, group, now, fired))
        return hits

    def expire(self) -> list[CorrelationHit]:
        """Close windows that have run out: judge settling ones, drop stale rising ones."""
        now = self._clock()
        hits: list[CorrelationHit] = []
        for rule in self.rules:
            groups = self._groups[rule.id]
            for key in [k for k, g in groups.items() if self._stale(rule, g, now)]:
                group = groups.pop(key)
                if not rule.rising:
                    hits.extend(self._settle(rule, key, group, now))
        return hits

    def statistics(self) -> CorrelatorStatistics:
        groups = sum(len(g) for g in self._groups.values())
        return CorrelatorStatistics(self._stats.hits, groups, self._stats.evicted)

    # ------------------------------------------------------------------

    @staticmethod
    def _keep(rule: CorrelationRule) -> int:
        """How many hit times a rising event_count group must remember."""
        return int(rule.count) + 1

    @staticmethod
    def _stale(rule: CorrelationRule, group: _Group, now: float) -> bool:
        if not rule.rising:
            return now - group.opened > rule.timespan
        if rule.type == "temporal_ordered":
            return all(now - start > rule.timespan for start in group.stage.values())
        last = group.times[-1] if group.times else max(group.seen.values(), default=None)
        return last is None or now - last > rule.timespan

    def _add(self, rule: CorrelationRule, group: _Group, value, now: float,
             weight: int = 1) -> float | None:
        """Record a hit; the measured value if the condition now holds (rising rules)."""
        if rule.type == "temporal_ordered":
            return self._step(rule, value, group, now)
        if rule.type == "event_count":
            if not rule.rising:
                group.count += weight
                return None
            times = group.times
            times.extend([now] * min(weight, times.maxlen or weight))
            while now - times[0] > rule.timespan:
                times.popleft()
            return self._verdict(rule, group)
        seen = group.seen
        if rule.rising:
            seen[value] = now
            seen.move_to_end(value)
            while now - next(iter(seen.values())) > rule.timespan:
                seen.popitem(last=False)
            return self._verdict(rule, group)
        # Settling value_count: past count + 1 distinct values the verdict cannot change.
        if value in seen or len(seen) <= rule.count:
            seen[value] = now
        return None

    @staticmethod
    def _verdict(rule: CorrelationRule, group: _Group) -> float | None:
        """The measured value if the rule's condition holds for the group, else None."""
        if rule.type == "event_count":
            value = len(group.times) if rule.rising else group.count
        else:
            value = len(group.seen)
        if rule.expression is not None:
            return value if _holds(rule.expression, group.seen) else None
        return value if _compare(rule.op, value, rule.count) else None

    def _step(self, rule: CorrelationRule, source: str, group: _Group,
              now: float) -> float | None:
        """Advance a temporal_ordered run; the step count when the last step completed."""
        stage = group.stage
        for step in [s for s, start in stage.items() if now - start > rule.timespan]:
            del stage[step]
        last = len(rule.rules) - 1
        # Later steps first, so one hit does not complete two consecutive steps.
        for step in range(last, -1, -1):
            if rule.rules[step] != source:
                continue
            if step == 0:
                stage[0] = now
            elif step - 1 in stage:
                stage[step] = max(stage.get(step, stage[step - 1]), stage[step - 1])
        return float(len(rule.rules)) if last in stage else None

    def _settle(self, rule: CorrelationRule, key: tuple, group: _Group,
                now: float) -> list[CorrelationHit]:
        value = self._verdict(rule, group)
        return [] if value is None else self._emit(rule, key, group, now, value)

    def _emit(self, rule: CorrelationRule, key: tuple, group: _Group, now: float,
              value: float) -> list[CorrelationHit]:
        self._stats.hits += 1
        values = dict(zip(rule.group_by, key))
        hit = CorrelationHit(rule, values, value, tuple(group.events), now)
        if not self._chain:
            return [hit]
        # A correlation may itself be correlated: its hit is a hit of its own id.
        return [hit, *self.observe(rule.id, values, hit.events)]
