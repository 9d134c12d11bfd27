"""Structured log events: a message a human can read, fields a machine can.

Every record made by :func:`log_event` carries ``record.event`` (a short name
such as ``child.start``) and ``record.fields`` (a dict).  The formatter prints
them as ``key=value`` pairs after the event name.
"""

from __future__ import annotations

import logging
import sys
import time

_RESERVED = frozenset({"event", "fields"})


def log_event(log: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    if not log.isEnabledFor(level):
        return
    text = " ".join(f"{k}={_show(v)}" for k, v in fields.items())
    log.log(level, "%s %s" % (event, text) if text else event, extra={"event": event, "fields": fields})


def _show(value: object) -> str:
    s = str(value)
    return repr(s) if (not s or " " in s or "=" in s) else s


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name.removeprefix('immune.')}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str | int = "INFO", stream=None) -> None:
    """Log to stderr in the project's one line format (idempotent)."""
    root = logging.getLogger("immune")
    root.setLevel(level if isinstance(level, int) else level.upper())
    for h in list(root.handlers):
        if getattr(h, "_immune", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    handler._immune = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"immune.{name}")
