"""Messages between the hive's own actors (not on the agent wire)."""

from __future__ import annotations

from typing import Annotated

import msgspec

import wire
from hive.correlate import Incident


class _Msg(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False, tag_field="type"):
    pass


NonNegative = Annotated[int, msgspec.Meta(ge=0, le=wire.INT64_MAX)]
"""A seq or a time in ns: what fits a SQLite integer and is never negative."""


class Ingest(_Msg, tag="ingest"):
    """Router -> store: a batch as received from an authenticated agent.
    ``seq == 0`` marks events made by the hive itself (never deduplicated);
    an agent's batch cannot have it (``wire.EventBatch.seq`` is at least 1)."""

    agent: str
    stream: str = ""
    seq: NonNegative = 0
    events: Annotated[list[wire.AnyEvent], msgspec.Meta(max_length=wire.MAX_BATCH)] = []


class Packed(_Msg, tag="packed"):
    """Many Ingest batches in one message of the cluster's bus (router ->
    store writer, store writer -> sentinels; see ``hive.cluster._pack``).
    Each item is one Ingest as ``internal_codec`` encodes it, kept as bytes
    so that a malformed one leaves the others readable.

    Sentinel -> a correlation partition's owner: the items are any messages
    for correlation (Ingest, SigmaHit, alerts, Repeat), and ``ids`` holds
    each one's ``correlate_id`` (same length), so that the owner drops an
    item it already took: a batch evaluated again travels in another pack,
    which JetStream's duplicate window does not see as a copy."""

    batches: list[bytes] = []
    ids: list[str] = []
    """Per item, its id ('' none); empty in packs of Ingest batches (and
    so in any pack from a node of an older version)."""


class Stored(_Msg, tag="stored"):
    """Store -> router: what became of one Ingest."""

    agent: str
    stream: str
    seq: NonNegative
    """The last seq stored for (agent, stream) after this batch."""
    outcome: str
    """``stored``, ``duplicate`` (already had it), ``gap`` (an earlier one is
    missing), ``refused`` (stored as a ``batch_refused`` notice instead: ack
    it) or ``failed`` (nothing written, the disk refused: do not ack)."""


class AgentSeen(_Msg, tag="seen"):
    """Router -> registry: an agent said something."""

    agent: str
    time: NonNegative
    address: str = ""
    hello: wire.Hello | None = None
    heartbeat: wire.Heartbeat | None = None
    bundle: wire.BundleStatus | None = None


class Deliver(_Msg, tag="deliver"):
    """Anyone -> router: send ``command`` to ``agent``."""

    agent: str
    command: wire.AnyCommand


class Result(_Msg, tag="result"):
    """Router -> playbook: an agent answered a command."""

    agent: str
    result: wire.CommandResult


ALERT_EVENTS = 16
"""Events an alert keeps: its own, then those of its first repeats.  Later
repeats only raise its count and last seen, so a rule hitting in a loop costs
two integers per hit, not a growing row, and the first steps of an attack are
the ones kept (every event is in the store's events table as well)."""


class Repeat(_Msg, tag="repeat"):
    """Sentinel -> correlate -> store: hits of a rule within its suppression
    window (``hive.sigma.RuleEngine``), counted on the alert they repeat, which
    keeps their events up to ``ALERT_EVENTS``.  It never reaches the playbook,
    which acted on that alert already."""

    alert: str
    """The id of the alert it repeats."""
    time: NonNegative
    """When the latest of its hits happened (ns): the alert's last seen from now on."""
    events: Annotated[list[wire.AnyEvent], msgspec.Meta(max_length=wire.MAX_BATCH)] = []
    """The hits' events while the alert has room for them."""
    count: Annotated[int, msgspec.Meta(ge=1, le=wire.INT64_MAX)] = 1
    """Hits it stands for: the sentinel sends one Repeat per alert per batch of events."""


class IncidentUpdate(_Msg, tag="incident"):
    """Correlate -> store: an incident opened or grew."""

    incident: Incident


Scalar = str | int | float | bool | None
"""A Sigma field's value, as a correlation's group or counted value."""


class SigmaHit(_Msg, tag="sigma_hit"):
    """Sentinel -> a correlation partition's owner (hive cluster only): a hit
    that one Sigma correlation rule reads, routed by (``correlation``,
    ``group``) so that each group's window lives on one node
    (``SigmaCorrelator.route``, then ``.apply`` there).  An owner sends a
    correlation's own hit on the same way to the correlations reading it."""

    correlation: str
    """The correlation rule's id."""
    group: list[Scalar] = []
    """Its group-by values, in its group-by order."""
    value: Scalar = None
    """value_count: the field's value; otherwise the id of the rule that hit."""
    weight: Annotated[int, msgspec.Meta(ge=1, le=wire.INT64_MAX)] = 1
    time: Annotated[float, msgspec.Meta(ge=0, le=1e11)] = 0.0
    """When the sentinel saw it (wall clock, seconds): the window's time,
    the same when a new owner replays it.  Bounded: a NaN or an infinity
    would never leave a window."""
    events: Annotated[list[wire.AnyEvent], msgspec.Meta(max_length=ALERT_EVENTS)] = []
    key: str = ""
    """Unique per hit and the same when its batch is evaluated again: its
    message id, and what its correlation's alert id is made from."""


InternalMessage = (Ingest | Packed | Stored | AgentSeen | Deliver | Result | wire.Alert | Repeat | IncidentUpdate
                   | SigmaHit)
