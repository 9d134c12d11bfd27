"""Partitions owned through leases in JetStream KV, as plain objects.

Work that must stay in order, or whose state must live in one place (an
agent's stream for a store writer, a correlation key's state), is split
into ``P`` partitions by a stable hash; each partition is owned by one node
at a time through a lease: a KV key ``p.N`` whose value names the owner.
The bucket's entries expire ``lease`` seconds after their last write (the
server's clock: no skew between nodes), so a dead owner's lease lapses and
another node takes it.  Every write is conditional on the revision last
read, so two nodes never both think they took one: the revision is the
fencing token (a decision made under a revision that is no longer the
latest must not take effect).  Live nodes announce themselves with keys
``node.NAME`` in the same bucket, so each knows its fair share,
ceil(P / live nodes); a node prefers partitions by rendezvous hashing, so
nodes rarely race for the same free one and partitions move little when a
node comes or goes.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition of a key, the same in every process and on every node
    (not Python's ``hash``, which is salted per process)."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % partitions


def lease_key(p: int) -> str:
    return f"p.{p}"


def node_key(node: str) -> str:
    return f"node.{node}"


def _preference(node: str, p: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{node}/{p}".encode(), digest_size=8).digest(), "big")


@dataclass
class Plan:
    """What a node does with the leases this round."""

    renew: dict[int, int] = field(default_factory=dict)
    """Partition -> the revision it holds: write again over it."""
    claim: list[int] = field(default_factory=list)
    """Free partitions to take (create: only if nobody has)."""
    release: dict[int, int] = field(default_factory=dict)
    """Partition -> revision: more than its share; let another take it."""
    short: int = 0
    """Partitions of our share not free yet but held by a node over its
    share, which releases them at its next round."""
    gone: set[int] = field(default_factory=set)
    """Held by us no more: the bucket names another owner or revision, or
    nobody (the lease lapsed)."""


@dataclass
class Lease:
    owner: str
    revision: int


class LeaseTable:
    """One node's view of one kind of partition (``ingest``, ``correlate``)."""

    def __init__(self, node: str, partitions: int) -> None:
        self.node, self.partitions = node, partitions
        self.owned: dict[int, int] = {}
        """Partition -> the revision of our lease on it, as last written."""

    @staticmethod
    def read(entries: Mapping[str, tuple[bytes, int]]) -> tuple[dict[int, Lease], set[str]]:
        """(leases by partition, live nodes) from the bucket's entries."""
        leases, nodes = {}, set()
        for key, (value, revision) in entries.items():
            if key.startswith("p.") and key[2:].isdigit() and value:
                leases[int(key[2:])] = Lease(value.decode(errors="replace"), revision)
            elif key.startswith("node."):
                nodes.add(key[5:])
        return leases, nodes

    def share(self, live: Iterable[str]) -> int:
        n = len(set(live) | {self.node})
        return math.ceil(self.partitions / n)

    def plan(self, leases: Mapping[int, Lease], live: Iterable[str]) -> Plan:
        out = Plan()
        share = self.share(live)
        # Ours as the bucket says: a lease we think we hold that now names
        # another owner, or another revision, is lost.
        mine = {p: l.revision for p, l in leases.items() if l.owner == self.node and self.owned.get(p) == l.revision}
        out.gone = set(self.owned) - set(mine)
        keep = sorted(mine, key=lambda p: -_preference(self.node, p))
        for p in keep[:share]:
            out.renew[p] = mine[p]
        for p in keep[share:]:
            out.release[p] = mine[p]
        room = share - len(out.renew)
        if room > 0:
            free = [p for p in range(self.partitions) if p not in leases]
            free.sort(key=lambda p: -_preference(self.node, p))
            out.claim = free[:room]
            held = Counter(lease.owner for lease in leases.values())
            over = sum(max(0, n - share) for n in held.values())
            out.short = min(room - len(out.claim), over)
        return out

    def applied(self, plan: Plan, renewed: Mapping[int, int | None], claimed: Mapping[int, int | None]
                ) -> tuple[set[int], set[int]]:
        """Record the outcome of ``plan``'s writes (a new revision, or None
        where the conditional write failed).  Returns (gained, lost)."""
        before = set(self.owned)
        for p in (*plan.release, *plan.gone):
            self.owned.pop(p, None)
        for p, rev in {**renewed, **claimed}.items():
            if rev is None:
                self.owned.pop(p, None)
            else:
                self.owned[p] = rev
        now = set(self.owned)
        return now - before, before - now

    def lose_all(self) -> set[int]:
        """The bucket cannot be reached: hold nothing (another node may take
        them once the leases lapse)."""
        lost = set(self.owned)
        self.owned.clear()
        return lost

    def holds(self, p: int, revision: int | None = None) -> bool:
        """Whether we hold ``p`` (under ``revision``, if given: the fence)."""
        return p in self.owned and (revision is None or self.owned[p] == revision)
