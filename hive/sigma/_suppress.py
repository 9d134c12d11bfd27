"""Repeat suppression: one alert per key per window, its repeats counted on it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from hive.correlate import CorrelationRule

from ._compile import Rule
from ._fields import SUBJECT_FIELDS

SUPPRESS_WINDOW = 300.0
"""Seconds after a rule's alert in which its hits of the same key are counted on it."""


def suppression_key(rule: Rule | CorrelationRule) -> tuple[str, ...]:
    """The fields whose values make two hits of ``rule`` one alert within the
    suppression window: the agent and the subject of its logsource
    (``SUBJECT_FIELDS``) for a detection rule, the group-by fields for a
    correlation (none: one alert per window)."""
    if isinstance(rule, CorrelationRule):
        return rule.group_by
    return ("Agent", *SUBJECT_FIELDS[rule.category])


@dataclass(slots=True)
class SuppressorStatistics:
    admitted: int = 0
    suppressed: int = 0
    """Hits counted as repeats of an alert raised within its window."""
    evicted: int = 0
    """Keys forgotten early because ``capacity`` keys were held."""
    keys: int = 0


class Suppressor:
    """Remembers, for ``window`` seconds after a key raised an alert, which alert it
    was, so that the key's hits in that window are counted on it instead of raising
    alerts of their own.  The window runs from the alert, not from the last repeat:
    a key that keeps hitting raises one alert per window.

    At most ``capacity`` keys are remembered; past that the key admitted longest
    ago is forgotten (counted in ``evicted``), so a flood of distinct keys costs
    memory only up to the cap, at worst letting a forgotten key alert early.
    """

    def __init__(self, window: float, *, clock: Callable[[], float],
                 capacity: int = 100_000) -> None:
        if window < 0 or capacity < 1:
            raise ValueError("window must be >= 0 and capacity >= 1")
        self.window = window
        self._clock = clock
        self._capacity = capacity
        self._seen: OrderedDict[Hashable, list] = OrderedDict()
        """key -> [time admitted, alert id, repeats], oldest admission first."""
        self._stats = SuppressorStatistics()

    def repeat_of(self, key: Hashable) -> tuple[str, int] | None:
        """The id of the alert ``key`` raised within the window and how many repeats
        of it this hit makes (1 for the first); None if there is none (raise an
        alert, then ``admit`` it)."""
        entry = self._seen.get(key)
        if entry is None or self._clock() - entry[0] >= self.window:
            return None
        self._stats.suppressed += 1
        entry[2] += 1
        return entry[1], entry[2]

    def admit(self, key: Hashable, alert: str) -> None:
        """``key`` raised the alert whose id is ``alert``: its window starts now."""
        self._seen[key] = [self._clock(), alert, 0]
        self._seen.move_to_end(key)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
            self._stats.evicted += 1
        self._stats.admitted += 1

    def expire(self) -> None:
        """Forget keys whose window has passed."""
        now = self._clock()
        seen = self._seen
        while seen:
            first = next(iter(seen.values()))
            if now - first[0] < self.window:
                break
            seen.popitem(last=False)

    def statistics(self) -> SuppressorStatistics:
        s = self._stats
        return SuppressorStatistics(s.admitted, s.suppressed, s.evicted, len(self._seen))
