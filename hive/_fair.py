"""Batches on their way from the router to the store, shared fairly.

The store writes one commit at a time; whatever waits in its queue waits
for every batch ahead of it.  Without this, a few agents (enrolled keys an
attacker holds) sending the largest batches as fast as the hive takes them
kept a good agent's ack waiting for seconds.  So the router keeps each
agent's batches in a queue of its own and sends them on in deficit round
robin by bytes (Shreedhar and Varghese): every agent gets an equal share of
the bytes the store takes, a small batch goes at the next turn while large
ones wait for their share to grow, and only ``window`` bytes are on their
way to the store at once.  An agent may have ``agent_budget`` bytes queued
or on their way; past that, :meth:`FairQueue.offer` refuses (the router
drops the batch unacknowledged, and the agent sends it again).
"""

from __future__ import annotations

import collections
from typing import Any


class FairQueue:
    def __init__(self, *, window: int, agent_budget: int, quantum: int = 64 << 10) -> None:
        self.window = window
        self.agent_budget = agent_budget
        self.quantum = quantum
        self.queued_bytes = 0
        self.in_flight_bytes = 0
        self._queues: dict[str, collections.deque[tuple[Any, int]]] = {}
        self._ring: collections.deque[str] = collections.deque()
        """Agents with batches queued, in turn order."""
        self._deficit: dict[str, int] = {}
        self._in_flight: dict[str, collections.deque[int]] = {}
        """Sizes of each agent's batches sent and not yet answered, oldest first."""
        self._held: dict[str, int] = {}
        """Bytes of each agent, queued and in flight."""

    def offer(self, agent: str, item: Any, size: int) -> bool:
        """Queue ``item`` of ``size`` bytes for ``agent``; False if that
        would take the agent past its budget (nothing queued)."""
        held = self._held.get(agent, 0)
        if held and held + size > self.agent_budget:
            return False
        self._held[agent] = held + size
        queue = self._queues.get(agent)
        if queue is None:
            queue = self._queues[agent] = collections.deque()
            self._ring.append(agent)
            self._deficit[agent] = 0
        queue.append((item, size))
        self.queued_bytes += size
        return True

    def take(self) -> list[tuple[str, Any]]:
        """What to send to the store now, in order: (agent, item)."""
        out: list[tuple[str, Any]] = []
        ring = self._ring
        while ring and self.in_flight_bytes < self.window:
            agent = ring[0]
            queue = self._queues[agent]
            deficit = self._deficit[agent] + self.quantum
            while queue and queue[0][1] <= deficit and self.in_flight_bytes < self.window:
                item, size = queue.popleft()
                deficit -= size
                self.queued_bytes -= size
                self.in_flight_bytes += size
                self._in_flight.setdefault(agent, collections.deque()).append(size)
                out.append((agent, item))
            if queue:
                self._deficit[agent] = deficit
                ring.rotate(-1)
            else:  # an agent's share does not build up while it has nothing to send
                ring.popleft()
                del self._queues[agent], self._deficit[agent]
        return out

    def answered(self, agent: str) -> None:
        """The store answered ``agent``'s oldest batch on its way (it
        answers each, in the order it got them)."""
        sizes = self._in_flight.get(agent)
        if not sizes:
            return  # sent by an earlier router
        size = sizes.popleft()
        if not sizes:
            del self._in_flight[agent]
        self.in_flight_bytes -= size
        held = self._held[agent] - size
        if held:
            self._held[agent] = held
        else:
            del self._held[agent]
