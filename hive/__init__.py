"""The hive: router, registry, sentinel, correlate, playbook, store, API."""

from ._actors import (
    DELIVER, DETECT, INGEST, RESULTS, SEEN, STORED, enroll_actor, registry_actor, router_actor,
    store_actor, zap_authorizer,
)
from ._messages import AgentSeen, Deliver, Ingest, InternalMessage, Result, Stored
from ._store import AgentRow, Store, StoreError

__all__ = [
    "DELIVER", "DETECT", "INGEST", "RESULTS", "SEEN", "STORED", "AgentRow", "AgentSeen", "Deliver",
    "Ingest", "InternalMessage", "Result", "Store", "StoreError", "Stored", "enroll_actor",
    "registry_actor", "router_actor", "store_actor", "zap_authorizer",
]
