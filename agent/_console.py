"""``immune-node agent --standalone``: the sensor with no hive, verdicts on stdout."""

from __future__ import annotations

import sys
from typing import Any

import trio
import zmq

import wire
from actors import Codec, Context


async def verdict_printer(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, source: str) -> None:
    """Print the seed's verdict line for every blocked or audited call.
    Forks are audited too, to keep the process table, but a line for each
    would drown the rest; ``immune-node tap`` shows them."""
    from kmod import verdict_line

    inbox = ctx.socket(zmq.PULL, bind=source, codec=Codec(wire.AgentMessage))
    out = sys.stdout
    task_status.started()
    while True:
        lines = [line for batch in await inbox.recv() if isinstance(batch, wire.EventBatch)
                 for line in map(verdict_line, (e for e in batch.events if not isinstance(e, wire.Fork))) if line]
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
