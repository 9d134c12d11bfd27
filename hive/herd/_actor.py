"""The herd actor: a thin shell over ``Cycle`` and the pull functions.
Once a second it pulls the peers that are due (in worker threads: the
TAXII client blocks) and runs one step of the cycle (publish, enforce,
match, forget) in a worker thread, logging what it did."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trio

from actors import Context, log_event

from .._store import Changes, Store, StoreError
from ._cycle import Cycle
from ._intel import HerdError, Intel
from ._stix import RuleTexts
from ._pull import fetch, keep

TICK = 1.0
IDLE_MAX = 4.0
"""While nothing moves, the wait between steps doubles up to this; a pull
that took something, or any change a step sees, brings it back to TICK."""
RECHECK = 30.0
"""Seconds between steps while the store is not written (expiries)."""



async def herd_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path, peers: list[Any],
                     key: Any, share_days: float, max_days: float, hive_name: str = "", rule_dirs: Any = (),
                     tick: float = TICK) -> None:
    """``rule_dirs``: the hive's Sigma rule folders (the rules that fire in
    incidents are shared as they are written)."""
    store = await trio.to_thread.run_sync(Store, path)  # may wait on a database server
    rules = RuleTexts(rule_dirs)
    intel = Intel(store.db)
    db = trio.Lock()  # one connection: one user at a time
    st = ctx.stats.extra
    st.update(peers=len(peers), published=0, pulled=0, refused=0, matched=0, pushed=0, lifted=0, pull_failures=0,
              intel=0)

    async def in_db(fn: Any, *args: Any) -> Any:
        async with db:
            return await trio.to_thread.run_sync(fn, *args)

    cycle = await in_db(lambda: Cycle(intel, key, share_for=share_days * 86400, hive_name=hive_name, rules=rules))
    down: set[str] = set()
    pulling: set[str] = set()  # a slow peer is not asked again before it answered
    wake = trio.Event()

    async def pull(peer: Any) -> None:
        pulling.add(peer.name)
        try:
            await pull_once(peer)
        finally:
            pulling.discard(peer.name)

    async def pull_once(peer: Any) -> None:
        try:
            cursor = await in_db(intel.state, f"peer:{peer.name}")
            fetched = await trio.to_thread.run_sync(fetch, peer, cursor)  # the network: no store lock held
            report = await in_db(lambda: keep(intel, peer, fetched, now=time.time(), max_age=max_days * 86400))
        except (HerdError, StoreError) as e:
            st["pull_failures"] = int(st["pull_failures"]) + 1
            ctx.stats.last_error = f"{peer.name}: {e}"
            if peer.name not in down:
                down.add(peer.name)
                log_event(ctx.log, "herd.pull_failed", logging.WARNING, peer=peer.name, reason=str(e))
            return
        if peer.name in down:
            down.discard(peer.name)
            log_event(ctx.log, "herd.pull_back", peer=peer.name)
        st["pulled"] = int(st["pulled"]) + report.accepted
        st["refused"] = int(st["refused"]) + len(report.refused)
        for indicator, reason in report.refused:
            log_event(ctx.log, "herd.refused", logging.WARNING, peer=peer.name, indicator=indicator or "-",
                      reason=reason)
        if report.accepted:
            wake.set()  # enforce and match what came without waiting out an idle pause
        if report.accepted or report.refused:
            log_event(ctx.log, "herd.pulled", peer=peer.name, accepted=report.accepted, new=report.new,
                      revoked=report.revoked, capped=report.capped, refused=len(report.refused),
                      ignored=report.ignored)

    async def step(now: float, wait: float) -> float:
        """One step of the cycle; the next wait."""
        try:
            done = await in_db(cycle.step, now)
        except (HerdError, StoreError) as e:
            ctx.stats.last_error = str(e)
            ctx.throttle.event("store", "herd.store_failed", logging.ERROR, reason=str(e))
            return wait
        st["published"] = int(st["published"]) + done.published
        st["intel"] = done.in_force
        for what, ids in (("herd.block_requested", done.sent), ("herd.lift_requested", done.lifted)):
            for i in ids:
                log_event(ctx.log, what, action=i)
        st["pushed"] = int(st["pushed"]) + len(done.sent)
        st["lifted"] = int(st["lifted"]) + len(done.lifted)
        st["matched"] = int(st["matched"]) + len(done.alerts)
        for a in done.alerts:
            log_event(ctx.log, "herd.match", logging.WARNING, agent=a.agent, title=a.title, alert=a.id)
        return tick if done.moved else min(wait * 2, max(tick, IDLE_MAX))

    due = {p.name: 0.0 for p in peers}
    wait = tick
    # A step reads the store: none while its files stand still (an idle
    # hive's cost), but one at least every RECHECK for expiries.
    changes = Changes(store, recheck=RECHECK)
    woken = True
    log_event(ctx.log, "herd.start", peers=",".join(f"{p.name}({p.trust})" for p in peers) or "-")
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                now = time.time()
                for peer in peers:
                    if due[peer.name] <= now and peer.name not in pulling:
                        due[peer.name] = now + peer.interval
                        nursery.start_soon(pull, peer)
                if changes.due() or woken:
                    wait = await step(now, wait)
                pause = max(0.0, min([wait, *(due[p.name] - time.time() for p in peers if p.name not in pulling)]))
                with trio.move_on_after(pause):
                    await wake.wait()
                woken = wake.is_set()
                wake = trio.Event()
    finally:
        store.close()
