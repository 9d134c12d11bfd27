"""The hive's backbone actors: store, registry, router, enroll.

Each is a thin shell: sockets in, a plain object (``Store``) does the work,
sockets out.  Endpoints between them are inproc, named here once.

An inproc connection does not survive a restart of the socket it connects
to, so every inproc endpoint is bound by the actor that starts earlier in
the hive's rest_for_one tree (store, registry, zap, router, enroll,
playbook, correlate, sentinel) and connected by later ones: a restart of
the binder restarts everyone after it, who connect again.  The hops to the
detection processes are ipc, which reconnects by itself.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Codec, Context, Duplex, KeyPair, curve_server, log_event

from ._messages import AgentSeen, Deliver, IncidentUpdate, Ingest, InternalMessage, Result, Stored
from ._store import Store, StoreError

INGEST = "inproc://hive.ingest"
"""router, registry -> store (binds): batches to write."""
STORED = "inproc://hive.stored"
"""store (binds) -> router: what became of each batch (for the acks)."""
SEEN = "inproc://hive.seen"
"""router -> registry (binds): signs of life."""
DETECT = "inproc://hive.detect"
"""store -> sentinel (binds): events as stored, once each."""
DELIVER = "inproc://hive.deliver"
"""playbook -> router (binds): commands for agents."""
RESULTS = "inproc://hive.results"
"""router (binds) -> playbook: results of commands."""

ENROLL_DOMAIN = b"enroll"

def internal_codec() -> Codec:
    return Codec(InternalMessage)


# -- store ---------------------------------------------------------------------------


async def store_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                      retention_days: float = 30.0, retention_mb: int = 10240,
                      ingest: tuple[str, ...] = (INGEST,), detect: str = DETECT) -> None:
    """Writes batches in group commits (all that arrived while the previous
    commit ran), reports each outcome to the router, and passes stored
    events on to detection (at ``detect``) exactly once.  It takes writes on
    every endpoint of ``ingest`` (inproc for its siblings, ipc for actors in
    child processes)."""
    store = Store(path, checkpoint_by_hand=True)
    checkpointer = Store(path)
    inbox = ctx.socket(zmq.PULL, codec=internal_codec(), rcvhwm=2000)
    for endpoint in ingest:
        inbox.bind(endpoint)
    acks = ctx.socket(zmq.PUSH, bind=STORED, codec=internal_codec(), topic=f"{ctx.name}.acks")
    detect_out = ctx.socket(zmq.PUSH, connect=detect, codec=internal_codec(), sndhwm=2000)
    ctx.stats.extra.update(events=0, batches=0, duplicates=0, gaps=0, detect_skipped=0, alerts=0)
    lags: collections.deque[tuple[float, float]] = collections.deque(maxlen=50_000)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_retention, ctx, store, retention_days, retention_mb)
            nursery.start_soon(_report_lag, ctx, lags)
            nursery.start_soon(_checkpoint, ctx, checkpointer)
            while True:
                msgs = await inbox.recv(4096)
                batches = [m for m in msgs if isinstance(m, Ingest)]
                alerts = [m for m in msgs if isinstance(m, wire.Alert)]
                incidents = [m.incident for m in msgs if isinstance(m, IncidentUpdate)]
                if not (batches or alerts or incidents):
                    continue
                try:
                    outcomes = await trio.to_thread.run_sync(store.ingest, batches, alerts, incidents)
                except StoreError as e:
                    # Not acknowledged, so the agents still hold these batches
                    # and will send them again; nothing accepted is lost.
                    ctx.stats.last_error = str(e)
                    log_event(ctx.log, "store.write_failed", logging.ERROR, reason=str(e), batches=len(batches),
                              alerts=len(alerts))
                    await trio.sleep(1.0)
                    continue
                ctx.stats.extra["alerts"] = int(ctx.stats.extra["alerts"]) + len(alerts)
                now_ns, now = time.time_ns(), trio.current_time()
                for b in batches:
                    # A sample of events: from their creation on the agent to our commit.
                    lags.extend((now, (now_ns - e.time) / 1e6) for e in b.events[::16] if e.time)
                await _after_commit(ctx, batches, outcomes, acks, detect_out)
    finally:
        store.close()
        checkpointer.close()


async def _checkpoint(ctx: Context, store: Store) -> None:
    while True:
        await trio.sleep(0.5)
        try:
            await trio.to_thread.run_sync(store.checkpoint)
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


async def _after_commit(ctx: Context, batches: list[Ingest], outcomes: list[Stored], acks: Any, detect: Any) -> None:
    st = ctx.stats.extra
    stored_keys = {(o.agent, o.stream, o.seq) for o in outcomes if o.outcome == "stored"}
    for o in outcomes:
        if o.outcome == "duplicate":
            st["duplicates"] = int(st["duplicates"]) + 1
        elif o.outcome == "gap":
            st["gaps"] = int(st["gaps"]) + 1
        await acks.send(o)
    for b in batches:
        if b.seq and (b.agent, b.stream, b.seq) not in stored_keys:
            continue
        st["events"] = int(st["events"]) + len(b.events)
        st["batches"] = int(st["batches"]) + 1
        if not detect.try_send(b):
            # Detection is behind: the events are stored, say what it missed.
            st["detect_skipped"] = int(st["detect_skipped"]) + len(b.events)


async def _retention(ctx: Context, store: Store, days: float, mb: int) -> None:
    while True:
        await trio.sleep(60)
        try:
            n = await trio.to_thread.run_sync(lambda: store.retain(max_age=days * 86400, max_bytes=mb << 20))
        except StoreError as e:
            log_event(ctx.log, "store.retention_failed", logging.ERROR, reason=str(e))
            continue
        if n:
            log_event(ctx.log, "store.retention", deleted=n)


# -- registry -------------------------------------------------------------------------


async def registry_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                         heartbeat_timeout: float = 30.0) -> None:
    """Keeps the agents table current; an agent that goes silent is marked
    offline, and that (and its return) is itself an event."""
    store = Store(path)
    inbox = ctx.socket(zmq.PULL, bind=SEEN, codec=internal_codec())
    notices = ctx.socket(zmq.PUSH, connect=INGEST, codec=internal_codec())
    last_seen: dict[str, float] = {}
    online: set[str] = {a.id for a in store.agents() if a.online}
    for a in store.agents():
        if a.online and a.last_seen:
            # Give agents that were online before a restart the full timeout.
            last_seen[a.id] = time.time()
    task_status.started()

    async def notice(agent: str, what: str, detail: str) -> None:
        log_event(ctx.log, f"agent.{what.removeprefix('agent_')}", agent=agent, detail=detail)
        await notices.send(Ingest(agent=agent, events=[wire.Notice(time=time.time_ns(), what=what, detail=detail)]))

    async def sweep() -> None:
        while True:
            await trio.sleep(min(1.0, heartbeat_timeout / 4))
            now = time.time()
            for agent in [a for a in online if now - last_seen.get(a, 0) > heartbeat_timeout]:
                online.discard(agent)
                await trio.to_thread.run_sync(store.mark_offline, agent)
                await notice(agent, "agent_offline", f"no message for {heartbeat_timeout:g}s")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sweep)
            while True:
                for m in await inbox.recv():
                    if not isinstance(m, AgentSeen):
                        continue
                    when = m.time / 1e9
                    last_seen[m.agent] = when
                    came_back = await trio.to_thread.run_sync(
                        lambda: store.agent_seen(m.agent, when, hello=m.hello, heartbeat=m.heartbeat, address=m.address))
                    if m.agent not in online:
                        online.add(m.agent)
                        if came_back:
                            await notice(m.agent, "agent_online", m.address)
    finally:
        store.close()


# -- router ----------------------------------------------------------------------------


async def router_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                       keys: KeyPair, listen: str, max_frame: int = 16 << 20) -> None:
    """The agents' door: CURVE-authenticated ROUTER.  Refuses what it cannot
    trust (counted, logged), passes batches to the store, acks what the store
    wrote, carries commands out and results back."""
    store = Store(path, readonly=True)
    sock = ctx.socket(zmq.ROUTER, codec=Codec(wire.AgentMessage, max_size=max_frame))
    z = sock.zmq
    curve_server(z, keys)
    z.setsockopt(zmq.MAXMSGSIZE, 4 * max_frame)  # memory guard; max_frame itself is checked and counted
    z.setsockopt(zmq.ROUTER_MANDATORY, 0)
    z.setsockopt(zmq.RCVHWM, 1000)
    z.bind(listen)
    sock.copy = False
    agents = Duplex(sock)
    to_store = ctx.socket(zmq.PUSH, connect=INGEST, codec=internal_codec(), topic=f"{ctx.name}.ingest")
    to_registry = ctx.socket(zmq.PUSH, connect=SEEN, codec=internal_codec(), topic="")
    stored = ctx.socket(zmq.PULL, connect=STORED, codec=internal_codec(), topic="")
    deliver = ctx.socket(zmq.PULL, bind=DELIVER, codec=internal_codec(), topic="")
    results = ctx.socket(zmq.PUSH, bind=RESULTS, codec=internal_codec(), topic="", sndhwm=10000)
    ack_codec = Codec(wire.HiveMessage)
    idents: dict[str, bytes] = {}
    revoked: set[str] = store.revoked()
    seen_at: dict[str, float] = {}
    refused = ctx.stats.extra
    refused.update(unauthenticated=0, revoked=0, oversized=0, wrong_type=0)

    def refuse(why: str, agent: str, detail: str) -> None:
        refused[why] = int(refused.get(why, 0)) + 1
        log_event(ctx.log, "frame.refused", logging.WARNING, why=why, agent=agent or "?", detail=detail)

    async def inbound() -> None:
        while True:
            for frames in await agents.recv():
                if len(frames) != 2:
                    refuse("wrong_type", "", f"{len(frames) - 1} frames in one message")
                    continue
                ident, frame = frames[0].bytes, frames[1]
                agent = frame.get("User-Id") or ""
                if not agent:
                    refuse("unauthenticated", "", "no authenticated key")
                    continue
                if agent in revoked:
                    refuse("revoked", agent, "key revoked")
                    continue
                data = frame.bytes
                if len(data) > max_frame:
                    refuse("oversized", agent, f"{len(data)} bytes > {max_frame}")
                    continue
                msg = sock.decode(data)
                if msg is None:
                    continue  # counted and logged by the socket
                idents[agent] = ident
                now = time.time()
                if isinstance(msg, wire.EventBatch):
                    await to_store.send(Ingest(agent=agent, stream=msg.stream, seq=msg.seq, events=msg.events))
                    if now - seen_at.get(agent, 0) < 1.0:
                        continue
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                elif isinstance(msg, wire.Hello):
                    seen = AgentSeen(agent=agent, time=time.time_ns(), hello=msg,
                                     address=frame.get("Peer-Address") or "")
                elif isinstance(msg, wire.Heartbeat):
                    seen = AgentSeen(agent=agent, time=time.time_ns(), heartbeat=msg)
                else:
                    # Never blocks the agents' door: with the playbook restarting
                    # or far behind, the result is counted and dropped (the
                    # playbook closes that action as unanswered after its timeout).
                    if not results.try_send(Result(agent=agent, result=msg)):
                        refused["results_dropped"] = int(refused.get("results_dropped", 0)) + 1
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                seen_at[agent] = now
                await to_registry.send(seen)

    async def acks() -> None:
        while True:
            for o in await stored.recv():
                if isinstance(o, Stored) and o.agent in idents:
                    ack = wire.Ack(seq=o.seq, stream=o.stream, resend=o.outcome == "gap")
                    await agents.send([idents[o.agent], ack_codec.encode(ack)])

    async def commands() -> None:
        while True:
            for d in await deliver.recv():
                if not isinstance(d, Deliver):
                    continue
                ident = idents.get(d.agent)
                if ident is None:
                    log_event(ctx.log, "command.undeliverable", logging.WARNING, agent=d.agent, id=d.command.id)
                    continue
                await agents.send([ident, ack_codec.encode(d.command)])

    async def watch_revocations() -> None:
        nonlocal revoked
        while True:
            await trio.sleep(1.0)
            try:
                revoked = await trio.to_thread.run_sync(store.revoked)
            except StoreError as e:
                ctx.stats.last_error = str(e)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.pump)
            for fn in (inbound, acks, commands, watch_revocations):
                nursery.start_soon(fn)
            log_event(ctx.log, "router.listening", endpoint=listen)
            task_status.started()
    finally:
        store.close()


# -- enrollment --------------------------------------------------------------------------


async def enroll_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                       keys: KeyPair, listen: str) -> None:
    """The enrollment door: any CURVE key may connect (the channel is still
    encrypted and the agent pins our key from its token), but only a valid
    one-time token gets that key enrolled."""
    store = Store(path)
    sock = ctx.socket(zmq.ROUTER, codec=Codec(wire.Enroll, max_size=4096))
    curve_server(sock.zmq, keys, domain=ENROLL_DOMAIN)
    sock.zmq.setsockopt(zmq.MAXMSGSIZE, 65536)
    sock.zmq.bind(listen)
    sock.copy = False
    reply = Codec(wire.Enrolled)
    task_status.started()
    try:
        while True:
            for frames in await sock.recv_frames(64):
                if len(frames) != 3 or frames[1].bytes != b"":
                    continue  # REQ peers send [identity, "", body]
                ident, body = frames[0].bytes, frames[2]
                public = body.get("User-Id") or ""
                req = sock.decode(body.bytes)
                if req is None:
                    answer = wire.Enrolled(ok=False, detail="malformed enrollment request")
                else:
                    try:
                        await trio.to_thread.run_sync(store.redeem_token, req.token, req.agent, public)
                        answer = wire.Enrolled(ok=True, agent=req.agent)
                        log_event(ctx.log, "agent.enrolled", agent=req.agent, key=public)
                    except StoreError as e:
                        answer = wire.Enrolled(ok=False, detail=str(e))
                        log_event(ctx.log, "enroll.refused", logging.WARNING, agent=req.agent, reason=str(e),
                                  address=body.get("Peer-Address") or "")
                await sock.send_frames([ident, b"", reply.encode(answer)])
    finally:
        store.close()


def zap_authorizer(path: Path):
    """ZAP decisions for the hive: enrolled, unrevoked keys on the agent
    domain; any key on the enrollment domain (its user id is the key)."""
    store: Store | None = None

    def authorize(public: bytes, address: str, domain: str) -> str | None:
        nonlocal store
        if domain == ENROLL_DOMAIN.decode():
            return public.decode()
        if store is None:
            store = Store(path, readonly=True)
        return store.authorize(public.decode())

    return authorize

