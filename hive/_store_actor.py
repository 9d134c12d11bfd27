"""The store actor: group commits of what the router, the registry and
correlate send, acknowledgements back to the router, stored events on to
detection.  A thin shell around :class:`Store`."""

from __future__ import annotations

import collections
import logging
import math
import time
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Context, log_event

from ._actors import DETECT, INGEST, STORED, internal_codec
from ._messages import IncidentUpdate, Ingest, Repeat, Stored
from ._store import Ingested, Store, StoreError


async def store_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                      retention_days: float = 30.0, retention_mb: int = 10240,
                      ingest: tuple[str, ...] = (INGEST,), detect: str = DETECT) -> None:
    """Writes batches in group commits (all that arrived while the previous
    commit ran, up to ``COMMIT_BYTES``), reports each outcome to the router,
    and passes stored events on to detection (at ``detect``) exactly once.
    It takes writes on every endpoint of ``ingest`` (inproc for its
    siblings, ipc for actors in child processes).

    A batch SQLite refuses is replaced by a ``batch_refused`` notice and
    acknowledged (see ``Store.ingest``).  When nothing can be written (a
    full disk), nothing is acknowledged: the agents keep their batches and
    send them again, and the hive's own events, alerts and incidents wait
    here (up to ``RETRY_RECORDS``) for the next try."""
    inbox = ctx.socket(zmq.PULL, codec=internal_codec(), rcvhwm=STORE_HWM)
    for endpoint in ingest:
        await ctx.bind(inbox, endpoint)
    acks = await ctx.bind(ctx.socket(zmq.PUSH, codec=internal_codec(), topic=f"{ctx.name}.acks"), STORED)
    store = await trio.to_thread.run_sync(lambda: Store(path, checkpoint_by_hand=True))  # may wait on a server
    detect_out = ctx.socket(zmq.PUSH, connect=detect, codec=internal_codec(), sndhwm=DETECT_HWM)
    to_detect = Backlog(DETECT_BYTES)
    st = ctx.stats.extra
    st.update(events=0, batches=0, duplicates=0, gaps=0, detect_skipped=0, alerts=0, repeats=0, refused_batches=0,
              refused_events=0, dropped_records=0, write_failures=0)
    lags: collections.deque[tuple[float, float]] = collections.deque(maxlen=50_000)
    waiting: list[Any] = []  # the hive's own records a failed commit did not write
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_retention, ctx, store, retention_days, retention_mb)
            nursery.start_soon(_report_lag, ctx, lags)
            nursery.start_soon(_checkpoint, ctx, store)
            nursery.start_soon(to_detect.feed, detect_out)
            while True:
                msgs = waiting + await inbox.recv(4096, max_bytes=COMMIT_BYTES)
                waiting = []
                batches = [m for m in msgs if isinstance(m, Ingest)]
                alerts = [m for m in msgs if isinstance(m, (wire.Alert, Repeat))]  # in order
                incidents = [m.incident for m in msgs if isinstance(m, IncidentUpdate)]
                if not (batches or alerts or incidents):
                    continue
                try:
                    done = await trio.to_thread.run_sync(store.ingest, batches, alerts, incidents)
                except StoreError as e:
                    # Not acknowledged, so the agents still hold their batches
                    # and will send them again; nothing accepted is lost.
                    for b in batches:
                        if b.seq:
                            await acks.send(Stored(agent=b.agent, stream=b.stream, seq=b.seq, outcome="failed"))
                    ours = [m for m in msgs if not (isinstance(m, Ingest) and m.seq)]
                    waiting = ours[-RETRY_RECORDS:]
                    st["dropped_records"] = int(st["dropped_records"]) + len(ours) - len(waiting)
                    st["write_failures"] = int(st["write_failures"]) + 1
                    ctx.stats.last_error = str(e)
                    ctx.throttle.event("write_failed", "store.write_failed", logging.ERROR, reason=str(e),
                                       batches=len(batches), alerts=len(alerts), waiting=len(waiting))
                    await trio.sleep(1.0)
                    continue
                repeats = sum(isinstance(m, Repeat) for m in alerts)
                st["alerts"] = int(st["alerts"]) + len(alerts) - repeats
                st["repeats"] = int(st["repeats"]) + repeats
                now_ns, now = time.time_ns(), trio.current_time()
                for b in done.stored:
                    # A sample of events: from their creation on the agent to our commit.
                    lags.extend((now, (now_ns - e.time) / 1e6) for e in b.events[::16] if e.time)
                await _after_commit(ctx, done, acks, to_detect)
    finally:
        store.close()


STORE_HWM = 16
"""Messages queued for the store per sender (router, registry, correlate).
Counts, not bytes: with the router's own queue, at most 20 of the largest
batches wait (80 MiB at the default max_frame), while a commit still takes
thousands of events of ordinary batches."""
COMMIT_BYTES = 16 << 20
"""Bytes of messages taken into one group commit (decoded, about four times that)."""
DETECT_HWM = 16
"""Stored batches ZeroMQ queues for the sentinel beyond its own queue."""
DETECT_BYTES = 64 << 20
"""Bytes of stored batches waiting here for the sentinel (a commit's
batches leave in one burst, and the sentinel's process may be slow to take
them on a busy machine); past that, the store skips detection of a batch
(counted in ``detect_skipped``) rather than wait."""
RETRY_RECORDS = 10_000
"""The hive's own events, alerts and incidents kept for the next try while
the disk refuses writes; older ones are dropped and counted."""


async def _checkpoint(ctx: Context, store: Store) -> None:
    done = None
    while True:
        await trio.sleep(0.5)
        mark = store.write_mark()
        if mark == done:
            continue    # nothing written since: an idle hive stays asleep
        try:
            await trio.to_thread.run_sync(store.checkpoint)
            done = mark
        except StoreError as e:
            ctx.stats.last_error = str(e)


LAG_WINDOW = 5.0
"""Seconds of commits the lag percentiles cover."""


async def _report_lag(ctx: Context, lags: collections.deque[tuple[float, float]]) -> None:
    while True:
        await trio.sleep(1.0)
        horizon = trio.current_time() - LAG_WINDOW
        while lags and lags[0][0] < horizon:
            lags.popleft()
        if lags:
            ordered = sorted(lag for _, lag in lags)
            ctx.stats.extra["lag_p50_ms"] = round(ordered[len(ordered) // 2], 2)
            ctx.stats.extra["lag_p99_ms"] = round(ordered[int(len(ordered) * 0.99)], 2)


class Backlog:
    """Messages on their way to a socket, bounded in bytes: what would pass
    the bound is refused (the caller counts it) instead of waiting or
    queueing without end; :meth:`feed` sends the rest in order.  The
    store's stored batches on their way to the sentinel, the sentinel's
    batches and alerts on their way to correlate."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        """Encoded bytes offered and not yet taken by ZeroMQ."""
        self._codec = internal_codec()
        self._send, self._receive = trio.open_memory_channel[bytes](math.inf)

    def offer(self, msg: Any, reserve: int = 0) -> bool:
        """Queue ``msg`` if it fits within the bound, and ``reserve`` bytes
        beyond it (room that only such messages may take)."""
        data = self._codec.encode(msg)
        if self.bytes + len(data) > self.limit + reserve:
            return False
        self.bytes += len(data)
        self._send.send_nowait(data)
        return True

    async def feed(self, sock: Any) -> None:
        async for data in self._receive:
            await sock.send_many([[data]])
            self.bytes -= len(data)


async def _after_commit(ctx: Context, done: Ingested, acks: Any, detect: Backlog) -> None:
    st = ctx.stats.extra
    for o in done.outcomes:
        if o.outcome == "duplicate":
            st["duplicates"] = int(st["duplicates"]) + 1
        elif o.outcome == "gap":
            st["gaps"] = int(st["gaps"]) + 1
        await acks.send(o)
    for b, reason in done.refused:
        st["refused_batches"] = int(st["refused_batches"]) + 1
        st["refused_events"] = int(st["refused_events"]) + len(b.events)
        ctx.throttle.event("batch_refused", "store.batch_refused", logging.ERROR, agent=b.agent, stream=b.stream,
                           seq=b.seq, count=len(b.events), reason=reason)
    if done.dropped:
        st["dropped_records"] = int(st["dropped_records"]) + done.dropped
        ctx.throttle.event("record_dropped", "store.records_dropped", logging.ERROR, count=done.dropped)
    for b in done.stored:
        st["events"] = int(st["events"]) + len(b.events)
        st["batches"] = int(st["batches"]) + 1
        if not detect.offer(b):
            # Detection is behind: the events are stored, say what it missed.
            st["detect_skipped"] = int(st["detect_skipped"]) + len(b.events)


async def _retention(ctx: Context, store: Store, days: float, mb: int) -> None:
    from hive.playbook._engine import CLOSED_STATES  # (hive.playbook imports this module)

    while True:
        await trio.sleep(60)
        try:
            n = await trio.to_thread.run_sync(lambda: store.retain(
                max_age=days * 86400, max_bytes=mb << 20, finished_commands=CLOSED_STATES))
        except StoreError as e:
            log_event(ctx.log, "store.retention_failed", logging.ERROR, reason=str(e))
            continue
        if any(n.values()):
            log_event(ctx.log, "store.retention", **{table: count for table, count in n.items() if count})
