"""Taps: watch any actor's outbound stream live, by topic.

The node binds an XPUB socket that watchers (``immune-node tap``) subscribe
to.  The XPUB tells us which topic prefixes are watched; :meth:`Taps.watched`
answers from a cache, so an unwatched stream costs one dict lookup and nothing
is encoded or queued for it.  Sends are non-blocking and XPUB drops for a
subscriber whose queue is full, so a slow watcher loses its own messages and
never slows the pipeline.  Every tap message carries a per-topic sequence
number; the watcher counts gaps as lost messages.

Actors in child processes publish through a leaf :class:`Taps` whose XPUB
connects to the node's XSUB endpoint; the node forwards subscriptions up to
the leaves and their messages down to the watchers.
"""

from __future__ import annotations

import logging

import trio
import zmq

from ._log import log_event
from ._stats import Statistics
from ._zmq import Duplex, Socket

_SEQ_BYTES = 8


class Taps:
    """The set of watched topics and the queue of messages for watchers."""

    def __init__(self, *, hwm: int = 1000) -> None:
        self._prefixes: set[bytes] = set()
        self._cache: dict[str, bool] = {}
        self._seq: dict[str, int] = {}
        self._hwm = hwm
        self._out: Duplex | None = None
        self.offered = 0
        self.lost = 0
        """Messages dropped because the tap's own queue was full."""

    # -- publisher side (any actor) ----------------------------------------

    def watched(self, topic: str) -> bool:
        try:
            return self._cache[topic]
        except KeyError:
            key = topic.encode()
            hit = any(key.startswith(p) for p in self._prefixes)
            self._cache[topic] = hit
            return hit

    def offer(self, topic: str, payload: bytes) -> None:
        """Queue ``payload`` for the watchers of ``topic``; never blocks."""
        out = self._out
        if out is None:
            return
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        self.offered += 1
        if not out.send_nowait([topic.encode(), seq.to_bytes(_SEQ_BYTES, "big"), payload]):
            self.lost += 1

    def _subscription(self, frame: bytes) -> None:
        if not frame:
            return
        if frame[0] == 1:
            self._prefixes.add(frame[1:])
        elif frame[0] == 0:
            self._prefixes.discard(frame[1:])
        self._cache.clear()

    # -- the owning tasks --------------------------------------------------

    async def serve(
        self,
        ctx: zmq.Context,
        watch_endpoint: str,
        leaf_endpoint: str | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node's hub: watchers subscribe at ``watch_endpoint``; child
        processes publish into ``leaf_endpoint``."""
        stats = Statistics("taps")
        log = logging.getLogger("immune.taps")
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, self._hwm)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.bind(watch_endpoint)
        watchers = Duplex(Socket(xpub, stats=stats, log=log), max_out=self._hwm)
        leaves: Duplex | None = None
        if leaf_endpoint:
            xsub = ctx.socket(zmq.XSUB)
            xsub.setsockopt(zmq.LINGER, 0)
            xsub.setsockopt(zmq.RCVHWM, self._hwm)
            xsub.bind(leaf_endpoint)
            leaves = Duplex(Socket(xsub, stats=stats, log=log), max_in=self._hwm)
        self._out = watchers
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(watchers.pump)
                if leaves is not None:
                    await nursery.start(leaves.pump)
                    nursery.start_soon(self._from_leaves, leaves, watchers)
                nursery.start_soon(self._from_watchers, watchers, leaves, log)
                task_status.started()
        finally:
            self._out = None
            watchers.sock.close()
            if leaves is not None:
                leaves.sock.close()

    async def _from_watchers(self, watchers: Duplex, leaves: Duplex | None, log: logging.Logger) -> None:
        while True:
            for frames in await watchers.recv():
                frame = frames[0]
                self._subscription(frame)
                log_event(log, "tap.subscription", logging.DEBUG,
                          on=bool(frame[:1] == b"\x01"), topic=frame[1:].decode(errors="replace"))
                if leaves is not None:
                    leaves.send_nowait([frame])

    async def _from_leaves(self, leaves: Duplex, watchers: Duplex) -> None:
        while True:
            for frames in await leaves.recv():
                self.offered += 1
                if not watchers.send_nowait(frames):
                    self.lost += 1

    async def serve_leaf(
        self, ctx: zmq.Context, hub_endpoint: str, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a child process's side: publish into the node's hub."""
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, self._hwm)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.connect(hub_endpoint)
        up = Duplex(Socket(xpub, stats=Statistics("taps")), max_out=self._hwm)
        self._out = up
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(up.pump)
                task_status.started()
                while True:
                    for frames in await up.recv():
                        self._subscription(frames[0])
        finally:
            self._out = None
            up.sock.close()


def decode_tap(frames: list[bytes]) -> tuple[str, int, bytes]:
    """Split a tap message into (topic, sequence number, payload)."""
    topic, seq, payload = frames
    return topic.decode(errors="replace"), int.from_bytes(seq, "big"), payload
