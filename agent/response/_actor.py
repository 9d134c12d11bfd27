"""The executor actor: the thin trio shell around ``Executor``.

PULLs ``wire.Command`` from the relay (``agent.COMMANDS_ENDPOINT``, which the
relay binds) and PUSHes each ``wire.CommandResult`` back
(``agent.RESULTS_ENDPOINT``), one command at a time in the order received,
so a playbook's steps run in its order.  Actions that change the sensor's
policy run on this trio thread, the one the sensor lives on; so do a kill's
signals (a worker thread would first have to win the interpreter from the
reader and the relay, busy with the victim's own events).  Waiting for the
deaths, evidence collection, a quarantine's file move and container
isolation, which wait on the system, run on a worker thread."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Codec, Context
from agent import COMMANDS_ENDPOINT, RESULTS_ENDPOINT, ProcessTable

from ._executor import SENSOR_ACTIONS, Executor
from ._policy import SensorSlot


async def executor_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, data_dir: Path,
                         slot: SensorSlot | None = None, hive: Iterable[str] = (),
                         protected_pids: Iterable[int] = (), commands: str = COMMANDS_ENDPOINT,
                         results: str = RESULTS_ENDPOINT, grace: float = 30.0,
                         table: ProcessTable | None = None) -> None:
    """``slot``: the SensorSlot whose ``attach`` is the reader actor's
    ``on_sensor``; ``hive``: the hive's addresses (``endpoint_addresses``);
    ``table``: the relay's process table, shared in this process."""
    executor = Executor(Path(data_dir), slot=slot, hive=hive, protected_pids=protected_pids, grace=grace,
                        log=ctx.log, table=table)
    executor.restore()
    inbox = ctx.socket(zmq.PULL, connect=commands, codec=Codec(wire.HiveMessage))
    outbox = ctx.socket(zmq.PUSH, connect=results, codec=Codec(wire.AgentMessage))
    stats = ctx.stats.extra
    stats.update(commands=0, ok=0, failed=0, expired_locally=0)
    task_status.started()

    async def expire() -> None:
        while True:
            await trio.sleep(1.0)
            lifted = executor.expire() + await trio.to_thread.run_sync(executor.expire_containers)
            stats["expired_locally"] = int(stats["expired_locally"]) + len(lifted)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(expire)
        while True:
            for cmd in await inbox.recv(64):
                if not isinstance(cmd, wire.Command):
                    continue
                stats["commands"] = int(stats["commands"]) + 1
                if cmd.action in SENSOR_ACTIONS:
                    await trio.to_thread.run_sync(executor.prepare, cmd)
                    result = executor.execute(cmd)
                else:
                    executor.strike(cmd)
                    result = await trio.to_thread.run_sync(executor.execute, cmd)
                stats["ok" if result.ok else "failed"] = int(stats["ok" if result.ok else "failed"]) + 1
                await outbox.send(result)
