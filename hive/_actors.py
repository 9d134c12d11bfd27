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
import functools
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import trio
import zmq

import wire
from actors import Codec, Context, Door, Duplex, KeyPair, curve_server, log_event, watch_door

from ._messages import AgentSeen, Deliver, IncidentUpdate, Ingest, InternalMessage, Result, Stored
from ._store import AgentRow, Ingested, Store, StoreError

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
    commit ran, up to ``COMMIT_BYTES``), reports each outcome to the router,
    and passes stored events on to detection (at ``detect``) exactly once.
    It takes writes on every endpoint of ``ingest`` (inproc for its
    siblings, ipc for actors in child processes).

    A batch SQLite refuses is replaced by a ``batch_refused`` notice and
    acknowledged (see ``Store.ingest``).  When nothing can be written (a
    full disk), nothing is acknowledged: the agents keep their batches and
    send them again, and the hive's own events, alerts and incidents wait
    here (up to ``RETRY_RECORDS``) for the next try."""
    store = Store(path, checkpoint_by_hand=True)
    inbox = ctx.socket(zmq.PULL, codec=internal_codec(), rcvhwm=STORE_HWM)
    for endpoint in ingest:
        inbox.bind(endpoint)
    acks = ctx.socket(zmq.PUSH, bind=STORED, codec=internal_codec(), topic=f"{ctx.name}.acks")
    detect_out = ctx.socket(zmq.PUSH, connect=detect, codec=internal_codec(), sndhwm=DETECT_HWM)
    st = ctx.stats.extra
    st.update(events=0, batches=0, duplicates=0, gaps=0, detect_skipped=0, alerts=0, refused_batches=0,
              refused_events=0, dropped_records=0, write_failures=0)
    lags: collections.deque[tuple[float, float]] = collections.deque(maxlen=50_000)
    waiting: list[Any] = []  # the hive's own records a failed commit did not write
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_retention, ctx, store, retention_days, retention_mb)
            nursery.start_soon(_report_lag, ctx, lags)
            nursery.start_soon(_checkpoint, ctx, store)
            while True:
                msgs = waiting + await inbox.recv(4096, max_bytes=COMMIT_BYTES)
                waiting = []
                batches = [m for m in msgs if isinstance(m, Ingest)]
                alerts = [m for m in msgs if isinstance(m, wire.Alert)]
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
                st["alerts"] = int(st["alerts"]) + len(alerts)
                now_ns, now = time.time_ns(), trio.current_time()
                for b in done.stored:
                    # A sample of events: from their creation on the agent to our commit.
                    lags.extend((now, (now_ns - e.time) / 1e6) for e in b.events[::16] if e.time)
                await _after_commit(ctx, done, acks, detect_out)
    finally:
        store.close()


STORE_HWM = 16
"""Messages queued for the store per sender (router, registry, correlate).
Counts, not bytes: with the router's own queue, at most 20 of the largest
batches wait (80 MiB at the default max_frame), while a commit still takes
thousands of events of ordinary batches."""
COMMIT_BYTES = 16 << 20
"""Bytes of messages taken into one group commit (decoded, about four times that)."""
DETECT_HWM = 128
"""Stored batches queued for the sentinel beyond its own queue: a commit's
batches leave in one burst, faster than ZeroMQ moves them out, so this
holds a few commits' worth.  When the sentinel is behind, the store skips
detection of a batch (counted) rather than wait."""
RETRY_RECORDS = 10_000
"""The hive's own events, alerts and incidents kept for the next try while
the disk refuses writes; older ones are dropped and counted."""


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


async def _after_commit(ctx: Context, done: Ingested, acks: Any, detect: Any) -> None:
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
        if not detect.try_send(b):
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


# -- registry -------------------------------------------------------------------------


async def registry_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                         heartbeat_timeout: float = 30.0, interval: float = 1.0) -> None:
    """Keeps the agents table current; an agent that goes silent is marked
    offline, and that (and its return) is itself an event.  Signs of life
    are gathered for ``interval`` seconds and written in one transaction
    for all agents; when the store cannot write (a full disk), they are kept,
    merged with newer ones, and written at the next try."""
    store = Store(path)
    inbox = ctx.socket(zmq.PULL, bind=SEEN, codec=internal_codec())
    notices = ctx.socket(zmq.PUSH, connect=INGEST, codec=internal_codec())
    presence = Presence(heartbeat_timeout, store.agents(), now=time.time())
    ctx.stats.extra.update(writes=0, store_errors=0)
    task_status.started()

    async def notice(agent: str, what: str, detail: str) -> None:
        log_event(ctx.log, f"agent.{what.removeprefix('agent_')}", agent=agent, detail=detail)
        await notices.send(Ingest(agent=agent, events=[wire.Notice(time=time.time_ns(), what=what, detail=detail)]))

    async def write() -> None:
        while True:
            await trio.sleep(interval)
            seen, gone = presence.due(time.time())
            if not (seen or gone):
                continue
            try:
                came_back = await trio.to_thread.run_sync(store.agents_seen, seen, gone)
            except StoreError as e:
                presence.retry(seen, gone)
                ctx.stats.extra["store_errors"] = int(ctx.stats.extra["store_errors"]) + 1
                ctx.stats.last_error = str(e)
                ctx.throttle.event("store_error", "registry.write_failed", logging.ERROR, reason=str(e),
                                   agents=len(seen) + len(gone))
                continue
            ctx.stats.extra["writes"] = int(ctx.stats.extra["writes"]) + 1
            for agent in gone:
                await notice(agent, "agent_offline", f"no message for {heartbeat_timeout:g}s")
            for m in seen:
                if m.agent in came_back:
                    await notice(m.agent, "agent_online", m.address)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            while True:
                for m in await inbox.recv():
                    if isinstance(m, AgentSeen):
                        presence.seen(m)
    finally:
        store.close()


class Presence:
    """Which agents are online, and what the registry has yet to write: the
    latest sign of life of each agent (merged: a Hello or a Heartbeat in an
    earlier one is kept), and the agents silent for longer than
    ``timeout`` seconds."""

    def __init__(self, timeout: float, rows: Iterable[AgentRow], now: float) -> None:
        self.timeout = timeout
        # Agents online before a restart get the full timeout.
        self.last_seen: dict[str, float] = {a.id: now for a in rows if a.online and a.last_seen}
        self.online: set[str] = set(self.last_seen)
        self.pending: dict[str, AgentSeen] = {}
        self.going: set[str] = set()

    def seen(self, m: AgentSeen) -> None:
        self.last_seen[m.agent] = m.time / 1e9
        self.going.discard(m.agent)
        self.pending[m.agent] = _merge(self.pending.get(m.agent), m)

    def due(self, now: float) -> tuple[list[AgentSeen], list[str]]:
        """What to write now: signs of life, and agents that went offline."""
        for agent in [a for a in self.online if now - self.last_seen.get(a, 0) > self.timeout]:
            self.online.discard(agent)
            self.going.add(agent)
        seen, self.pending = list(self.pending.values()), {}
        gone, self.going = sorted(self.going), set()
        self.online.update(m.agent for m in seen)
        return seen, gone

    def retry(self, seen: list[AgentSeen], gone: list[str]) -> None:
        """A write of ``due()``'s failed: write it with the next."""
        for m in seen:
            self.pending[m.agent] = _merge(m, self.pending.get(m.agent))
        self.going.update(a for a in gone if a not in self.pending)


def _merge(old: AgentSeen | None, new: AgentSeen | None) -> AgentSeen:
    """``new``, keeping what only ``old`` said (its Hello, Heartbeat, address)."""
    if old is None:
        return new
    if new is None:
        return old
    return AgentSeen(agent=new.agent, time=max(old.time, new.time), address=new.address or old.address,
                     hello=new.hello or old.hello, heartbeat=new.heartbeat or old.heartbeat)


# -- router ----------------------------------------------------------------------------


DEFAULT_MAX_FRAME = 4 << 20
"""The largest frame an agent may send: ``wire.MAX_BATCH`` (4096) events of
1 KiB each, the agent's default batch of 256 events of 16 KiB each (a
typical enriched event is about 420 bytes)."""
PEER_HWM = 2
"""Frames ZeroMQ queues per agent connection before it stops reading it, so
a connection holds at most (PEER_HWM + 1) x max_frame in the hive."""
STORE_SNDHWM = 4
"""Batches the router queues for the store beyond the store's own queue."""
AGENT_BUDGET = 2
"""Frames' worth of bytes (of ``max_frame``) of batches one agent may have
on their way to the store; more from it are dropped until the store caught
up (a relay sends them again): 8 MiB at the default, a relay's window of 64
batches of 256 events of 500 bytes."""
CURVE_OVERHEAD = 64
"""ZeroMQ applies MAXMSGSIZE to the encrypted frame: a CURVE MESSAGE command
is 33 bytes longer than the frame it carries."""


async def router_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                       keys: KeyPair, listen: str, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    """The agents' door: CURVE-authenticated ROUTER.  Refuses what it cannot
    trust (counted, logged a few per interval), passes batches to the store,
    acks what the store wrote, carries commands out and results back.

    Memory is bounded: ZeroMQ drops a connection that sends a frame above
    ``max_frame`` (MAXMSGSIZE) before it is buffered, queues at most
    ``PEER_HWM`` frames per connection, the inbound queue holds at most four
    frames' worth of bytes, and the store's queue a few dozen batches."""
    store = Store(path, readonly=True)
    sock = ctx.socket(zmq.ROUTER, codec=Codec(wire.AgentMessage, max_size=max_frame))
    z = sock.zmq
    curve_server(z, keys)
    z.setsockopt(zmq.MAXMSGSIZE, max_frame + CURVE_OVERHEAD)
    z.setsockopt(zmq.ROUTER_MANDATORY, 0)
    z.setsockopt(zmq.RCVHWM, PEER_HWM)
    sock.copy = False
    agents = Duplex(sock, max_in_bytes=4 * max_frame)
    to_store = ctx.socket(zmq.PUSH, connect=INGEST, codec=internal_codec(), topic=f"{ctx.name}.ingest",
                          sndhwm=STORE_SNDHWM)
    to_registry = ctx.socket(zmq.PUSH, connect=SEEN, codec=internal_codec(), topic="")
    stored = ctx.socket(zmq.PULL, connect=STORED, codec=internal_codec(), topic="")
    deliver = ctx.socket(zmq.PULL, bind=DELIVER, codec=internal_codec(), topic="")
    results = ctx.socket(zmq.PUSH, bind=RESULTS, codec=internal_codec(), topic="", sndhwm=10000)
    ack_codec = Codec(wire.HiveMessage)
    idents: dict[str, bytes] = {}
    # Bytes of each agent's batches on their way to the store, oldest first
    # (the store answers each in the order it got them): an agent (or a key
    # on many connections) cannot fill the store's queue and delay the others.
    in_flight: dict[str, collections.deque[int]] = {}
    budget = AGENT_BUDGET * max_frame
    revoked: set[str] = store.revoked()
    # The pid each agent's Hello gave (from the store until it says hello
    # again): no kill of it leaves this door, however fast it follows.
    agent_pids: dict[str, int] = {a.id: a.pid for a in store.agents() if a.pid}
    seen_at: dict[str, float] = {}
    counts = ctx.stats.extra
    counts.update(revoked=0, wrong_type=0, results_dropped=0, commands_refused=0, over_budget=0)

    def refused(why: str, agent: str, detail: str) -> None:
        ctx.throttle.event(why, "frame.refused", why=why, agent=agent or "?", detail=detail)

    def refuse(why: str, agent: str, detail: str) -> None:
        counts[why] = int(counts.get(why, 0)) + 1
        refused(why, agent, detail)

    door = Door(counts, lambda why, detail: refused(why, "", detail))

    async def inbound() -> None:
        while True:
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
                if isinstance(msg, wire.EventBatch):
                    queued = in_flight.setdefault(agent, collections.deque())
                    if sum(queued) >= budget:
                        # Not taken, so not acknowledged: the agent sends it again.
                        counts["over_budget"] = int(counts["over_budget"]) + 1
                        continue
                    queued.append(len(data))
                    await to_store.send(Ingest(agent=agent, stream=msg.stream, seq=msg.seq, events=msg.events))
                    if now - seen_at.get(agent, 0) < 1.0:
                        continue
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                elif isinstance(msg, wire.Hello):
                    agent_pids[agent] = msg.pid
                    seen = AgentSeen(agent=agent, time=time.time_ns(), hello=msg,
                                     address=frame.get("Peer-Address") or "")
                elif isinstance(msg, wire.Heartbeat):
                    seen = AgentSeen(agent=agent, time=time.time_ns(), heartbeat=msg)
                else:
                    answer(Result(agent=agent, result=msg))
                    seen = AgentSeen(agent=agent, time=time.time_ns())
                seen_at[agent] = now
                await to_registry.send(seen)

    def answer(result: Result) -> None:
        # Never blocks the agents' door: with the playbook restarting or far
        # behind, the result is counted and dropped (the playbook closes
        # that action as unanswered after its timeout).
        if not results.try_send(result):
            counts["results_dropped"] = int(counts["results_dropped"]) + 1

    async def acks() -> None:
        while True:
            for o in await stored.recv():
                if not isinstance(o, Stored):
                    continue
                queued = in_flight.get(o.agent)
                if queued:
                    queued.popleft()
                    if not queued:
                        del in_flight[o.agent]
                if o.outcome != "failed" and o.agent in idents:
                    ack = wire.Ack(seq=o.seq, stream=o.stream, resend=o.outcome == "gap")
                    await agents.send([idents[o.agent], ack_codec.encode(ack)])

    async def commands() -> None:
        from hive.playbook import check_guardrails  # (hive.playbook imports this module)

        while True:
            for d in await deliver.recv():
                if not isinstance(d, Deliver):
                    continue
                cmd = d.command
                pid = agent_pids.get(d.agent)
                why = check_guardrails(cmd.action, msgspec.structs.asdict(cmd),
                                       agent_pids=frozenset([pid] if pid else []))
                if why:
                    counts["commands_refused"] = int(counts["commands_refused"]) + 1
                    log_event(ctx.log, "command.refused", logging.WARNING, agent=d.agent, id=cmd.id, reason=why)
                    answer(Result(agent=d.agent, result=wire.CommandResult(command=cmd.id, detail=why)))
                    continue
                ident = idents.get(d.agent)
                if ident is None:
                    log_event(ctx.log, "command.undeliverable", logging.WARNING, agent=d.agent, id=cmd.id)
                    continue
                await agents.send([ident, ack_codec.encode(cmd)])

    async def housekeeping() -> None:
        nonlocal revoked
        while True:
            await trio.sleep(1.0)
            ctx.throttle.flush()
            try:
                revoked = await trio.to_thread.run_sync(store.revoked)
            except StoreError as e:
                ctx.stats.last_error = str(e)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(watch_door, z, door, syncs=ctx.runtime.zap_syncs))
            z.bind(listen)
            await nursery.start(agents.pump)
            for fn in (inbound, acks, commands, housekeeping):
                nursery.start_soon(fn)
            log_event(ctx.log, "router.listening", endpoint=listen, max_frame=max_frame)
            task_status.started()
    finally:
        store.close()


# -- enrollment --------------------------------------------------------------------------


ENROLL_MAX_FRAME = 4096
"""An enrollment request is a token and a name: a few hundred bytes."""


async def enroll_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path,
                       keys: KeyPair, listen: str) -> None:
    """The enrollment door: any CURVE key may connect (the channel is still
    encrypted and the agent pins our key from its token), but only a valid
    one-time token gets that key enrolled.  Refusals are counted and logged
    a few per interval, as at the router."""
    store = Store(path)
    sock = ctx.socket(zmq.ROUTER, codec=Codec(wire.Enroll, max_size=ENROLL_MAX_FRAME))
    z = sock.zmq
    curve_server(z, keys, domain=ENROLL_DOMAIN)
    z.setsockopt(zmq.MAXMSGSIZE, ENROLL_MAX_FRAME + CURVE_OVERHEAD)
    z.setsockopt(zmq.RCVHWM, PEER_HWM)
    sock.copy = False
    reply = Codec(wire.Enrolled)
    counts = ctx.stats.extra
    counts.update(enrolled=0, refused=0)
    door = Door(counts, lambda why, detail: ctx.throttle.event(why, "enroll.refused", why=why, detail=detail))

    async def serve() -> None:
        while True:
            for frames in await sock.recv_frames(64):
                if len(frames) != 3 or frames[1].bytes != b"":
                    continue  # REQ peers send [identity, "", body]
                ident, body = frames[0].bytes, frames[2]
                if ident not in door.idents:
                    door.spoke(body.get(zmq.SRCFD), ident)
                public = body.get("User-Id") or ""
                req = sock.decode(body.bytes)
                if req is None:
                    answer = wire.Enrolled(ok=False, detail="malformed enrollment request")
                else:
                    try:
                        await trio.to_thread.run_sync(store.redeem_token, req.token, req.agent, public)
                        answer = wire.Enrolled(ok=True, agent=req.agent)
                        counts["enrolled"] = int(counts["enrolled"]) + 1
                        log_event(ctx.log, "agent.enrolled", agent=req.agent, key=public)
                    except StoreError as e:
                        answer = wire.Enrolled(ok=False, detail=str(e))
                        counts["refused"] = int(counts["refused"]) + 1
                        ctx.throttle.event("token", "enroll.refused", why="token", agent=req.agent, reason=str(e),
                                           address=body.get("Peer-Address") or "")
                await sock.send_frames([ident, b"", reply.encode(answer)])

    async def flush_log() -> None:
        while True:
            await trio.sleep(1.0)
            ctx.throttle.flush()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(watch_door, z, door, syncs=ctx.runtime.zap_syncs))
            z.bind(listen)
            nursery.start_soon(serve)
            nursery.start_soon(flush_log)
            task_status.started()
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

