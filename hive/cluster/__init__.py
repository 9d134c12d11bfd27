"""The hive as a cluster of nodes sharing work over NATS JetStream."""

from ._bridge import Bridge, BridgeClosed

__all__ = ["Bridge", "BridgeClosed"]
