"""Login throttling: a plain object, fed by the login route.

Failures are counted per key (a user name, a client address).  The first
``free`` failures of a key cost nothing; each one after that closes the key
for ``base * 2**(n - free)`` seconds (at most ``cap``), during which a login
naming it is refused at once with that wait (HTTP 429, Retry-After), its
password not even checked.  A success clears the user name's count (not the
address's: one known account must not launder guesses at others).  A key
idle for ``forget`` seconds starts over; at most ``most`` keys are kept
(the oldest go first), so a flood of names cannot grow it without bound.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Count:
    failures: int
    last: float
    until: float


class Throttle:
    def __init__(self, *, free: int = 5, base: float = 1.0, cap: float = 900.0, forget: float = 3600.0,
                 most: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget = forget
        self.most = most
        self.clock = clock
        self._keys: collections.OrderedDict[str, _Count] = collections.OrderedDict()
        self.failures = 0
        """Failed logins counted."""
        self.refused = 0
        """Logins refused unchecked because a key was closed."""

    def wait(self, keys: Iterable[str]) -> float:
        """Seconds until every key is open again (0: go ahead).  A
        non-zero answer counts as a refused login."""
        now = self.clock()
        wait = max((c.until - now for k in keys if (c := self._live(k, now)) is not None), default=0.0)
        if wait > 0:
            self.refused += 1
            return wait
        return 0.0

    def failed(self, keys: Iterable[str]) -> float:
        """Count a failed login against each key; the longest wait it now imposes."""
        now = self.clock()
        self.failures += 1
        wait = 0.0
        for key in keys:
            c = self._live(key, now)
            if c is None:
                c = self._keys[key] = _Count(0, now, now)
                while len(self._keys) > self.most:
                    self._keys.popitem(last=False)
            self._keys.move_to_end(key)
            c.failures += 1
            c.last = now
            over = c.failures - self.free
            if over > 0:
                c.until = now + min(self.cap, self.base * 2 ** min(over - 1, 64))
                wait = max(wait, c.until - now)
        return wait

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)

    def _live(self, key: str, now: float) -> _Count | None:
        c = self._keys.get(key)
        if c is not None and now - c.last > self.forget and now >= c.until:
            del self._keys[key]
            return None
        return c

    def statistics(self) -> dict[str, int]:
        return {"failures": self.failures, "refused": self.refused, "keys": len(self._keys)}


def retry_after(wait: float) -> str:
    """A Retry-After header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))
