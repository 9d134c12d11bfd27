"""A node: one process running one supervision tree, findable by its folder.

The node's run folder holds a lock (one node per folder), ``node.json``
(pid and endpoints), the control endpoint that answers status requests, and
the tap endpoints.  Tools such as ``immune-node status`` and ``tap`` find a
running node through that folder alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import trio
import zmq

from ._actor import Context, Runtime
from ._errors import ActorError
from ._log import get_logger, log_event
from ._stats import Snapshot
from ._supervisor import Supervisor


class Status(msgspec.Struct, kw_only=True):
    node: str
    pid: int
    started: float
    ready: bool
    """The whole tree has started."""
    actors: list[Snapshot]
    taps_offered: int = 0
    taps_lost: int = 0


class ControlRequest(msgspec.Struct, kw_only=True):
    op: str
    """``status``, or ``restart`` (``actor``: make that actor exit as if it crashed)."""
    actor: str = ""


def endpoints(run_dir: Path) -> dict[str, str]:
    return {
        "control": f"ipc://{run_dir}/control.sock",
        "tap": f"ipc://{run_dir}/tap.sock",
        "tap_in": f"ipc://{run_dir}/tap-in.sock",
    }


class NodeBusy(ActorError):
    """Another node already runs with this folder."""


class Node:
    def __init__(self, name: str, root: Supervisor, run_dir: Path) -> None:
        self.name = name
        self.root = root
        self.run_dir = Path(run_dir)
        self.started = time.time()
        self.runtime: Runtime | None = None
        self.ready = False

    def _lock(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _read_info(self.run_dir).get("pid", "?")
            raise NodeBusy(f"another node (pid {owner}) is running with {self.run_dir}") from None
        return fd

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        lock = self._lock()
        ep = endpoints(self.run_dir)
        for leftover in ("control.sock", "tap.sock", "tap-in.sock"):
            (self.run_dir / leftover).unlink(missing_ok=True)
        self.runtime = rt = Runtime(run_dir=self.run_dir, leaf_endpoint=ep["tap_in"])
        ctx = Context(rt, self.name)
        log = ctx.log
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rt.taps.serve, rt.zmq, ep["tap"], ep["tap_in"])
                await nursery.start(self._control, rt, ep["control"])
                info = {"name": self.name, "pid": os.getpid(), "started": self.started, **ep}
                (self.run_dir / "node.json").write_text(json.dumps(info))
                log_event(log, "node.start", pid=os.getpid(), run_dir=self.run_dir)
                await nursery.start(self._run_root, ctx, nursery.cancel_scope)
                self.ready = True
                log_event(log, "node.ready", actors=len(rt.registry))
                task_status.started()
        finally:
            (self.run_dir / "node.json").unlink(missing_ok=True)
            os.close(lock)
            log_event(log, "node.stop")

    async def _run_root(self, ctx: Context, done: trio.CancelScope, *, task_status: Any) -> None:
        try:
            await self.root(ctx, task_status=task_status)
        finally:
            done.cancel()

    def status(self) -> Status:
        rt = self.runtime
        assert rt is not None
        return Status(
            node=self.name, pid=os.getpid(), started=self.started, ready=self.ready,
            actors=[st.snapshot() for _, st in sorted(rt.registry.items())],
            taps_offered=rt.taps.offered, taps_lost=rt.taps.lost,
        )

    async def _control(self, rt: Runtime, endpoint: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        ctx = Context(rt, f"{self.name}-control")
        sock = ctx.socket(zmq.REP, bind=endpoint, topic="")
        del rt.registry[ctx.name]  # the control loop is not an actor of the tree
        req_dec = msgspec.msgpack.Decoder(ControlRequest)
        enc = msgspec.msgpack.Encoder()
        task_status.started()
        try:
            while True:
                for frames in await sock.recv_frames(1):
                    try:
                        reply = enc.encode(self._answer(rt, req_dec.decode(frames[-1])))
                    except msgspec.DecodeError as e:
                        reply = enc.encode({"error": f"bad request: {e}"})
                    await sock.send_frames([reply])
        finally:
            ctx.close()

    def _answer(self, rt: Runtime, req: ControlRequest) -> Any:
        if req.op == "status":
            return self.status()
        if req.op == "restart":
            try:
                name = rt.request_restart(req.actor, "restart requested by an operator")
            except ActorError as e:
                return {"error": str(e)}
            log_event(get_logger(self.name), "node.restart_requested", logging.WARNING, actor=name)
            return {"restarted": name}
        return {"error": f"unknown op {req.op!r}"}


def _read_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "node.json").read_text())
    except (OSError, ValueError):
        return {}


def query_status(run_dir: Path, timeout: float = 3.0) -> Status:
    """Ask the node running in ``run_dir`` for its status (blocking; for CLIs)."""
    return msgspec.msgpack.decode(_ask(run_dir, ControlRequest(op="status"), timeout), type=Status)


def request_restart(run_dir: Path, actor: str, timeout: float = 3.0) -> str:
    """Make ``actor`` of the node running in ``run_dir`` exit as if it
    crashed, so that its supervisor restarts it (and, by its strategy, the
    siblings that depend on it).  ``actor`` is a name as ``status`` shows it
    (``hive.router``) or its last part if unique (``router``).  Returns the
    full name; raises :class:`ActorError` (blocking; for CLIs)."""
    reply = msgspec.msgpack.decode(_ask(run_dir, ControlRequest(op="restart", actor=actor), timeout))
    if "error" in reply:
        raise ActorError(reply["error"])
    return reply["restarted"]


def _ask(run_dir: Path, req: ControlRequest, timeout: float) -> bytes:
    info = _read_info(run_dir)
    if not info:
        raise ActorError(f"no node is running with {run_dir} (no node.json)")
    z = zmq.Context.instance().socket(zmq.REQ)
    z.setsockopt(zmq.LINGER, 0)
    z.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    z.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        z.connect(info["control"])
        z.send(msgspec.msgpack.encode(req))
        try:
            return z.recv()
        except zmq.Again:
            raise ActorError(f"node pid {info.get('pid')} in {run_dir} did not answer within {timeout:g}s") from None
    finally:
        z.close()


logging.getLogger("immune").addHandler(logging.NullHandler())
