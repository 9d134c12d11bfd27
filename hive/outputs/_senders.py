"""The receivers' side of an output: a thin trio shell per kind that takes
a batch of records and returns only once the receiver took all of them,
or raises :class:`OutputError` (one line: what failed, where).

What "took" means, by kind:

* file: written and fsynced;
* syslog over TCP or TLS: the receiver's TCP acknowledged every byte
  (the socket's send queue is empty and the connection still up), since
  syslog has no acknowledgement of its own;
* syslog over UDP: the datagram left (UDP promises nothing more; a refused
  port shows as an error on the next send);
* webhook: the server answered 2xx.
"""

from __future__ import annotations

import fcntl
import socket
import ssl
import struct
import termios
from collections.abc import Sequence
from urllib.parse import urlsplit

import msgspec
import trio

from . import _syslog
from ._cursor import Record
from ._rotate import RotatingFile


class OutputError(Exception):
    """The receiver did not take the records; the message says why."""


_json = msgspec.json.Encoder()


class FileSender:
    def __init__(self, path: str, *, max_bytes: int, keep: int) -> None:
        self.where = path
        self._file = RotatingFile(path, max_bytes=max_bytes, keep=keep)

    async def send(self, records: Sequence[Record]) -> None:
        lines = [_json.encode(r.doc) for r in records]
        try:
            await trio.to_thread.run_sync(self._file.write, lines)
        except OSError as e:
            self._file.close()
            raise OutputError(f"{e.filename or self.where}: {e.strerror}") from None

    async def aclose(self) -> None:
        self._file.close()


class SyslogSender:
    """RFC 5424 messages over UDP, TCP (RFC 6587 octet counting) or TLS
    (RFC 5425), verifying the server's certificate and name."""

    def __init__(self, target: str, *, facility: int, hostname: str, timeout: float, ca: str = "") -> None:
        url = urlsplit(target)
        self.where = target
        self.scheme = url.scheme
        self.host, self.port = url.hostname or "", url.port or 0
        self.facility = facility
        self.hostname = hostname
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "tls":
            self._ssl = _tls_context(ca)
        self._stream: trio.abc.Stream | None = None
        self._udp: trio.socket.SocketType | None = None

    def _message(self, r: Record) -> bytes:
        host = r.doc.get("host", {}).get("name") or self.hostname
        return _syslog.message(r.doc, facility=self.facility, hostname=host, time_ns=r.time,
                               limit=_syslog.UDP_MAX if self.scheme == "udp" else 0)

    async def send(self, records: Sequence[Record]) -> None:
        try:
            with trio.fail_after(self.timeout):
                if self.scheme == "udp":
                    await self._send_udp([self._message(r) for r in records])
                else:
                    await self._send_stream(b"".join(_syslog.octet_frame(self._message(r)) for r in records))
        except trio.TooSlowError:
            await self.aclose()
            raise OutputError(f"{self.where}: no answer within {self.timeout:g}s") from None
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            await self.aclose()
            raise OutputError(f"{self.where}: {_reason(e)}") from None

    async def _send_udp(self, datagrams: list[bytes]) -> None:
        if self._udp is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = trio.socket.socket(family, socket.SOCK_DGRAM)
            try:
                # Connected, so the host's "port unreachable" comes back as an error.
                await sock.connect((self.host, self.port))
            except BaseException:
                sock.close()
                raise
            self._udp = sock
        for d in datagrams:
            await self._udp.send(d)

    async def _send_stream(self, data: bytes) -> None:
        if self._stream is None:
            if self._ssl is not None:
                stream = await trio.open_ssl_over_tcp_stream(self.host, self.port, ssl_context=self._ssl)
                await stream.do_handshake()
            else:
                stream = await trio.open_tcp_stream(self.host, self.port)
            self._stream = stream
        await self._stream.send_all(data)
        sock = (self._stream.transport_stream if isinstance(self._stream, trio.SSLStream) else self._stream).socket
        await _until_acknowledged(sock)

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await stream.aclose()
                except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass


_TCP_ESTABLISHED = 1


async def _until_acknowledged(sock: trio.socket.SocketType) -> None:
    """Wait until the peer's TCP acknowledged all we sent (Linux: the send
    queue, TIOCOUTQ, is empty) while the connection stays established: a
    reset empties the queue too."""
    wait = 0.001
    while True:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        if state != _TCP_ESTABLISHED:
            raise OSError(0, "the receiver closed the connection")
        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if unacked == 0:
            return
        await trio.sleep(wait)
        wait = min(wait * 2, 0.1)


class WebhookSender:
    """One POST of JSON per record; a 2xx answer is the receipt.  Redirects
    are not followed (a moved webhook is a configuration to fix)."""

    def __init__(self, url: str, *, timeout: float, token: str = "", ca: str = "") -> None:
        import httpx

        self.where = url
        self._httpx = httpx
        headers = {"Content-Type": "application/json", "User-Agent": "sentinel-immune-hive"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, verify=_tls_context(ca),
                                         follow_redirects=False)

    async def send(self, records: Sequence[Record]) -> None:
        for r in records:
            try:
                answer = await self._client.post(self.where, content=_json.encode(r.doc))
            except self._httpx.HTTPError as e:
                raise OutputError(f"{self.where}: {_reason(e)}") from None
            if not 200 <= answer.status_code < 300:
                raise OutputError(f"{self.where}: answered HTTP {answer.status_code} {answer.reason_phrase}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _tls_context(ca: str) -> ssl.SSLContext:
    """The receiver's certificate and name verified, against ``ca`` or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as e:
        raise OutputError(f"CA file {ca}: {getattr(e, 'strerror', None) or e}") from None


def _reason(e: BaseException) -> str:
    """A foreign error as a short phrase, with its cause's (trio's "all
    attempts to connect failed" says why only in its cause)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate refused: {e.verify_message}"
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_reason(x) for x in e.exceptions))
    own = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    cause = e.__cause__ or e.__context__
    if cause is not None:
        inner = _reason(cause)
        if not own:
            return inner
        if inner not in own:
            return f"{own}: {inner}"
    return own or type(e).__name__


Sender = FileSender | SyslogSender | WebhookSender
