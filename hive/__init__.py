"""The hive: router, registry, sentinel, correlate, playbook, store, API."""

import importlib
from typing import Any

# What each name is, by module: imported when first asked for, so that the
# engines (hive.sigma, hive.playbook's plain objects), which the agent runs
# at the edge, come without the hive's actors and store.
_EXPORTS = {
    "DELIVER": "._actors",
    "DETECT": "._actors",
    "INGEST": "._actors",
    "RESULTS": "._actors",
    "SEEN": "._actors",
    "STORED": "._actors",
    "enroll_actor": "._enroll",
    "zap_authorizer": "._enroll",
    "registry_actor": "._registry",
    "router_actor": "._router",
    "store_actor": "._store_actor",
    "ALERTS": "._detect",
    "CORRELATE": "._detect",
    "correlate_actor": "._detect",
    "parse_hits": "._detect",
    "sentinel_actor": "._detect",
    "ALERT_EVENTS": "._messages",
    "AgentSeen": "._messages",
    "Deliver": "._messages",
    "IncidentUpdate": "._messages",
    "Ingest": "._messages",
    "InternalMessage": "._messages",
    "Repeat": "._messages",
    "Result": "._messages",
    "SigmaHit": "._messages",
    "Stored": "._messages",
    "SCHEMA_VERSION": "._store",
    "AgentRow": "._store",
    "BundleRow": "._store",
    "Ingested": "._store",
    "Store": "._store",
    "StoreDataError": "._store",
    "StoreError": "._store",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hive' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ALERT_EVENTS", "ALERTS", "CORRELATE", "correlate_actor", "parse_hits", "sentinel_actor",
    "DELIVER", "DETECT", "INGEST", "RESULTS", "SEEN", "STORED", "AgentRow", "BundleRow", "AgentSeen", "Deliver",
    "IncidentUpdate", "Ingest", "Ingested", "InternalMessage", "Repeat", "Result", "SCHEMA_VERSION", "SigmaHit", "Store", "StoreDataError",
    "StoreError", "Stored", "enroll_actor",
    "registry_actor", "router_actor", "store_actor", "zap_authorizer",
]
