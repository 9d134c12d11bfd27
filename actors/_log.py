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


def setup_logging(level: str | int = "INFO", stream=None, also: tuple[str, ...] = ()) -> None:
    """Log to stderr in the project's one line format (idempotent).
    ``also``: loggers outside ``immune`` (libraries of the node's with names
    of their own) that log the same way."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    handler._immune = True  # type: ignore[attr-defined]
    for name in ("immune", *also):
        root = logging.getLogger(name)
        root.setLevel(level if isinstance(level, int) else level.upper())
        for h in list(root.handlers):
            if getattr(h, "_immune", False):
                root.removeHandler(h)
        root.addHandler(handler)
        root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"immune.{name}")


class LogThrottle:
    """Rate-limited logging for what an attacker can make happen at will
    (refused connections, malformed frames): per kind, the first ``burst``
    records in each ``interval`` seconds are logged, the rest only counted;
    the first record of a kind after its interval, or :meth:`flush`, logs
    one ``log.suppressed`` line saying how many were left out.  Counters
    belong in the actor's statistics, which stay exact; this only keeps a
    flood from filling the disk with log."""

    def __init__(self, log: logging.Logger, *, burst: int = 5, interval: float = 10.0,
                 clock=time.monotonic) -> None:
        self.log = log
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._kinds: dict[str, list] = {}
        """kind -> [window start, logged in it, suppressed in it, level]"""

    def event(self, kind: str, event: str, level: int = logging.WARNING, **fields: object) -> None:
        now = self.clock()
        w = self._kinds.get(kind)
        if w is None or now - w[0] >= self.interval:
            if w is not None:
                self._summary(kind, w)
            w = self._kinds[kind] = [now, 0, 0, level]
        if w[1] < self.burst:
            w[1] += 1
            log_event(self.log, event, level, **fields)
        else:
            w[2] += 1

    def flush(self, *, all: bool = False) -> None:
        """Log the summary of every kind whose interval has ended (``all``:
        of every kind, as an actor stops)."""
        now = self.clock()
        for kind, w in list(self._kinds.items()):
            if all or now - w[0] >= self.interval:
                self._summary(kind, w)
                del self._kinds[kind]

    def _summary(self, kind: str, w: list) -> None:
        if w[2]:
            log_event(self.log, "log.suppressed", w[3], kind=kind, suppressed=w[2],
                      seconds=round(self.clock() - w[0], 1))
