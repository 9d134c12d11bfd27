"""Syslog messages (RFC 5424) and their framing on a stream (RFC 6587
octet counting, which RFC 5425 also uses over TLS).  Plain functions.

The MSG part is the record's ECS document as JSON with every non-ASCII
character escaped, so it is plain ASCII (RFC 5424's MSG-ANY, no BOM) and
any receiver that parses JSON out of syslog takes it."""

from __future__ import annotations

import json
import os
from typing import Any

from ._ecs import timestamp

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
    **{f"local{n}": 16 + n for n in range(8)},
}

# An alert's level as a syslog severity (0 emergency ... 7 debug).
_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "novel": 5, "informational": 6}
_EVENT_SEVERITY = 6  # informational
APP_NAME = "immune"
UDP_MAX = 65_000
"""Largest datagram sent (an IPv4 UDP payload holds 65,507 bytes)."""


def _header_field(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most
    ``limit`` characters, ``-`` when empty."""
    kept = "".join(c for c in text if "!" <= c <= "~")[:limit]
    return kept or "-"


def message(doc: dict[str, Any], *, facility: int, hostname: str, time_ns: int, procid: int | None = None,
            limit: int = 0) -> bytes:
    """One RFC 5424 message carrying ``doc``; with ``limit`` (a datagram's
    room), long strings in it are clipped until it fits, and the document
    says so in ``immune.clipped``."""
    level = doc.get("log", {}).get("level", "")
    kind = doc.get("event", {}).get("kind", "event")
    severity = _SEVERITY.get(level, 4) if kind == "alert" else _EVENT_SEVERITY
    header = (f"<{facility * 8 + severity}>1 {timestamp(time_ns)} {_header_field(hostname, 255)} {APP_NAME} "
              f"{procid if procid is not None else os.getpid()} {_header_field(kind, 32)} -")
    body = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    keep = 4096
    while limit and len(header) + 1 + len(body) > limit and keep >= 64:
        body = json.dumps({**_clip(doc, keep), "immune": {**_clip(doc.get("immune", {}), keep), "clipped": True}},
                          ensure_ascii=True, separators=(",", ":"))
        keep //= 4
    return f"{header} {body}".encode("ascii")


def _clip(value: Any, keep: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= keep else value[:keep] + "..."
    if isinstance(value, dict):
        return {k: _clip(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v, keep) for v in value[:64]]
    return value


def octet_frame(msg: bytes) -> bytes:
    """RFC 6587 octet counting: the length in decimal, a space, the message."""
    return b"%d %s" % (len(msg), msg)


class FrameError(ValueError):
    """The stream is not octet-counted syslog."""


def split_frames(buffer: bytearray, max_len: int = 1 << 20) -> list[bytes]:
    """Take the complete octet-counted messages off the front of ``buffer``
    (what a receiver does; the tests' listeners use it)."""
    out = []
    while True:
        space = buffer.find(b" ", 0, 12)
        if space < 0:
            if len(buffer) >= 12:
                raise FrameError("no length before the first 12 bytes")
            return out
        digits = bytes(buffer[:space])
        if not digits.isdigit() or digits.startswith(b"0") and digits != b"0":
            raise FrameError(f"bad length {digits[:12]!r}")
        n = int(digits)
        if n > max_len:
            raise FrameError(f"a message of {n} bytes is over {max_len}")
        if len(buffer) < space + 1 + n:
            return out
        out.append(bytes(buffer[space + 1:space + 1 + n]))
        del buffer[:space + 1 + n]
