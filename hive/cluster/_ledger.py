"""The router's half of exactly-once delivery in a cluster, as a plain object.

A clustered router does not store batches: it publishes them to JetStream and
acknowledges the agent once JetStream holds them; store writers on any node
store them later, each only if its seq is next for its (agent, stream).  An
agent's ack is cumulative (everything up to seq may be deleted), and
publishes finish in any order, so the router acks an agent's stream only up
to the end of the unbroken run of held batches, starting from what the
store already has (an agent may come to this router from another, whose
batches are in JetStream or stored by now).

A batch is published only when it continues that run (its predecessor is
held, or on its way, or stored): otherwise its predecessor may be lost
for good, and the store would wait for it forever.  The answer to such a
batch is the store's answer to a gap, ``Ack(last, resend=True)``, after the
caller has looked at the store once more (:meth:`learn`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Key = tuple[str, str]
"""(agent, stream)"""


class Offer(enum.Enum):
    PUBLISH = "publish"
    """Publish it; :meth:`AckLedger.published` says what to ack after."""
    ACK = "ack"
    """Held or stored already: ack ``acked`` again, publish nothing."""
    WAIT = "wait"
    """On its way already (or held past a hole): nothing to do now."""
    GAP = "gap"
    """Its predecessor is nowhere this router knows: look at the store
    (:meth:`AckLedger.learn`) and offer again; still a gap, ask for a resend."""
    UNKNOWN = "unknown"
    """Never seen this stream: :meth:`AckLedger.learn` its stored mark first."""


@dataclass
class _Stream:
    acked: int
    """Every seq up to this one is held by JetStream or stored."""
    publishing: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)
    """Published, above ``acked`` and past a hole (a failed publish)."""


class AckLedger:
    def __init__(self) -> None:
        self._streams: dict[Key, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def acked(self, key: Key) -> int:
        s = self._streams.get(key)
        return s.acked if s else 0

    def learn(self, key: Key, stored: int) -> int | None:
        """The store holds every batch of ``key`` up to ``stored``.  Returns
        the new ack if that moved it, else None."""
        s = self._streams.get(key)
        if s is None:
            self._streams[key] = _Stream(acked=stored)
            return None
        if stored <= s.acked:
            return None
        s.acked = stored
        s.publishing = {q for q in s.publishing if q > stored}
        return self._advance(s) or stored

    def offer(self, key: Key, seq: int) -> Offer:
        s = self._streams.get(key)
        if s is None:
            return Offer.UNKNOWN
        if seq <= s.acked:
            return Offer.ACK
        if seq in s.publishing or seq in s.held:
            return Offer.WAIT
        if seq == s.acked + 1 or seq - 1 in s.publishing or seq - 1 in s.held:
            s.publishing.add(seq)
            return Offer.PUBLISH
        return Offer.GAP

    def published(self, key: Key, seq: int, ok: bool) -> int | None:
        """A publish of ``seq`` finished (``ok``: JetStream holds it).
        Returns the new ack if this moved it, else None."""
        s = self._streams.get(key)
        if s is None or seq not in s.publishing:
            return None
        s.publishing.discard(seq)
        if not ok or seq <= s.acked:
            return None  # the agent sends it again after its ack timeout
        s.held.add(seq)
        return self._advance(s)

    def blocked(self) -> list[Key]:
        """Streams with held batches past a hole: the store may have
        filled it (another router published it), worth a :meth:`learn`."""
        return [k for k, s in self._streams.items() if s.held]

    def forget(self, key: Key) -> None:
        """An agent that left: its stream is learned again from the store if it comes back."""
        self._streams.pop(key, None)

    @staticmethod
    def _advance(s: _Stream) -> int | None:
        start = s.acked
        while s.acked + 1 in s.held:
            s.acked += 1
            s.held.discard(s.acked)
        s.held = {q for q in s.held if q > s.acked}
        return s.acked if s.acked != start else None
