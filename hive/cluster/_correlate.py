"""Correlation in a cluster: partitioned by its key, each partition owned by
one node through a lease, its state rebuilt from the stream by a new owner.

Sigma correlation rules are keyed by (correlation rule, group-by values): a
sentinel sends each hit a correlation reads (a ``SigmaHit``) to partition
``sigma_partition`` of ``[cluster] correlate_partitions``, so every hit of
one group meets in one window on one node.

The host correlator's key is the hive as a whole: a lateral movement ties
a connect on one host to an exec on another, a spread ties the same binary
on any hosts, an incident grows across them, so no finer key keeps each
correlation's inputs together.  Its input (events, and every alert, for
incidents) therefore goes to ``HOST_PARTITION`` alone; Sigma correlations'
alerts go there too, as the sentinels' do."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from .._messages import Ingest, Repeat, SigmaHit

HOST_PARTITION = 0

_key_encoder = msgspec.json.Encoder(enc_hook=repr)


def sigma_partition(correlation: str, group: list[Any] | tuple, partitions: int) -> int:
    """The partition of a Sigma correlation's group: the same in every
    process and on every node (a hash of its encoding, not ``hash()``)."""
    data = _key_encoder.encode([correlation, list(group)])
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % partitions


def correlate_partition(msg: Any, partitions: int) -> int:
    """The partition a message for correlation goes to."""
    if isinstance(msg, SigmaHit):
        return sigma_partition(msg.correlation, msg.group, partitions)
    return HOST_PARTITION


def correlate_id(msg: Any) -> str:
    """JetStream's message id of a message for correlation: a sentinel that
    evaluates a batch again (its first attempt's ack was lost), or a new
    partition owner taking an input again, publishes copies JetStream drops."""
    if isinstance(msg, Ingest):
        return f"{msg.agent}/{msg.stream}/{msg.seq}" if msg.seq else ""
    if isinstance(msg, SigmaHit):
        return f"hit/{msg.key}" if msg.key else ""
    if isinstance(msg, Repeat):
        return f"repeat/{msg.alert}/{msg.time}/{msg.count}"
    return f"alert/{getattr(msg, 'id', '')}"
