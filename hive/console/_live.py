"""Server-sent events that keep the pages live: new alert rows, new event
rows, and a bare "changed" when alerts, actions or agents moved on (the
page then fetches itself again through htmx).

Each stream polls the store by its largest id every POLL seconds (one
indexed ``max()``; the work the hive's writer does is untouched), and ends
as soon as the browser goes away, or after STREAM_SECONDS (the browser's
EventSource reconnects, so no stream outlives a logged-out session for
long)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from hive._store import StoreError

from . import _read as read
from ._auth import allow, refuse
from ._templates import templates

POLL = 0.5
KEEPALIVE = 15.0
"""Seconds between comments on an idle stream (proxies close silent ones)."""
STREAM_SECONDS = 600.0


def sse(event: str, data: str = "", mark: int | None = None) -> str:
    """One server-sent event; every line of ``data`` its own ``data:`` field.
    ``mark`` (the last row it holds) is its ``id``: the browser sends it back
    as Last-Event-ID when it reconnects, so nothing comes twice."""
    head = f"event: {event}\n" + (f"id: {mark}\n" if mark is not None else "")
    return head + "".join(f"data: {line}\n" for line in (data.splitlines() or [""])) + "\n"


class EventStream(Response):
    """Streams ``source``'s chunks; stops it the moment the client
    disconnects (whatever the server's ASGI version), or when it ends."""

    media_type = "text/event-stream"

    def __init__(self, source: AsyncIterator[str]) -> None:
        super().__init__(headers={"cache-control": "no-store", "x-accel-buffering": "no"})
        self.source = source

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                with trio.move_on_after(STREAM_SECONDS):
                    async for chunk in self.source:
                        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            except StoreError:
                pass  # the store cannot be read now: end here, the browser reconnects
            finally:
                await self.source.aclose()  # type: ignore[attr-defined]
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass  # the connection went meanwhile
            nursery.cancel_scope.cancel()


async def _poll(console: Any, stamp: Callable[[Any], Any], changed: Callable[[Any, Any], Any]) -> AsyncIterator[str]:
    """Every POLL seconds read ``stamp(store)``; when it differs from the last,
    yield what ``changed(old, new)`` gives (a chunk, or None for nothing)."""
    yield ": live\n\n"  # headers and a first byte now: the browser knows the stream is open
    last = await console.read(stamp)
    quiet = 0.0
    while True:
        await trio.sleep(POLL)
        now = await console.read(stamp)
        if now != last:
            chunk = await changed(last, now)
            last = now
            if chunk:
                quiet = 0.0
                yield chunk
                continue
        quiet += POLL
        if quiet >= KEEPALIVE:
            quiet = 0.0
            yield ": keepalive\n\n"


def _after(request: Request) -> tuple[dict[str, str], int]:
    """The filters, and the row the stream starts after: the page's mark, or
    on a reconnection the last one the browser got."""
    params = dict(request.query_params)
    after = read._int(params, "after", 0, 0, read._INT64)
    params.pop("after", None)
    last = request.headers.get("last-event-id")
    if last:
        after = read._int({"Last-Event-ID": last}, "Last-Event-ID", 0, 0, read._INT64)
    return params, after


@allow("viewer")
async def live_alerts(request: Request) -> Response:
    """New alerts matching the page's filters, as rows for its table."""
    try:
        params, after = _after(request)
        q = read.alert_query({**params, "limit": str(read.MAX_PAGE)})
    except read.QueryError as e:
        return refuse(request, 400, f"bad query: {e}")
    console = request.app.state.console
    rows = templates.get_template("_alert_rows.html")
    mark = after

    async def changed(old: int, new: int) -> str | None:
        nonlocal mark
        page = await console.read(lambda store: read.alerts(store, q))
        fresh = [a for a in page.items if a.seq > mark]
        # The page may hold rows stored after ``new`` was read: never send them twice.
        mark = max([new] + [a.seq for a in fresh])
        return sse("alert", rows.render(rows=fresh, fresh=True), mark) if fresh else None

    return EventStream(_poll(console, read.latest_alert, changed))


@allow("viewer")
async def live_events(request: Request) -> Response:
    """New events matching the page's filters, newest first, as table rows."""
    try:
        params, after = _after(request)
        q = read.event_query(params)
    except read.QueryError as e:
        return refuse(request, 400, f"bad query: {e}")
    console = request.app.state.console
    rows = templates.get_template("_event_rows.html")
    mark = after

    async def changed(old: int, new: int) -> str | None:
        nonlocal mark
        q.after, q.limit = mark, read.MAX_PAGE
        page = await console.read(lambda store: read.events(store, q))
        # Past a burst larger than a page the tail skips ahead: it shows the present.
        mark = page.next or new
        return sse("event", rows.render(rows=page.items[::-1], fresh=True), mark) if page.items else None

    return EventStream(_poll(console, read.latest_event, changed))


@allow("viewer")
async def live_changes(request: Request) -> Response:
    """A bare ``changed`` whenever alerts, actions or agents moved on."""
    console = request.app.state.console

    async def changed(old: Any, new: Any) -> str:
        return sse("changed", "")

    return EventStream(_poll(console, read.changes, changed))
