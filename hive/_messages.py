"""Messages between the hive's own actors (not on the agent wire)."""

from __future__ import annotations

import msgspec

import wire
from hive.correlate import Incident


class _Msg(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False, tag_field="type"):
    pass


class Ingest(_Msg, tag="ingest"):
    """Router -> store: a batch as received from an authenticated agent.
    ``seq == 0`` marks an event made by the hive itself (never deduplicated)."""

    agent: str
    stream: str = ""
    seq: int = 0
    events: list[wire.AnyEvent] = []


class Stored(_Msg, tag="stored"):
    """Store -> router: what became of one Ingest."""

    agent: str
    stream: str
    seq: int
    """The last seq stored for (agent, stream) after this batch."""
    outcome: str
    """``stored``, ``duplicate`` (already had it) or ``gap`` (an earlier one is missing)."""


class AgentSeen(_Msg, tag="seen"):
    """Router -> registry: an agent said something."""

    agent: str
    time: int
    address: str = ""
    hello: wire.Hello | None = None
    heartbeat: wire.Heartbeat | None = None


class Deliver(_Msg, tag="deliver"):
    """Anyone -> router: send ``command`` to ``agent``."""

    agent: str
    command: wire.Command


class Result(_Msg, tag="result"):
    """Router -> playbook: an agent answered a command."""

    agent: str
    result: wire.CommandResult


class IncidentUpdate(_Msg, tag="incident"):
    """Correlate -> store: an incident opened or grew."""

    incident: Incident


InternalMessage = Ingest | Stored | AgentSeen | Deliver | Result | wire.Alert | IncidentUpdate
