"""What every route of the console shares: the node's configuration, the
store (read and written in worker threads, never on the trio thread) and
the request counter."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from .._store import Store
from ._throttle import Throttle

T = TypeVar("T")

READ_THREADS = 4
"""Worker threads reading the store at once: a burst of page loads waits
for a free one instead of taking every core from the hive's pipeline."""


class Console:
    """On ``request.app.state.console``.

    ``read(fn)`` and ``write(fn)`` run ``fn(store)`` in a worker thread with
    a read-only or a writable :class:`Store` (each thread has its own
    connection; on SQLite, WAL lets readers run beside the store actor, and
    a write waits for the lock up to the store's busy timeout): keep writes
    short.  ``db``: the store's location, a path or a PostgreSQL URL."""

    def __init__(self, config: Any, db: Path | str, *, run_dir: Path | None = None,
                 session_hours: float | None = None, protected: Sequence[str] = ()) -> None:
        self.config = config
        """The node's :class:`node._config.Config`."""
        self.run_dir = Path(run_dir) if run_dir is not None else Path(config.run_dir)
        """The node's run folder (``actors.query_status(console.run_dir)``)."""
        self.db = db
        self.protected = tuple(protected)
        """The hive's own addresses: no operator's action may block them."""
        self.session_hours = session_hours if session_hours is not None else config.console.session_hours
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        """Requests served, by (route path, HTTP status)."""
        self.throttle = Throttle()
        """Failed logins, by user name and by client address."""
        self.csrf_refused = 0
        """Unsafe requests refused for a missing or wrong CSRF token."""
        self.log = logging.getLogger("immune.hive.console")
        self._limiter = trio.CapacityLimiter(READ_THREADS)
        self._reader: Store | None = None
        self._writer: Store | None = None
        self._open = threading.Lock()

    async def read(self, fn: Callable[[Store], T]) -> T:
        return await trio.to_thread.run_sync(self._call, fn, False, limiter=self._limiter)

    async def write(self, fn: Callable[[Store], T]) -> T:
        return await trio.to_thread.run_sync(self._call, fn, True, limiter=self._limiter)

    def _call(self, fn: Callable[[Store], T], writable: bool) -> T:
        # Store keeps one connection per thread, so one object of each kind serves every worker.
        with self._open:
            if writable and self._writer is None:
                self._writer = Store(self.db)
            elif not writable and self._reader is None:
                self._reader = Store(self.db, readonly=True)
            store = self._writer if writable else self._reader
        return fn(store)

    def close(self) -> None:
        for store in (self._reader, self._writer):
            if store is not None:
                store.close()
        self._reader = self._writer = None
