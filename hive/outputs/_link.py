"""An output's health: how long to wait before the next try, and when to
say the receiver went down or came back (one log line each, not one per
retry).  A plain object on an injected clock."""

from __future__ import annotations

import time
from collections.abc import Callable


class Link:
    def __init__(self, *, first: float = 1.0, cap: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.cap = cap
        self._clock = clock
        self.up = True
        self.failures = 0
        """Failed attempts in the life of the output."""
        self.failures_in_row = 0
        self.down_since = 0.0
        self.reason = ""

    def failed(self, reason: str) -> tuple[float, bool]:
        """After a failed attempt: (seconds to wait before the next, whether
        the receiver just went down).  The wait doubles from ``first`` up to
        ``cap``."""
        self.failures += 1
        self.failures_in_row += 1
        self.reason = reason
        went_down = self.up
        if went_down:
            self.up = False
            self.down_since = self._clock()
        return min(self.cap, self.first * 2 ** min(self.failures_in_row - 1, 30)), went_down

    def succeeded(self) -> float | None:
        """After a delivery: the seconds the receiver was down if it just came back, else None."""
        self.failures_in_row = 0
        if self.up:
            return None
        self.up = True
        return self._clock() - self.down_since
