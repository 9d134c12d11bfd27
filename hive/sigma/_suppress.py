"""Repeat suppression: one alert per key per window."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class SuppressorStatistics:
    admitted: int = 0
    suppressed: int = 0
    evicted: int = 0
    """Keys forgotten early because ``capacity`` keys were held."""
    keys: int = 0


class Suppressor:
    """Lets a key through once per ``window`` seconds and counts the repeats in between.

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
        """key -> [time admitted, repeats since], oldest admission first."""
        self._stats = SuppressorStatistics()

    def admit(self, key: Hashable) -> int | None:
        """None if ``key`` is a repeat within the window; else the repeats suppressed
        since it was last let through."""
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            self._stats.suppressed += 1
            return None
        repeats = entry[1] if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
            self._stats.evicted += 1
        self._stats.admitted += 1
        return repeats

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
