"""Which hive node the uplink talks to, as a plain object: the relay tells
it what the connection does and asks it where to connect.

Several hive nodes sharing one store and one identity key can each take an
agent's batches: the store keeps one seq mark per (agent, stream) and writes
a batch only if it is the next, so resending from the last ack to another
node stores nothing twice.  The rules here:

* Endpoints are tried in the configured order; the first is *preferred*.
* The current endpoint has *failed* when the uplink has had no connection
  to it (a finished CURVE handshake) for ``fail_after`` seconds: since the
  connection dropped (a reset, or ZMTP heartbeats unanswered for three
  heartbeats) or since the uplink began trying it.  ZeroMQ reconnects on its
  own meanwhile, so a node back within that time keeps its agents.  Stalled
  acks on a live connection are not a failure: the relay resends on the
  same connection, and the nodes share the store that would be stalled.
* Then the uplink moves to the next endpoint, wrapping around.  Each full
  round of the list without a connection doubles the time given to each
  endpoint (up to ``max_wait``), so an outage of every node costs no churn;
  any connection resets it.
* Connected to another than the preferred endpoint, the relay probes the
  preferred one (a CURVE handshake on a separate socket, nothing sent)
  every ``probe_every`` seconds, doubling after each failed probe up to
  ``max_wait``; when it answers, the uplink moves back to it.  The current
  connection keeps working until then, and what was in flight on it is
  sent again from the last ack (the delivery's rewind on a new connection).
"""

from __future__ import annotations

import logging

from actors import get_logger, log_event


class Failover:
    def __init__(self, endpoints: list[str], now: float, *, fail_after: float = 3.0, probe_every: float = 5.0,
                 max_wait: float = 60.0, log: logging.Logger | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one hive endpoint")
        if fail_after <= 0 or probe_every <= 0 or max_wait < max(fail_after, probe_every):
            raise ValueError("fail_after and probe_every must be > 0 and at most max_wait")
        self.endpoints = list(endpoints)
        self.fail_after = fail_after
        self.probe_every = probe_every
        self.max_wait = max_wait
        self.log = log or get_logger("agent.failover")
        self.index = 0
        self.connected = False
        self._since = now
        """When the current endpoint was last connected, or began to be tried."""
        self._wait = fail_after
        """Time given to the current endpoint before moving on."""
        self._tried = 0
        """Endpoints moved away from since the last connection."""
        self._probe_wait = probe_every
        self._probe_at: float | None = None
        self._probing = False
        self.moves = 0
        self.probes = 0

    @property
    def current(self) -> str:
        return self.endpoints[self.index]

    @property
    def preferred(self) -> str:
        return self.endpoints[0]

    # -- what the connection did ------------------------------------------------

    def on_connected(self, now: float) -> None:
        self.connected = True
        self._since = now
        self._wait = self.fail_after
        self._tried = 0
        if self.index and self._probe_at is None:
            self._probe_at = now + self._probe_wait

    def on_disconnected(self, now: float) -> None:
        """The connection dropped, or a handshake on it failed."""
        if self.connected:
            self.connected = False
            self._since = now

    # -- what to do -----------------------------------------------------------------

    def check(self, now: float) -> str | None:
        """The endpoint to move to if the current one has failed, else None."""
        if self.connected or len(self.endpoints) == 1 or now - self._since < self._wait:
            return None
        old, away = self.current, now - self._since
        self._tried += 1
        if self._tried % len(self.endpoints) == 0:  # a whole round: slow down
            self._wait = min(self._wait * 2, self.max_wait)
        nxt = (self.index + 1) % len(self.endpoints)
        log_event(self.log, "uplink.failover", logging.WARNING,
                  what=f"hive {old} unreachable for {away:.1f} s, moving to {self.endpoints[nxt]}")
        self._move(nxt, now)
        return self.current

    def probe(self, now: float) -> str | None:
        """The preferred endpoint, if it is time to see whether it answers
        (then :meth:`probed` must follow), else None."""
        if self._probing or not self.connected or self._probe_at is None or now < self._probe_at:
            return None
        self._probing = True
        self.probes += 1
        return self.preferred

    def probed(self, answered: bool, now: float) -> str | None:
        """The probe's outcome; the endpoint to move to (the preferred one)
        if it answered, else None."""
        self._probing = False
        if not self.index:  # moved back meanwhile (the current one failed)
            return None
        if not answered:
            self._probe_wait = min(self._probe_wait * 2, self.max_wait)
            self._probe_at = now + self._probe_wait
            return None
        log_event(self.log, "uplink.failback", logging.WARNING,
                  what=f"back on {self.preferred} (it answered; leaving {self.current})")
        self._move(0, now)
        self._tried = 0
        return self.current

    def deadline(self) -> float | None:
        """When :meth:`check` or :meth:`probe` may have something to say."""
        if not self.connected:
            return None if len(self.endpoints) == 1 else self._since + self._wait
        return None if self._probing else self._probe_at

    def _move(self, index: int, now: float) -> None:
        self.index = index
        self.connected = False
        self._since = now
        self.moves += 1
        self._probing = False
        self._probe_wait = self.probe_every
        self._probe_at = None
