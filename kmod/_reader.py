"""The kmod reader actor: the sensor's thin trio shell.

It waits until the sensor's descriptor is readable, drains in batches (one
trio checkpoint per batch, no Python callback per record), and sends each
batch downstream as a ``wire.EventBatch`` on a PUSH socket.  Drops and
watchdog notices arrive as ``wire.Notice`` events in the same stream, fitted
into the wire's bounds, and are counted in the actor's statistics."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import trio
import zmq

import wire
from actors import Codec, Context

from ._errors import PolicyError
from ._interface import Sensor, open_sensor
from ._policy import Policy
from ._reload import PolicyFile, sighup_receiver, watch_policy


async def reader_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                       policy: Any = None, on_sensor: Callable[[Sensor], None] | None = None,
                       on_policy: Callable[[Policy], None] | None = None, policy_watch: bool = True,
                       **kw: Any) -> None:
    """Run a sensor and push its events to ``sink`` (a ZeroMQ endpoint).

    ``policy`` and the other options (``scope``, ``exclude_pids``, ...) are
    those of ``kmod.open_sensor``.  ``on_sensor`` receives the started sensor,
    for whoever reloads its policy, adds exclusions or reads its statistics
    from the same trio thread.  ``seq`` of each batch counts batches from 1 in
    this run of the actor, so the receiver can tell a gap or a restart.

    A policy from a file (or the default one) is reloaded on SIGHUP and, with
    ``policy_watch``, when the file changes (kmod/_reload.py); ``on_policy``
    applies a reloaded one (default: ``sensor.reload``), e.g. under the
    response layer's rules.  A restarted reader that starts from another
    policy than the one in force before says so as a reload does."""
    source = PolicyFile.of(policy)
    before = source.applied if source is not None else None
    refused = ""
    if source is not None:
        try:
            policy = source.load()
        except PolicyError as e:
            if source.applied is None:
                raise
            policy, refused = source.applied, str(e)  # refused while the previous run ran
    try:
        with sighup_receiver() as hups:
            async with trio.open_nursery() as nursery:

                def started(sensor: Sensor) -> None:
                    if source is not None:
                        source.applied = policy
                        if refused:
                            sensor.notice("policy_refused", f"{refused}; the policy in force stays")
                        elif before is not None and policy.digest != before.digest:  # changed while stopped
                            sensor.notice("policy_reloaded", source.reloaded(policy))
                        nursery.start_soon(functools.partial(
                            watch_policy, ctx, source, on_policy or sensor.reload, sensor.notice,
                            hups=hups, on_change=policy_watch))
                    if on_sensor is not None:
                        on_sensor(sensor)

                await _read(ctx, task_status=task_status, policy=policy, on_sensor=started, **kw)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the sensor's own error, as it is: a one-line reason
            raise group.exceptions[0] from None
        raise


def _by_kind(stats: dict, st: Any) -> None:
    """Events read and records the ring had no room for, by kind (the kinds
    seen so far), for ``immune-node status`` and the console's /metrics."""
    for prefix, counts in (("events_", st.events), ("drops_", st.drops)):
        stats.update({prefix + kind: n for kind, n in counts.items() if n})


async def _read(ctx: Context, *, task_status: Any, sink: str, policy: Any, batch: int = 4096,
                on_sensor: Callable[[Sensor], None], **options: Any) -> None:
    if batch < 1:
        raise ValueError("batch must be at least 1")
    sensor = open_sensor(policy, **options)
    try:
        # building and loading take a moment: off the trio thread
        await trio.to_thread.run_sync(sensor.start)
        out = ctx.socket(zmq.PUSH, connect=sink, codec=Codec(wire.EventBatch))
        stats = ctx.stats.extra
        stats.update(events=0, batches=0, drops=0, notices=0)
        fd = sensor.fileno()
        on_sensor(sensor)
        task_status.started()
        seq, published = 0, -1.0
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                while True:
                    events = sensor.drain(batch)
                    if not events:
                        break
                    seq += 1
                    notices = _notices(events)
                    await out.send(wire.EventBatch(seq=seq, events=events))
                    stats["events"] = int(stats["events"]) + len(events)
                    stats["batches"] = seq
                    for ev in notices:
                        stats["notices"] = int(stats["notices"]) + 1
                        if ev.what == "drops":
                            stats["drops"] = int(stats["drops"]) + ev.count
                    if len(events) < batch:
                        break
                if trio.current_time() - published >= 1.0:
                    published = trio.current_time()
                    _by_kind(stats, sensor.statistics())
        finally:
            trio.lowlevel.notify_closing(fd)
            _hand_on_the_rest(ctx, sensor, out, seq, batch)
    finally:
        sensor.close()


def _hand_on_the_rest(ctx: Context, sensor: Sensor, out, seq: int, batch: int) -> None:
    """On the way out: what the kernel still holds (folded opens, the ring's
    tail) goes to the sink without waiting, which the relay, stopping after
    us, spools.  What the sink has no room for is logged."""
    try:
        sensor.flush()
        left = 0
        for _ in range(64):  # bounded: the calls go on while we stop
            events = sensor.drain(batch)
            if not events:
                break
            seq += 1
            _notices(events)
            if not out.try_send(wire.EventBatch(seq=seq, events=events)):
                left += len(events)
        if left:
            ctx.log.error("%d events drained at stop had no room downstream: lost", left)
    except Exception as e:  # the sensor may be why we stop
        ctx.log.error("last drain at stop failed: %s", e)


def _notices(events: list[wire.Event]) -> list[wire.Notice]:
    """The notices among ``events``, fitted into the wire's bounds: they are
    the reader's and the sensor's own texts (a policy path that is not UTF-8,
    a long reason), which the kernel's decoder never saw, and one the encoder
    refuses would stop the reader."""
    notices = [ev for ev in events if type(ev) is wire.Notice]
    wire.fit_all(notices)
    return notices
