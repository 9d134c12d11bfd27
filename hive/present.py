"""How a person reads the store's records, in the CLI and the console alike:
times ago, times since, an event in a few words, the container it ran in."""

from __future__ import annotations

import time

import wire


class SinceError(ValueError):
    """A time that is not one; the message is one line for the user."""


def ago(t: float | None) -> str:
    if not t:
        return "never"
    d = time.time() - t
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return f"{d / size:.0f}{unit} ago"
    return f"{d:.0f}s ago"


def parse_since(text: str) -> int:
    """``10m``, ``2h``, ``1d``, ``30s`` ago, or an ISO 8601 time; as Unix ns."""
    import datetime as dt

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number = text[:-1].replace(".", "", 1)
    if text and text[-1] in units and number.isascii() and number.isdigit():  # "²" is a digit to isdigit()
        seconds = time.time() - float(text[:-1]) * units[text[-1]]
    else:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise SinceError(f"--since {text!r}: expected e.g. 10m, 2h, 1d or an ISO time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = when.timestamp()
    if not 0 <= seconds * 1e9 <= wire.INT64_MAX:
        raise SinceError(f"--since {text!r}: before 1970 or after 2262, when no event can be")
    return int(seconds * 1e9)


def describe(event: object) -> str:
    match event:
        case wire.Exec():
            return " ".join(event.argv) or event.filename
        case wire.Open():
            return event.path if event.count == 1 else f"{event.path} ({event.count} times)"
        case wire.Connect() | wire.Bind():
            return f"[{event.address}]:{event.port}" if ":" in event.address else f"{event.address}:{event.port}"
        case wire.SetId():
            return f"{event.call} {event.change()}"
        case wire.Fork():
            return f"child {event.child_pid}"
        case wire.Exit():
            return f"code {event.code}"
        case wire.Notice():
            return f"{event.what} {event.count or ''} {event.detail}".strip()
        case wire.Profile():
            return f"{event.workload} {event.state} r{event.revision} ({event.items} items)"
        case wire.Edge() if event.workload:
            return event.title
    return ""


def container_label(event: object) -> str:
    """The container an event ran in, as a person reads it: its name (else
    the id's first 12 characters) and its image, without the default
    registry's prefix; "-" on the host."""
    cid = getattr(event, "container", "")
    if not cid:
        return "-"
    label = event.container_name or cid[:12]  # type: ignore[attr-defined]
    image = event.container_image  # type: ignore[attr-defined]
    for prefix in ("docker.io/library/", "docker.io/"):
        if image.startswith(prefix):
            image = image[len(prefix):]
            break
    if len(image) > 40:
        image = image[:39] + "\u2026"
    return f"{label} ({image})" if image else label
