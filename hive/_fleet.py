"""Which policy bundle goes to which agent (issue 13's fleet policy), as
the router decides it: a plain object, tested without sockets."""

from __future__ import annotations

from typing import Any

import fleet
import wire

BUNDLES_SINCE = 3
"""The oldest wire version that decodes ``wire.PolicyBundle``."""


class Fleet:
    """Which policy bundle goes to which connected agent: a plain object the
    router feeds with the store's bundles and labels and with what agents
    say (their Hello, their bundle statuses)."""

    def __init__(self) -> None:
        self.serial = -1
        self.latest: list[Any] = []
        """The newest bundle of each name (``hive.BundleRow``)."""
        self.labels: dict[str, dict[str, str]] = {}
        self.running: dict[str, int] = {}
        self.offered: dict[str, int] = {}
        """The version sent to each agent since its latest Hello."""
        self.refused: dict[str, set[int]] = {}
        self.connections: dict[str, bytes] = {}

    def hello(self, agent: str, running: int, connection: bytes = b"") -> None:
        """``agent`` said hello on ``connection`` (its routing id): on a new
        one, what was sent on the old one may be lost, so it may go again."""
        self.running[agent] = running
        if self.connections.get(agent) != connection:
            self.connections[agent] = connection
            self.offered.pop(agent, None)

    def status(self, agent: str, st: wire.BundleStatus) -> None:
        self.running[agent] = st.running
        if not st.ok:
            self.refused.setdefault(agent, set()).add(st.version)

    def due(self, agent: str, wire_version: int | None) -> Any | None:
        """The bundle to send ``agent`` now, if any."""
        if wire_version is None or wire_version < BUNDLES_SINCE:
            return None
        b = fleet.assigned(self.latest, self.labels.get(agent, {}))
        if b is None or b.version <= self.running.get(agent, 0) or b.version == self.offered.get(agent) \
                or b.version in self.refused.get(agent, ()):
            return None
        self.offered[agent] = b.version
        return b
