"""SIEM outputs: alerts (and events) forwarded as ECS JSON to a rotating
file, to syslog (RFC 5424 over UDP, TCP or TLS) and to webhooks, each from a
cursor kept in the store (at-least-once delivery)."""

import importlib
from typing import Any

# Imported when first asked for: the configuration checks facility names
# without loading the actor, trio and the store.
_EXPORTS = {
    "make_sender": "._actor", "output_actor": "._actor",
    "Cursors": "._cursor", "Record": "._cursor",
    "ECS_VERSION": "._ecs", "alert_doc": "._ecs", "attack": "._ecs", "event_doc": "._ecs",
    "Link": "._link",
    "RotatingFile": "._rotate",
    "OutputError": "._senders",
    "FACILITIES": "._syslog", "FrameError": "._syslog", "message": "._syslog", "octet_frame": "._syslog",
    "split_frames": "._syslog",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hive.outputs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
