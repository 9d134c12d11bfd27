"""The output actor: one per ``[[outputs]]`` table, forwarding records
from its cursor to its receiver.  A thin shell over the plain parts: the
cursor (``Cursors``), the documents (``_ecs``), the framing (``_syslog``),
the retry policy (``Link``) and a sender."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import trio

from actors import Context, log_event

from .._store import Store, StoreError
from ._cursor import Cursors, Record
from ._link import Link
from ._senders import FileSender, OutputError, Sender, SyslogSender, WebhookSender
from ._syslog import FACILITIES

BATCH = 256
"""Records read from each source and sent at a time."""
POLL = 0.5
"""Seconds between looks at the store when nothing waits."""


def make_sender(output: Any, hostname: str = "") -> Sender:
    """The sender for an output's configuration (``node.OutputConfig``, checked)."""
    if output.kind == "file":
        return FileSender(output.target, max_bytes=output.max_mb << 20, keep=output.keep)
    if output.kind == "syslog":
        return SyslogSender(output.target, facility=FACILITIES[output.facility], ca=output.ca,
                            hostname=hostname or socket.gethostname(), timeout=output.timeout)
    return WebhookSender(output.target, timeout=output.timeout, token=output.token, ca=output.ca)


async def output_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                       output: Any, poll: float = POLL) -> None:
    """Forward what ``output`` asks for (alerts, events or both) to its
    receiver, oldest first, moving its cursor after each batch the receiver
    took.  A failure keeps the cursor where it is and retries after a wait
    that doubles up to ``output.retry_max``; the log says once when the
    receiver went down and once when it came back."""
    store = await trio.to_thread.run_sync(Store, path)  # may wait on a database server
    name = output.name
    st = ctx.stats.extra
    st.update(kind=output.kind, sent=0, backlog=0, failures=0, up=1, malformed=0)
    try:
        positions = await trio.to_thread.run_sync(lambda: Cursors(store.db).open(
            name, output.what, backfill=output.backfill))
    except StoreError as e:
        store.close()
        raise OutputError(f"output {name}: {e}") from None
    link = Link(cap=output.retry_max)
    log_event(ctx.log, "output.start", output=name, kind=output.kind, target=output.target, what=output.what,
              **{f"from_{s}": p for s, p in positions.items()})
    sender: Sender | None = None
    task_status.started()
    try:
        while True:
            try:
                batch, backlog = await trio.to_thread.run_sync(_next_batch, store, positions)
            except StoreError as e:
                ctx.stats.last_error = str(e)
                ctx.throttle.event("store", "output.store_failed", logging.ERROR, output=name, reason=str(e))
                await trio.sleep(poll)
                continue
            st["backlog"] = backlog
            if not batch:
                await trio.sleep(poll)
                continue
            records = [r for r in batch if r.doc]
            st["malformed"] = int(st["malformed"]) + len(batch) - len(records)
            try:
                # Made here, so that a CA file that cannot be read is an
                # output down (retried, fixed without a restart), not an
                # actor that fails until its supervisor gives up on the hive.
                sender = sender or make_sender(output)
                if records:
                    await sender.send(records)
            except OutputError as e:
                wait, went_down = link.failed(str(e))
                st["failures"], st["up"] = link.failures, 0
                ctx.stats.last_error = str(e)
                if went_down:
                    log_event(ctx.log, "output.down", logging.WARNING, output=name, reason=str(e),
                              backlog=backlog, retry_max=output.retry_max)
                await trio.sleep(wait)
                continue
            moved = {s: max(r.position for r in batch if r.source == s) for s in {r.source for r in batch}}
            # Should this write fail, the batch goes again: at least once.
            await trio.to_thread.run_sync(lambda: Cursors(store.db).advance(name, moved))
            positions.update(moved)
            st["sent"] = int(st["sent"]) + len(records)
            st["backlog"] = max(0, backlog - len(batch))
            down_for = link.succeeded()
            if down_for is not None:
                st["up"] = 1
                log_event(ctx.log, "output.up", output=name, down_s=round(down_for, 1),
                          failed_attempts=link.failures)
    finally:
        if sender is not None:
            with trio.CancelScope(shield=True):
                await sender.aclose()
        store.close()


def _next_batch(store: Store, positions: dict[str, int]) -> tuple[list[Record], int]:
    """(The next records after ``positions``, alerts first; how many wait in all)."""
    cursors = Cursors(store.db)
    batch: list[Record] = []
    for source in ("alerts", "events"):
        if source in positions and len(batch) < BATCH:
            batch += cursors.fetch(source, positions[source], BATCH - len(batch))
    return batch, cursors.backlog(positions)

