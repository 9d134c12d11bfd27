"""Supervision decisions as a plain object, after Erlang/OTP's supervisor.

The runtime (``_supervisor``) reports child exits here and carries out the
:class:`Decision` it gets back; nothing here touches tasks or time sources,
so every OTP case is testable as a table of calls.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    """Restart only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """Stop every other child, then restart them all."""
    REST_FOR_ONE = "rest_for_one"
    """Stop the children started after it, then restart it and them."""


class Restart(enum.StrEnum):
    PERMANENT = "permanent"
    """Always restarted."""
    TRANSIENT = "transient"
    """Restarted only when it crashed."""
    TEMPORARY = "temporary"
    """Never restarted; removed from the supervisor once it exits."""


@dataclass
class Decision:
    stop: list[str] = field(default_factory=list)
    """Running children to stop, in the order to stop them (reverse start order)."""
    start: list[str] = field(default_factory=list)
    """Children to (re)start, in start order."""
    remove: list[str] = field(default_factory=list)
    """Children dropped for good (temporary ones that exited or were stopped)."""
    escalate: str = ""
    """Non-empty: restart intensity was exceeded; stop everything and fail with this reason."""


class RestartPolicy:
    """What a supervisor does when one of its children exits.

    ``intensity`` restarts are allowed within any ``period`` seconds, counted
    for the supervisor as a whole; the next one escalates.
    """

    def __init__(
        self,
        strategy: Strategy,
        children: Sequence[tuple[str, Restart]],
        *,
        intensity: int = 3,
        period: float = 5.0,
    ) -> None:
        self.strategy = Strategy(strategy)
        self.order: list[str] = [name for name, _ in children]
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"duplicate child names in {self.order}")
        self.restart_type: dict[str, Restart] = {name: Restart(r) for name, r in children}
        self.intensity = intensity
        self.period = period
        self.running: set[str] = set()
        self._restarts: collections.deque[float] = collections.deque()

    def started(self, name: str) -> None:
        self.running.add(name)

    def stopped(self, name: str) -> None:
        """A child was stopped by the supervisor (not an exit of its own)."""
        self.running.discard(name)

    def _drop(self, name: str) -> None:
        self.order.remove(name)
        del self.restart_type[name]

    def exited(self, name: str, *, crashed: bool, now: float) -> Decision:
        """``name`` ended by itself (returned, or crashed)."""
        self.running.discard(name)
        kind = self.restart_type[name]
        if kind is Restart.TEMPORARY:
            self._drop(name)
            return Decision(remove=[name])
        if kind is Restart.TRANSIENT and not crashed:
            return Decision()

        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - self.period:
            self._restarts.popleft()
        if len(self._restarts) > self.intensity:
            return Decision(
                stop=[c for c in reversed(self.order) if c in self.running],
                escalate=(
                    f"{len(self._restarts)} restarts within {self.period:g}s "
                    f"exceed the intensity of {self.intensity} (last: {name})"
                ),
            )

        if self.strategy is Strategy.ONE_FOR_ONE:
            affected = [name]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            affected = list(self.order)
        else:
            affected = self.order[self.order.index(name):]
        stop = [c for c in reversed(affected) if c in self.running]
        remove = [c for c in affected if c != name and self.restart_type[c] is Restart.TEMPORARY]
        for c in remove:
            self._drop(c)
        return Decision(stop=stop, start=[c for c in affected if c not in remove], remove=remove)
