"""The store writer of a clustered hive: takes agents' batches from
JetStream's work queue, stores them with the store's exactly-once rule, and
only then acknowledges them; stored batches go on to detection through
JetStream, once each."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
import zmq

from actors import Codec, Context, DecodeError, log_event

from .._actors import internal_codec
from .._messages import Ingest
from .._store import Store, StoreError
from ._bus import (DETECT_SUBJECT, INGEST_STREAM, INGEST_SUBJECT, RECORDERS, RECORDS_STREAM, RECORDS_SUBJECT, WRITERS,
                   ClusterError, ClusterSpec, Delivery, open_bus)
from ._keeper import LeaseKeeper

FETCH = 512
"""Messages taken from JetStream at once: one group commit."""
GAP_RETRY = 0.2
"""Seconds before a batch whose predecessor is not stored yet comes again
(published after it by a router, or held by a writer that lost the
partition's lease a moment ago)."""
GAP_TRIES = 1500
"""Deliveries of a batch that stays out of order (about five minutes)
before it is dropped: its predecessor was lost before it reached JetStream,
and the agent, answered with a gap by its router, starts a new stream."""


class StoreWatch:
    """Whether the shared store takes this writer's commits, said once when
    it stops (``store.unavailable``) and once when it is back
    (``store.back``, with how long and how many commits failed), and kept in
    the writer's ``store`` statistic for ``immune-node status``.  While it
    is away, routers go on acknowledging what JetStream holds; nothing is
    acknowledged to JetStream that was not stored."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.since: float | None = None
        self.failures = 0
        ctx.stats.extra["store"] = "ok"

    def failed(self, reason: str) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.time()
            log_event(self.ctx.log, "store.unavailable", logging.ERROR, store=self.name, reason=reason,
                      effect="batches stay in JetStream until it is back")
        at = time.strftime("%H:%M:%SZ", time.gmtime(self.since))
        self.ctx.stats.extra["store"] = f"unavailable since {at} ({self.failures} commits failed): {reason}"

    def ok(self) -> None:
        if self.since is not None:
            log_event(self.ctx.log, "store.back", logging.WARNING, store=self.name,
                      seconds=round(time.time() - self.since, 1), failed_commits=self.failures)
            self.since, self.failures = None, 0
            self.ctx.stats.extra["store"] = "ok"


def batch_id(agent: str, stream: str, seq: int) -> str:
    """JetStream's message id of a batch: the same on every router and writer,
    so JetStream drops a copy within its duplicate window."""
    return f"{agent}/{stream}/{seq}"


def sort_key(b: Ingest) -> tuple[str, str, int]:
    return b.agent, b.stream, b.seq


def settle(deliveries: Sequence[Delivery], batches: Sequence[Ingest], outcomes: Sequence[str]
           ) -> tuple[list[Delivery], list[Delivery], list[Delivery], list[Ingest]]:
    """What becomes of each taken message after a commit: (ack, retry later,
    drop, batches to pass on to detection).  A batch stored now goes to
    detection; so does one already stored that JetStream gave out before
    (its first taker may have died between the commit and passing it on; the
    detection stream drops the copy if it had it)."""
    ack, later, drop, detect = [], [], [], []
    for d, b, outcome in zip(deliveries, batches, outcomes, strict=True):
        if outcome == "gap":
            (drop if d.redelivered >= GAP_TRIES else later).append(d)
            continue
        ack.append(d)
        if outcome == "stored" or (outcome == "duplicate" and d.redelivered):
            detect.append(b)
    return ack, later, drop, detect


async def writer_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                       spec: ClusterSpec, detect: str) -> None:
    """Stores the batches of the ingest partitions this node holds the
    lease of (an agent's batches are all in its partition, so one writer
    takes them in order).  ``detect``: the endpoint it binds for the local
    store actor's own stored events (the registry's notices), which it also
    passes to the detection stream."""
    codec = internal_codec()
    st = ctx.stats.extra
    st.update(events=0, batches=0, duplicates=0, gaps=0, dropped_gaps=0, refused_batches=0, undecodable=0,
              detect_failed=0, partitions="")
    store = Store(path)
    watch = StoreWatch(ctx, str(store.path))
    local = await ctx.bind(ctx.socket(zmq.PULL, codec=codec, rcvhwm=64), detect)
    taken_in, taken_out = trio.open_memory_channel[list[Delivery]](len(range(spec.partitions)) * 2)
    pulling: dict[int, trio.CancelScope] = {}
    try:
        async with open_bus(spec, "writer") as bus, trio.open_nursery() as nursery:

            async def to_detection(batches: Sequence[Ingest]) -> bool:
                if not batches:
                    return True
                ok = await bus.publish(DETECT_SUBJECT, [(codec.encode(b), batch_id(b.agent, b.stream, b.seq)
                                                         if b.seq else "") for b in batches])
                if not all(ok):
                    st["detect_failed"] = int(st["detect_failed"]) + ok.count(False)
                return all(ok)

            async def own_events() -> None:
                while True:
                    batches = [m for m in await local.recv(256) if isinstance(m, Ingest)]
                    try:
                        await to_detection(batches)
                    except ClusterError as e:
                        ctx.stats.last_error = str(e)

            async def pull(p: int) -> None:
                with trio.CancelScope() as scope:
                    pulling[p] = scope
                    while True:
                        try:
                            queue = await bus.consumer(INGEST_STREAM, f"{INGEST_SUBJECT}.{p}", f"{WRITERS}-{p}")
                            while True:
                                taken = await queue.fetch(FETCH, timeout=1.0)
                                if taken:
                                    await taken_in.send(taken)
                        except ClusterError as e:  # NATS unreachable for now: the client reconnects
                            ctx.stats.last_error = str(e)
                            await trio.sleep(0.5)
                if pulling.get(p) is scope:
                    del pulling[p]

            async def records() -> None:
                """Correlation's alerts and incidents, in order: by the holder of partition 0 alone."""
                with trio.CancelScope() as scope:
                    pulling[-1] = scope
                    while True:
                        try:
                            queue = await bus.consumer(RECORDS_STREAM, RECORDS_SUBJECT, RECORDERS)
                            while True:
                                taken = await queue.fetch(FETCH, timeout=1.0)
                                if taken:
                                    await _records(ctx, store, bus, codec, taken, watch)
                        except ClusterError as e:
                            ctx.stats.last_error = str(e)
                            await trio.sleep(0.5)

            async def on_change(gained: set[int], lost: set[int]) -> None:
                for p in lost:
                    if p in pulling:
                        pulling.pop(p).cancel()
                    if p == 0 and -1 in pulling:
                        pulling.pop(-1).cancel()
                for p in gained:
                    nursery.start_soon(pull, p)
                    if p == 0:
                        nursery.start_soon(records)
                st["partitions"] = " ".join(map(str, sorted(keeper.table.owned)))

            keeper = LeaseKeeper(bus, "ingest", spec.node, spec.partitions, spec.lease, on_change, ctx.log,
                                 detail=spec.role)
            nursery.start_soon(own_events)
            await nursery.start(keeper.run)
            task_status.started()
            log_event(ctx.log, "writer.started", node=spec.node)
            while True:
                taken = await taken_out.receive()
                while len(taken) < COMMIT_MESSAGES:  # everything already waiting: one commit
                    try:
                        taken += taken_out.receive_nowait()
                    except trio.WouldBlock:
                        break
                try:
                    await _commit(ctx, store, bus, codec, taken, to_detection, watch)
                except ClusterError as e:  # unacknowledged: they come again
                    ctx.stats.last_error = str(e)
                    ctx.throttle.event("bus", "writer.bus_error", logging.WARNING, reason=str(e))
                    await trio.sleep(0.5)
    finally:
        store.close()


async def _records(ctx: Context, store: Store, bus: Any, codec: Codec, taken: list[Delivery],
                   watch: StoreWatch) -> None:
    from .._messages import IncidentUpdate, Repeat
    import wire

    alerts, incidents = [], []
    for d in taken:
        try:
            msg = codec.decode(d.data)
        except DecodeError:
            continue
        if isinstance(msg, (wire.Alert, Repeat)):
            alerts.append(msg)
        elif isinstance(msg, IncidentUpdate):
            incidents.append(msg.incident)
    try:
        done = await trio.to_thread.run_sync(store.ingest, [], alerts, incidents)
    except StoreError as e:
        ctx.stats.last_error = str(e)
        watch.failed(str(e))
        await bus.settle([], later=taken, delay=1.0)
        await trio.sleep(1.0)
        return
    watch.ok()
    st = ctx.stats.extra
    st["alerts"] = int(st.get("alerts", 0)) + sum(isinstance(a, wire.Alert) for a in alerts)
    st["dropped_records"] = int(st.get("dropped_records", 0)) + done.dropped
    await bus.settle(taken)


COMMIT_MESSAGES = 4 * FETCH
"""Messages of several partitions taken into one group commit."""


async def _commit(ctx: Context, store: Store, bus: Any, codec: Codec, taken: list[Delivery],
                  to_detection: Any, watch: StoreWatch) -> None:
    st = ctx.stats.extra
    pairs: list[tuple[Delivery, Ingest]] = []
    bad: list[Delivery] = []
    for d in taken:
        try:
            msg = codec.decode(d.data)
        except DecodeError:
            msg = None
        if isinstance(msg, Ingest) and msg.seq:
            pairs.append((d, msg))
        else:
            bad.append(d)
    if bad:
        st["undecodable"] = int(st["undecodable"]) + len(bad)
        ctx.throttle.event("undecodable", "writer.undecodable", logging.ERROR, count=len(bad))
    # In seq order: batches of one stream taken together are stored together.
    pairs.sort(key=lambda p: sort_key(p[1]))
    deliveries, batches = [p[0] for p in pairs], [p[1] for p in pairs]
    try:
        done = await trio.to_thread.run_sync(store.ingest, batches)
    except StoreError as e:
        # Nothing written: all of it comes again.
        ctx.stats.last_error = str(e)
        watch.failed(str(e))
        ctx.throttle.event("write_failed", "store.write_failed", logging.ERROR, reason=str(e), batches=len(batches))
        await bus.settle([], later=deliveries, delay=1.0, drop=bad)
        await trio.sleep(1.0)
        return
    watch.ok()
    outcomes = [o.outcome for o in done.outcomes]
    ack, later, drop, detect = settle(deliveries, batches, outcomes)
    notices = [b for b in done.stored if not b.seq]  # in place of refused batches
    for o in outcomes:
        key = {"duplicate": "duplicates", "gap": "gaps", "refused": "refused_batches"}.get(o)
        if key:
            st[key] = int(st[key]) + 1
    st["batches"] = int(st["batches"]) + outcomes.count("stored")
    st["events"] = int(st["events"]) + sum(len(b.events) for b, o in zip(batches, outcomes) if o == "stored")
    if drop:
        st["dropped_gaps"] = int(st["dropped_gaps"]) + len(drop)
        log_event(ctx.log, "writer.gap_dropped", logging.WARNING, count=len(drop))
    # Acknowledged only once detection has them: a writer killed before this
    # point leaves them to another, whose copy the detection stream drops.
    if not await to_detection(detect + notices):
        ack, later = [], ack + later
    await bus.settle(ack, later=later, delay=GAP_RETRY, drop=drop + bad)
