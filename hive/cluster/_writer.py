"""The store writer of a clustered hive: takes agents' batches from
JetStream's work queue, stores them with the store's exactly-once rule, and
only then acknowledges them; stored batches go on to detection through
JetStream, once each."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from ._pack import batch_id, chunks, encode, pack_id, unpack

FETCH = 16
"""Packs taken from one partition at once (each up to ``PACK_BYTES`` of batches)."""
FETCH_SINGLE = 512
"""Messages taken at once when batches travel one a message (``pack = false``)."""
COMMIT_BYTES = 8 << 20
"""Bytes of messages (of several partitions) taken into one group commit, at
most (one fetch more): a commit stays well within JetStream's ``ACK_WAIT``."""
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


def sort_key(b: Ingest) -> tuple[str, str, int]:
    return b.agent, b.stream, b.seq


Batch = tuple[Ingest, bytes]
"""A batch and its encoded bytes, as a message or a pack carried it."""


@dataclass
class Settled:
    """What becomes of each taken message after a commit."""

    ack: list[Delivery] = field(default_factory=list)
    later: list[Delivery] = field(default_factory=list)
    """Handed back to come again after ``GAP_RETRY``: every batch in it waits for its predecessor."""
    drop: list[Delivery] = field(default_factory=list)
    split: list[tuple[Delivery, list[Batch]]] = field(default_factory=list)
    """Packs of which some batches were stored and others wait for their
    predecessors: those go back to the queue in a pack of their own, then
    the pack is acknowledged (retrying it whole would pass the stored ones
    to detection at every retry)."""
    detect: list[Batch] = field(default_factory=list)


def settle(taken: Sequence[tuple[Delivery, Sequence[tuple[Ingest, bytes, str]]]]) -> Settled:
    """Each taken message with its batches and their outcomes in the commit.
    A batch stored now goes to detection; so does one already stored in a
    message that JetStream gave out before (its first taker may have died
    between the commit and passing it on; evaluated twice, its alerts keep
    their ids)."""
    out = Settled()
    for d, batches in taken:
        waiting = [(b, raw) for b, raw, outcome in batches if outcome == "gap"]
        out.detect += [(b, raw) for b, raw, outcome in batches
                       if outcome == "stored" or (outcome == "duplicate" and d.redelivered)]
        if not waiting:
            out.ack.append(d)
        elif len(waiting) < len(batches):
            out.split.append((d, waiting))
        else:
            (out.drop if d.redelivered >= GAP_TRIES else out.later).append(d)
    return out


async def writer_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                       spec: ClusterSpec, detect: str) -> None:
    """Stores the batches of the ingest partitions this node holds the
    lease of (an agent's batches are all in its partition, so one writer
    takes them in order).  ``detect``: the endpoint it binds for the local
    store actor's own stored events (the registry's notices), which it also
    passes to the detection stream."""
    codec = internal_codec()
    st = ctx.stats.extra
    st.update(events=0, batches=0, packs=0, duplicates=0, gaps=0, dropped_gaps=0, refused_batches=0, undecodable=0,
              detect_failed=0, partitions="")
    store = Store(path)
    watch = StoreWatch(ctx, str(store.path))
    local = await ctx.bind(ctx.socket(zmq.PULL, codec=codec, rcvhwm=64), detect)
    taken_in, taken_out = trio.open_memory_channel[list[Delivery]](len(range(spec.partitions)) * 2)
    pulling: dict[int, trio.CancelScope] = {}
    try:
        async with open_bus(spec, "writer") as bus, trio.open_nursery() as nursery:

            async def to_detection(batches: Sequence[Batch]) -> bool:
                if not batches:
                    return True
                if spec.pack:
                    items = [(encode(codec, [raw for _, raw in run]), pack_id([_id(b) for b, _ in run]))
                             for run in chunks(batches)]
                else:
                    items = [(raw, _id(b)) for b, raw in batches]
                ok = await bus.publish(DETECT_SUBJECT, items)
                if not all(ok):
                    st["detect_failed"] = int(st["detect_failed"]) + ok.count(False)
                return all(ok)

            async def own_events() -> None:
                while True:
                    batches = [(m, codec.encode(m)) for m in await local.recv(256) if isinstance(m, Ingest)]
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
                                taken = await queue.fetch(FETCH if spec.pack else FETCH_SINGLE, timeout=1.0)
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
                                taken = await queue.fetch(FETCH_SINGLE, timeout=1.0)
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
                size = sum(len(d.data) for d in taken)
                while len(taken) < COMMIT_MESSAGES and size < COMMIT_BYTES:  # what is already waiting: one commit
                    try:
                        more = taken_out.receive_nowait()
                    except trio.WouldBlock:
                        break
                    taken += more
                    size += sum(len(d.data) for d in more)
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


COMMIT_MESSAGES = 4 * FETCH_SINGLE
"""Messages of several partitions taken into one group commit, at most."""


def _id(b: Ingest) -> str:
    """A batch's message id in JetStream's duplicate window ('' for the hive's own: none)."""
    return batch_id(b.agent, b.stream, b.seq) if b.seq else ""


async def _commit(ctx: Context, store: Store, bus: Any, codec: Codec, taken: list[Delivery],
                  to_detection: Any, watch: StoreWatch) -> None:
    st = ctx.stats.extra
    messages: list[tuple[Delivery, list[Batch]]] = []
    bad: list[Delivery] = []
    refused = 0
    for d in taken:
        try:
            got = unpack(codec, d.data, agents_only=True)
        except DecodeError:
            bad.append(d)
            continue
        refused += got.bad
        st["packs"] = int(st["packs"]) + got.packed
        messages.append((d, got.batches))
    if bad or refused:
        # Nothing of them can be stored: counted and dropped (the rest of a pack is stored).
        st["undecodable"] = int(st["undecodable"]) + len(bad) + refused
        ctx.throttle.event("undecodable", "writer.undecodable", logging.ERROR, messages=len(bad), batches=refused)
    # In seq order: batches of one stream taken together are stored together.
    flat = sorted(((b, raw, i) for i, (_, batches) in enumerate(messages) for b, raw in batches),
                  key=lambda x: sort_key(x[0]))
    try:
        done = await trio.to_thread.run_sync(store.ingest, [b for b, _, _ in flat])
    except StoreError as e:
        # Nothing written: all of it comes again.
        ctx.stats.last_error = str(e)
        watch.failed(str(e))
        ctx.throttle.event("write_failed", "store.write_failed", logging.ERROR, reason=str(e), batches=len(flat))
        await bus.settle([], later=[d for d, _ in messages], delay=1.0, drop=bad)
        await trio.sleep(1.0)
        return
    watch.ok()
    outcomes = [o.outcome for o in done.outcomes]
    per_message: list[list[tuple[Ingest, bytes, str]]] = [[] for _ in messages]
    for (b, raw, i), outcome in zip(flat, outcomes, strict=True):
        per_message[i].append((b, raw, outcome))
    out = settle([(d, per_message[i]) for i, (d, _) in enumerate(messages)])
    notices = [(b, codec.encode(b)) for b in done.stored if not b.seq]  # in place of refused batches
    for o in outcomes:
        key = {"duplicate": "duplicates", "gap": "gaps", "refused": "refused_batches"}.get(o)
        if key:
            st[key] = int(st[key]) + 1
    st["batches"] = int(st["batches"]) + outcomes.count("stored")
    st["events"] = int(st["events"]) + sum(len(b.events) for (b, _, _), o in zip(flat, outcomes) if o == "stored")
    if out.drop:
        st["dropped_gaps"] = int(st["dropped_gaps"]) + len(out.drop)
        log_event(ctx.log, "writer.gap_dropped", logging.WARNING, count=len(out.drop))
    # Acknowledged only once detection has them: a writer killed before this
    # point leaves them to another, which passes them on again.
    split = [d for d, _ in out.split]
    if not await to_detection(_for_detection(codec, out.detect) + notices):
        await bus.settle([], later=out.ack + out.later + split, delay=GAP_RETRY, drop=out.drop + bad)
        return
    if out.split:
        # Their waiting batches go back to the queue as packs of their own; then they are done with.
        items, whose = [], []
        for k, (d, waiting) in enumerate(out.split):
            for run in chunks(waiting):
                items.append((d.subject, encode(codec, [raw for _, raw in run]), pack_id([_id(b) for b, _ in run])))
                whose.append(k)
        failed = {k for k, ok in zip(whose, await bus.publish_to(items)) if not ok}
        for k, d in enumerate(split):
            (out.later if k in failed else out.ack).append(d)
    await bus.settle(out.ack, later=out.later, delay=GAP_RETRY, drop=out.drop + bad)


def _for_detection(codec: Codec, batches: Sequence[Batch]) -> list[Batch]:
    """Batches encoded again for detection: storing filled in each event's
    agent (and a time where it had none), which rules and correlation read.
    A copy passed on again was not stored now: its agent is filled in here."""
    out = []
    for b, _ in batches:
        for e in b.events:
            e.agent = b.agent
        out.append((b, codec.encode(b)))
    return out
