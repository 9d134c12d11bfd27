"""The number of calls to the model allowed in any hour."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

HOUR = 3600.0


class Budget:
    """At most ``per_hour`` calls in any sliding hour.  ``clock`` is wall
    time, so that the calls a store remembers (``spent``) count after a
    restart."""

    def __init__(self, per_hour: int, *, clock: Callable[[], float], spent: Iterable[float] = ()) -> None:
        self.per_hour = per_hour
        self._clock = clock
        self._calls: deque[float] = deque(sorted(spent))

    def _forget(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - HOUR:
            self._calls.popleft()

    def refusal(self) -> str | None:
        """Why a call may not be made now, or None if it may."""
        now = self._clock()
        self._forget(now)
        if len(self._calls) < self.per_hour:
            return None
        wait = self._calls[0] + HOUR - now
        return (f"over budget: {len(self._calls)} calls in the last hour, ai.calls_per_hour is "
                f"{self.per_hour} (the next in {wait:.0f} s)")

    def spend(self) -> None:
        """Count one call made now."""
        self._calls.append(self._clock())

    @property
    def used(self) -> int:
        self._forget(self._clock())
        return len(self._calls)
