"""The console: the hive's HTTPS server (pages, JSON API, metrics) over the
same store as the CLI.  ``console_actor`` runs it in the hive's tree."""

import importlib
from typing import Any

_EXPORTS = {
    "Console": "._console",
    "ROLES": "._auth",
    "User": "._auth",
    "allow": "._auth",
    "make_app": "._app",
    "console_actor": "._server",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hive.console' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
