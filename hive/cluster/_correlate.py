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

import collections
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .._messages import Ingest, Packed, Repeat, SigmaHit

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


SEEN_MOST = 1 << 19
"""Ids an owner remembers at most per partition (a hashed id and its time:
about 100 bytes each, some 50 MiB); past it the oldest are forgotten before
their window ends.  Half a million is over an hour of one sentinel's items
at 100 agents, a minute at 10,000."""


class Seen:
    """The item ids a partition's owner took within JetStream's duplicate
    window: a packed item whose id is here is a copy (its batch evaluated
    again by another sentinel, so in another pack, which JetStream does
    not drop).  Bounded in time (``window``) and in number (``most``)."""

    def __init__(self, window: float, most: int = SEEN_MOST) -> None:
        self.window = window
        self.most = most
        # hash() is enough: one process's set, and a collision in 2**64 only drops one item.
        self._at: collections.OrderedDict[int, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def first(self, ident: str, now: float) -> bool:
        """Whether ``ident`` is new (and remember it); '' is always new."""
        if not ident:
            return True
        at = self._at
        horizon = now - self.window  # forgotten first: past the window it is no copy
        while at:
            k, t = next(iter(at.items()))
            if t >= horizon:
                break
            del at[k]
        key = hash(ident)
        if key in at:
            return False
        at[key] = now
        if len(at) > self.most:
            at.popitem(last=False)
        return True


@dataclass
class Taken:
    msgs: list[Any] = field(default_factory=list)
    undecodable: int = 0
    """Messages or packed items that were not a message."""
    refused: int = 0
    """Packs whose ids do not match their items (none of them taken)."""
    copies: int = 0
    """Packed items dropped as already taken."""


def take_correlated(codec: Any, data: Sequence[bytes], seen: Seen, now: float) -> Taken:
    """The messages for correlation in what a partition's owner fetched
    (or replays): each alone (an owner's own, or a sentinel without
    packing), or packed by a sentinel with their ids, a copy dropped."""
    from actors import DecodeError

    out = Taken()
    for d in data:
        try:
            msg = codec.decode(d)
        except DecodeError:
            out.undecodable += 1
            continue
        if not isinstance(msg, Packed):
            # Alone (JetStream dropped a copy by its id): it may meet a packed
            # copy (a sentinel with and one without packing, in an upgrade).
            if seen.first(correlate_id(msg), now):
                out.msgs.append(msg)
            else:
                out.copies += 1
            continue
        if msg.ids and len(msg.ids) != len(msg.batches):
            out.refused += 1  # which id is whose is unknown: none of it is safe to take
            continue
        for i, item in enumerate(msg.batches):
            if msg.ids and not seen.first(msg.ids[i], now):
                out.copies += 1
                continue
            try:
                m = codec.decode(item)
            except DecodeError:
                m = None
            if m is None or isinstance(m, Packed):
                out.undecodable += 1
            else:
                out.msgs.append(m)
    return out
