"""The hive's internal wiring: the endpoints between its actors, named here
once, and the codec of the messages on them.  The actors are in
``_store_actor`` (store), ``_registry``, ``_router``, ``_enroll`` and
``_detect``, ``playbook``.

An inproc connection does not survive a restart of the socket it connects
to, so every inproc endpoint is bound by the actor that starts earlier in
the hive's rest_for_one tree (store, registry, zap, router, enroll,
playbook, correlate, sentinel) and connected by later ones: a restart of
the binder restarts everyone after it, who connect again.  The hops to the
detection processes are ipc, which reconnects by itself.

=============  ==========================  ============================
endpoint       bound by                    connected by
=============  ==========================  ============================
INGEST         store (and ipc ingest)      registry, router (correlate)
STORED         store                       router
SEEN           registry                    router
ZAP            zap                         ZeroMQ, for router and enroll
DELIVER        router                      playbook
RESULTS        router                      playbook
ipc detect     sentinel                    store
ipc correlate  correlate                   sentinel
ipc alerts     playbook                    correlate
=============  ==========================  ============================
"""

from __future__ import annotations

from actors import Codec

from ._messages import InternalMessage

INGEST = "inproc://hive.ingest"
"""router, registry -> store (binds): batches to write."""
STORED = "inproc://hive.stored"
"""store (binds) -> router: what became of each batch (for the acks)."""
SEEN = "inproc://hive.seen"
"""router -> registry (binds): signs of life."""
DETECT = "inproc://hive.detect"
"""store -> sentinel (binds): events as stored, once each."""
DELIVER = "inproc://hive.deliver"
"""playbook -> router (binds): commands for agents."""
RESULTS = "inproc://hive.results"
"""router (binds) -> playbook: results of commands."""

DEFAULT_MAX_FRAME = 4 << 20
"""The largest frame an agent may send, by default (``hive.max_frame``):
``wire.MAX_BATCH`` (4096) events of 1 KiB each, or the agent's default
batch of 256 events of 16 KiB each (a typical enriched event is about 420
bytes)."""


def internal_codec() -> Codec:
    return Codec(InternalMessage)
