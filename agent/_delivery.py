"""What the uplink sends next and what the hive's acks mean: the agent's
half of exactly-once delivery, as a plain object over a :class:`Spool`.

The hive stores a batch only if its seq is the next one for (agent, stream),
acknowledges lower ones again without storing them, and answers a gap with
``Ack(seq=last_stored, resend=True)``.  So the agent:

* sends durable batches in order, at most ``window`` unacknowledged;
* deletes what an ack covers (the spool does, on ``ack``);
* on a resend request, when acks stall for ``ack_timeout`` seconds, or on a
  new connection, goes back to the first unacknowledged batch.

A gap of the agent's own (batches dropped because the spool was full, or
damaged on disk) cannot be filled.  The agent then stops sending and sends
one *probe* (the oldest batch it still holds) to learn how far the hive got:
copies of the missing batches sent before the drop may still be on their way
and be stored.  When the hive has answered and then been quiet for
``ack_timeout`` while still missing the batch after its last stored one, the
agent starts a new stream whose seq 1 is the oldest batch it holds.  The old
stream cannot grow any more (its next batch is gone), so the new stream
repeats nothing the hive stored.

Assumptions: the transport loses messages only with their connection (true
of ZeroMQ over TCP) and delivers each connection's in order; acks name the
current stream, others are stale and ignored.
"""

from __future__ import annotations

import logging

import wire
from actors import get_logger, log_event

from ._spool import Spool


class _Gap:
    """The spool cannot send the batch after the last acknowledged one."""

    __slots__ = ("heard", "certain", "probe")

    def __init__(self, now: float, certain: bool) -> None:
        self.heard = now
        """When the hive last answered (or the wait began)."""
        self.certain = certain
        """The hive's latest answer says it has only what we acknowledged."""
        self.probe = True
        """A probe is to be sent."""


class Delivery:
    def __init__(self, spool: Spool, *, window: int = 64, ack_timeout: float = 5.0,
                 log: logging.Logger | None = None) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.spool = spool
        self.window = window
        self.ack_timeout = ack_timeout
        self.log = log or get_logger("agent.delivery")
        self.next_seq = spool.acked + 1
        """The next seq to send."""
        self._since = 0.0
        """When acks were last seen progressing (or sending began after a pause)."""
        self._rewound_to = 0
        self._rewound_at = float("-inf")
        self._gap: _Gap | None = None
        self.resends = 0
        self.restreams = 0
        self.stale_acks = 0

    @property
    def in_flight(self) -> int:
        return max(self.next_seq - 1 - self.spool.acked, 0)

    @property
    def waiting_on_gap(self) -> bool:
        return self._gap is not None

    def _has_gap(self) -> bool:
        return self.spool.first_unacked() != self.spool.acked + 1

    def take(self, now: float, max_batches: int = 64) -> list[tuple[int, bytes]]:
        """The frames to send now (seq, frame), within the window."""
        spool = self.spool
        if self._gap is None and self._has_gap():
            self._enter_gap(now, certain=False)
        gap = self._gap
        if gap is not None:
            if not gap.probe:
                return []
            frames = spool.pending(spool.first_unacked(), 1)
            gap.probe = False
            return frames
        room = min(self.window - self.in_flight, max_batches)
        if room <= 0 or self.next_seq > spool.last_seq:
            return []
        frames = spool.pending(self.next_seq, room)
        if frames:
            if self.in_flight == 0:
                self._since = now
            self.next_seq = frames[-1][0] + 1
        return frames

    def deadline(self) -> float | None:
        """When :meth:`check` has something to do if no ack comes first."""
        if self._gap is not None:
            return self._gap.heard + self.ack_timeout
        return self._since + self.ack_timeout if self.in_flight else None

    def check(self, now: float) -> bool:
        """Act on silence: rewind if acks stalled (lost batches, hive
        restarted); after a gap, probe again or start the new stream.
        True if something is to be sent."""
        gap = self._gap
        if gap is not None:
            if now - gap.heard < self.ack_timeout:
                return False
            if gap.certain:
                self._new_stream(now)
            else:  # the probe or its answer was lost
                gap.probe = True
                gap.heard = now
            return True
        if self.in_flight and now - self._since >= self.ack_timeout:
            self.rewind(now, "acks stalled")
            return True
        return False

    def rewind(self, now: float, reason: str, to: int | None = None) -> None:
        """Send again from ``to`` (default: the first unacknowledged batch)."""
        seq = to if to is not None else self.spool.acked + 1
        if self.in_flight or seq < self.next_seq:
            self.resends += 1
            log_event(self.log, "uplink.rewind", logging.INFO, seq=seq, sent=self.next_seq - 1,
                      reason=reason)
        self.next_seq = seq
        self._since = now
        self._rewound_to, self._rewound_at = seq, now

    def on_ack(self, ack: wire.Ack, now: float) -> None:
        spool = self.spool
        if ack.stream != spool.stream:
            self.stale_acks += 1
            return
        seq = ack.seq
        if seq > spool.last_seq:
            # The hive holds seqs of this stream we never made durable (a
            # spool restored from an old copy?): anything we number next
            # would be taken for a duplicate and lost.
            self._new_stream(now, f"the hive has seq {seq} but the spool ends at {spool.last_seq}")
            return
        if seq > spool.acked:
            spool.ack(seq)
            self._since = now
        # Either way the hive's last stored batch is `seq`; if that is below
        # what it acknowledged before, it lost data and wants what we deleted.
        regressed = ack.resend and seq < spool.acked
        says_last = seq == spool.acked or regressed
        gap = self._gap
        if gap is not None:
            gap.heard = now
            if says_last:
                if not regressed and not self._has_gap():
                    self._gap = None  # the missing batches had reached the hive after all
                    self.rewind(now, "gap filled")
                else:
                    gap.certain = True
            return
        if regressed or self._has_gap():
            self._enter_gap(now, certain=says_last)
        elif ack.resend:
            # The rest of a window sent before the rewind is answered with
            # the same request; a resend that is really lost again is caught
            # by the ack timeout.
            if not (seq + 1 == self._rewound_to and now - self._rewound_at < self.ack_timeout):
                self.rewind(now, "hive asked", seq + 1)
        elif self.next_seq <= spool.acked:
            self.next_seq = spool.acked + 1

    def on_disconnect(self, now: float) -> None:
        """The connection is gone, and with it any answer still on its way:
        what the hive last said may be out of date."""
        if self._gap is not None:
            self._gap.certain = False

    def on_connect(self, now: float) -> None:
        """A new connection: what was in flight on the old one may be lost."""
        gap = self._gap
        if gap is not None:
            gap.probe = True
            gap.heard = now
            gap.certain = False
        else:
            self.rewind(now, "connected")

    def _enter_gap(self, now: float, *, certain: bool) -> None:
        self._gap = _Gap(now, certain)
        log_event(self.log, "uplink.gap", logging.WARNING, acked=self.spool.acked,
                  held_from=self.spool.first_unacked())

    def _new_stream(self, now: float, reason: str = "") -> None:
        old = self.spool.stream
        reason = reason or f"the hive has seq {self.spool.acked} and the next is gone"
        self.spool.new_stream()
        self.restreams += 1
        log_event(self.log, "uplink.new_stream", logging.WARNING, old=old, stream=self.spool.stream,
                  reason=reason)
        self._gap = None
        self.next_seq = 1
        self._since = now
        self._rewound_to, self._rewound_at = 1, now
