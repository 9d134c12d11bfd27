"""Events against the peers' indicators in force: a plain object the herd
actor rebuilds from the store and feeds events to.

An exec matches by its executable's SHA-256 (the relay's enrichment), a
connect by its destination address (exactly, or inside a network).  An
event refused by a block the herd pushed (its ``rule`` is that block's
name on the agent) matches the indicator behind the block, even where the
refused exec never got a digest.  Each match is an alert that names the
peers and their indicator ids."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from typing import Any

import wire

from ._intel import Entry, Source

RULE_ID = "herd-indicator"


class Matcher:
    def __init__(self, table: Mapping[str, tuple[Entry, list[Source]]],
                 blocks: Mapping[str, str] | None = None) -> None:
        """``table``: key -> (entry, live sources); ``blocks``: the rule name
        an agent gave each block the herd sent (its result says) -> the entry key."""
        self.table = dict(table)
        self.hashes = {e.value: k for k, (e, _) in self.table.items() if e.kind == "sha256"}
        self.addresses = {e.value: k for k, (e, _) in self.table.items()
                          if e.kind in ("ipv4", "ipv6") and "/" not in e.value}
        self.networks = [(ipaddress.ip_network(e.value), k) for k, (e, _) in self.table.items()
                         if e.kind in ("ipv4", "ipv6") and "/" in e.value]
        self.blocks = dict(blocks or {})

    def __len__(self) -> int:
        return len(self.table)

    def match(self, event: Any) -> tuple[Entry, list[Source]] | None:
        key = None
        if event.verdict == "block" and event.rule in self.blocks:
            key = self.blocks[event.rule]
        elif isinstance(event, wire.Exec) and event.sha256:
            key = self.hashes.get(event.sha256.lower())
        elif isinstance(event, wire.Connect) and event.address:
            key = self.addresses.get(event.address)
            if key is None and self.networks:
                try:
                    ip = ipaddress.ip_address(event.address)
                except ValueError:
                    return None
                key = next((k for net, k in self.networks if ip.version == net.version and ip in net), None)
        return self.table.get(key) if key else None

    @staticmethod
    def alert(event: Any, entry: Entry, sources: list[Source]) -> wire.Alert:
        enforced = any(s.trust == "enforce" for s in sources)
        named = ", ".join(f"{s.peer}'s {s.indicator}" for s in sources)
        what = (f"exec of sha256 {entry.value}" if isinstance(event, wire.Exec) else f"connect to {event.address}")
        blocked = event.verdict == "block"
        title = f"Herd: {what} matches {named}" + (" (blocked)" if blocked else "")
        detail = (f"indicator {entry.key} from " + "; ".join(
            f"peer {s.peer} ({s.trust}) indicator {s.indicator} confidence {s.confidence}" for s in sources)
            + (f"; the agent refused it (rule {event.rule})" if blocked else ""))
        return wire.Alert(
            id=str(uuid.uuid4()), rule_id=RULE_ID, title=title[:512], level="high" if enforced else "medium",
            tags=["herd", *sorted({f"herd.peer.{s.peer}" for s in sources}), *(
                ["herd.enforce"] if enforced else ["herd.observe"])],
            agent=event.agent, time=event.time, events=[event], detail=detail[:4096])
