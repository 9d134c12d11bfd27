"""The relay actor: enrich what the sensor sees, spool it, deliver it to the
hive exactly once, and carry commands and their results.

A thin shell around three plain objects: :class:`ProcessTable` (enrichment),
:class:`Spool` (durability) and :class:`Delivery` (what to send, what acks
mean).  Its tasks:

* intake: PULL event batches from the sensor, enrich, fit into the wire's
  bounds (what the hive refuses would be resent for ever), pack into batches
  of at most ``batch`` events and ``wire.MAX_BATCH_BYTES`` (a larger frame
  could be above the hive's ``max_frame``), append to the spool, one fsync
  per burst (group commit), then count them accepted.  Hashing
  executables and waiting for the disk happen on worker threads: this trio
  thread also drains the sensor, and must never wait for a disk;
* sender: send what :class:`Delivery` says, wake on new data, acks and
  timeouts;
* inbound: acks to :class:`Delivery`, commands to the response executor
  (expired ones are answered as failed, never run);
* results: PULL command results from the executor, send them up;
* heartbeat: ``Heartbeat`` every ``heartbeat`` seconds while connected, and
  a retry of a failed spool sync;
* monitor: the uplink's connection events: ``Hello`` and a rewind after
  every handshake, a warning when the hive refuses our key;
* steer: with several hive endpoints, what :class:`Failover` decides: move
  the uplink to the next node when the current one stays unreachable, probe
  the preferred one while on another, move back when it answers.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

import wire
from actors import Codec, Context, Duplex, KeyPair, Socket, Statistics, check_key, curve_client, log_event

from ._delivery import Delivery
from ._errors import AgentError, SpoolError
from ._failover import Failover
from ._host import hello
from ._proctable import ENRICHED, ProcessTable
from ._spool import DEFAULT_MAX_BYTES, Packed, Spool

EVENTS_ENDPOINT = "inproc://agent.events"
COMMANDS_ENDPOINT = "inproc://agent.commands"
RESULTS_ENDPOINT = "inproc://agent.results"
FLEET_ENDPOINT = "inproc://agent.fleet"
"""Policy bundles from the hive, to the fleet actor (agent/_fleet.py)."""

_BURST = 256
"""Sensor messages taken per burst, so per fsync."""
_SEND_BATCHES = 64
_COMMAND_QUEUE = 256
_MAX_RETRY = 5.0
_RELOADED_DIGEST = re.compile(r"sha256 ([0-9a-f]{64})$")
"""In the detail of the sensor's ``policy_reloaded`` notice (kmod/_reload.py)."""
_PROBE_TIMEOUT = 2.0
"""Seconds a probe of the preferred hive node waits for its handshake."""
_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


async def relay(
    ctx: Context,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    agent_id: str,
    hive_endpoint: str = "",
    hive_endpoints: Sequence[str] = (),
    failover_after: float = 3.0,
    probe_every: float = 5.0,
    keys_dir: Path,
    hive_public: bytes,
    spool_dir: Path,
    spool_bytes: int = DEFAULT_MAX_BYTES,
    batch: int = 256,
    heartbeat: float = 5.0,
    events_endpoint: str = EVENTS_ENDPOINT,
    commands_endpoint: str = COMMANDS_ENDPOINT,
    results_endpoint: str = RESULTS_ENDPOINT,
    window: int = 64,
    ack_timeout: float = 5.0,
    policy_version: str | Callable[[], str] = "",
    bundle_version: Callable[[], int] = lambda: 0,
    fleet_endpoint: str = FLEET_ENDPOINT,
    edge: Any = None,
    table: ProcessTable | None = None,
    learning: Any = None,
) -> None:
    """Run the relay.  ``hive_endpoints`` are hive nodes sharing one store
    and key, in order of preference (or ``hive_endpoint``, one): the uplink
    moves to the next after ``failover_after`` seconds without a connection,
    and probes the first every ``probe_every`` seconds (doubling while it
    does not answer) to go back to it.  ``keys_dir`` holds ``agent.key``/``agent.pub``;
    ``hive_public`` is the pinned Z85 public key of the hive.  ``window`` is
    the most batches sent and not yet acknowledged; ``ack_timeout`` how long
    acks may stall before the agent sends again.  ``policy_version`` is the
    sensor's policy as the Hello names it, or a function giving it, called at
    each start (the policy in force may have changed since the node started;
    a reload is followed from the sensor's notices); ``bundle_version`` the
    policy bundle the agent runs, asked at each start (a new one is followed
    from the fleet actor's statuses).  ``edge`` (``agent._edge.Edge``) runs
    the bundle's rules and playbooks on the events before they are spooled
    and hands its commands to the executor.  ``table`` is a process
    table to use instead of a new one seeded from /proc (to share it with
    the response executor, or for tests).  ``learning``
    (``agent._profile.Learning``) learns each workload's profile from the
    events and puts its novelty alerts behind them; it answers the hive's
    ``update_profile`` commands."""
    if batch < 1 or heartbeat <= 0:
        raise ValueError("batch must be >= 1 and heartbeat > 0")
    failover = Failover(list(hive_endpoints) or [e for e in [hive_endpoint] if e], trio.current_time(), fail_after=failover_after,
                        probe_every=probe_every, max_wait=max(60.0, failover_after, probe_every), log=ctx.log)
    keys = KeyPair.load(Path(keys_dir), "agent")
    check_key(hive_public, "the hive's public key")
    if table is None:
        table = ProcessTable()
        table.seed()
    spool = Spool(spool_dir, max_bytes=spool_bytes, log=ctx.log)
    monitor: Socket | None = None
    try:
        delivery = Delivery(spool, window=window, ack_timeout=ack_timeout, log=ctx.log)
        uplink = ctx.duplex(zmq.DEALER, codec=Codec(wire.HiveMessage), immediate=1,
                            reconnect_ivl=100, reconnect_ivl_max=5000,
                            heartbeat_ivl=int(heartbeat * 1000), heartbeat_timeout=int(3 * heartbeat * 1000),
                            heartbeat_ttl=int(3 * heartbeat * 1000))
        curve_client(uplink.sock.zmq, keys, hive_public)
        monitor = Socket(uplink.sock.zmq.get_monitor_socket(_MONITORED), stats=Statistics("monitor"), log=ctx.log)
        uplink.sock.connect(failover.current)
        try:
            events = await ctx.bind(ctx.socket(zmq.PULL, codec=Codec(wire.AgentMessage), topic=""),
                                    events_endpoint)
            results = await ctx.bind(ctx.socket(zmq.PULL, codec=Codec(wire.AgentMessage), topic=""),
                                     results_endpoint)
            commands = await ctx.bind(ctx.socket(zmq.PUSH, codec=Codec(wire.HiveMessage),
                                                 topic=f"{ctx.name}.commands"), commands_endpoint)
            bundles = await ctx.bind(ctx.socket(zmq.PUSH, codec=Codec(wire.HiveMessage),
                                                topic=f"{ctx.name}.bundles", sndhwm=4), fleet_endpoint)
        except zmq.ZMQError as e:
            raise AgentError(f"relay: cannot bind its endpoints: {e.strerror}") from None
        r = _Relay(ctx, spool, table, delivery, uplink, batch=batch, heartbeat=heartbeat,
                   hello=hello(agent_id, policy_version() if callable(policy_version) else policy_version,
                               bundle_version()), bundles=bundles,
                   describe_policy=policy_version if callable(policy_version) else None, edge=edge,
                   failover=failover, keys=keys, hive_public=hive_public)
        r.learning = learning
        ctx.stats.add_depth(lambda: r.spool_batches)
        log_event(ctx.log, "relay.start", agent=agent_id, hive=",".join(failover.endpoints), stream=spool.stream,
                  pending=spool.statistics().batches, processes=len(table))
        async with trio.open_nursery() as nursery:
            await nursery.start(uplink.pump)
            nursery.start_soon(r.intake, events)
            nursery.start_soon(r.sender)
            nursery.start_soon(r.inbound)
            nursery.start_soon(r.forward_results, results)
            nursery.start_soon(r.push_commands, commands)
            nursery.start_soon(r.heartbeats)
            if edge is not None:
                nursery.start_soon(r.edge_ticks)
            if learning is not None:
                nursery.start_soon(r.profile_ticks)
            nursery.start_soon(r.watch, monitor)
            if len(failover.endpoints) > 1:
                nursery.start_soon(r.steer)
            r.publish()
            task_status.started()
    finally:
        if monitor is not None:
            uplink.sock.zmq.disable_monitor()
            monitor.close()
        try:
            spool.sync()  # what was appended is kept if the disk allows
        except SpoolError:
            pass
        spool.close()


class _Relay:
    def __init__(self, ctx: Context, spool: Spool, table: ProcessTable, delivery: Delivery, uplink: Duplex,
                 *, batch: int, heartbeat: float, hello: wire.Hello, bundles: Socket,
                 describe_policy: Callable[[], str] | None = None, edge: Any = None,
                 failover: Failover, keys: KeyPair, hive_public: bytes) -> None:
        self.ctx = ctx
        self.failover = failover
        self.keys = keys
        self.hive_public = hive_public
        self._steer_wake = trio.Event()
        self._on = failover.current
        """The endpoint the uplink is connected to (or trying)."""
        self.edge = edge
        self.bundles = bundles
        self.describe_policy = describe_policy
        self.spool = spool
        self.table = table
        self.delivery = delivery
        self.uplink = uplink
        self.batch = batch
        self.heartbeat = heartbeat
        self.hello = hello
        self.out = Codec(wire.AgentMessage)
        self.connected = False
        self._wake = trio.Event()
        self._commands_in, self._commands_out = trio.open_memory_channel[wire.Command](_COMMAND_QUEUE)
        self._sensor_drops = 0
        self._drops_to_report = 0
        self._failing = False
        self._sync_lock = trio.Lock()  # one spool sync under way at a time
        self._disk = trio.CapacityLimiter(1)
        self._hashing = trio.CapacityLimiter(1)
        self.spool_batches = 0
        self.accepted = 0
        self.learning: Any = None

    # -- helpers ----------------------------------------------------------------

    def kick(self) -> None:
        self._wake.set()

    def publish(self) -> None:
        """Spool figures into the actor's statistics."""
        st = self.spool.statistics()
        d = self.delivery
        self.spool_batches = st.batches
        self.ctx.stats.extra.update(
            accepted=self.accepted, spooled=st.events, spool_bytes=st.bytes, dropped=st.dropped_events,
            sensor_drops=self._sensor_drops,
            acked=st.acked, stream=st.stream, resends=d.resends, restreams=d.restreams,
            stale_acks=d.stale_acks, corrupt=st.corrupt, repaired=st.repaired, unsendable=st.unsendable,
            connected=int(self.connected), hive=self.failover.current, hive_moves=self.failover.moves,
            probes=self.failover.probes,
        )

    def _spool_failed(self, e: SpoolError) -> None:
        self.ctx.stats.last_error = str(e)
        self.ctx.stats.extra["spool_errors"] = int(self.ctx.stats.extra.get("spool_errors", 0)) + 1
        if not self._failing:  # once per outage, not once per retry
            log_event(self.ctx.log, "spool.failing", logging.ERROR, reason=str(e), errno=e.errno)
        self._failing = True

    def _spool_ok(self) -> None:
        if self._failing:
            log_event(self.ctx.log, "spool.recovered", logging.WARNING)
        self._failing = False

    def _note_drops(self) -> bool:
        """Put events the spool lost for certain into a Notice, in the spool
        itself, so that the count reaches the hive in order with the events.
        True if one was appended (to sync)."""
        self._drops_to_report += self.spool.take_dropped()
        if not self._drops_to_report:
            return False
        notice = wire.fit(wire.Notice(
            time=time.time_ns(), what="spool_dropped", count=self._drops_to_report, verdict="audit",
            detail=f"spool full ({self.spool.max_bytes} bytes): the oldest events were dropped"))
        try:
            self.spool.append([notice])
        except SpoolError as e:
            self._spool_failed(e)
            return False
        self._drops_to_report = 0
        return True

    async def _sync(self) -> None:
        """Make what was appended durable, the disk waited for on a worker
        thread.  Raises SpoolError; a failed sync forgets nothing."""
        async with self._sync_lock:
            job = self.spool.begin_sync()
            try:
                if job.empty:
                    job.run()
                else:
                    await trio.to_thread.run_sync(job.run, limiter=self._disk)
            finally:
                self.spool.end_sync(job)  # gives the bytes back if it never ran

    async def _sync_drops(self) -> None:
        if self._note_drops():
            try:
                await self._sync()
            except SpoolError as e:  # the heartbeat task retries the sync
                self._spool_failed(e)

    async def _send(self, msg: Any) -> None:
        data = self.out.encode(wire.fit(msg))
        await self.uplink.send([data])
        if self.ctx.watched():
            self.ctx.tap(data)

    def _send_nowait(self, msg: Any) -> bool:
        data = self.out.encode(wire.fit(msg))
        if not self.uplink.send_nowait([data]):
            return False
        if self.ctx.watched():
            self.ctx.tap(data)
        return True

    # -- tasks --------------------------------------------------------------------

    async def intake(self, events: Socket) -> None:
        chunks: list[Packed] = []
        while True:
            got: list[wire.Event] = []
            for frames in await events.recv_frames(_BURST):
                msg = events.decode(frames[-1])
                if not isinstance(msg, wire.EventBatch):
                    continue  # malformed ones are counted by decode
                for ev in msg.events:
                    if type(ev) is wire.Notice:
                        if ev.what == "drops":
                            self._sensor_drops += ev.count
                        elif ev.what == "policy_reloaded":
                            await self._policy_reloaded(ev)
                got.extend(msg.events)
            job = self.table.enrich_all(got)
            if job is not None:
                try:
                    await trio.to_thread.run_sync(job.run, limiter=self._hashing)
                finally:
                    self.table.complete(job)
            # What the hive would refuse would stall the stream behind it.  The
            # decoder above checked the sensor's fields; enrichment wrote these.
            wire.fit_all(got, ENRICHED)
            if self.edge is not None and self.edge.active:
                got = self._at_the_edge(got)
            if self.learning is not None:
                got, kills = self.learning.observe(got)
                if kills:  # an enforcing profile's: at once, as the edge's own
                    self._edge_commands(kills)
            chunks.extend(self.spool.pack(got, self.batch))
            await self._store(chunks)
            self.accepted += len(got)
            self.publish()
            self.kick()

    def _at_the_edge(self, events: list[wire.Event]) -> list[wire.Event]:
        """``events`` with the edge's ``Edge`` events right behind those they
        came from; its commands go to the executor at once."""
        out: list[wire.Event] = []
        ex = self.ctx.stats.extra
        for ev in events:
            out.append(ev)
            d = self.edge.process((ev,))
            if d.events:
                out += d.events
                ex["edge_alerts"] = int(ex.get("edge_alerts", 0)) + len(d.events)
                self._edge_commands(d.commands)
        return out

    def _edge_commands(self, commands: list[wire.Command]) -> None:
        ex = self.ctx.stats.extra
        for cmd in commands:
            ex["edge_commands"] = int(ex.get("edge_commands", 0)) + 1
            try:
                self._commands_in.send_nowait(cmd)
            except trio.WouldBlock:
                log_event(self.ctx.log, "edge.command_refused", logging.ERROR, id=cmd.id, action=cmd.action,
                          reason="the executor's queue is full")

    async def edge_ticks(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._edge_commands(self.edge.tick())

    async def profile_ticks(self) -> None:
        """Profiles for the hive into the spool; changed ones to disk, on a
        worker thread (a failed write is retried with the next change)."""
        while True:
            await trio.sleep(1.0)
            events, changed = self.learning.tick()
            self.ctx.stats.extra.update(self.learning.profiles.statistics())
            if events:
                wire.fit_all(events)
                await self._store(self.spool.pack(events, self.batch))
                self.accepted += len(events)  # spooled like the sensor's: what the hive must end up with
                self.kick()
            if changed:
                try:
                    await trio.to_thread.run_sync(self.learning.save, changed, limiter=self._disk)
                except OSError as e:
                    self.learning.profiles.dirty.update(p.workload for p in changed)
                    log_event(self.ctx.log, "profile.save_failed", logging.WARNING, reason=str(e))

    async def _policy_reloaded(self, notice: wire.Notice) -> None:
        """The sensor runs a new policy file: the hive shows it from a new
        Hello (same file name, the new digest)."""
        m = _RELOADED_DIGEST.search(notice.detail)
        if m is None:
            return
        name = self.hello.policy_version.rpartition(":")[0] or "policy"
        self.hello = msgspec.structs.replace(self.hello, policy_version=f"{name}:{m.group(1)[:12]}")
        if self.connected:
            await self._send(self.hello)

    async def _store(self, chunks: list[Packed]) -> None:
        """Append and fsync; on a disk error, retry with backoff without
        taking more from the sensor (its own queue then pushes back)."""
        delay = 0.1
        while True:
            try:
                while chunks:
                    self.spool.append(chunks[0])
                    del chunks[0]
                self._note_drops()
                await self._sync()
            except SpoolError as e:
                self._spool_failed(e)
                self.publish()
                await trio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            self._spool_ok()
            return

    async def sender(self) -> None:
        d = self.delivery
        while True:
            self._wake = trio.Event()
            await self._sync_drops()
            now = trio.current_time()
            d.check(now)
            try:
                frames = d.take(now, _SEND_BATCHES)
            except SpoolError as e:
                self._spool_failed(e)
                await trio.sleep(1.0)
                continue
            if frames:
                await self.uplink.send_many([[f] for _, f in frames])
                if self.ctx.watched():
                    for _, f in frames:
                        self.ctx.tap(f)
                continue
            deadline = d.deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._wake.wait()

    async def inbound(self) -> None:
        d = self.delivery
        while True:
            msgs = [m for frames in await self.uplink.recv() if (m := self.uplink.decode(frames[-1])) is not None]
            now = trio.current_time()
            for msg in msgs:
                if isinstance(msg, wire.Ack) and msg.refused:
                    self._refused(msg.refused)
                elif isinstance(msg, wire.Ack):
                    self._refused("")
                    try:
                        d.on_ack(msg, now)
                    except SpoolError as e:  # a new stream could not be recorded; the hive will ask again
                        self._spool_failed(e)
                elif isinstance(msg, wire.PolicyBundle):
                    if not self.bundles.try_send(msg):  # the hive sends it again at the next Hello
                        log_event(self.ctx.log, "bundle.dropped", logging.WARNING, version=msg.version,
                                  reason="the fleet actor is busy or down")
                else:
                    await self._command(msg)
            await self._sync_drops()
            self.publish()
            self.kick()

    def _refused(self, why: str) -> None:
        """The hive takes nothing from this agent (``why``), or takes again
        (""): said once each way; the spool keeps every batch meanwhile."""
        ex = self.ctx.stats.extra
        if why == ex.get("hive_refuses", ""):
            return
        ex["hive_refuses"] = why
        if why:
            self.ctx.stats.last_error = f"the hive refuses this agent: {why}"
            log_event(self.ctx.log, "uplink.refused", logging.ERROR, reason=why)
        else:
            log_event(self.ctx.log, "uplink.accepted", reason="the hive takes this agent's batches again")

    async def _command(self, cmd: wire.Command) -> None:
        ex = self.ctx.stats.extra
        ex["commands"] = int(ex.get("commands", 0)) + 1
        if isinstance(cmd, wire.UpdateProfile):  # the relay's own learning, not the executor's
            await self._send(self.learning.update(cmd) if self.learning is not None else wire.CommandResult(
                command=cmd.id, ok=False, detail="this agent does not learn profiles ([profile] enabled = false)"))
            return
        if cmd.expires and cmd.expires < time.time_ns():
            ex["expired"] = int(ex.get("expired", 0)) + 1
            log_event(self.ctx.log, "command.expired", logging.WARNING, id=cmd.id, action=cmd.action)
            await self._send(wire.CommandResult(command=cmd.id, ok=False,
                                                detail="expired before the agent received it; not run"))
            return
        try:
            self._commands_in.send_nowait(cmd)
        except trio.WouldBlock:
            log_event(self.ctx.log, "command.refused", logging.WARNING, id=cmd.id, reason="queue full")
            await self._send(wire.CommandResult(
                command=cmd.id, ok=False, detail=f"agent busy: {_COMMAND_QUEUE} commands waiting; not run"))

    async def push_commands(self, commands: Socket) -> None:
        async for cmd in self._commands_out:
            if cmd.expires and cmd.expires < time.time_ns():  # expired while waiting for the executor
                await self._send(wire.CommandResult(command=cmd.id, ok=False,
                                                    detail="expired before the executor took it; not run"))
                continue
            await commands.send(cmd)

    async def forward_results(self, results: Socket) -> None:
        while True:
            for msg in await results.recv():
                if isinstance(msg, wire.CommandResult):
                    ex = self.ctx.stats.extra
                    ex["results"] = int(ex.get("results", 0)) + 1
                    if self.learning is not None and self.learning.owns(msg.command):
                        # an enforcing profile's kill, reported as the edge's are
                        await self._store(self.spool.pack([self.learning.answered(msg)], self.batch))
                        self.kick()
                    elif self.edge is not None and msg.command.startswith("edge-"):
                        # the edge's own: reported through the spool, so it reaches the hive when it is back
                        await self._store(self.spool.pack([self.edge.answered(msg)], self.batch))
                        self.kick()
                    else:
                        await self._send(msg)
                elif isinstance(msg, wire.BundleStatus):
                    self.hello = msgspec.structs.replace(
                        self.hello, bundle_version=msg.running,
                        policy_version=self.describe_policy() if self.describe_policy else self.hello.policy_version)
                    await self._send(msg)
                    if msg.ok and self.connected:
                        await self._send(self.hello)  # the registry shows the policy it brought

    async def heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat)
            try:
                await self._sync()  # retries a failed sync even when no events come
                self._spool_ok()
            except SpoolError as e:
                self._spool_failed(e)
            self.publish()
            if self.connected:
                st = self.spool.statistics()
                self._send_nowait(wire.Heartbeat(time=time.time_ns(), spooled=st.events,
                                                 dropped=st.dropped_events + self._sensor_drops))

    async def watch(self, monitor: Socket) -> None:
        while True:
            for frames in await monitor.recv_frames():
                ev = parse_monitor_message(frames)
                kind, endpoint = ev["event"], ev["endpoint"].decode(errors="replace")
                if len(self.failover.endpoints) > 1 and endpoint != self.failover.current:
                    continue  # a node the uplink has left: its last words are stale
                now = trio.current_time()
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.connected = True
                    self.failover.on_connected(now)
                    log_event(self.ctx.log, "uplink.connected", endpoint=endpoint)
                    await self._send(self.hello)
                    self.delivery.on_connect(now)
                    self.kick()
                elif kind == zmq.EVENT_DISCONNECTED:
                    if self.connected:
                        log_event(self.ctx.log, "uplink.disconnected", logging.WARNING, endpoint=endpoint)
                    self.connected = False
                    self.failover.on_disconnected(now)
                    self.delivery.on_disconnect(now)
                elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self.ctx.stats.extra["refused"] = int(self.ctx.stats.extra.get("refused", 0)) + 1
                    log_event(self.ctx.log, "uplink.refused", logging.ERROR, endpoint=endpoint,
                              reason="the hive refused this agent's key (not enrolled, or revoked)")
                else:
                    log_event(self.ctx.log, "uplink.handshake_failed", logging.WARNING, endpoint=endpoint,
                              event=kind, detail=ev["value"])
                self.publish()
                self._steer_wake.set()

    async def steer(self) -> None:
        """Move the uplink as :class:`Failover` decides; probe the preferred
        node beside the current connection, which keeps working meanwhile."""
        f = self.failover
        async with trio.open_nursery() as probes:
            while True:
                self._steer_wake = trio.Event()
                now = trio.current_time()
                target = f.check(now)
                if target is not None:
                    self._move(target)
                target = f.probe(now)
                if target is not None:
                    probes.start_soon(self._probe, target)
                deadline = f.deadline()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._steer_wake.wait()

    def _move(self, target: str) -> None:
        """Point the uplink at ``target`` (``failover`` already moved): what
        was in flight to the old node is sent again from the last ack once
        the new one has shaken hands (``Delivery.on_connect``)."""
        self.uplink.switch(self._on, target)
        self._on = target
        if self.connected:
            self.connected = False
            self.delivery.on_disconnect(trio.current_time())
        self.publish()

    async def _probe(self, endpoint: str) -> None:
        """Does ``endpoint`` finish a CURVE handshake with our key?  A socket
        of its own: nothing is sent, the uplink is untouched."""
        z = self.uplink.sock.zmq.context.socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        answered = False
        monitor = None
        try:
            curve_client(z, self.keys, self.hive_public)
            monitor = Socket(z.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED), stats=Statistics("probe"),
                             log=self.ctx.log)
            z.connect(endpoint)
            with trio.move_on_after(_PROBE_TIMEOUT):
                while not answered:
                    answered = any(parse_monitor_message(frames)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
                                   for frames in await monitor.recv_frames())
        finally:
            if monitor is not None:
                z.disable_monitor()
                monitor.close()
            z.close(linger=0)
        target = self.failover.probed(answered, trio.current_time())
        if target is not None:
            self._move(target)
        self.publish()
        self._steer_wake.set()
