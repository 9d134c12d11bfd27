"""The registry actor: the agents table, kept current from the router's
signs of life, written once per interval for all agents."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Context, log_event

from ._actors import INGEST, SEEN, internal_codec
from ._messages import AgentSeen, Ingest
from ._store import AgentRow, Store, StoreError


async def registry_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                         heartbeat_timeout: float = 30.0, interval: float = 1.0) -> None:
    """Keeps the agents table current; an agent that goes silent is marked
    offline, and that (and its return) is itself an event.  Signs of life
    are gathered for ``interval`` seconds and written in one transaction
    for all agents; when the store cannot write (a full disk), they are kept,
    merged with newer ones, and written at the next try.  ``shared``: other
    hive nodes write the same store (a cluster), so an agent this node has
    not heard from is marked offline only if no node has."""
    inbox = await ctx.bind(ctx.socket(zmq.PULL, codec=internal_codec()), SEEN)
    store = await trio.to_thread.run_sync(Store, path)  # may wait on a database server
    notices = ctx.socket(zmq.PUSH, connect=INGEST, codec=internal_codec())
    presence = Presence(heartbeat_timeout, await trio.to_thread.run_sync(store.agents), now=time.time())
    versions = WireVersions()
    ctx.stats.extra.update(writes=0, store_errors=0, wire_mismatch=0)
    task_status.started()

    async def notice(agent: str, what: str, detail: str, level: int = logging.INFO) -> None:
        log_event(ctx.log, f"agent.{what.removeprefix('agent_')}", level, agent=agent, detail=detail)
        await notices.send(Ingest(agent=agent, events=[wire.Notice(time=time.time_ns(), what=what, detail=detail)]))

    async def write() -> None:
        while True:
            await trio.sleep(interval)
            seen, gone = presence.due(time.time())
            if not (seen or gone):
                continue
            try:
                # Another hive node sharing the store may have seen an agent
                # this one misses: it is offline only if nobody has.
                came_back, gone = await trio.to_thread.run_sync(store.presence, seen, gone,
                                                                time.time() - heartbeat_timeout)
            except StoreError as e:
                presence.retry(seen, gone)
                ctx.stats.extra["store_errors"] = int(ctx.stats.extra["store_errors"]) + 1
                ctx.stats.last_error = str(e)
                ctx.throttle.event("store_error", "registry.write_failed", logging.ERROR, reason=str(e),
                                   agents=len(seen) + len(gone))
                continue
            ctx.stats.extra["writes"] = int(ctx.stats.extra["writes"]) + 1
            for agent in gone:
                await notice(agent, "agent_offline", f"no message for {heartbeat_timeout:g}s")
            for m in seen:
                if m.agent in came_back:
                    await notice(m.agent, "agent_online", m.address)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            while True:
                for m in await inbox.recv():
                    if isinstance(m, AgentSeen):
                        presence.seen(m)
                        if m.hello is None:
                            continue
                        if versions.hello(m.agent, m.hello.wire_version):
                            await notice(m.agent, "wire_version_mismatch", versions.why(m.hello.wire_version),
                                         logging.WARNING)
                        ctx.stats.extra["wire_mismatch"] = len(versions.mismatched)
    finally:
        store.close()


class Presence:
    """Which agents are online, and what the registry has yet to write: the
    latest sign of life of each agent (merged: a Hello or a Heartbeat in an
    earlier one is kept), and the agents silent for longer than
    ``timeout`` seconds."""

    def __init__(self, timeout: float, rows: Iterable[AgentRow], now: float) -> None:
        self.timeout = timeout
        # Agents online before a restart get the full timeout.
        self.last_seen: dict[str, float] = {a.id: now for a in rows if a.online and a.last_seen}
        self.online: set[str] = set(self.last_seen)
        self.pending: dict[str, AgentSeen] = {}
        self.going: set[str] = set()

    def seen(self, m: AgentSeen) -> None:
        self.last_seen[m.agent] = m.time / 1e9
        self.going.discard(m.agent)
        self.pending[m.agent] = _merge(self.pending.get(m.agent), m)

    def due(self, now: float) -> tuple[list[AgentSeen], list[str]]:
        """What to write now: signs of life, and agents that went offline."""
        for agent in [a for a in self.online if now - self.last_seen.get(a, 0) > self.timeout]:
            self.online.discard(agent)
            self.going.add(agent)
        seen, self.pending = list(self.pending.values()), {}
        gone, self.going = sorted(self.going), set()
        self.online.update(m.agent for m in seen)
        return seen, gone

    def retry(self, seen: list[AgentSeen], gone: list[str]) -> None:
        """A write of ``due()``'s failed: write it with the next."""
        for m in seen:
            self.pending[m.agent] = _merge(m, self.pending.get(m.agent))
        self.going.update(a for a in gone if a not in self.pending)


class WireVersions:
    """The wire version each agent said in its latest Hello.  One other than
    the hive's is worth reporting once per agent and version, not at each
    Hello (an agent says hello at every reconnect)."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}
        self.mismatched: set[str] = set()
        """Agents whose latest Hello said another version than the hive's."""
        self._reported: dict[str, int] = {}

    def hello(self, agent: str, version: int) -> bool:
        """Record ``agent``'s version; True if it is to be reported."""
        self.latest[agent] = version
        if wire.COMMANDS_SINCE <= version <= wire.WIRE_VERSION:
            self.mismatched.discard(agent)
            return False
        self.mismatched.add(agent)
        if self._reported.get(agent) == version:
            return False
        self._reported[agent] = version
        return True

    @staticmethod
    def why(version: int) -> str:
        fix = "upgrade the agent" if version < wire.COMMANDS_SINCE else "upgrade the hive first (hives before agents)"
        return (f"the agent speaks wire version {version}, the hive {wire.WIRE_VERSION}, which takes "
                f"{wire.COMMANDS_SINCE} to {wire.WIRE_VERSION}: {fix}")

    @classmethod
    def unspoken(cls, version: int | None) -> str:
        """Why the hive takes nothing from and sends nothing to an agent
        whose latest Hello said ``version`` (None: none yet), or ""."""
        if version is None or wire.COMMANDS_SINCE <= version <= wire.WIRE_VERSION:
            return ""
        return cls.why(version)

    @classmethod
    def refusal(cls, version: int | None) -> str | None:
        """Why no command may go to such an agent, or None if one may."""
        why = cls.unspoken(version)
        return f"refused: {why}" if why else None


def _merge(old: AgentSeen | None, new: AgentSeen | None) -> AgentSeen:
    """``new``, keeping what only ``old`` said (its Hello, Heartbeat, bundle status, address)."""
    if old is None:
        return new
    if new is None:
        return old
    return AgentSeen(agent=new.agent, time=max(old.time, new.time), address=new.address or old.address,
                     hello=new.hello or old.hello, heartbeat=new.heartbeat or old.heartbeat,
                     bundle=new.bundle or old.bundle)
