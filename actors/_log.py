"""Structured log events: a message a human can read, fields a machine can.

Every record made by :func:`log_event` carries ``record.event`` (a short name
such as ``child.start``) and ``record.fields`` (a dict).  A node logs in one
of three ways (``setup_logging``): text lines on stderr (the fields as
``key=value`` pairs after the event name), JSON lines on stderr with Elastic
Common Schema names (the fields under ``immune``), or straight to journald
over its native socket (the fields as ``IMMUNE_*`` journal fields, so
``journalctl IMMUNE_EVENT=child.exit`` finds them).
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import time

import msgspec

FORMATS = ("text", "json")
DESTINATIONS = ("stderr", "journald")
JOURNAL_SOCKET = "/run/systemd/journal/socket"

_RESERVED = frozenset({"event", "fields"})


def log_event(log: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    if not log.isEnabledFor(level):
        return
    text = " ".join(f"{k}={_show(v)}" for k, v in fields.items())
    log.log(level, "%s %s" % (event, text) if text else event, extra={"event": event, "fields": fields})


def _show(value: object) -> str:
    s = str(value)
    return repr(s) if (not s or " " in s or "=" in s) else s


def _stamp(record: logging.LogRecord) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}.{int(record.msecs):03d}Z"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_stamp(record)} {record.levelname:<7} {record.name.removeprefix('immune.')}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_encode_json = msgspec.json.Encoder(enc_hook=str).encode


class _EcsFormatter(logging.Formatter):
    """One JSON object per line, in Elastic Common Schema names."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict = {"@timestamp": _stamp(record), "log": {"level": record.levelname.lower(),
                                                            "logger": record.name.removeprefix("immune.")},
                     "message": record.getMessage(), "process": {"pid": record.process},
                     "ecs": {"version": "8.11.0"}}
        event = getattr(record, "event", None)
        if event:
            doc["event"] = {"action": event}
            doc["immune"] = getattr(record, "fields", {})
        if record.exc_info:
            doc["error"] = {"type": record.exc_info[0].__name__ if record.exc_info[0] else "",
                            "stack_trace": self.formatException(record.exc_info)}
        return _encode_json(doc).decode()


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_FIELD = re.compile(r"[^A-Z0-9_]")
_JOURNAL_MAX = 48 << 10
"""A record's share of a datagram: the journal's socket takes more, but a
log line this long is already a flood; the rest is cut and said so."""


class JournalHandler(logging.Handler):
    """Records as journal entries, sent to journald's native socket (the
    protocol of systemd's sd_journal_send: ``KEY=value`` lines, or a
    length-prefixed value when it holds a newline)."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "immune-node") -> None:
        super().__init__()
        self.path, self.identifier = path, identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise OSError(e.errno, f"cannot log to journald at {path}: {e.strerror} "
                                   "(is systemd-journald running?)") from None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            fields = [("MESSAGE", message), ("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
                      ("SYSLOG_IDENTIFIER", self.identifier),
                      ("IMMUNE_LOGGER", record.name.removeprefix("immune."))]
            event = getattr(record, "event", None)
            if event:
                fields.append(("IMMUNE_EVENT", event))
                for key, value in getattr(record, "fields", {}).items():
                    fields.append(("IMMUNE_" + _FIELD.sub("_", str(key).upper()), str(value)))
            self.sock.send(_journal_datagram(fields))
        except Exception:  # noqa: BLE001  logging must never take the node down
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def _journal_datagram(fields: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for key, value in fields:
        data = value.encode(errors="replace")
        if len(data) > _JOURNAL_MAX:
            data = data[:_JOURNAL_MAX] + b" [cut]"
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


_current: dict = {"format": "text", "to": "stderr"}


def log_setup() -> dict:
    """How this process logs (a child process is started to log the same way)."""
    return dict(_current)


def setup_logging(level: str | int = "INFO", stream=None, also: tuple[str, ...] = (), *,
                  format: str = "text", to: str = "stderr") -> None:
    """Log as the node's configuration says (idempotent): ``format`` text or
    json, ``to`` stderr or journald (where the format is the journal's own).
    ``also``: loggers outside ``immune`` (libraries of the node's with names
    of their own) that log the same way.  Raises OSError if journald cannot
    be reached."""
    if format not in FORMATS or to not in DESTINATIONS:
        raise ValueError(f"log format {format!r} / destination {to!r}")
    handler: logging.Handler
    if to == "journald":
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_EcsFormatter() if format == "json" else _Formatter())
    _current.update(format=format, to=to)
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
