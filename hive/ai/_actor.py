"""The ai actor: the thin shell that finds incidents to triage in the store,
builds their summaries (``_summary``), asks the model (``ChatClient``) and
stores what came back, a verdict or the reason there is none.

It reads the store on worker threads and talks HTTP through httpx on trio,
so the trio thread never blocks.  Triages asked for by hand (the console's
button, ``immune-node triage ID``: rows of ``triage_requests``) go first;
then each incident never triaged, once it has not changed for ``delay``
seconds.  One triage at a time: the budget, not a queue, is the bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors import Context, log_event

from .._store import Store, StoreError
from ._budget import HOUR, Budget
from ._client import ChatClient, Outcome
from ._redact import redact
from ._summary import summarize, summary_text

POLL = 1.0
"""Seconds between looks at the store when there is nothing to do."""
HORIZON = 3600.0
"""At start, incidents changed longer ago than this are not triaged on
their own (turning [ai] on must not spend the budget on old ones)."""


class Summaries:
    """Reads an incident's summary from the store (on a worker thread)."""

    def __init__(self, store: Store, playbook_dirs: Sequence[Path] = ()) -> None:
        self.store = store
        self.playbook_dirs = list(playbook_dirs)
        self._playbooks: tuple[Any, list[tuple[str, str]]] = ((), [])

    def playbooks(self) -> list[tuple[str, str]]:
        """(id, title) of the playbooks that load, read again when their files change."""
        from hive.playbook import check_playbooks
        from hive.playbook._playbook import signature

        sig = signature(*self.playbook_dirs)
        if sig != self._playbooks[0]:
            report = check_playbooks(*self.playbook_dirs)
            self._playbooks = (sig, [(p.id, p.title) for p in report.playbooks])
        return self._playbooks[1]

    @property
    def offered(self) -> list[str]:
        """The ids of the playbooks the latest summary offered."""
        return [pid for pid, _ in self._playbooks[1]]

    def summary(self, incident_id: str, max_bytes: int) -> str | None:
        """The redacted summary of ``incident_id`` as JSON text (None: no such incident)."""
        from hive.console._read import alert_process

        incident = self.store.incident(incident_id)
        if incident is None:
            return None
        alerts = self.store.incident_alerts(incident_id)
        trees = {}
        for a in alerts[:20]:
            tree = alert_process(self.store, a.id)
            trees[a.id] = tree.nodes if tree is not None else []
        return summary_text(summarize(incident, alerts, trees=trees, hosts=self.store.agents(),
                                      playbooks=self.playbooks()), max_bytes)


def store_outcome(store: Store, incident_id: str, by: str, outcome: Outcome, offered: Sequence[str]) -> int:
    """Store ``outcome`` as a triage of ``incident_id``; a verdict that
    recommends a playbook not offered is refused (stored as failed)."""
    verdict = outcome.verdict
    if verdict is not None and verdict.playbook and verdict.playbook not in offered:
        outcome.reason = f"the verdict recommends playbook {verdict.playbook!r}, which is not one of the hive's"
        verdict = outcome.verdict = None
    return store.add_triage(incident_id, state="done" if verdict is not None else "failed", requested_by=by,
                            model=outcome.model, verdict=msgspec.to_builtins(verdict) if verdict else None,
                            reason=outcome.reason, seconds=round(outcome.seconds, 3), calls=outcome.calls)


async def ai_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path, ai: Any,
                   playbook_dirs: Sequence[Path] = (), poll: float = POLL, backoff: float = 1.0) -> None:
    """``ai``: the ``[ai]`` section (``node.AiConfig``, checked, ``url`` set)."""
    store = Store(path)
    summaries = Summaries(store, playbook_dirs)
    started = time.time()
    try:
        spent = await trio.to_thread.run_sync(store.triage_calls, started - HOUR)
    except StoreError:
        store.close()
        raise
    budget = Budget(ai.calls_per_hour, clock=time.time, spent=spent)
    client = ChatClient(ai.url, model=ai.model, token=ai.token, timeout=ai.timeout, retries=ai.retries,
                        budget=budget, backoff=backoff)
    st = ctx.stats.extra
    st.update(triaged=0, failed=0, calls=0, budget_used=budget.used, budget=ai.calls_per_hour)
    log_event(ctx.log, "ai.start", url=redact(client.url), model=ai.model, calls_per_hour=ai.calls_per_hour,
              spent_last_hour=budget.used)
    task_status.started()

    def next_work() -> list[tuple[str, str]]:
        asked = store.triage_requests()
        if asked:
            return asked
        fresh = store.untriaged(settled=time.time() - ai.delay, since=started - HORIZON)
        return [(i, "auto") for i in fresh]

    try:
        while True:
            try:
                work = await trio.to_thread.run_sync(next_work)
            except StoreError as e:
                ctx.stats.last_error = str(e)
                ctx.throttle.event("store", "ai.store_failed", logging.ERROR, reason=str(e))
                await trio.sleep(poll)
                continue
            if not work:
                await trio.sleep(poll)
                continue
            for incident_id, by in work:
                await _triage_one(ctx, store, summaries, client, incident_id, by, ai.max_kb << 10)
                st["budget_used"] = budget.used
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
        store.close()


async def _triage_one(ctx: Context, store: Store, summaries: Summaries, client: ChatClient, incident_id: str,
                      by: str, max_bytes: int) -> None:
    st = ctx.stats.extra
    try:
        text = await trio.to_thread.run_sync(summaries.summary, incident_id, max_bytes)
        offered = summaries.offered
        if text is None:  # gone (retention) since it was asked for
            outcome = Outcome(None, reason=f"no incident {incident_id!r} in the store", model=client.model)
        else:
            outcome = await client.ask(text)
        row = await trio.to_thread.run_sync(store_outcome, store, incident_id, by, outcome, offered)
    except StoreError as e:
        ctx.stats.last_error = str(e)
        ctx.throttle.event("store", "ai.store_failed", logging.ERROR, reason=str(e))
        await trio.sleep(POLL)
        return
    st["calls"] = int(st["calls"]) + outcome.calls
    v = outcome.verdict
    if v is not None:
        st["triaged"] = int(st["triaged"]) + 1
        log_event(ctx.log, "ai.verdict", incident=incident_id, triage=row, severity=v.severity,
                  confidence=v.confidence, techniques=",".join(v.techniques) or "-", playbook=v.playbook or "-",
                  model=outcome.model, seconds=round(outcome.seconds, 1), calls=outcome.calls, by=by)
    else:
        st["failed"] = int(st["failed"]) + 1
        ctx.stats.last_error = outcome.reason
        log_event(ctx.log, "ai.failed", logging.WARNING, incident=incident_id, triage=row, reason=outcome.reason,
                  model=outcome.model, seconds=round(outcome.seconds, 1), calls=outcome.calls, by=by)
