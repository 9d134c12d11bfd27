"""The lease keeper: the thin async shell that runs a ``LeaseTable`` against
JetStream KV and tells its owner which partitions it gained and lost."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors import log_event

from ._bus import LEASES_BUCKET, Bus, ClusterError
from ._leases import LeaseTable, lease_key, node_key

Change = Callable[[set[int], set[int]], Awaitable[None]]


class LeaseKeeper:
    """Keeps the leases of one kind of partition for one node.  A round
    every third of the lease: announce the node, read the bucket, renew,
    release and claim (each write conditional on the revision read), then
    ``on_change(gained, lost)``.  Unable to reach the bucket for two thirds
    of a lease, it gives up everything it held before another can take it."""

    def __init__(self, bus: Bus, kind: str, node: str, partitions: int, lease: float, on_change: Change,
                 log: logging.Logger, detail: str = "") -> None:
        self.bus, self.kind, self.lease = bus, kind, lease
        self.bucket = f"{LEASES_BUCKET}_{kind}"
        self.table = LeaseTable(node, partitions)
        self.on_change, self.log, self.detail = on_change, log, detail
        self.rounds = 0
        self.last_error = ""

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.bus.ensure_bucket(self.bucket, self.lease)
        ok_at = trio.current_time()
        started = False
        while True:
            t0 = trio.current_time()
            soon = False
            try:
                soon = await self.round()
                ok_at = trio.current_time()
                if ok_at - t0 > self.lease / 6:
                    log_event(self.log, "leases.slow_round", logging.WARNING, kind=self.kind,
                              seconds=round(ok_at - t0, 2), lease=self.lease)
            except ClusterError as e:
                self.last_error = str(e)
                if trio.current_time() - ok_at > self.lease * 2 / 3 and self.table.owned:
                    lost = self.table.lose_all()
                    log_event(self.log, "leases.lost", logging.WARNING, kind=self.kind, partitions=sorted(lost),
                              reason=str(e))
                    await self.on_change(set(), lost)
            if not started:
                started = True
                task_status.started()
            # Rounds are timed from their start, so a slow round does not
            # push the next renewal towards the lease's end.  Short of our
            # share, look again sooner: a node over its share frees them at
            # its own next round, and the partition has no owner meanwhile.
            await trio.sleep_until(t0 + self.lease / (12 if soon else 3))

    async def round(self) -> bool:
        """One round; True if we are short of our share."""
        bus, t = self.bus, self.table
        await bus.kv_put(self.bucket, node_key(t.node), self.detail.encode())
        leases, live = LeaseTable.read(await bus.kv_items(self.bucket))
        plan = t.plan(leases, live)
        for p, rev in plan.release.items():  # ours no more from here on, whatever the delete says
            await bus.kv_delete(self.bucket, lease_key(p), revision=rev)
        renewed = {p: await bus.kv_put(self.bucket, lease_key(p), t.node.encode(), revision=rev)
                   for p, rev in plan.renew.items()}
        claimed = {p: await bus.kv_put(self.bucket, lease_key(p), t.node.encode(), revision=0) for p in plan.claim}
        gained, lost = t.applied(plan, renewed, claimed)
        self.rounds += 1
        if gained or lost:
            log_event(self.log, "leases.changed", kind=self.kind, gained=sorted(gained), lost=sorted(lost),
                      held=sorted(t.owned), released=sorted(plan.release),
                      gone={p: (leases[p].owner, leases[p].revision) if p in leases else None for p in sorted(plan.gone)},
                      refused=sorted(p for p, r in renewed.items() if r is None))
            await self.on_change(gained, lost)
        return plan.short > 0
