"""Policy bundles on the agent: take the hive's, run them, roll back.

The sensor reads its policy through a symlink in the agent's fleet folder
(``PolicyLink``): to the running bundle's policy, or to the local file
(``[sensor] policy``, else the default) while the hive assigned none.  A new
bundle is verified (``fleet.Keeper``), its policy parsed, written beside the
link and the link swapped to it; the sensor's policy watcher reloads it in
place, as it does any edit of its file.  If the sensor has not put it in
force within ``APPLY_TIMEOUT`` the link goes back and the version is
refused; either way the hive hears a ``BundleStatus``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import trio
import zmq

import fleet
import wire
from actors import Codec, Context, log_event

from ._relay import FLEET_ENDPOINT, RESULTS_ENDPOINT

APPLY_TIMEOUT = 10.0
"""Seconds the sensor has to put a new bundle's policy in force."""
LINK = "policy.toml"


class PolicyLink:
    """The policy file the sensor is given: a symlink in ``folder``."""

    def __init__(self, folder: str | os.PathLike, local: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LINK
        self.local = Path(os.path.abspath(local))

    def target(self) -> Path | None:
        try:
            return Path(os.readlink(self.path))
        except OSError:
            return None

    def point(self, target: Path) -> None:
        """Swap the link to ``target`` in one rename (the sensor's watcher sees a move into place)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{LINK}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.path)

    def bundle_file(self, version: int) -> Path:
        return self.folder / f"policy-v{version}.toml"

    def write(self, bundle: fleet.Bundle) -> Path:
        path = self.bundle_file(bundle.version)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(bundle.policy)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def start(self, running: fleet.Bundle | None) -> Path:
        """Point the link at what runs now: the running bundle's policy
        (written again if its file is gone), else the local one."""
        if running is not None and running.policy:
            path = self.bundle_file(running.version)
            if not path.exists():
                self.write(running)
            self.point(path)
        else:
            self.point(self.local)
        return self.path

    def prune(self, keep: set[Path]) -> None:
        for p in self.folder.glob("policy-v*.toml"):
            if p not in keep:
                p.unlink(missing_ok=True)


async def fleet_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                      keeper: fleet.Keeper | None, link: PolicyLink, sensor: bool, edge: Any = None,
                      bundles: str = FLEET_ENDPOINT, results: str = RESULTS_ENDPOINT,
                      apply_timeout: float = APPLY_TIMEOUT) -> None:
    """Take the bundles the relay receives (``bundles``), answer each with a
    ``wire.BundleStatus`` (to ``results``, which the relay sends up).
    ``keeper`` None: this agent pinned no bundle key, so it refuses them all.
    ``sensor``: whether a sensor runs here to put a policy in force;
    ``edge`` (``agent._edge.Edge``) runs the bundle's rules and playbooks."""
    from agent._edge import EdgeError
    from kmod import Policy, PolicyError
    from kmod._reload import PolicyFile

    inbox = ctx.socket(zmq.PULL, connect=bundles, codec=Codec(wire.HiveMessage), topic="")
    out = ctx.socket(zmq.PUSH, connect=results, codec=Codec(wire.AgentMessage), topic=f"{ctx.name}.status")
    stats = ctx.stats.extra
    stats.update(bundles_applied=0, bundles_refused=0, bundle_version=keeper.version if keeper else 0)
    task_status.started()

    async def status(version: int, ok: bool, detail: str) -> None:
        running = keeper.version if keeper else 0
        stats["bundle_version"] = running
        stats["bundles_applied" if ok else "bundles_refused"] = int(stats["bundles_applied" if ok else
                                                                         "bundles_refused"]) + 1
        log_event(ctx.log, "bundle.applied" if ok else "bundle.refused", logging.WARNING if ok else logging.ERROR,
                  version=version, running=running, detail=detail)
        await out.send(wire.BundleStatus(version=version, ok=ok, detail=wire.fit_text(detail), running=running))

    async def in_force(policy: Policy) -> bool:
        source = PolicyFile.of(link.path)
        with trio.move_on_after(apply_timeout):
            while source.applied is None or source.applied.digest != policy.digest:
                await trio.sleep(0.02)
            return True
        return False

    async def take(msg: wire.PolicyBundle) -> None:
        if keeper is None:
            await status(msg.version, False, "this agent pinned no bundle key at enrollment "
                         "(enroll again, or copy the hive's keys/bundle.pub into its keys folder)")
            return
        if msg.version == keeper.version:  # sent again (a reconnect raced our status): nothing to do
            await status(msg.version, True, "already running it")
            return
        try:
            bundle = keeper.offer(msg.signed)
        except fleet.BundleRefused as e:
            await status(msg.version, False, str(e))
            return
        edge_said = ""
        if edge is not None:
            try:
                edge_said = edge.install(bundle, link.folder)
            except EdgeError as e:
                keeper.refuse(bundle, str(e))
                await status(bundle.version, False, f"its edge rules cannot run: {e}")
                return
        done = "no policy in it: the sensor's own stays"
        if bundle.policy:
            try:
                policy = Policy.parse(bundle.policy, origin=f"bundle v{bundle.version}")
            except PolicyError as e:
                keeper.refuse(bundle, str(e))
                await status(bundle.version, False, f"its policy does not load: {e}")
                return
            before = link.target()
            path = await trio.to_thread.run_sync(link.write, bundle)
            if sensor:
                link.point(path)
                if not await in_force(policy):
                    if before is not None:
                        link.point(before)
                    path.unlink(missing_ok=True)
                    why = f"the sensor did not put its policy in force within {apply_timeout:g} s " \
                          "(its policy_refused notice says why); rolled back"
                    keeper.refuse(bundle, why)
                    if edge is not None:
                        edge.install(keeper.running, link.folder)  # loaded before: it loads again
                    await status(bundle.version, False, why)
                    return
                done = f"policy in force (sha256 {policy.digest[:12]}, {len(policy.rules)} rules)"
            else:
                link.point(path)
                done = "no sensor here: its policy is kept, not enforced"
        await trio.to_thread.run_sync(keeper.keep, msg.signed, bundle)
        link.prune({p for p in (link.target(), link.bundle_file(bundle.version)) if p is not None}
                   | ({link.bundle_file(prev.version)} if (prev := keeper.previous()) is not None else set()))
        await status(bundle.version, True, f"{bundle.name} v{bundle.version}: {done}; "
                     + (edge_said or f"{len(bundle.rules)} rules and {len(bundle.playbooks)} playbooks kept"))

    while True:
        for msg in await inbox.recv():
            if isinstance(msg, wire.PolicyBundle):
                await take(msg)
