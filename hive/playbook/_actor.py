"""The playbook actor: the thin trio shell around ``PlaybookEngine``.

Sockets: PULL alerts from correlate (binds ``hive.ALERTS``), PUSH
``Deliver(agent, command)`` to the router (connects ``hive.DELIVER``), PULL
``Result`` from the router (connects ``hive.RESULTS``).  Once a second: the
engine's clock (TTL reverts, expiries), operators' approvals and manual
actions from the store,
agents going offline and coming back (the registry keeps them in the store),
AI verdicts stored since the last look (``hive.ai``; those stored before the
actor started are not acted on), and a reload of changed playbook files.

Commands go out before their records are written (a kill should not wait
for a disk); every decision is then written to the store's ``commands`` and
``audit`` tables through ``Records``, one writer at a time.  ``notify`` runs
here, on worker threads.  Evidence archives that come back in results are
stored as files under ``evidence_dir`` and only their path is kept in the
table."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Context, log_event

from .._actors import DELIVER, RESULTS, internal_codec
from .._detect import ALERTS, log_refusals
from .._messages import Deliver, Result
from .._store import Changes, Store, StoreError
from ._actions import Notify
from ._engine import AuditRecord, Decisions, PlaybookEngine
from ._errors import RecordsError
from ._notify import Notifier
from ._playbook import check_playbooks, signature
from ._records import Records

_NOTIFY_QUEUE = 256
_LEVELS = ("informational", "low", "medium", "high", "critical")


async def playbook_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                         playbook_dirs: Sequence[Path], evidence_dir: Path | None = None,
                         variables: Mapping[str, Any] | None = None, protected: Iterable[str] = (),
                         dry_run: bool = False, alerts_endpoint: str = ALERTS, deliver_endpoint: str = DELIVER,
                         results_endpoint: str = RESULTS, tick: float = 1.0, reload_every: float = 2.0,
                         node: str = "", cluster: Any = None) -> None:
    """``path``: the hive store; ``playbook_dirs``: folders of playbook files
    (``hive.playbook.DEFAULT_PLAYBOOKS`` and the operator's); ``variables``:
    what templates see as ``vars`` (e.g. ``{"webhook": URL}``); ``protected``:
    the hive's own addresses, which no playbook may block; ``dry_run``: every
    playbook in dry-run; ``node``: this node's name in a hive cluster, where
    an alert is acted on only by the node that claims it first in the shared
    store (correlation may hand one alert out twice when its owner dies);
    ``cluster``: a ``hive.cluster.ClusterSpec``, whose alerts queue the
    playbooks of all respond nodes share (instead of ``alerts_endpoint``)."""
    dirs = [Path(d) for d in playbook_dirs]
    # The signature before the load: a file changed after it is reloaded.
    sig = await trio.to_thread.run_sync(lambda: signature(*dirs))
    report = await trio.to_thread.run_sync(lambda: check_playbooks(*dirs))
    refused = _report(ctx, report, set())
    engine = PlaybookEngine(report.playbooks, clock=time.time, variables=variables, protected=protected,
                            dry_run=dry_run)
    alerts = None if cluster else await ctx.bind(ctx.socket(zmq.PULL, codec=internal_codec(), rcvhwm=10000),
                                                  alerts_endpoint)
    store = await trio.to_thread.run_sync(Store, path)  # may wait on a database server
    records = Records(store.db)
    db = trio.Lock()  # one connection: one user at a time

    async def in_db(fn: Any, *args: Any) -> Any:
        async with db:
            return await trio.to_thread.run_sync(fn, *args)

    online: dict[str, bool] = {}
    closed = Decisions()
    opened = await in_db(records.open_actions)
    for a in opened:
        if a.state == "sent":  # sent before a restart: whether it ran is unknown
            a.state, a.result, a.updated = "unanswered", "the hive restarted before the result came", time.time()
            closed.actions.append(a)
    engine.restore(opened)
    await in_db(records.write, closed)

    results = ctx.socket(zmq.PULL, connect=results_endpoint, codec=internal_codec())
    deliver = ctx.socket(zmq.PUSH, connect=deliver_endpoint, codec=internal_codec())
    notify_in, notify_out = trio.open_memory_channel[Notify](_NOTIFY_QUEUE)
    notifier = Notifier()
    stats = ctx.stats.extra

    bus: Any = None
    bus_ready = trio.Event()

    async def carry_out(d: Decisions) -> None:
        for agent, cmd in d.send:
            if cluster is None:
                await deliver.send(Deliver(agent=agent, command=cmd))
            else:
                await route(agent, cmd)
            log_event(ctx.log, "action.sent", id=cmd.id, action=cmd.action, agent=agent)
        for cmd in d.local:
            try:
                notify_in.send_nowait(cmd)
            except trio.WouldBlock:
                carry = engine.on_result("", wire.CommandResult(
                    command=cmd.id, ok=False, detail=f"not sent: {_NOTIFY_QUEUE} notifications already waiting"))
                d.extend(carry)
        for r in d.audit:
            _log_audit(ctx, r)
        try:
            await in_db(records.write, d)
        except RecordsError as e:
            ctx.stats.last_error = str(e)
            log_event(ctx.log, "records.write_failed", logging.ERROR, reason=str(e), actions=len(d.actions),
                      audit=len(d.audit))
        stats.update(vars(engine.statistics()))

    async def on_alerts() -> None:
        if cluster is not None:
            await alerts_from_cluster()
        assert alerts is not None
        while True:
            for msg in await alerts.recv():
                if isinstance(msg, wire.Alert):
                    if node and not await claim(msg):
                        continue
                    await carry_out(engine.on_alert(msg))

    async def alerts_from_cluster() -> None:
        from actors import DecodeError

        from ..cluster._bus import ALERTS_STREAM, ALERTS_SUBJECT, PLAYBOOKS, ClusterError, open_bus

        nonlocal bus
        codec = internal_codec()
        async with open_bus(cluster, "playbook") as opened:
            bus = opened
            bus_ready.set()
            while True:
                try:
                    queue = await bus.consumer(ALERTS_STREAM, ALERTS_SUBJECT, PLAYBOOKS)
                    while True:
                        taken = await queue.fetch(64, timeout=1.0)
                        for d in taken:
                            try:
                                msg = codec.decode(d.data)
                            except DecodeError:
                                continue
                            if isinstance(msg, wire.Alert) and await claim(msg):
                                await carry_out(engine.on_alert(msg))
                        await queue.ack(taken)
                except ClusterError as e:
                    ctx.stats.last_error = str(e)
                    await trio.sleep(0.5)

    async def claim(alert: wire.Alert) -> bool:
        for attempt in range(3):
            try:
                if await in_db(store.claim_alert, alert.id, node):
                    return True
                stats["alerts_claimed_elsewhere"] = int(stats.get("alerts_claimed_elsewhere", 0)) + 1
                return False
            except StoreError as e:
                ctx.stats.last_error = str(e)
                await trio.sleep(0.2 * (attempt + 1))
        # Whether another node acts on it is unknown: acting could act twice.
        log_event(ctx.log, "alert.unclaimed", logging.ERROR, alert=alert.id, rule=alert.rule_id,
                  reason=ctx.stats.last_error)
        return False

    async def route(agent: str, cmd: Any) -> None:
        """In a cluster: to whichever router holds the agent; its answer comes back here."""
        from ..cluster import _routing as routing
        from ..cluster._bus import ClusterError, agent_subject

        await bus_ready.wait()
        try:
            await bus.send(agent_subject(agent), routing.encode(routing.Routed(origin=node, agent=agent, command=cmd)))
        except ClusterError as e:  # unanswered, the engine closes it after its timeout
            ctx.stats.last_error = str(e)
            log_event(ctx.log, "command.undeliverable", logging.WARNING, agent=agent, id=cmd.id, reason=str(e))

    async def on_result(msg: Result) -> None:
        result = msg.result
        if result.archive:
            # Only for evidence we asked this agent for: never a path an agent names.
            a = engine.action(result.command)
            asked = a is not None and a.agent == msg.agent and a.action == "collect_evidence"
            result = await trio.to_thread.run_sync(_keep_evidence, msg, evidence_dir if asked else None)
        await carry_out(engine.on_result(msg.agent, result))

    async def on_results() -> None:
        if cluster is not None:
            await results_from_cluster()
        while True:
            for msg in await results.recv():
                if isinstance(msg, Result):
                    await on_result(msg)

    async def results_from_cluster() -> None:
        from ..cluster import _routing as routing
        from ..cluster._bus import RESULT_PREFIX, ClusterError

        await bus_ready.wait()
        answers = await bus.subscribe(f"{RESULT_PREFIX}.{node}")
        while True:
            try:
                batch = await answers.next_batch()
            except ClusterError as e:
                ctx.stats.last_error = str(e)
                await trio.sleep(0.5)
                continue
            for data in batch:
                m = routing.decode(data)
                if isinstance(m, routing.Answered):
                    await on_result(Result(agent=m.agent, result=m.result))

    async def notifications() -> None:
        limiter = trio.CapacityLimiter(4)

        async def one(cmd: Notify) -> None:
            a = engine.action(cmd.id)
            result = await trio.to_thread.run_sync(
                lambda: notifier.notify(cmd, playbook=a.playbook if a else ""), limiter=limiter)
            await carry_out(engine.on_result("", result))

        async with trio.open_nursery() as nursery:
            async for cmd in notify_out:
                nursery.start_soon(one, cmd)

    verdict_mark: int | None = await in_db(store.triage_mark)

    def new_verdicts() -> list[tuple[dict[str, Any], wire.Alert]]:
        """Verdicts stored since the last look, each with the alert of its
        incident that the steps act on (its most severe, the earliest)."""
        nonlocal verdict_mark
        if not any(p.trigger.ai_verdict for p in engine.playbooks):
            verdict_mark = None  # no query a tick while no playbook reads verdicts
            return []
        if verdict_mark is None:  # those stored meanwhile were for no playbook, as before
            verdict_mark = store.triage_mark()
        rows = store.triage_after(verdict_mark)
        if rows:
            verdict_mark = rows[-1].id
        out = []
        for row in rows:
            if row.state != "done":
                continue
            alerts = store.incident_alerts(row.incident)
            if not alerts:  # nothing a step could act on
                log_event(ctx.log, "verdict.skipped", logging.WARNING, incident=row.incident, triage=row.id,
                          reason="the incident has no stored alert")
                continue
            alert = max(alerts, key=lambda a: (_LEVELS.index(a.level) if a.level in _LEVELS else -1, -a.time))
            out.append(({**row.verdict, "model": row.model, "incident": row.incident, "id": row.id}, alert))
        return out

    async def housekeeping() -> None:
        nonlocal refused, sig
        since_reload = 0.0
        changes = Changes(store)
        while True:
            await trio.sleep(tick)
            d = engine.tick()
            try:
                # One worker-thread hop for the three looks, and none while
                # the store's files stand still (an idle hive's cost).
                agents, requested, verdicts = await in_db(lambda: (
                    store.online_states(), records.requested(), new_verdicts())) if changes.due() else ([], [], [])
                # Agents first: an operator's action is checked against the agents the engine knows.
                for agent, up, pid in agents:
                    if online.get(agent) != up:
                        online[agent] = up
                        d.extend(engine.agent_online(agent, pids=[pid] if pid else []) if up
                                 else engine.agent_offline(agent))
                for action_id, verb, by, why in requested:
                    if verb == "run":
                        for a in await in_db(functools.partial(records.actions, action_id=action_id)):
                            d.extend(engine.run(a, by))
                        continue
                    decided = engine.approve(action_id, by) if verb == "approve" else engine.reject(action_id, by, why)
                    if not decided.actions:  # the engine no longer had it waiting
                        decided.actions += await in_db(functools.partial(records.actions, action_id=action_id))
                        for a in decided.actions:
                            a.state, a.result, a.updated = "expired", "no longer awaiting approval", time.time()
                    d.extend(decided)
                for verdict, alert in verdicts:
                    d.extend(engine.on_verdict(verdict, alert))
            except (RecordsError, StoreError) as e:
                ctx.stats.last_error = str(e)
            if d:
                await carry_out(d)
            since_reload += tick
            if since_reload >= reload_every:
                since_reload = 0.0
                now_sig = await trio.to_thread.run_sync(lambda: signature(*dirs))
                if now_sig != sig:
                    sig = now_sig
                    fresh = await trio.to_thread.run_sync(lambda: check_playbooks(*dirs))
                    refused = _report(ctx, fresh, refused)
                    engine.set_playbooks(fresh.playbooks)

    try:
        async with trio.open_nursery() as nursery:
            for fn in (on_alerts, on_results, notifications, housekeeping):
                nursery.start_soon(fn)
            stats.update(vars(engine.statistics()))
            task_status.started()
    finally:
        store.close()


def _keep_evidence(msg: Result, evidence_dir: Path | None) -> wire.CommandResult:
    """An evidence archive goes to a file; the result keeps its path."""
    result = msg.result
    archive = result.archive
    data = dict(result.data)
    detail = result.detail
    if evidence_dir is None:
        data["archive_kept"] = "dropped: no evidence folder, or not evidence this hive asked for"
    elif hashlib.sha256(archive).hexdigest() != data.get("archive_sha256"):
        data["archive_kept"] = "dropped: its SHA-256 does not match what the agent computed"
        detail += "; the archive arrived damaged"
    else:
        target = Path(evidence_dir) / _safe(msg.agent) / f"{_safe(result.command)}.tar.gz"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive)
            data["archive_kept"] = str(target)
        except OSError as e:
            data["archive_kept"] = f"dropped: cannot write {target}: {e.strerror}"
    return wire.CommandResult(command=result.command, ok=result.ok, detail=detail, data=data)


def _safe(name: str) -> str:
    """A file name from an agent's id or a command id: one harmless component."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


def _report(ctx: Context, report: Any, logged: set[str]) -> set[str]:
    """Count what loaded and what was refused, each refusal logged once."""
    refused = log_refusals(ctx, "playbook.refused", report.failures, logged)
    ctx.stats.extra.update(playbooks_loaded=len(report.playbooks), playbooks_refused=len(report.failures))
    log_event(ctx.log, "playbooks.loaded", loaded=len(report.playbooks), disabled=len(report.disabled),
              refused=len(report.failures), files=report.files)
    return refused


def _log_audit(ctx: Context, r: AuditRecord) -> None:
    level = logging.WARNING if r.result.startswith(("refused", "failed")) else logging.INFO
    log_event(ctx.log, "audit", level, actor=r.actor, what=r.what, result=r.result)
