"""The hive as a cluster of nodes sharing work over NATS JetStream.

Routers publish agents' batches to a work-queue stream, many agents' in one
message (``_pack``), and ack the agents once JetStream holds them
(``AckLedger``); store writers on router nodes store them with the store's
exactly-once rule and pass them on, packed again, to a second work-queue
stream, which the sentinels of all nodes share.  The nats-py
client runs in an asyncio loop of its own (``Bridge``); ``Bus`` is the
hive's trio-facing use of it."""

from ._bridge import Bridge, BridgeClosed
from ._bus import Bus, ClusterError, ClusterSpec, open_bus
from ._ledger import AckLedger, Offer
from ._writer import writer_actor

__all__ = ["AckLedger", "Bridge", "BridgeClosed", "Bus", "ClusterError", "ClusterSpec", "Offer", "open_bus",
           "writer_actor"]
