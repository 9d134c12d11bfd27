"""Actors: named trio tasks with their sockets, a logger and statistics.

An actor is an async function ``run(ctx, *, task_status, **args)``.  It makes
its sockets through ``ctx`` (they are closed for it when it ends, so a restart
never leaks one) and calls ``task_status.started()`` once it is ready: its
supervisor starts the next sibling only then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import zmq

from ._codec import Codec
from ._errors import ActorError
from ._log import LogThrottle, get_logger
from ._policy import Restart
from ._stats import Statistics
from ._tap import Taps
from ._zmq import Duplex, Socket

ActorFn = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Child:
    """How a supervisor runs one child."""

    name: str
    run: ActorFn
    """``async def run(ctx, *, task_status, **args)``; a :class:`Supervisor` is one too."""
    args: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0
    """Seconds a stopping child gets before it is abandoned (task) or killed (process)."""
    start_timeout: float = 30.0
    process: bool = False
    """Run in a child process (for isolation); ``run`` must be importable by name."""

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ValueError(f"child name {self.name!r} must be non-empty and have no dots")


class Runtime:
    """What every actor of one process shares: the ZeroMQ context, the taps,
    and the statistics of every actor, by full name."""

    def __init__(self, *, run_dir: Path | None = None, leaf_endpoint: str | None = None) -> None:
        self.zmq = zmq.Context.instance()
        self.taps = Taps()
        self.registry: dict[str, Statistics] = {}
        self.crashers: dict[str, Callable[[str], None]] = {}
        """How to crash each child of a running supervisor, by full name (see
        :meth:`request_restart`)."""
        self.zap_syncs: list[Callable[[], None]] = []
        """Called by the ZAP handler before each answer (see ``watch_door``)."""
        self.run_dir = run_dir
        self.leaf_endpoint = leaf_endpoint
        """Where actors in child processes publish their taps."""

    def request_restart(self, name: str, reason: str = "restart requested") -> str:
        """Make the running child ``name`` exit as if it crashed, so that its
        supervisor applies its strategy (and counts it against its
        intensity).  ``name`` is the full name or, if only one child has it,
        the last part (``router`` for ``hive.router``).  Returns the full
        name; raises :class:`ActorError` if no child matches, or if it is
        not running (starting, or between runs)."""
        matches = [name] if name in self.crashers else [
            full for full in self.crashers if full.rpartition(".")[2] == name]
        if len(matches) != 1:
            known = ", ".join(sorted(self.crashers)) or "none"
            raise ActorError(f"{'no' if not matches else 'more than one'} running actor named {name!r} "
                             f"(running: {known})")
        self.crashers[matches[0]](reason)
        return matches[0]

    def stats(self, name: str) -> Statistics:
        st = self.registry.get(name)
        if st is None:
            st = self.registry[name] = Statistics(name)
        return st


class Context:
    """One running instance of an actor."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self.log: logging.Logger = get_logger(name)
        self.throttle = LogThrottle(self.log)
        """For logging what others can make happen at will (bad frames, refusals)."""
        self.stats = runtime.stats(name)
        self._sockets: list[Socket] = []

    def child(self, name: str) -> "Context":
        return Context(self.runtime, f"{self.name}.{name}")

    def socket(
        self,
        kind: int,
        *,
        codec: Codec | None = None,
        topic: str | None = None,
        bind: str | None = None,
        connect: str | None = None,
        **options: int | bytes,
    ) -> Socket:
        """A ZeroMQ socket owned by this actor, tapped under ``topic``
        (default: the actor's name).  ``options`` are zmq socket options by
        name, e.g. ``sndhwm=1000``."""
        z = self.runtime.zmq.socket(kind)
        z.setsockopt(zmq.LINGER, 0)
        try:
            for key, value in options.items():
                z.setsockopt(getattr(zmq, key.upper()), value)
            if bind:
                _bind(z, bind)
            if connect:
                z.connect(connect)
        except Exception:
            z.close(linger=0)
            raise
        sock = Socket(z, codec=codec, stats=self.stats, taps=self.runtime.taps,
                      topic=topic if topic is not None else self.name, log=self.log, throttle=self.throttle)
        self._sockets.append(sock)
        return sock

    async def bind(self, sock: Socket, endpoint: str, wait: float = 5.0) -> Socket:
        """Bind ``sock`` to ``endpoint``, waiting up to ``wait`` seconds
        without blocking the trio thread while the name is still held (an
        inproc name the socket of this actor's previous run is releasing);
        then the EADDRINUSE ``zmq.ZMQError`` is raised."""
        deadline = trio.current_time() + wait
        while True:
            try:
                return sock.bind(endpoint)
            except zmq.ZMQError as e:
                if e.errno != zmq.EADDRINUSE or trio.current_time() >= deadline:
                    raise
            await trio.sleep(_REBIND_POLL)

    def duplex(self, kind: int, **kw: Any) -> Duplex:
        """A two-way socket; start its ``pump`` in a nursery before using it."""
        max_in = kw.pop("max_in", 8192)
        max_out = kw.pop("max_out", 8192)
        return Duplex(self.socket(kind, **kw), max_in=max_in, max_out=max_out)

    def watched(self, topic: str | None = None) -> bool:
        return self.runtime.taps.watched(topic or self.name)

    def tap(self, payload: bytes, topic: str | None = None) -> None:
        """Publish ``payload`` (already encoded) to watchers of ``topic``.
        Check :meth:`watched` first to skip encoding when nobody watches."""
        self.runtime.taps.offer(topic or self.name, payload)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self.stats.clear_depths()
        self.throttle.flush(all=True)


_REBIND_FOR = 0.25
"""How long ``Context.socket(bind=...)`` retries, on the calling (trio)
thread.  ZeroMQ's reaper thread releases a closed socket's inproc name a
moment after the close (measured here over 3000 restarts: p99 4 ms, max
8 ms idle; p99 6 ms, max 45 ms with both cores busy), so this is ample and
never stalls the thread for long (it was 2 s).  ``Context.bind`` waits
longer, asynchronously: the agent's relay binds with it."""
_REBIND_POLL = 0.005


def _bind(z: zmq.Socket, endpoint: str) -> None:
    """Bind, waiting out the moment an inproc name stays taken after its
    previous owner closed (ZeroMQ releases it asynchronously), which is
    exactly when a restarted actor binds it again."""
    deadline = time.monotonic() + _REBIND_FOR
    while True:
        try:
            z.bind(endpoint)
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or not endpoint.startswith("inproc://") or time.monotonic() > deadline:
                raise
            time.sleep(_REBIND_POLL)


class TaskStatus:
    """``task_status`` for an actor: ``started()`` marks it ready."""

    def __init__(self) -> None:
        self.settled = trio.Event()
        self.ready = False
        self.value: Any = None

    def started(self, value: Any = None) -> None:
        if self.ready:
            raise RuntimeError("started() called twice")
        self.ready = True
        self.value = value
        self.settled.set()
