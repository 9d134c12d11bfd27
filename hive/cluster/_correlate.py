"""Correlation in a cluster: partitioned by its key, each partition owned by
one node through a lease, its state rebuilt from the stream by a new owner.

The host correlator's key is the hive as a whole: a lateral movement ties
a connect on one host to an exec on another, a spread ties the same binary
on any hosts, an incident grows across them, so no finer key keeps each
correlation's inputs together.  Its input therefore goes to one partition
(``HOST_PARTITION``) and one node at a time correlates; correlators with a
finer key (per host, per user) would map it here with ``partition_of``."""

from __future__ import annotations

from typing import Any

from .._messages import Ingest, Repeat

CORRELATE_PARTITIONS = 1
"""Partitions of the host correlator's input (see the module's note)."""
HOST_PARTITION = 0


def correlate_partition(msg: Any) -> int:
    """The partition a sentinel's output goes to."""
    return HOST_PARTITION


def correlate_id(msg: Any) -> str:
    """JetStream's message id of a sentinel's output: a sentinel that
    evaluates a batch again (its first attempt's ack was lost) publishes
    copies JetStream drops."""
    if isinstance(msg, Ingest):
        return f"{msg.agent}/{msg.stream}/{msg.seq}" if msg.seq else ""
    if isinstance(msg, Repeat):
        return f"repeat/{msg.alert}/{msg.time}/{msg.count}"
    return f"alert/{getattr(msg, 'id', '')}"
