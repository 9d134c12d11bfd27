"""The hive: router, registry, sentinel, correlate, playbook, store, API."""

from ._actors import DELIVER, DETECT, INGEST, RESULTS, SEEN, STORED
from ._enroll import enroll_actor, zap_authorizer
from ._registry import registry_actor
from ._router import router_actor
from ._store_actor import store_actor
from ._detect import ALERTS, CORRELATE, correlate_actor, parse_hits, sentinel_actor
from ._messages import ALERT_EVENTS, AgentSeen, Deliver, IncidentUpdate, Ingest, InternalMessage, Repeat, Result, Stored
from ._store import SCHEMA_VERSION, AgentRow, BundleRow, Ingested, Store, StoreDataError, StoreError

__all__ = [
    "ALERT_EVENTS", "ALERTS", "CORRELATE", "correlate_actor", "parse_hits", "sentinel_actor",
    "DELIVER", "DETECT", "INGEST", "RESULTS", "SEEN", "STORED", "AgentRow", "BundleRow", "AgentSeen", "Deliver",
    "IncidentUpdate", "Ingest", "Ingested", "InternalMessage", "Repeat", "Result", "SCHEMA_VERSION", "Store", "StoreDataError",
    "StoreError", "Stored", "enroll_actor",
    "registry_actor", "router_actor", "store_actor", "zap_authorizer",
]
