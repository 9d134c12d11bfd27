"""Many agents' batches in one JetStream message, as plain functions.

A JetStream message costs the same whatever it holds (a publish and its
acknowledgement, a fetch, an ack, each through the NATS client's loop and
the bridge): about 2.6 ms of hive CPU for a batch's three hops, measured
with 10,000 agents sending a 10-event batch a second each.  So routers pack
the batches that are ready into one ``Packed`` (hive._messages) per ingest
partition, and store writers pass what they stored on to detection packed
the same way: the cost is paid per pack.

A pack's items are Ingest frames as the internal codec encodes them, kept
as bytes: one malformed batch is refused alone and the others are read.
Exactly-once does not rest on JetStream's duplicate window (a batch sent
again may travel in another pack): the store's stream marks drop a copy.

Sentinels pack what they send to correlation the same way, one message per
partition per fetch, with each item's id in the pack (``Packed.ids``): the
partition's owner drops an item it took already (``_correlate.Seen``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors import Codec, DecodeError

from .._messages import Ingest, Packed

PACK_WAIT = 0.01
"""Seconds a router waits, after the first batch is ready, for others to
join it in the same packs (unless ``PACK_BYTES`` come sooner)."""
PACK_BYTES = 256 << 10
"""Bytes of batches one pack holds at most (one batch larger than this
goes alone), also the most a router gathers before publishing.  Bounds what
a writer (``FETCH`` packs at once) and a sentinel hold in memory."""
PAYLOAD_MARGIN = 4096
"""Bytes of a JetStream message's ``max_payload`` kept for its headers and
the pack's own framing."""
ITEM_OVERHEAD = 5
"""Bytes msgpack adds to each item (a bin header)."""


def batch_id(agent: str, stream: str, seq: int) -> str:
    """A batch's name, the same on every router and writer."""
    return f"{agent}/{stream}/{seq}"


def pack_id(ids: Sequence[str]) -> str:
    """A pack's JetStream message id, from the batches it holds: the same
    pack published twice (a writer that died between handing a pack back
    and acknowledging the one it came from) is dropped as a copy within the
    duplicate window.  '' (no id) if any item has none: the hive's own
    notices are never deduplicated."""
    if not ids or not all(ids):
        return ""
    return hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest()


def encode(codec: Codec, items: Sequence[bytes], ids: Sequence[str] = ()) -> bytes:
    return codec.encode(Packed(batches=list(items), ids=list(ids)))


@dataclass
class Pack:
    subject: str
    payload: bytes
    id: str
    members: list[int] = field(default_factory=list)
    """Indexes of the items (as given to :func:`packs`) it holds."""


def packs(codec: Codec, items: Sequence[tuple[str, bytes, str]], *, limit: int, most: int = PACK_BYTES,
          with_ids: bool = False) -> tuple[list[Pack], list[int]]:
    """(subject, encoded Ingest, batch id) items as packs, one subject's
    items in their order, each pack at most ``most`` bytes of items (one
    larger item alone) and never over ``limit`` (the bus's largest
    message).  ``with_ids``: each pack carries its items' ids too
    (``Packed.ids``).  Returns the packs and the indexes of the items too
    large to publish at all."""
    by_subject: dict[str, list[int]] = {}
    for i, (subject, _, _) in enumerate(items):
        by_subject.setdefault(subject, []).append(i)
    out: list[Pack] = []
    too_large: list[int] = []
    room = limit - PAYLOAD_MARGIN
    for subject, indexes in by_subject.items():
        group: list[int] = []
        size = 0
        for i in indexes:
            n = len(items[i][1]) + ITEM_OVERHEAD + (len(items[i][2]) + ITEM_OVERHEAD if with_ids else 0)
            if n > room:
                too_large.append(i)
                continue
            if group and size + n > most:
                out.append(_pack(codec, subject, items, group, with_ids))
                group, size = [], 0
            group.append(i)
            size += n
        if group:
            out.append(_pack(codec, subject, items, group, with_ids))
    return out, too_large


def _pack(codec: Codec, subject: str, items: Sequence[tuple[str, bytes, str]], group: list[int],
          with_ids: bool = False) -> Pack:
    ids = [items[i][2] for i in group]
    return Pack(subject, encode(codec, [items[i][1] for i in group], ids if with_ids else ()), pack_id(ids), group)


@dataclass
class Unpacked:
    batches: list[tuple[Ingest, bytes]]
    """Each batch with its encoded bytes (passed on without encoding again)."""
    bad: int = 0
    """Items that were not an Ingest frame (or an Ingest a writer refuses)."""
    packed: bool = False
    """A pack, not a single Ingest."""


def unpack(codec: Codec, data: bytes, *, agents_only: bool = False) -> Unpacked:
    """The batches of one message: a pack, or one Ingest as a router or
    writer without packing publishes it (a node of an older version during
    a rolling upgrade).  ``agents_only``: a batch without a seq (the hive's
    own, never sent to a writer) counts as bad.  Raises ``DecodeError`` if
    the message itself is not readable."""
    msg = codec.decode(data)
    if isinstance(msg, Ingest):
        ok = not agents_only or msg.seq > 0
        return Unpacked([(msg, data)] if ok else [], 0 if ok else 1)
    if not isinstance(msg, Packed):
        raise DecodeError(f"a {type(msg).__name__}, not batches")
    out = Unpacked([], packed=True)
    for item in msg.batches:
        try:
            b = codec.decode(item)
        except DecodeError:
            b = None
        if isinstance(b, Ingest) and (b.seq > 0 or not agents_only):
            out.batches.append((b, item))
        else:
            out.bad += 1
    return out


def chunks(items: Sequence[tuple[Any, bytes]], most: int = PACK_BYTES) -> Iterator[list[tuple[Any, bytes]]]:
    """(anything, encoded) items in runs of at most ``most`` bytes (one larger item alone)."""
    run: list[tuple[Any, bytes]] = []
    size = 0
    for item in items:
        n = len(item[1]) + ITEM_OVERHEAD
        if run and size + n > most:
            yield run
            run, size = [], 0
        run.append(item)
        size += n
    if run:
        yield run
