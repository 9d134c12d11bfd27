"""The console actor: hypercorn's trio worker serving the console's app over
HTTPS, in the hive's supervision tree."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from actors import Context, StartError, log_event

from ._app import make_app
from ._console import Console
from ._tls import TLSError, certificate, fingerprint, parse_listen, server_context


class _Hypercorn(HypercornConfig):
    def __init__(self, context: Any) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> Any:
        return self._context


def _bind(host: str, port: int, listen: str) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartError(f"console.listen {listen}: cannot resolve {host!r}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        why = "the port is in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise StartError(f"console.listen {listen}: {why}") from None
    return sock


async def console_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, config: Any,
                        db: Path | str, data: Path, shutdown_timeout: float = 5.0,
                        protected: Sequence[str] = ()) -> None:
    """Serve the console at ``[console] listen`` until cancelled; ``protected``:
    the hive's own addresses, which no operator's action may block."""
    section = config.console
    try:
        cert, key, made = certificate(section.cert, section.key, Path(data))
        context = server_context(cert, key, default=not section.cert)
        host, port = parse_listen(section.listen)
    except (TLSError, ValueError) as e:
        raise StartError(str(e)) from None
    if made:
        log_event(ctx.log, "console.certificate_made", cert=cert, key=key)
    log_event(ctx.log, "console.certificate", sha256=fingerprint(cert), cert=cert)
    sock = _bind(host, port, section.listen)
    console = Console(config, db, protected=protected)
    console.log = ctx.log
    hc = _Hypercorn(context)
    hc.certfile, hc.keyfile = str(cert), str(key)  # marks the socket secure for hypercorn
    hc.accesslog = None
    hc.errorlog = ctx.log
    hc.graceful_timeout = min(1.0, shutdown_timeout / 2)
    hc.include_server_header = False
    app = wrap_app(make_app(console), hc.wsgi_max_body_size, "asgi")
    st = ctx.stats.extra
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: worker_serve(
                app, hc, sockets=Sockets(secure_sockets=[sock], insecure_sockets=[], quic_sockets=[]),
                task_status=task_status))
            log_event(ctx.log, "console.listening", url=section.listen)
            task_status.started()
            while True:
                st.update(requests=sum(console.requests.values()), login_failures=console.throttle.failures,
                          logins_throttled=console.throttle.refused, csrf_refused=console.csrf_refused)
                await trio.sleep(1)
    finally:
        sock.close()
        console.close()
