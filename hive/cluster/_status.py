"""What ``immune-node status`` shows of a cluster: its nodes and their
roles, who owns each partition, and how far each work queue is behind.
Read with :func:`read_cluster`; :func:`cluster_lines` (plain) lays it out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._bus import (CORRELATE_STREAM, DETECT_STREAM, INGEST_STREAM, LEASES_BUCKET, SENTINELS, WRITERS, Bus,
                   ClusterError, ClusterSpec)
from ._bridge import Bridge
from ._leases import LeaseTable

KINDS = ("ingest", "correlate")
"""The kinds of partition, by the lease bucket they live in."""


@dataclass
class ClusterView:
    nodes: dict[str, set[str]] = field(default_factory=dict)
    """Live node -> what it announced itself for (its role, by kind)."""
    owners: dict[str, dict[int, str]] = field(default_factory=dict)
    """Kind -> partition -> owner."""
    partitions: dict[str, int] = field(default_factory=dict)
    lag: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Queue -> (waiting, taken and not yet acknowledged)."""


async def read_cluster(spec: ClusterSpec) -> ClusterView:
    view = ClusterView(partitions={"ingest": spec.partitions, "correlate": spec.correlate_partitions})
    async with Bridge("nats-status") as bridge:
        bus = await Bus.connect(bridge, spec.servers, f"{spec.node}.status")
        try:
            for kind in KINDS:
                try:
                    entries = await bus.kv_items(f"{LEASES_BUCKET}_{kind}")
                except ClusterError:
                    entries = {}
                leases, live = LeaseTable.read(entries)
                view.owners[kind] = {p: lease.owner for p, lease in leases.items()}
                for key, (value, _) in entries.items():
                    if key.startswith("node."):
                        view.nodes.setdefault(key[5:], set()).add(f"{kind}:{value.decode(errors='replace')}")
            queues = [(f"ingest p{p}", INGEST_STREAM, f"{WRITERS}-{p}") for p in range(spec.partitions)]
            queues += [("detect", DETECT_STREAM, SENTINELS)]
            queues += [(f"correlate p{p}", CORRELATE_STREAM, f"correlate-{p}") for p in range(spec.correlate_partitions)]
            for name, stream, durable in queues:
                try:
                    view.lag[name] = await bus.pending(stream, durable)
                except ClusterError:
                    pass  # not made yet: nobody took that partition so far
        finally:
            await bus.close()
    return view


def cluster_lines(view: ClusterView) -> list[str]:
    out = [f"cluster: {len(view.nodes)} live node(s)"]
    for node in sorted(view.nodes):
        roles = sorted({r.split(":", 1)[1] for r in view.nodes[node] if ":" in r} - {""})
        held = {kind: sorted(p for p, o in view.owners.get(kind, {}).items() if o == node) for kind in KINDS}
        parts = "  ".join(f"{kind} {_ranges(ps)}" for kind, ps in held.items() if ps)
        out.append(f"  {node:<20} {','.join(roles) or '?':<12} {parts or 'no partitions'}")
    for kind in KINDS:
        n = view.partitions.get(kind, 0)
        owners = view.owners.get(kind, {})
        by_owner: dict[str, list[int]] = {}
        for p in range(n):
            if p in owners:
                by_owner.setdefault(owners[p], []).append(p)
        held = ", ".join(f"{o} {_ranges(ps)}" for o, ps in sorted(by_owner.items()))
        out.append(f"  {kind} partitions: {n}" + (f" ({held})" if held else ""))
        free = [p for p in range(n) if p not in owners]
        if free:
            out.append(f"  {kind} partitions without an owner: {_ranges(free)}")
    if view.lag:
        out.append("queues (waiting / taken, not yet acknowledged):")
        for name, (waiting, taken) in view.lag.items():
            out.append(f"  {name:<16} {waiting:>8} / {taken}")
    return out


def _ranges(ps: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    out, start = [], None
    for i, p in enumerate(ps):
        if start is None:
            start = p
        if i + 1 == len(ps) or ps[i + 1] != p + 1:
            out.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ",".join(out)
