"""The herd actor: a thin shell over ``Intel``, ``Matcher`` and the pull
functions.  Once a second it publishes what the hive learned (signed STIX
for the TAXII server), pulls the peers that are due (in worker threads:
the TAXII client blocks), pushes the blocks that enforced indicators call
for and lifts those of revoked ones, and matches new events against the
indicators in force."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trio

from actors import Context, log_event

from .._store import Store, StoreError
from ._intel import HerdError, Intel, matchable
from ._stix import RuleTexts
from ._match import Matcher, block_rule
from ._pull import fetch, keep

TICK = 1.0
MAX_TTL = 365 * 86400.0
PRUNE_EVERY = 600.0
KEEP_EXPIRED = 7 * 86400.0
"""Expired indicators stay listed (and served, for peers that were away) this long."""


async def herd_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path, peers: list[Any],
                     key: Any, share_days: float, max_days: float, hive_name: str = "", rule_dirs: Any = (),
                     tick: float = TICK) -> None:
    """``rule_dirs``: the hive's Sigma rule folders (the rules that fire in
    incidents are shared as they are written)."""
    store = Store(path)
    rules = RuleTexts(rule_dirs)
    intel = Intel(store.db)
    db = trio.Lock()  # one connection: one user at a time
    st = ctx.stats.extra
    st.update(peers=len(peers), published=0, pulled=0, refused=0, matched=0, pushed=0, lifted=0, pull_failures=0,
              intel=0)

    async def in_db(fn: Any, *args: Any) -> Any:
        async with db:
            return await trio.to_thread.run_sync(fn, *args)

    # Events from before the first start are not matched: the herd's alerts
    # are about what happens once an indicator is known.
    position = int(await in_db(intel.state, "events", "") or await in_db(intel.last_event))
    down: set[str] = set()
    pulling: set[str] = set()  # a slow peer is not asked again before it answered

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
        if report.accepted or report.refused:
            log_event(ctx.log, "herd.pulled", peer=peer.name, accepted=report.accepted, new=report.new,
                      revoked=report.revoked, capped=report.capped, refused=len(report.refused),
                      ignored=report.ignored)

    def enforce(now: float) -> tuple[list[str], list[str], Matcher]:
        """Blocks to push and to lift, and the matcher of what is in force."""
        entries = intel.entries()
        pushed = intel.pushed()
        agents = intel.agents()
        sent, lifted = [], []
        for e in entries:
            src = e.enforced(now)
            for agent in agents:
                have = pushed.get((e.key, agent))
                if src is not None:
                    if have is None or have[1] <= now:  # never sent, or its block ran out: send it
                        sent.append(intel.push(e, src, agent, now=now, max_ttl=MAX_TTL))
                elif have is not None and have[1] > now:  # revoked, or no enforce peer holds it any more
                    why = f"herd: {e.key} " + (f"revoked by {e.revoked_by}" if e.revoked is not None
                                               else "no longer enforced by any peer")
                    lifted_id = intel.lift(e.key, agent, now=now, why=why)
                    if lifted_id:
                        lifted.append(lifted_id)
        blocks = {block_rule(c): k for (k, _a), (c, _u) in intel.pushed().items()}
        return sent, lifted, Matcher(matchable(entries, now), blocks)

    def match(matcher: Matcher, position: int) -> tuple[int, list[Any]]:
        events, position = intel.events_after(position)
        alerts = []
        for _id, event in events:
            hit = matcher.match(event)
            if hit is not None:
                alerts.append(Matcher.alert(event, *hit))
        intel.raise_alerts(alerts)
        intel.set_state("events", str(position))
        return position, alerts

    due = {p.name: 0.0 for p in peers}
    pruned_at = 0.0
    log_event(ctx.log, "herd.start", peers=",".join(f"{p.name}({p.trust})" for p in peers) or "-")
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                now = time.time()
                try:
                    changed = await in_db(lambda: intel.publish(key, now=now, share_for=share_days * 86400,
                                                                hive_name=hive_name, rules=rules))
                    st["published"] = int(st["published"]) + changed
                    for peer in peers:
                        if due[peer.name] <= now and peer.name not in pulling:
                            due[peer.name] = now + peer.interval
                            nursery.start_soon(pull, peer)
                    sent, lifted, matcher = await in_db(enforce, now)
                    st["intel"] = len(matcher)
                    for what, ids in (("herd.block_requested", sent), ("herd.lift_requested", lifted)):
                        for i in ids:
                            log_event(ctx.log, what, action=i)
                    st["pushed"] = int(st["pushed"]) + len(sent)
                    st["lifted"] = int(st["lifted"]) + len(lifted)
                    position, alerts = await in_db(match, matcher, position)
                    if now - pruned_at >= PRUNE_EVERY:
                        pruned_at = now
                        await in_db(lambda: intel.prune(now=now, keep_expired=KEEP_EXPIRED))
                    st["matched"] = int(st["matched"]) + len(alerts)
                    for a in alerts:
                        log_event(ctx.log, "herd.match", logging.WARNING, agent=a.agent, title=a.title, alert=a.id)
                except (HerdError, StoreError) as e:
                    ctx.stats.last_error = str(e)
                    ctx.throttle.event("store", "herd.store_failed", logging.ERROR, reason=str(e))
                await trio.sleep(tick)
    finally:
        store.close()
