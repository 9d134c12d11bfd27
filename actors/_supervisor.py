"""The supervisor runtime: carries out :class:`RestartPolicy` decisions.

Each child runs in a trio *system task* rather than in the supervisor's
nursery, so that a child which ignores cancellation can be abandoned after
its shutdown timeout instead of holding the whole tree hostage (a process
child is killed instead).  The child task never lets an exception escape;
it reports how it ended to the supervisor's loop.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ._actor import Child, Context, TaskStatus
from ._errors import ActorError, Escalation, StartError
from ._log import log_event
from ._policy import Decision, RestartPolicy, Strategy

# Extra time a supervisor waits beyond a process child's own shutdown
# timeout, for the SIGKILL and the reaping that follow it.
_KILL_GRACE = 2.0


@dataclass
class _Exit:
    reason: str
    crashed: bool


class _Instance:
    """One run of one child."""

    def __init__(self, spec: Child, ctx: Context) -> None:
        self.spec = spec
        self.ctx = ctx
        self.scope = trio.CancelScope()
        self.status = TaskStatus()
        self.done = trio.Event()
        self.exit: _Exit | None = None
        self.stopping = False
        self.crash_reason = ""

    def crash(self, reason: str) -> None:
        """End this run as a crash (an operator's restart): the child is
        cancelled and its supervisor sees a crash, not a shutdown."""
        self.crash_reason = reason or "crash requested"
        self.scope.cancel()


class Supervisor:
    """Starts children in order, restarts them by strategy, stops them in
    reverse.  An instance is itself an actor function, so supervisors nest."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
    ) -> None:
        self.children = list(children)
        self.strategy = Strategy(strategy)
        self.intensity = intensity
        self.period = period
        # Validates names up front: a bad tree fails before anything starts.
        RestartPolicy(self.strategy, [(c.name, c.restart) for c in self.children])

    async def __call__(self, ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await _Run(self, ctx).run(task_status)


class _Run:
    def __init__(self, sup: Supervisor, ctx: Context) -> None:
        self.ctx = ctx
        self.log = ctx.log
        self.stats = ctx.stats
        self.specs = {c.name: c for c in sup.children}
        self.policy = RestartPolicy(
            sup.strategy, [(c.name, c.restart) for c in sup.children],
            intensity=sup.intensity, period=sup.period,
        )
        self.running: dict[str, _Instance] = {}
        self.exits_send, self.exits_recv = trio.open_memory_channel[_Instance](math.inf)

    async def run(self, task_status: Any) -> None:
        self.stats.set_state("starting")
        crashers = self.ctx.runtime.crashers
        for name in self.policy.order:
            crashers[f"{self.ctx.name}.{name}"] = lambda reason, name=name: self._crash(name, reason)
        try:
            for name in list(self.policy.order):
                await self._start(name)
            self.stats.set_state("running")
            task_status.started()
            async for inst in self.exits_recv:
                await self._handle(inst)
        finally:
            for name in self.specs:
                crashers.pop(f"{self.ctx.name}.{name}", None)
            with trio.CancelScope(shield=True):
                await self._stop_all()
            self.stats.set_state("stopped")

    def _crash(self, name: str, reason: str) -> None:
        inst = self.running.get(name)
        if inst is None:
            state = self.ctx.runtime.stats(f"{self.ctx.name}.{name}").state
            raise ActorError(f"{self.ctx.name}.{name} is {state}, not running: try again when it runs")
        inst.crash(reason)

    async def _handle(self, inst: _Instance) -> None:
        name = inst.spec.name
        if inst.stopping or self.running.get(name) is not inst:
            return  # an exit we caused, already accounted for
        del self.running[name]
        ex = inst.exit
        assert ex is not None
        decision = self.policy.exited(name, crashed=ex.crashed, now=trio.current_time())
        await self._apply(decision, cause=name)

    async def _apply(self, d: Decision, cause: str) -> None:
        for name in d.stop:
            await self._stop(self.running[name])
        for name in d.remove:
            self.specs.pop(name, None)
            self.ctx.runtime.crashers.pop(f"{self.ctx.name}.{name}", None)
        if d.escalate:
            self.stats.escalations += 1
            self.stats.last_error = d.escalate
            log_event(self.log, "supervisor.escalate", logging.ERROR, reason=d.escalate)
            raise Escalation(f"{self.ctx.name}: {d.escalate}")
        for name in d.start:
            self.stats.restarts += 1
            child_stats = self.ctx.runtime.stats(f"{self.ctx.name}.{name}")
            child_stats.restarts += 1
            log_event(self.log, "child.restart", logging.WARNING, child=name, cause=cause,
                      strategy=self.policy.strategy.value)
            try:
                await self._start(name)
            except StartError as e:
                # A failed restart counts as another exit of that child, so
                # that a child which cannot start runs into the intensity.
                log_event(self.log, "child.restart_failed", logging.ERROR, child=name, reason=str(e))
                await self._apply(self.policy.exited(name, crashed=True, now=trio.current_time()), cause=name)
                return

    # -- start and stop ------------------------------------------------------

    async def _start(self, name: str) -> None:
        spec = self.specs[name]
        inst = _Instance(spec, self.ctx.child(name))
        cstats = inst.ctx.stats
        cstats.set_state("starting")
        runner = _run_process if spec.process else _run_task
        trio.lowlevel.spawn_system_task(
            self._child_task, inst, runner, name=f"actor:{inst.ctx.name}",
            context=contextvars.copy_context(),
        )
        try:
            with trio.move_on_after(spec.start_timeout):
                await _wait_any(inst.status.settled, inst.done)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop(inst)
            raise
        if not inst.status.ready:
            if not inst.done.is_set():
                await self._stop(inst)
                why = f"not ready within {spec.start_timeout:g}s"
            else:
                why = inst.exit.reason if inst.exit else "exited before ready"
            cstats.set_state("failed")
            log_event(self.log, "child.start_failed", logging.ERROR, child=name, reason=why)
            raise StartError(f"{inst.ctx.name} failed to start: {why}")
        self.running[name] = inst
        self.policy.started(name)
        self.stats.starts += 1
        cstats.starts += 1
        cstats.set_state("running")
        log_event(self.log, "child.start", child=name, pid=cstats.pid or os.getpid())

    async def _child_task(self, inst: _Instance, runner: Any) -> None:
        spec, ctx = inst.spec, inst.ctx
        try:
            with inst.scope:
                await runner(ctx, spec, inst.status)
            if inst.crash_reason and not inst.stopping:
                inst.exit = _Exit(inst.crash_reason, True)
            else:
                inst.exit = _Exit("shutdown" if inst.scope.cancelled_caught else "normal", False)
        except trio.Cancelled:
            inst.exit = _Exit("shutdown", False)  # the whole run is ending
        except BaseException as e:  # a child crash must never escape the system task
            inst.exit = _Exit(_reason(e), True)
            if not isinstance(e, (Escalation, StartError, ChildProcessError)):
                ctx.log.error("crashed", exc_info=e)
        finally:
            ctx.close()
            ex = inst.exit or _Exit("unknown", True)
            ctx.stats.exits += 1
            self.stats.exits += 1
            if ex.crashed:
                ctx.stats.last_error = ex.reason
            ctx.stats.set_state("stopped" if not ex.crashed else "crashed")
            log_event(self.log, "child.exit", logging.WARNING if ex.crashed else logging.INFO,
                      child=spec.name, reason=ex.reason)
            inst.done.set()
            try:
                self.exits_send.send_nowait(inst)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _stop(self, inst: _Instance) -> None:
        inst.stopping = True
        self.running.pop(inst.spec.name, None)
        self.policy.stopped(inst.spec.name)
        inst.scope.cancel()
        timeout = inst.spec.shutdown + (_KILL_GRACE if inst.spec.process else 0.0)
        with trio.move_on_after(timeout):
            await inst.done.wait()
        if not inst.done.is_set():
            inst.ctx.stats.set_state("abandoned")
            log_event(self.log, "child.abandoned", logging.ERROR, child=inst.spec.name,
                      reason=f"ignored shutdown for {timeout:g}s")

    async def _stop_all(self) -> None:
        for name in reversed(self.policy.order):
            inst = self.running.get(name)
            if inst is not None:
                await self._stop(inst)


def _reason(e: BaseException) -> str:
    """``Type: message`` of what ended a child; of the first error inside
    exception groups (an actor's nursery wraps what its tasks raise)."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


async def _wait_any(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for ev in events:
            async def waiter(ev: trio.Event = ev) -> None:
                await ev.wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(waiter)


async def _run_task(ctx: Context, spec: Child, status: TaskStatus) -> None:
    await spec.run(ctx, task_status=status, **spec.args)


async def _run_process(ctx: Context, spec: Child, status: TaskStatus) -> None:
    from ._process import run_child_process

    await run_child_process(ctx, spec, status)

