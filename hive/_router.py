"""The router actor: the agents' door."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import trio
import zmq

import wire
from actors import Codec, Context, Door, Duplex, KeyPair, curve_server, log_event, watch_door

from ._actors import DEFAULT_MAX_FRAME, DELIVER, INGEST, RESULTS, SEEN, STORED, internal_codec
from ._fair import FairQueue
from ._messages import AgentSeen, Deliver, Ingest, Result, Stored
from ._registry import WireVersions
from ._fleet import Fleet
from ._store import Changes, Store, StoreError
from .cluster import _routing as routing
from .cluster._bus import COMMAND_PREFIX, INGEST_SUBJECT, RESULT_PREFIX, ClusterError, ClusterSpec, agent_subject, open_bus
from .cluster._ledger import AckLedger, Offer
from .cluster._leases import partition_of
from .cluster._pack import PACK_BYTES, PACK_WAIT, PAYLOAD_MARGIN, batch_id, packs

LEARN_AT_ONCE = 2000
"""Streams new to a clustered router whose stored marks one read asks for."""
PEER_HWM = 2
"""Frames ZeroMQ queues per agent connection before it stops reading it, so
a connection holds at most (PEER_HWM + 1) x max_frame in the hive."""
STORE_WINDOW = 2
"""Frames' worth of bytes (of ``max_frame``) on their way to the store at
once (see ``FairQueue``): a commit's worth of the largest batches, or
dozens of ordinary ones."""
AGENT_BUDGET = 2
"""Frames' worth of bytes one agent may have queued here or on their way to
the store; more from it are dropped until the store caught up (a relay
sends them again): 8 MiB at the default, a relay's window of 64 batches of
256 events of 500 bytes."""
QUEUE_LIMIT = 8
"""Frames' worth of bytes queued here for all agents, past which the router
stops reading (ZeroMQ then holds them, at most PEER_HWM per connection)."""
FLEET_POLL = 0.1
"""Seconds between looks at the store for pushed bundles and changed labels
(``immune-node policy push`` and ``agents label`` write there, also with
no hive running): a stat of its files, and a read of one row when they
changed, so a push reaches online agents within this plus the sending."""

PUBLISHING = 4
"""Publishes to JetStream a clustered router has on their way at once: while
they are, batches gather for the next, so packs grow with the load."""

CURVE_OVERHEAD = 64
"""ZeroMQ applies MAXMSGSIZE to the encrypted frame: a CURVE MESSAGE command
is 33 bytes longer than the frame it carries."""


async def router_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                       keys: KeyPair, listen: str, max_frame: int = DEFAULT_MAX_FRAME,
                       cluster: ClusterSpec | None = None) -> None:
    """The agents' door: CURVE-authenticated ROUTER.  Refuses what it cannot
    trust (counted, logged a few per interval), passes batches to the store,
    acks what the store wrote, carries commands out and results back.

    Memory is bounded: ZeroMQ drops a connection that sends a frame above
    ``max_frame`` (MAXMSGSIZE) before it is buffered, queues at most
    ``PEER_HWM`` frames per connection, the inbound queue holds at most four
    frames' worth of bytes, the agents' batches here ``QUEUE_LIMIT`` and on
    their way to the store ``STORE_WINDOW``, shared among the agents in turn
    (``FairQueue``).

    In a cluster (``cluster`` given) batches go to JetStream instead of the
    store, and an agent is acknowledged once JetStream holds them (see
    ``hive.cluster.AckLedger``); the store writers of the cluster store them."""
    deliver = await ctx.bind(ctx.socket(zmq.PULL, codec=internal_codec(), topic=""), DELIVER)
    results = await ctx.bind(ctx.socket(zmq.PUSH, codec=internal_codec(), topic="", sndhwm=10000), RESULTS)
    store = await trio.to_thread.run_sync(lambda: Store(path, readonly=True))  # may wait on a server
    sock = ctx.socket(zmq.ROUTER, codec=Codec(wire.AgentMessage, max_size=max_frame))
    z = sock.zmq
    curve_server(z, keys)
    z.setsockopt(zmq.MAXMSGSIZE, max_frame + CURVE_OVERHEAD)
    z.setsockopt(zmq.ROUTER_MANDATORY, 0)
    z.setsockopt(zmq.RCVHWM, PEER_HWM)
    sock.copy = False
    agents = Duplex(sock, max_in_bytes=4 * max_frame)
    to_store = ctx.socket(zmq.PUSH, connect=INGEST, codec=internal_codec(), topic=f"{ctx.name}.ingest",
                          sndhwm=1000)  # the window bounds the bytes
    to_registry = ctx.socket(zmq.PUSH, connect=SEEN, codec=internal_codec(), topic="")
    stored = ctx.socket(zmq.PULL, connect=STORED, codec=internal_codec(), topic="")
    ack_codec = Codec(wire.HiveMessage)
    idents: dict[str, bytes] = {}
    fair = FairQueue(window=STORE_WINDOW * max_frame, agent_budget=AGENT_BUDGET * max_frame)
    work, room = trio.lowlevel.ParkingLot(), trio.lowlevel.ParkingLot()
    ingest_codec = internal_codec()
    revoked: set[str] = await trio.to_thread.run_sync(store.revoked)
    # The pid and wire version each agent's Hello gave (from the store until
    # it says hello again): no kill of it, and no command it cannot read,
    # leaves this door, however fast it follows.
    known = await trio.to_thread.run_sync(store.agents)
    agent_pids: dict[str, int] = {a.id: a.pid for a in known if a.pid}
    agent_wires: dict[str, int] = {a.id: a.wire_version for a in known if a.wire_version is not None}
    seen_at: dict[str, float] = {}
    counts = ctx.stats.extra
    counts.update(revoked=0, wrong_type=0, results_dropped=0, commands_refused=0, over_budget=0, bundles_sent=0,
                  wire_refused=0)
    fleet = Fleet()
    ledger = AckLedger()
    unknown: dict[tuple[str, str], list[tuple[wire.EventBatch, int]]] = {}
    """Streams whose stored mark the learner is reading, with the batches (and
    their sizes) that came meanwhile; ``unknown_bytes`` in all."""
    unknown_bytes = 0
    learning = trio.lowlevel.ParkingLot()
    remote = routing.Origins()
    bus: Any = None

    def refused(why: str, agent: str, detail: str) -> None:
        ctx.throttle.event(why, "frame.refused", why=why, agent=agent or "?", detail=detail)

    def refuse(why: str, agent: str, detail: str) -> None:
        counts[why] = int(counts.get(why, 0)) + 1
        refused(why, agent, detail)

    door = Door(counts, lambda why, detail: refused(why, "", detail))

    async def inbound() -> None:
        while True:
            while fair.queued_bytes >= QUEUE_LIMIT * max_frame:
                await room.park()
            for frames in await agents.recv():
                if len(frames) != 2:
                    refuse("wrong_type", "", f"{len(frames) - 1} frames in one message")
                    continue
                ident, frame = frames[0].bytes, frames[1]
                if ident not in door.idents:
                    door.spoke(frame.get(zmq.SRCFD), ident)
                agent = frame.get("User-Id") or ""
                if agent in revoked:
                    refuse("revoked", agent, "key revoked")
                    continue
                data = frame.bytes
                if len(data) > max_frame:  # within the CURVE overhead above it
                    refuse("oversized", agent, f"{len(data)} bytes > {max_frame}")
                    continue
                msg = sock.decode(data)
                if msg is None:
                    continue  # counted and logged by the socket
                idents[agent] = ident
                now = time.time()
                if isinstance(msg, (wire.Hello, wire.EventBatch)):
                    if isinstance(msg, wire.Hello):
                        agent_wires[agent] = msg.wire_version
                    unspoken = WireVersions.unspoken(agent_wires.get(agent))
                    if unspoken:
                        # Nothing taken from it (its events may not even be
                        # ones this hive can read); it keeps them and says why.
                        counts["wire_refused"] = int(counts["wire_refused"]) + 1
                        ctx.throttle.event("wire", "agent.refused", logging.WARNING, agent=agent,
                                           reason=unspoken)
                        stream = msg.stream if isinstance(msg, wire.EventBatch) else ""
                        await agents.send([ident, ack_codec.encode(wire.Ack(seq=0, stream=stream, refused=unspoken))])
                        if isinstance(msg, wire.EventBatch):
                            continue
                if isinstance(msg, wire.EventBatch) and bus is not None:
                    await to_cluster(agent, msg, len(data))
                    if now - seen_at.get(agent, 0) < 1.0:
                        continue
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                elif isinstance(msg, wire.EventBatch):
                    ingest = ingest_codec.encode(Ingest(agent=agent, stream=msg.stream, seq=msg.seq,
                                                        events=msg.events))
                    if not fair.offer(agent, ingest, len(ingest)):
                        # Not taken, so not acknowledged: the agent sends it again.
                        counts["over_budget"] = int(counts["over_budget"]) + 1
                        continue
                    work.unpark_all()
                    if now - seen_at.get(agent, 0) < 1.0:
                        continue
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                elif isinstance(msg, wire.Hello):
                    agent_pids[agent] = msg.pid
                    fleet.hello(agent, msg.bundle_version, ident)
                    await send_bundle(agent)
                    seen = AgentSeen(agent=agent, time=time.time_ns(), hello=msg,
                                     address=frame.get("Peer-Address") or "")
                elif isinstance(msg, wire.BundleStatus):
                    fleet.status(agent, msg)
                    log_event(ctx.log, "bundle.applied" if msg.ok else "bundle.refused",
                              logging.INFO if msg.ok else logging.WARNING, agent=agent, version=msg.version,
                              running=msg.running, detail=msg.detail)
                    seen = AgentSeen(agent=agent, time=time.time_ns(), bundle=msg)
                elif isinstance(msg, wire.Heartbeat):
                    seen = AgentSeen(agent=agent, time=time.time_ns(), heartbeat=msg)
                else:
                    origin = remote.answered(msg.command) if bus is not None else None
                    if origin is not None:  # a cluster's playbooks take answers over NATS, ours too
                        await send_back(origin, agent, msg)
                    else:
                        answer(Result(agent=agent, result=msg))
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                seen_at[agent] = now
                await to_registry.send(seen)

    async def send_ack(agent: str, stream: str, seq: int, resend: bool = False) -> None:
        if agent in idents:
            await agents.send([idents[agent], ack_codec.encode(wire.Ack(seq=seq, stream=stream, resend=resend))])

    async def learn(key: tuple[str, str]) -> bool:
        """Read what the store holds of ``key``; ack the agent if that moved it."""
        try:
            mark = await trio.to_thread.run_sync(store.stream_mark, *key)
        except StoreError as e:
            ctx.stats.last_error = str(e)
            return False
        moved = ledger.learn(key, mark)
        if moved is not None:
            await send_ack(key[0], key[1], moved)
        return True

    async def to_cluster(agent: str, msg: wire.EventBatch, size: int) -> None:
        nonlocal unknown_bytes
        key = (agent, msg.stream)
        waiting = unknown.get(key)
        if waiting is None:
            offer = ledger.offer(key, msg.seq)  # (it takes note of what it says to publish: once)
            if offer is not Offer.UNKNOWN:
                await offer_known(key, msg, offer)
                return
        # Its stored mark is being read: kept, in order, for when it is known;
        # past the bound not taken (the agent sends it again).
        if unknown_bytes + size > QUEUE_LIMIT * max_frame:
            counts["over_budget"] = int(counts["over_budget"]) + 1
            return
        unknown_bytes += size
        if waiting is None:
            unknown[key] = [(msg, size)]
            learning.unpark_all()
        else:
            waiting.append((msg, size))

    async def learner() -> None:
        """Reads the stored marks of streams new to this router in bulk, off
        the agents' door: with thousands of agents arriving at once, a read
        each in turn held every agent's batches (and Hellos) until all were done."""
        nonlocal unknown_bytes
        while True:
            if not unknown:
                await learning.park()
                continue
            keys = list(unknown)[:LEARN_AT_ONCE]
            try:
                marks = await trio.to_thread.run_sync(store.stream_marks_of, keys)
            except StoreError as e:
                ctx.stats.last_error = str(e)
                for key in keys:  # not taken: the agents send them again
                    unknown_bytes -= sum(size for _, size in unknown.pop(key))
                await trio.sleep(0.5)
                continue
            for key in keys:
                ledger.learn(key, marks.get(key, 0))
                held = unknown[key]
                i = 0
                while i < len(held):  # batches that come meanwhile join the list
                    msg, size = held[i]
                    unknown_bytes -= size
                    await offer_known(key, msg, ledger.offer(key, msg.seq))
                    i += 1
                del unknown[key]

    async def offer_known(key: tuple[str, str], msg: wire.EventBatch, offer: Offer) -> None:
        agent = key[0]
        if offer is Offer.GAP:
            if not await learn(key):
                return  # not taken: the agent sends it again
            offer = ledger.offer(key, msg.seq)
        if offer is Offer.ACK:
            await send_ack(agent, msg.stream, ledger.acked(key))
        elif offer is Offer.GAP:
            counts["gaps"] = int(counts.get("gaps", 0)) + 1
            await send_ack(agent, msg.stream, ledger.acked(key), resend=True)
        elif offer is Offer.PUBLISH:
            data = ingest_codec.encode(Ingest(agent=agent, stream=msg.stream, seq=msg.seq, events=msg.events))
            if len(data) > bus.max_payload - PAYLOAD_MARGIN:
                # JetStream would refuse it: not taken, and said why (the
                # agent sends it again; max_payload wants raising to max_frame).
                ledger.published(key, msg.seq, False)
                refuse("too_large_for_bus", agent, f"{len(data)} bytes > NATS max_payload {bus.max_payload} "
                       f"less {PAYLOAD_MARGIN}")
            elif fair.offer(agent, (key, msg.seq, data), len(data)):
                work.unpark_all()
            else:
                ledger.published(key, msg.seq, False)
                counts["over_budget"] = int(counts["over_budget"]) + 1

    async def to_jetstream() -> None:
        slots = trio.Semaphore(PUBLISHING)
        async with trio.open_nursery() as nursery:
            while True:
                if cluster.pack:
                    await slots.acquire()
                batches: list[tuple[str, Any]] = []
                while not batches:
                    while not fair.queued_bytes:
                        await work.park()
                    if cluster.pack:
                        # A moment for other agents' batches to join these in the same packs.
                        with trio.move_on_after(PACK_WAIT):
                            while fair.queued_bytes < PACK_BYTES:
                                await work.park()
                    batches = fair.take()
                    if not batches:  # the window is full: until a publish is answered
                        await work.park()
                room.unpark_all()
                # Publishes overlap; the fair queue's window bounds the bytes in flight.
                nursery.start_soon(publish, batches, slots if cluster.pack else None)

    async def publish(batches: list[tuple[str, Any]], slot: trio.Semaphore | None) -> None:
        # Each agent's batches in its partition: one writer stores them in order.
        items = [(f"{INGEST_SUBJECT}.{partition_of(agent, cluster.partitions)}", data, batch_id(*key, seq))
                 for agent, (key, seq, data) in batches]
        try:
            if slot is None:
                held = await bus.publish_to(items)
            else:
                held = await publish_packed(items)
        except ClusterError as e:
            ctx.stats.last_error = str(e)
            held = [False] * len(items)
        finally:
            if slot is not None:
                slot.release()
        counts["published"] = int(counts.get("published", 0)) + held.count(True)
        counts["publish_failed"] = int(counts.get("publish_failed", 0)) + held.count(False)
        for (agent, (key, seq, _)), ok in zip(batches, held):
            fair.answered(agent)
            moved = ledger.published(key, seq, ok)
            if moved is not None:
                await send_ack(agent, key[1], moved)
        work.unpark_all()

    async def publish_packed(items: list[tuple[str, bytes, str]]) -> list[bool]:
        """One message per partition (per ``PACK_BYTES``); whether each item's pack is held."""
        made, _ = packs(ingest_codec, items, limit=bus.max_payload)  # (none too large: refused when offered)
        ok = await bus.publish_to([(p.subject, p.payload, p.id) for p in made])
        held = [False] * len(items)
        for p, done in zip(made, ok):
            for i in p.members:
                held[i] = done
        counts["packs"] = int(counts.get("packs", 0)) + ok.count(True)
        return held

    async def send_bundle(agent: str) -> None:
        b = fleet.due(agent, agent_wires.get(agent))
        if b is not None and agent in idents:
            counts["bundles_sent"] = int(counts["bundles_sent"]) + 1
            log_event(ctx.log, "bundle.sent", agent=agent, version=b.version, name=b.name)
            await agents.send([idents[agent], ack_codec.encode(wire.PolicyBundle(version=b.version, signed=b.signed))])

    async def fleet_changes() -> None:
        changes = Changes(store)
        while True:
            try:
                if not changes.due():
                    await trio.sleep(FLEET_POLL)
                    continue
                serial = await trio.to_thread.run_sync(store.fleet_serial)
                if serial != fleet.serial:
                    fleet.latest, fleet.labels = await trio.to_thread.run_sync(
                        lambda: (store.bundles(latest=True), store.labels()))
                    fleet.serial = serial
                    for agent in list(idents):
                        await send_bundle(agent)
            except StoreError as e:
                ctx.stats.last_error = str(e)
            await trio.sleep(FLEET_POLL)

    def answer(result: Result) -> None:
        # Never blocks the agents' door: with the playbook restarting or far
        # behind, the result is counted and dropped (the playbook closes
        # that action as unanswered after its timeout).
        if not results.try_send(result):
            counts["results_dropped"] = int(counts["results_dropped"]) + 1

    async def to_the_store() -> None:
        while True:
            batches = fair.take()
            if not batches:
                await work.park()
                continue
            room.unpark_all()
            await to_store.send_many([[data] for _, data in batches])

    async def acks() -> None:
        while True:
            for o in await stored.recv():
                if not isinstance(o, Stored):
                    continue
                fair.answered(o.agent)
                work.unpark_all()
                if o.outcome != "failed" and o.agent in idents:
                    ack = wire.Ack(seq=o.seq, stream=o.stream, resend=o.outcome == "gap")
                    await agents.send([idents[o.agent], ack_codec.encode(ack)])

    async def commands() -> None:
        while True:
            for d in await deliver.recv():
                if not isinstance(d, Deliver):
                    continue
                if d.agent not in idents and bus is not None:
                    # Not ours: to the router that holds it, if any (a command is not kept).
                    try:
                        await bus.send(agent_subject(d.agent), routing.encode(
                            routing.Routed(origin=cluster.node, agent=d.agent, command=d.command)))
                        counts["commands_routed"] = int(counts.get("commands_routed", 0)) + 1
                    except ClusterError as e:
                        ctx.stats.last_error = str(e)
                        log_event(ctx.log, "command.undeliverable", logging.WARNING, agent=d.agent, id=d.command.id,
                                  reason=str(e))
                    continue
                await carry(d.agent, d.command, "")

    async def carry(agent: str, cmd: Any, origin: str) -> None:
        """Send ``cmd`` to ``agent`` (for ``origin``'s playbook, or ours if '')."""
        from hive.playbook import check_guardrails  # (hive.playbook imports this module)

        pid = agent_pids.get(agent)
        why = WireVersions.refusal(agent_wires.get(agent)) or check_guardrails(
            cmd.action, msgspec.structs.asdict(cmd), agent_pids=frozenset([pid] if pid else []))
        if why:
            counts["commands_refused"] = int(counts["commands_refused"]) + 1
            log_event(ctx.log, "command.refused", logging.WARNING, agent=agent, id=cmd.id, reason=why)
            refusal = wire.CommandResult(command=cmd.id, detail=why)
            if origin:
                await send_back(origin, agent, refusal)
            else:
                answer(Result(agent=agent, result=refusal))
            return
        ident = idents.get(agent)
        if ident is None:
            log_event(ctx.log, "command.undeliverable", logging.WARNING, agent=agent, id=cmd.id)
            return
        if origin:
            remote.sent(cmd.id, origin)
            counts["commands_carried"] = int(counts.get("commands_carried", 0)) + 1
        await agents.send([ident, ack_codec.encode(cmd)])

    async def send_back(origin: str, agent: str, result: wire.CommandResult) -> None:
        try:
            await bus.send(f"{RESULT_PREFIX}.{origin}", routing.encode(routing.Answered(agent=agent, result=result)))
        except ClusterError as e:
            ctx.stats.last_error = str(e)

    async def from_routers() -> None:
        """Commands the cluster's playbooks route to agents: those we hold go out."""
        held = await bus.subscribe(f"{COMMAND_PREFIX}.*")
        while True:
            for data in await _or_nothing(held.next_batch()):
                m = routing.decode(data)
                if isinstance(m, routing.Routed) and m.agent in idents:
                    await carry(m.agent, m.command, m.origin)

    async def _or_nothing(fetch: Any) -> list[bytes]:
        try:
            return await fetch
        except ClusterError as e:  # the client reconnects by itself; core NATS keeps nothing meanwhile
            ctx.stats.last_error = str(e)
            await trio.sleep(0.5)
            return []

    async def housekeeping() -> None:
        nonlocal revoked
        changes = Changes(store)
        while True:
            await trio.sleep(1.0)
            ctx.throttle.flush()
            if not changes.due():
                continue
            try:
                revoked = await trio.to_thread.run_sync(store.revoked)
            except StoreError as e:
                ctx.stats.last_error = str(e)
            for key in ledger.blocked():  # another router may have published the hole
                await learn(key)

    try:
        async with contextlib.AsyncExitStack() as stack:
            if cluster is not None:
                bus = await stack.enter_async_context(open_bus(cluster, "router"))
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(functools.partial(watch_door, z, door, syncs=ctx.runtime.zap_syncs))
            z.bind(listen)
            await nursery.start(agents.pump)
            for fn in (inbound, to_the_store if bus is None else to_jetstream, acks, commands, housekeeping,
                       fleet_changes, *([from_routers, learner] if bus is not None else [])):
                nursery.start_soon(fn)
            log_event(ctx.log, "router.listening", endpoint=listen, max_frame=max_frame)
            task_status.started()
    finally:
        store.close()
