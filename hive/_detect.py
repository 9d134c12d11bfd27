"""The detection actors: sentinel (Sigma rules) and correlate (across hosts).

Both can run in child processes (the hive runs them so): rules come from
operators and a pathological one must not stall storage, and detection then
has a core of its own.  Endpoints are parameters for that reason.

Events reach the sentinel once each, after the store committed them.  The
sentinel passes the events and its alerts to correlate, which ties alerts
into incidents and is the one place alerts leave from: to the store and to
the playbook.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Context, log_event

from ._actors import DETECT, INGEST, internal_codec
from ._messages import IncidentUpdate, Ingest, Repeat, SigmaHit
from ._store import Store, StoreError
from ._store_actor import Backlog

CORRELATE = "inproc://hive.correlate"
"""sentinel -> correlate: events and alerts."""
ALERTS = "inproc://hive.alerts"
"""correlate -> playbook: every alert, with its incident."""

_RELOAD_EVERY = 2.0
_RECENT_ALERTS = 10_000
DETECT_BUDGET = 1.0
"""Seconds the sentinel may spend on one batch (a batch of a thousand events takes
a few tens of milliseconds); the events after that are counted in
``detect_skipped`` and not checked, so that detection falls behind by a bounded
time and says so, instead of stalling."""
_WARN_EVERY = 10.0

# Memory: a detection process holds what agents send only within these
# bounds, whatever they send.  The store keeps the backlog (its DETECT_BYTES,
# then detect_skipped); with B the largest stored batch (about hive.max_frame,
# 4 MiB by default) the sentinel holds at most (HOP_HWM + 1) x B in ZeroMQ's
# inbound queue and reader, BURST_BYTES + B taken at once (and their decoded
# events), and CORRELATE_BYTES + ALERT_RESERVE + (HOP_HWM + 1) x B on the way
# to correlate: 65 MiB of encoded batches at the default max_frame.
HOP_HWM = 4
"""Messages ZeroMQ queues at each end of a hop into and out of a detection
process (RCVHWM, SNDHWM)."""
BURST_BYTES = 1 << 20
"""Encoded bytes of messages a detection actor takes (and decodes) at once,
one message more at most."""
CORRELATE_BYTES = 16 << 20
"""Bytes of batches waiting in the sentinel for correlate; a batch past it
is not passed on (``events_skipped``)."""
ALERT_RESERVE = 4 << 20
"""Room beyond ``CORRELATE_BYTES`` only alerts may take: batches waiting for
correlate never crowd an alert out."""


def _count(ctx: Context, key: str, n: int = 1) -> None:
    ctx.stats.extra[key] = int(ctx.stats.extra.get(key, 0)) + n


async def sentinel_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                         rule_dirs: list[Path], batch_budget: float = DETECT_BUDGET, detect: str = DETECT,
                         correlate: str = CORRELATE, cluster: Any = None) -> None:
    """Evaluates stored batches from ``detect``, or in a cluster (``cluster``,
    a ``hive.cluster.ClusterSpec``) from JetStream's detection queue, which
    every node's sentinel shares: each batch goes to one of them, and comes
    again to another if its taker dies before it acknowledged it (after the
    evaluation and the hand-over to correlate)."""
    from hive.sigma import RuleEngine

    # In a cluster Sigma correlation's windows live on its partitions'
    # owners, which take the hits with the time they were seen here.
    engine = RuleEngine(clock=time.time if cluster else trio.current_time, partitioned=cluster is not None)
    # Compiling a few hundred rules takes a moment: off the event loop.
    report = engine.install(await trio.to_thread.run_sync(engine.prepare, *rule_dirs))
    refused = _report_rules(ctx, report, set(), rule_dirs)
    ctx.stats.extra.update(detect_skipped=0, slowest_rules="")
    inbox = None if cluster else await ctx.bind(ctx.socket(zmq.PULL, codec=internal_codec(), rcvhwm=HOP_HWM), detect)
    out = ctx.socket(zmq.PUSH, connect=correlate, sndhwm=HOP_HWM)
    to_correlate = Backlog(CORRELATE_BYTES)
    task_status.started()

    outbox: list[Any] = []  # in a cluster: for JetStream, published before the batches are acknowledged

    def send(msg: Any, what: str, reserve: int = 0) -> None:
        if cluster is not None:
            outbox.append(msg)
        elif not to_correlate.offer(msg, reserve):
            _count(ctx, f"{what}_skipped")  # correlate is behind; counted, never blocking detection

    async def housekeeping() -> None:
        nonlocal refused
        since_reload = 0.0
        while True:
            await trio.sleep(1.0)
            for alert in engine.tick():
                send(alert, "alerts", ALERT_RESERVE)
            since_reload += 1.0
            if since_reload >= _RELOAD_EVERY:
                since_reload = 0.0
                if engine.changed():
                    try:
                        refused = _report_rules(
                            ctx, engine.install(await trio.to_thread.run_sync(engine.prepare, *rule_dirs)),
                            refused, rule_dirs)
                    except Exception as e:  # a broken rule folder keeps the rules we have
                        log_event(ctx.log, "rules.reload_failed", logging.ERROR, reason=str(e))
            st = engine.statistics()
            ctx.stats.extra.update(evaluated=st.evaluated, matched=st.matched,
                                   suppressed=st.suppression.suppressed,
                                   slowest_rules=_costs(st.slowest), rule_hits=format_hits(engine.hits()))

    warned = -_WARN_EVERY

    def evaluate(batch: Ingest) -> None:
        nonlocal warned
        skipped = engine.skipped
        # In a cluster a batch may be evaluated twice: its alerts keep their ids.
        key = f"{batch.agent}/{batch.stream}/{batch.seq}" if cluster is not None and batch.seq else ""
        alerts = engine.process_batch(batch.events, batch_budget, key=key)
        skipped = engine.skipped - skipped
        _count(ctx, "events", len(batch.events))
        if skipped:
            _count(ctx, "detect_skipped", skipped)
            if trio.current_time() - warned >= _WARN_EVERY:
                warned = trio.current_time()
                log_event(ctx.log, "detect.over_budget", logging.WARNING,
                          skipped=ctx.stats.extra["detect_skipped"], budget=batch_budget,
                          slowest=_costs(engine.slowest()))
        send(batch, "events")
        for alert in alerts:
            _count(ctx, "repeats" if isinstance(alert, Repeat) else "alerts")
            send(alert, "alerts", ALERT_RESERVE)
        if cluster is not None:
            for hit in engine.routed():
                _count(ctx, "sigma_hits")
                send(hit, "sigma_hits")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(housekeeping)
        nursery.start_soon(to_correlate.feed, out)
        if cluster is not None:
            await _from_cluster(ctx, cluster, evaluate, outbox)
        assert inbox is not None
        while True:
            for batch in await inbox.recv(max_bytes=BURST_BYTES):
                if isinstance(batch, Ingest):
                    evaluate(batch)


CLUSTER_FETCH = 64
"""Stored batches a clustered sentinel takes from JetStream at once."""


CORRELATED_KINDS = (wire.Exec, wire.Fork, wire.Bind, wire.Connect)
"""The events the host correlator reads; in a cluster only these travel to it."""


async def _from_cluster(ctx: Context, spec: Any, evaluate: Any, outbox: list[Any]) -> None:
    from actors import DecodeError

    from .cluster._bus import CORRELATE_SUBJECT, DETECT_STREAM, DETECT_SUBJECT, SENTINELS, ClusterError, open_bus
    from .cluster._correlate import correlate_id, correlate_partition
    from .cluster._pack import packs, unpack

    codec = internal_codec()
    async with open_bus(spec, "sentinel") as bus:
        queue = await bus.consumer(DETECT_STREAM, DETECT_SUBJECT, SENTINELS)
        while True:
            try:
                taken = await queue.fetch(CLUSTER_FETCH, timeout=1.0)
                for d in taken:
                    try:  # a writer's pack of stored batches, or one (from a node without packing)
                        got = unpack(codec, d.data)
                    except DecodeError:
                        _count(ctx, "undecodable")
                        continue
                    if got.bad:
                        _count(ctx, "undecodable", got.bad)
                    for batch, _ in got.batches:
                        evaluate(batch)
                # What correlation reads goes to its partition's owner; only
                # then are the batches done with.
                items: list[tuple[str, bytes, str]] = []
                for msg in outbox:
                    if isinstance(msg, Ingest):
                        msg = Ingest(agent=msg.agent, stream=msg.stream, seq=msg.seq,
                                     events=[e for e in msg.events if isinstance(e, CORRELATED_KINDS)])
                        if not msg.events:
                            continue
                    items.append((f"{CORRELATE_SUBJECT}.{correlate_partition(msg, spec.correlate_partitions)}",
                                  codec.encode(msg), correlate_id(msg)))
                outbox.clear()
                if items and spec.pack:
                    # One message per partition, with each item's id: the owner drops a copy by it.
                    made, too_large = packs(codec, items, limit=bus.max_payload, with_ids=True)
                    if too_large:
                        _count(ctx, "correlate_too_large", len(too_large))
                    items = [(p.subject, p.payload, p.id) for p in made]
                    _count(ctx, "correlate_packs", len(made))
                if items and not all(await bus.publish_to(items)):
                    # All of it again later (what did reach JetStream is dropped there as a copy).
                    _count(ctx, "correlate_failed")
                    await queue.ack([], later=taken, delay=0.5)
                    continue
                await queue.ack(taken)
            except ClusterError as e:  # the client reconnects; what was taken comes again
                ctx.stats.last_error = str(e)
                await trio.sleep(0.5)


def log_refusals(ctx: Context, event: str, failures: Iterable[object], logged: set[str]) -> set[str]:
    """Log each refused file or rule (its name and reason) once, not at every
    reload: ``logged`` is what the previous call returned.  Returns the
    refusals of this load."""
    refused = {str(failure) for failure in failures}
    for failure in sorted(refused - logged):
        log_event(ctx.log, event, logging.WARNING, reason=failure)
    return refused


def _report_rules(ctx: Context, report: Any, logged: set[str], folders: list[Path]) -> set[str]:
    """Count what loaded and what was refused, each refusal logged once.
    ``rule_folders`` says which folders were read, a link by its target (a
    swap of it after the load is seen as a change and loaded next)."""
    refused = log_refusals(ctx, "rule.refused", report.failures, logged)
    ctx.stats.extra.update(rules_loaded=report.loaded, rules_refused=report.failed,
                           rule_folders="\n".join(str(Path(f).resolve()) for f in folders))
    log_event(ctx.log, "rules.loaded", loaded=report.loaded, refused=report.failed, files=report.files)
    return refused


def format_hits(hits: dict[str, int]) -> str:
    """The sentinel's hits per rule for its statistics (``rule_hits``), which
    ``immune-node rules list`` reads: ``id=count`` for each rule that hit."""
    return " ".join(f"{rule}={n}" for rule, n in sorted(hits.items()))


def parse_hits(text: str) -> dict[str, int]:
    """``format_hits`` read back."""
    hits = {}
    for item in text.split():
        rule, _, n = item.rpartition("=")
        if rule and n.isdigit():
            hits[rule] = int(n)
    return hits


def _costs(slowest: Any) -> str:
    """The slowest rules, for the status line: id, time in all and number of tests."""
    return ", ".join(f"{c.id} {c.seconds * 1000:.0f}ms/{c.tests}" for c in slowest)


async def correlate_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                          lateral_window: float = 120.0, correlate: str = CORRELATE, ingest: str = INGEST,
                          alerts: str = ALERTS, cluster: Any = None, rule_dirs: Sequence[Path] = ()) -> None:
    """Ties alerts into incidents across hosts; the one place alerts leave
    from (to the store, to the playbook).  In a cluster (``cluster``) it
    reads JetStream's correlation stream instead of ``correlate``, for the
    partitions whose leases this node holds (``hive.cluster._correlate``):
    partition 0 holds the host correlator's input, each partition the Sigma
    correlation hits of its groups, correlated by the rules in ``rule_dirs``
    (the sentinels').  A node that takes a partition over first replays what
    the last owner acknowledged (its outputs already left, so only the state
    is kept), then goes on from there."""
    from hive.correlate import HostCorrelator

    def fresh() -> HostCorrelator:
        return HostCorrelator(clock=trio.current_time, lateral_window=lateral_window)

    hosts = fresh()
    inbox = None if cluster else await ctx.bind(ctx.socket(zmq.PULL, codec=internal_codec(), rcvhwm=HOP_HWM),
                                                correlate)
    store = await trio.to_thread.run_sync(lambda: Store(path, readonly=True))  # may wait on a server
    to_store = to_playbook = None
    if cluster is None:
        to_store = ctx.socket(zmq.PUSH, connect=ingest, codec=internal_codec(), topic=f"{ctx.name}.alerts")
        to_playbook = ctx.socket(zmq.PUSH, connect=alerts, codec=internal_codec(), sndhwm=10000, topic="")

    def refresh_addresses() -> None:
        for agent, addresses in store.addresses():
            hosts.set_addresses(agent, addresses)

    await trio.to_thread.run_sync(refresh_addresses)
    # Alerts published lately, so that one an incident takes in afterwards
    # (the incident links earlier alerts on its hosts) is filed under it too.
    recent: collections.OrderedDict[str, wire.Alert] = collections.OrderedDict()

    outbox: list[tuple[str, bytes, str]] = []
    """In a cluster: records and alerts for JetStream, published before the input is acknowledged."""
    out_codec = internal_codec()

    async def record(msg: Any) -> None:
        if cluster is None:
            await to_store.send(msg)
            return
        from .cluster._bus import RECORDS_SUBJECT

        # An alert again with its incident set is a new record, not a copy.
        key = (f"alert/{msg.id}/{msg.incident}" if isinstance(msg, wire.Alert)
               else f"repeat/{msg.alert}/{msg.time}/{msg.count}" if isinstance(msg, Repeat) else "")
        outbox.append((RECORDS_SUBJECT, out_codec.encode(msg), key))

    def to_respond(alert: wire.Alert) -> None:
        if cluster is None:
            if not to_playbook.try_send(alert):
                _count(ctx, "playbook_skipped")
            return
        from .cluster._bus import ALERTS_SUBJECT

        outbox.append((ALERTS_SUBJECT, out_codec.encode(alert), f"alert/{alert.id}"))

    async def publish(alerts: list[wire.Alert | Repeat]) -> None:
        for alert in alerts:
            await record(alert)
            if isinstance(alert, Repeat):
                continue  # counted on its alert; the playbook acted on that one already
            recent[alert.id] = alert
            if len(recent) > _RECENT_ALERTS:
                recent.popitem(last=False)
            to_respond(alert)
        for incident in hosts.changed():
            await record(IncidentUpdate(incident=incident))
            for alert_id in incident.alerts:
                earlier = recent.get(alert_id)
                if earlier is not None and earlier.incident != incident.id:
                    earlier.incident = incident.id
                    await record(earlier)

    def take(msgs: Iterable[Any], replay: bool = False) -> list[wire.Alert | Repeat]:
        out: list[wire.Alert | Repeat] = []
        for msg in msgs:
            if isinstance(msg, Ingest):
                for event in msg.events:
                    out.extend(hosts.observe(event))
            elif isinstance(msg, wire.Alert):
                msg.incident = hosts.observe_alert(msg)
                out.append(msg)
            elif isinstance(msg, Repeat):
                out.append(msg)
                _count(ctx, "repeats")
        if not replay:
            _count(ctx, "alerts", sum(isinstance(m, wire.Alert) for m in out))
        return out

    loader: Any = None
    """In a cluster: the Sigma rules the partitions' engines use (``loader.rules``)."""
    rules_version = 0

    async def housekeeping() -> None:
        nonlocal rules_version
        while True:
            await trio.sleep(1.0)
            if loader is not None and loader.changed():
                try:
                    loader.install(await trio.to_thread.run_sync(loader.prepare, *rule_dirs))
                    rules_version += 1
                except Exception as e:  # a broken rule folder keeps the rules we have
                    log_event(ctx.log, "rules.reload_failed", logging.ERROR, reason=str(e))
            hosts.expire()
            try:
                await trio.to_thread.run_sync(refresh_addresses)
            except StoreError as e:
                ctx.stats.last_error = str(e)
            await publish([])

    def sigma_engine() -> Any:
        from hive.sigma import RuleEngine

        engine = RuleEngine(clock=time.time, partitioned=True)
        engine.install(loader.rules)
        return engine

    async def owned(bus: Any, p: int) -> None:
        """Correlate partition ``p``: rebuild, then follow."""
        from .cluster._bus import CORRELATE_STREAM, CORRELATE_SUBJECT, DUPLICATE_WINDOW, ClusterError
        from .cluster._correlate import HOST_PARTITION, Seen, correlate_id, correlate_partition, take_correlated

        nonlocal hosts
        codec = internal_codec()
        subject, durable = f"{CORRELATE_SUBJECT}.{p}", f"correlate-{p}"
        host = p == HOST_PARTITION

        def decoded(data: list[bytes]) -> list[Any]:
            got = take_correlated(codec, data, seen, trio.current_time())
            for key, n in (("undecodable", got.undecodable), ("bad_packs", got.refused), ("copies", got.copies)):
                if n:
                    _count(ctx, key, n)
            return got.msgs

        def correlated(sigma: Any, msgs: list[Any]) -> tuple[list[Any], list[wire.Alert | Repeat]]:
            """Sigma hits into their windows: what is left for the host
            correlator, and the Sigma correlations' alerts."""
            rest: list[Any] = []
            found: list[wire.Alert | Repeat] = []
            for msg in msgs:
                if isinstance(msg, SigmaHit):
                    out = sigma.correlate(msg)  # its decoder checked its types
                    if out is None:
                        _count(ctx, "unknown_correlation")  # its rule is not (or no longer) loaded here, or not that rule's group
                    else:
                        found.extend(out)
                elif host:
                    rest.append(msg)
                else:
                    _count(ctx, "misrouted")
            return rest, found

        while True:
            try:
                queue = await bus.consumer(CORRELATE_STREAM, subject, durable)
                sigma, version = sigma_engine(), rules_version
                seen = Seen(DUPLICATE_WINDOW)  # rebuilt by the replay as the state is
                if host:
                    hosts = fresh()
                    await trio.to_thread.run_sync(refresh_addresses)
                replayed = 0
                async for chunk in bus.replay(CORRELATE_STREAM, subject, await bus.ack_floor(CORRELATE_STREAM,
                                                                                             durable)):
                    rest, _ = correlated(sigma, decoded(chunk))
                    take(rest, replay=True)
                    replayed += len(chunk)
                # The last owner published these.
                sigma.routed()
                if host:
                    hosts.changed()
                    outbox.clear()
                log_event(ctx.log, "correlate.rebuilt", partition=p, replayed=replayed)
                _count(ctx, "replayed", replayed)
                ticked = trio.current_time()
                while True:
                    taken = await queue.fetch(256, timeout=1.0)
                    msgs = decoded([d.data for d in taken])
                    _count(ctx, "sigma_hits", sum(isinstance(m, SigmaHit) for m in msgs))
                    rest, found = correlated(sigma, msgs)
                    if host and taken:
                        await publish(take(rest))
                    if version != rules_version:
                        sigma.install(loader.rules)  # windows start over, as in a sentinel
                        version = rules_version
                    if trio.current_time() - ticked >= 1.0:
                        ticked = trio.current_time()
                        found.extend(sigma.tick())
                    _count(ctx, "sigma_alerts", sum(isinstance(a, wire.Alert) for a in found))
                    # Sigma correlations' alerts go to the host partition as the
                    # sentinels' do (incidents, records, playbooks); their hits
                    # to the partitions of the correlations reading them.
                    items = [(f"{CORRELATE_SUBJECT}.{correlate_partition(m, cluster.correlate_partitions)}",
                              codec.encode(m), correlate_id(m)) for m in [*found, *sigma.routed()]]
                    if host:
                        items += outbox
                        outbox.clear()
                    if items and not all(await bus.publish_to(items)):
                        # Taken again by this owner or the next (copies are dropped by their ids).
                        await queue.ack([], later=taken, delay=0.5)
                        raise ClusterError("records or alerts not all published")
                    await queue.ack(taken)
            except (ClusterError, StoreError) as e:
                ctx.stats.last_error = str(e)
                await trio.sleep(0.5)

    async def clustered() -> None:
        from hive.sigma import RuleEngine

        from .cluster._bus import open_bus
        from .cluster._correlate import HOST_PARTITION
        from .cluster._keeper import LeaseKeeper

        nonlocal loader
        engine = RuleEngine()
        engine.install(await trio.to_thread.run_sync(engine.prepare, *rule_dirs))
        ctx.stats.extra["correlations"] = len(engine.rules.correlations)
        loader = engine

        async with open_bus(cluster, "correlate") as bus, trio.open_nursery() as nursery:
            scopes: dict[int, trio.CancelScope] = {}

            async def run(p: int) -> None:
                with trio.CancelScope() as scope:
                    scopes[p] = scope
                    await owned(bus, p)

            async def on_change(gained: set[int], lost: set[int]) -> None:
                nonlocal hosts
                for p in lost:
                    if p in scopes:
                        scopes.pop(p).cancel()
                        if p == HOST_PARTITION:
                            hosts = fresh()  # another node owns this state now
                for p in gained:
                    nursery.start_soon(run, p)
                ctx.stats.extra["partitions"] = " ".join(map(str, sorted(keeper.table.owned)))

            keeper = LeaseKeeper(bus, "correlate", cluster.node, cluster.correlate_partitions, cluster.lease,
                                 on_change, ctx.log, detail=cluster.role)
            await keeper.run()

    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(housekeeping)
            if cluster is not None:
                await clustered()
            assert inbox is not None
            while True:
                await publish(take(await inbox.recv(max_bytes=BURST_BYTES)))
    finally:
        store.close()
