"""Children that run in their own process, for isolation of risky parts.

The parent starts ``python -m actors._process <fd>`` and writes the child's
spec (pickled: trusted, parent to child only) to its stdin.  The child talks
back on a dedicated pipe (``<fd>``), not on stdout, which stays the actor's
own: a ``ready`` record once it is started, then statistics snapshots.  The
supervisor sees the same thing as for a task child: ready, then an exit that
is normal (status 0) or a crash (anything else).  Stopping sends SIGTERM and,
past the child's shutdown timeout, SIGKILL.  A child whose parent died (even
by SIGKILL) sees within a report interval that it has another parent now
(or finds its report pipe broken) and exits, so no orphan outlives its node
(one left holding a cluster lease would keep it from the live nodes).  (PR_SET_PDEATHSIG would not do: it fires
when the parent *thread* that forked ends, and trio forks from a worker
thread that it retires when idle.)
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
from typing import Any

import msgspec
import trio

from ._actor import Child, Context, Runtime, TaskStatus
from ._log import log_event, log_setup, setup_logging
from ._stats import Snapshot

_STATS_EVERY = 0.5


class _Report(msgspec.Struct):
    ready: bool = False
    stats: Snapshot | None = None


_report_decoder = msgspec.json.Decoder(_Report)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


async def run_child_process(ctx: Context, spec: Child, status: TaskStatus) -> None:
    target = f"{spec.run.__module__}:{spec.run.__qualname__}"
    payload = pickle.dumps({
        "target": target,
        "name": ctx.name,
        "args": dict(spec.args),
        "leaf_endpoint": ctx.runtime.leaf_endpoint,
        "log_level": logging.getLogger("immune").getEffectiveLevel(),
        "log_setup": log_setup(),
        "parent": os.getpid(),
    })
    rfd, wfd = os.pipe()
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "actors._process", str(wfd)],
            stdin=subprocess.PIPE, pass_fds=(wfd,),
        )
    finally:
        os.close(wfd)
    ctx.stats.pid = proc.pid
    reports = trio.lowlevel.FdStream(rfd)
    try:
        assert proc.stdin is not None
        await proc.stdin.send_all(payload)
        await proc.stdin.aclose()
        buf = b""
        while True:
            chunk = await reports.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                rep = _report_decoder.decode(line)
                if rep.ready and not status.ready:
                    status.started()
                if rep.stats is not None:
                    ctx.stats.load(rep.stats)
        code = await proc.wait()
        if code != 0:
            raise ChildProcessError(_exit_reason(code))
    finally:
        with trio.CancelScope(shield=True):
            await reports.aclose()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(spec.shutdown):
                    await proc.wait()
                if proc.returncode is None:
                    log_event(ctx.log, "child.kill", logging.ERROR, pid=proc.pid,
                              reason=f"ignored SIGTERM for {spec.shutdown:g}s")
                    proc.kill()
                    await proc.wait()


# -- the child's side ---------------------------------------------------------


class _Orphaned(Exception):
    """The parent is gone: its end of the report pipe is closed."""


def _resolve(target: str) -> Any:
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


async def _child_main(spec: dict[str, Any], report_fd: int) -> None:
    runtime = Runtime(leaf_endpoint=None)
    ctx = Context(runtime, spec["name"])
    ctx.stats.pid = os.getpid()
    fn = _resolve(spec["target"])
    enc = msgspec.json.Encoder()
    parent = spec.get("parent") or os.getppid()

    def report(rep: _Report) -> None:
        # Small writes to a pipe are atomic, and the parent always reads.
        try:
            os.write(report_fd, enc.encode(rep) + b"\n")
        except BrokenPipeError:
            raise _Orphaned() from None

    class _Status(TaskStatus):
        def started(self, value: Any = None) -> None:
            super().started(value)
            report(_Report(ready=True))

    async def report_stats() -> None:
        last = None
        while True:
            await trio.sleep(_STATS_EVERY)
            # An idle child writes nothing, so a broken pipe would not tell it
            # its parent died: being handed to another parent does.
            if os.getppid() != parent:
                raise _Orphaned()
            snap = ctx.stats.snapshot()
            if snap != last:  # an idle child does not wake its parent
                report(_Report(stats=snap))
                last = snap

    async with trio.open_nursery() as nursery:
        if spec["leaf_endpoint"]:
            await nursery.start(runtime.taps.serve_leaf, runtime.zmq, spec["leaf_endpoint"])
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async def on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return
            nursery.start_soon(on_signal)
            nursery.start_soon(report_stats)
            try:
                await fn(ctx, task_status=_Status(), **spec["args"])
            finally:
                ctx.close()
            nursery.cancel_scope.cancel()


def main() -> None:
    report_fd = int(sys.argv[1])
    spec = pickle.loads(sys.stdin.buffer.read())
    setup_logging(spec["log_level"], **spec["log_setup"])
    try:
        trio.run(_child_main, spec, report_fd)
    except BaseException as e:  # report how we died; the exit status tells the parent
        if isinstance(e, BaseExceptionGroup) and e.subgroup(_Orphaned) or isinstance(e, _Orphaned):
            os._exit(1)  # nobody is left to tell
        logging.getLogger("immune." + spec["name"]).error("crashed", exc_info=e)
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
