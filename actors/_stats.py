"""Per-actor statistics: plain counters the actor's sockets bump, and a
snapshot that the node's control endpoint serves."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec


class Snapshot(msgspec.Struct, kw_only=True):
    name: str
    state: str
    pid: int = 0
    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    malformed: int = 0
    starts: int = 0
    restarts: int = 0
    exits: int = 0
    escalations: int = 0
    queue_depth: int = 0
    last_error: str = ""
    since: float = 0.0
    extra: dict[str, int | float | str] = {}


class Statistics:
    """Mutable counters of one actor.  The object outlives restarts of the
    actor, so ``restarts`` and the totals cover the actor's whole life."""

    __slots__ = (
        "name", "state", "pid", "msgs_in", "msgs_out", "bytes_in", "bytes_out", "malformed",
        "starts", "restarts", "exits", "escalations", "last_error", "since", "extra", "_depths",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "new"
        self.pid = 0
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.malformed = self.starts = self.restarts = self.exits = self.escalations = 0
        self.last_error = ""
        self.since = time.time()
        self.extra: dict[str, int | float | str] = {}
        self._depths: list[Callable[[], int]] = []

    def set_state(self, state: str) -> None:
        self.state = state
        self.since = time.time()

    def add_depth(self, probe: Callable[[], int]) -> None:
        """Count ``probe()`` into ``queue_depth`` (for example a socket's pending queue)."""
        self._depths.append(probe)

    def clear_depths(self) -> None:
        self._depths.clear()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            name=self.name, state=self.state, pid=self.pid,
            msgs_in=self.msgs_in, msgs_out=self.msgs_out,
            bytes_in=self.bytes_in, bytes_out=self.bytes_out, malformed=self.malformed,
            starts=self.starts, restarts=self.restarts, exits=self.exits,
            escalations=self.escalations, queue_depth=sum(p() for p in self._depths),
            last_error=self.last_error, since=self.since, extra=dict(self.extra),
        )

    def load(self, snap: Snapshot) -> None:
        """Take the counters a child process reported about itself."""
        for field in ("msgs_in", "msgs_out", "bytes_in", "bytes_out", "malformed", "extra", "last_error"):
            value = getattr(snap, field)
            if field != "last_error" or value:
                setattr(self, field, value)
        self._depths = [lambda d=snap.queue_depth: d]
