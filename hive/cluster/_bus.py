"""The hive's use of NATS JetStream, for trio: streams, consumers, KV.

The nats-py client runs in a :class:`Bridge`; every method here is a trio
coroutine, and nats-py's errors become :class:`ClusterError` at this
boundary.  Names of streams, subjects and consumers are fixed here once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._bridge import Bridge, BridgeClosed

INGEST_STREAM, INGEST_SUBJECT = "IMMUNE_INGEST", "immune.ingest"
"""Agents' batches as routers took them, on ``immune.ingest.<partition>``
(of the agent): the store writers' work queues, one per partition."""
DETECT_STREAM, DETECT_SUBJECT = "IMMUNE_DETECT", "immune.detect"
"""Batches as stored, once each; the sentinels' work queue."""
CORRELATE_STREAM, CORRELATE_SUBJECT = "IMMUNE_CORRELATE", "immune.correlate"
"""What the sentinels pass to correlation (events it reads, alerts), on
``immune.correlate.<partition>``; kept ``REBUILD_WINDOW`` so that a new
owner of a partition rebuilds its state from it."""
REBUILD_WINDOW = 900.0
"""Seconds of correlation input kept: beyond the host correlator's windows
(lateral movement 120 s, spread 600 s by default) and most Sigma
correlations' timespans (a longer one is rebuilt from this much only)."""
RECORDS_STREAM, RECORDS_SUBJECT = "IMMUNE_RECORDS", "immune.records"
"""Alerts, repeats and incidents from correlation, for the store writers."""
ALERTS_STREAM, ALERTS_SUBJECT = "IMMUNE_ALERTS", "immune.alerts"
"""Alerts from correlation, for the playbooks (each taken by one)."""
RECORDERS, PLAYBOOKS = "recorders", "playbooks"
"""The durable consumers of those two work queues."""
COMMAND_PREFIX = "immune.command"
"""``immune.command.<agent>``: a command for an agent, to whichever router holds it."""
RESULT_PREFIX = "immune.result"
"""``immune.result.<node>``: an agent's answer, back to the node whose playbook sent the command."""
LEASES_BUCKET = "immune_leases"
"""KV: who owns each partition, and since which revision (``immune_leases_<kind>``)."""

WRITERS, SENTINELS = "writers", "sentinels"
"""The durable pull consumers of the store writers (``writers-<partition>``)
and the one every sentinel shares."""

DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a message id: a batch a router publishes
again within it (an agent's resend, a router's retry) is dropped there."""
STREAM_BYTES = 1 << 30
"""Bytes the batches' work-queue streams (and the correlation stream) may
hold while their consumers are behind (alerts' streams an eighth of it):
beyond it the router's publish fails and the agent keeps its batch.  Each
NATS server needs room for all of them (``max_file_store`` >= 4 GiB)."""
ACK_WAIT = 10.0
"""Seconds a taken message may stay unacknowledged before JetStream gives it
to another consumer (its taker died)."""


class ClusterError(Exception):
    """NATS refused or could not be reached; the message is one line."""


def _wrap(e: BaseException) -> ClusterError:
    return ClusterError(f"{type(e).__name__}: {e}".strip().rstrip(":"))


def agent_subject(agent: str) -> str:
    """The command subject of one agent (its id hashed: ids may hold dots or
    wildcards, which mean something in a subject)."""
    return f"{COMMAND_PREFIX}.{hashlib.sha256(agent.encode()).hexdigest()[:32]}"


@dataclass
class Delivery:
    """One message taken from a pull consumer."""

    data: bytes
    redelivered: int
    """How many times it was given out before this time."""
    _msg: Any
    subject: str = ""


class Bus:
    """One node's connection to the NATS cluster."""

    def __init__(self, bridge: Bridge, nc: Any, js: Any, replicas: int, max_payload: int = 1 << 20) -> None:
        self.bridge, self._nc, self._js = bridge, nc, js
        self.replicas = replicas
        self.max_payload = max_payload
        """The largest message the servers take (their ``max_payload``, 1 MiB by default)."""

    @classmethod
    async def connect(cls, bridge: Bridge, servers: Sequence[str], name: str, timeout: float = 10.0) -> Bus:
        import nats

        async def go() -> tuple[Any, Any]:
            nc = await nats.connect(list(servers), name=name, connect_timeout=2, allow_reconnect=True,
                                    max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                    error_cb=_quiet, disconnected_cb=_nothing, reconnected_cb=_nothing)
            return nc, nc.jetstream(timeout=timeout)

        try:
            nc, js = await bridge.run(go)
        except (BridgeClosed, OSError, asyncio.TimeoutError, Exception) as e:
            raise _wrap(e) from None
        # Three copies when there are three servers; fewer servers, fewer copies.
        return cls(bridge, nc, js, replicas=min(3, len(servers)), max_payload=nc.max_payload or 1 << 20)

    async def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return await self.bridge.run(fn, *args)
        except ClusterError:
            raise
        except Exception as e:
            raise _wrap(e) from None

    async def close(self) -> None:
        # Not drain(): it waits (30 s by default) for messages a pull
        # subscription took after its fetch timed out, which nobody reads.
        # Flushing sends what was published and acknowledged; close() then
        # ends the subscriptions, whose unacknowledged messages come again.
        async def go() -> None:
            try:
                await self._nc.flush(timeout=2)
            finally:
                await self._nc.close()

        try:
            await self._do(go)
        except ClusterError:
            pass

    # -- set-up ----------------------------------------------------------------

    async def ensure(self) -> None:
        """Create the streams and consumers the hive uses if they are missing
        (any node may; what exists is only read, which is cheap when every
        actor of every node asks at once)."""
        from nats.js.api import (AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType,
                                 StreamConfig)

        js, replicas = self._js, self.replicas
        streams = [StreamConfig(name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE,
                                storage=StorageType.FILE, num_replicas=replicas, max_bytes=most,
                                discard=DiscardPolicy.NEW, duplicate_window=DUPLICATE_WINDOW)
                   for name, subject, most in ((INGEST_STREAM, INGEST_SUBJECT + ".>", STREAM_BYTES),
                                               (DETECT_STREAM, DETECT_SUBJECT, STREAM_BYTES),
                                               (RECORDS_STREAM, RECORDS_SUBJECT, STREAM_BYTES // 8),
                                               (ALERTS_STREAM, ALERTS_SUBJECT, STREAM_BYTES // 8))]
        streams.append(StreamConfig(
            name=CORRELATE_STREAM, subjects=[CORRELATE_SUBJECT + ".>"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=replicas, max_bytes=STREAM_BYTES, max_age=REBUILD_WINDOW,
            discard=DiscardPolicy.OLD, duplicate_window=DUPLICATE_WINDOW))

        async def go() -> None:
            for cfg in streams:
                try:
                    await js.stream_info(cfg.name)
                    continue
                except Exception as e:
                    if type(e).__name__ != "NotFoundError":
                        raise
                try:
                    await js.add_stream(cfg)
                except Exception as e:
                    if "already in use" not in str(e):
                        raise
            for stream, durable in ((DETECT_STREAM, SENTINELS), (RECORDS_STREAM, RECORDERS),
                                    (ALERTS_STREAM, PLAYBOOKS)):
                try:
                    await js.consumer_info(stream, durable)
                    continue
                except Exception as e:
                    if type(e).__name__ != "NotFoundError":
                        raise
                await js.add_consumer(stream, ConsumerConfig(
                    durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_ack_pending=20000,
                    max_waiting=512))

        await self._do(go)

    async def ensure_bucket(self, bucket: str, ttl: float | None) -> None:
        """A KV bucket whose entries expire ``ttl`` seconds after their last write."""
        from nats.js.api import KeyValueConfig, StorageType

        js, replicas = self._js, self.replicas

        async def go() -> None:
            try:
                await js.key_value(bucket)
            except Exception:
                await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=ttl, replicas=replicas,
                                                         storage=StorageType.FILE))

        await self._do(go)

    # -- publishing ------------------------------------------------------------

    async def publish(self, subject: str, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        """Publish each (payload, message id) and wait for JetStream to hold
        it (on a majority of its replicas).  Returns, per item, whether it is
        held now (a duplicate within the window counts: an earlier copy is);
        False where the publish failed."""
        return await self.publish_to([(subject, d, i) for d, i in items])

    async def publish_to(self, items: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        """:meth:`publish` of (subject, payload, message id) items, all at once."""
        js = self._js

        async def one(subject: str, data: bytes, msg_id: str) -> bool:
            try:
                await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
                return True
            except Exception:
                return False

        async def go() -> list[bool]:
            return list(await asyncio.gather(*(one(*item) for item in items)))

        return await self._do(go)

    async def send(self, subject: str, data: bytes) -> None:
        """Core NATS: at most once, to whoever listens now."""
        async def go() -> None:
            await self._nc.publish(subject, data)

        await self._do(go)

    # -- consuming -------------------------------------------------------------

    async def consumer(self, stream: str, subject: str, durable: str) -> Consumer:
        """A pull consumer on ``subject`` shared by all who name ``durable``
        (made the first time)."""
        from nats.js.api import AckPolicy, ConsumerConfig

        js = self._js

        async def go() -> Any:
            await js.add_consumer(stream, ConsumerConfig(
                durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT,
                max_ack_pending=20000, max_waiting=512))
            return await js.pull_subscribe_bind(durable=durable, stream=stream)

        return Consumer(self, await self._do(go))

    async def settle(self, done: Sequence[Delivery], *, later: Sequence[Delivery] = (), delay: float = 0.5,
                     drop: Sequence[Delivery] = ()) -> None:
        """Acknowledge ``done``, hand ``later`` back for redelivery after
        ``delay`` seconds, and ``drop`` for good (never delivered again)."""
        async def go() -> None:
            for d in done:
                await d._msg.ack()
            for d in later:
                await d._msg.nak(delay=delay)
            for d in drop:
                await d._msg.term()

        await self._do(go)

    async def subscribe(self, subject: str, limit: int = 10000) -> Subscription:
        """A core NATS subscription whose messages trio takes with :meth:`Subscription.next`."""
        nc = self._nc

        async def go() -> Any:
            return await nc.subscribe(subject, pending_msgs_limit=limit)

        return Subscription(self, await self._do(go))

    # -- key/value -------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """(value, revision), or None if there is none."""
        js = self._js

        async def go() -> tuple[bytes, int] | None:
            kv = await js.key_value(bucket)
            try:
                e = await kv.get(key)
            except Exception as e:
                if type(e).__name__ in ("KeyNotFoundError", "KeyDeletedError"):
                    return None
                raise
            return (e.value or b""), e.revision

        return await self._do(go)

    async def kv_put(self, bucket: str, key: str, value: bytes, *, revision: int | None = None) -> int | None:
        """Write ``key``; with ``revision``, only if that is still its latest
        (0: only if it does not exist).  Returns the new revision, or None if
        someone else wrote it first."""
        js = self._js

        async def go() -> int | None:
            kv = await js.key_value(bucket)
            try:
                if revision is None:
                    return await kv.put(key, value)
                if revision == 0:
                    return await kv.create(key, value)
                return await kv.update(key, value, last=revision)
            except Exception as e:
                if type(e).__name__ in ("KeyWrongLastSequenceError", "KeyExistsError") or "wrong last sequence" in str(e):
                    return None
                raise

        return await self._do(go)

    async def kv_delete(self, bucket: str, key: str, *, revision: int) -> bool:
        """Delete ``key`` if ``revision`` is still its latest."""
        js = self._js

        async def go() -> bool:
            kv = await js.key_value(bucket)
            try:
                return await kv.delete(key, last=revision)
            except Exception as e:
                if type(e).__name__ == "KeyWrongLastSequenceError" or "wrong last sequence" in str(e):
                    return False
                raise

        return await self._do(go)

    async def kv_items(self, bucket: str) -> dict[str, tuple[bytes, int]]:
        """Every live key's (value, revision), read as one snapshot: one
        consumer giving the last entry of each key, not a get per key (a get
        that failed under load used to drop a key from the answer, and a
        keeper then took its own lease for lost)."""
        js = self._js

        async def go() -> dict[str, tuple[bytes, int]]:
            kv = await js.key_value(bucket)
            watcher = await kv.watchall(ignore_deletes=True)
            out: dict[str, tuple[bytes, int]] = {}
            try:
                while (e := await watcher.updates(timeout=5.0)) is not None:  # None: the end of what it held
                    out[e.key] = (e.value or b"", e.revision)
            finally:
                await watcher.stop()
            return out

        return await self._do(go)

    async def ack_floor(self, stream: str, durable: str) -> int:
        """The stream seq below which ``durable`` has everything acknowledged."""
        js = self._js

        async def go() -> int:
            info = await js.consumer_info(stream, durable)
            return info.ack_floor.stream_seq if info.ack_floor else 0

        return await self._do(go)

    async def replay(self, stream: str, subject: str, upto: int, chunk: int = 512):
        """Every message of ``subject`` still in ``stream`` up to stream seq
        ``upto``, oldest first, in lists of up to ``chunk`` (an async iterator)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = self._js
        if upto <= 0:
            return

        async def open_it() -> Any:
            return await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))

        psub = await self._do(open_it)

        async def more() -> tuple[list[bytes], bool]:
            try:
                msgs = await psub.fetch(chunk, timeout=0.5)
            except Exception as e:
                if "Timeout" in type(e).__name__:
                    return [], True
                raise
            out, done = [], False
            for m in msgs:
                if m.metadata.sequence.stream > upto:
                    done = True
                    break
                out.append(m.data)
            return out, done or not msgs

        try:
            while True:
                data, done = await self._do(more)
                if data:
                    yield data
                if done:
                    return
        finally:
            async def close() -> None:
                await psub.unsubscribe()

            try:
                await self._do(close)
            except ClusterError:
                pass

    async def pending(self, stream: str, durable: str) -> tuple[int, int]:
        """(messages not yet given out, given out and not yet acknowledged)."""
        js = self._js

        async def go() -> tuple[int, int]:
            info = await js.consumer_info(stream, durable)
            return info.num_pending or 0, info.num_ack_pending or 0

        return await self._do(go)


class Consumer:
    def __init__(self, bus: Bus, psub: Any) -> None:
        self._bus, self._psub = bus, psub

    async def fetch(self, most: int, timeout: float = 1.0) -> list[Delivery]:
        """Up to ``most`` messages; [] when none came within ``timeout``."""
        psub = self._psub

        async def go() -> list[Delivery]:
            try:
                msgs = await psub.fetch(most, timeout=timeout)
            except asyncio.TimeoutError:
                return []
            except Exception as e:
                if type(e).__name__ == "TimeoutError":
                    return []
                raise
            return [Delivery(m.data, (m.metadata.num_delivered or 1) - 1, m, m.subject) for m in msgs]

        return await self._bus._do(go)

    async def ack(self, done: Sequence[Delivery], *, later: Sequence[Delivery] = (), delay: float = 0.5,
                  drop: Sequence[Delivery] = ()) -> None:
        await self._bus.settle(done, later=later, delay=delay, drop=drop)

    async def in_progress(self, taken: Sequence[Delivery]) -> None:
        """Still working on these: restart their ack timers."""
        async def go() -> None:
            for d in taken:
                await d._msg.in_progress()

        await self._bus._do(go)


class Subscription:
    def __init__(self, bus: Bus, sub: Any) -> None:
        self._bus, self._sub = bus, sub

    async def next_batch(self, most: int = 256, timeout: float = 1.0) -> list[bytes]:
        """What arrived, up to ``most`` messages, waiting up to ``timeout`` for the first."""
        sub = self._sub

        async def go() -> list[bytes]:
            out = []
            try:
                out.append((await sub.next_msg(timeout=timeout)).data)
            except Exception as e:
                if "Timeout" in type(e).__name__:
                    return []
                raise
            while len(out) < most and sub.pending_msgs:
                out.append((await sub.next_msg(timeout=0)).data)
            return out

        return await self._bus._do(go)


async def _quiet(e: Exception) -> None:
    """nats-py reports a lost server here while it reconnects to another."""


async def _nothing() -> None:
    pass


@dataclass(frozen=True)
class ClusterSpec:
    """What an actor needs to join the cluster (picklable: detection runs
    in child processes)."""

    servers: tuple[str, ...]
    node: str
    role: str = "all"
    partitions: int = 16
    correlate_partitions: int = 8
    lease: float = 10.0
    pack: bool = True
    """Batches travel packed (``hive.cluster._pack``), and what sentinels
    send to correlation; False: one message each, as nodes before packing
    sent and read them."""

    def does(self, role: str) -> bool:
        return self.role in (role, "all")


ENSURE_TRIES = 6
"""Attempts at making the streams before an actor gives up starting (about 8 s of waits)."""


class open_bus:
    """``async with open_bus(spec, "writer") as bus:`` a connected bus whose
    streams exist, in a bridge of its own; closed on the way out."""

    def __init__(self, spec: ClusterSpec, who: str) -> None:
        self.spec, self.who = spec, who
        self._bridge = Bridge(name=f"nats-{who}")

    async def __aenter__(self) -> Bus:
        import trio

        await self._bridge.__aenter__()
        try:
            self._bus = await Bus.connect(self._bridge, self.spec.servers, f"{self.spec.node}.{self.who}")
            # A cluster just formed, or every actor of every node starting at
            # once, can keep JetStream's API past a request's timeout: again.
            for attempt in range(ENSURE_TRIES):
                try:
                    await self._bus.ensure()
                    break
                except ClusterError:
                    if attempt + 1 == ENSURE_TRIES:
                        raise
                    await trio.sleep(0.5 * (attempt + 1))
        except BaseException:
            await self._bridge.__aexit__(None, None, None)
            raise
        return self._bus

    async def __aexit__(self, *exc: object) -> None:
        import trio

        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await self._bus.close()
            await self._bridge.__aexit__(*exc)
