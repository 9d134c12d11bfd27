"""Real receivers for the outputs' tests: syslog listeners over UDP, TCP and
TLS (with a CA made here), and an HTTP server taking webhooks.  Each can be
taken down and brought up again on the same port, and keeps what it got."""

from __future__ import annotations

import datetime
import http.server
import json
import socket
import ssl
import threading
from pathlib import Path

import trio

from hive.outputs import split_frames


def make_ca(folder: Path, host: str = "localhost") -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for ``host`` and 127.0.0.1 signed by it, server key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "immune test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def body(msg: bytes) -> dict:
    """The JSON document of an RFC 5424 message (after ``... MSGID -``)."""
    return json.loads(msg.split(b" - ", 1)[1])


class StreamListener:
    """A syslog receiver over TCP (or TLS with ``certs``): octet-counted frames."""

    def __init__(self, port: int, certs: tuple[Path, Path, Path] | None = None) -> None:
        self.port = port
        self.messages: list[bytes] = []
        self._ssl = None
        if certs:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(certs[1], certs[2])
        self._scope: trio.CancelScope | None = None

    @property
    def docs(self) -> list[dict]:
        return [body(m) for m in self.messages]

    async def up(self, nursery: trio.Nursery) -> None:
        self._scope = await nursery.start(self._serve)

    async def down(self) -> None:
        """Stop listening and drop every connection."""
        assert self._scope is not None
        self._scope.cancel()
        await trio.sleep(0.05)

    async def _serve(self, *, task_status) -> None:
        with trio.CancelScope() as scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            if self._ssl is not None:
                listeners = [trio.SSLListener(lst, self._ssl) for lst in listeners]
            async with trio.open_nursery() as n:
                task_status.started(scope)
                await trio.serve_listeners(self._handle, listeners, handler_nursery=n)

    async def _handle(self, stream) -> None:
        buf = bytearray()
        try:
            async for chunk in stream:
                buf += chunk
                self.messages += split_frames(buf)
        except trio.BrokenResourceError:
            pass
        finally:
            # Cancelled (taken down): close hard, so the sender sees it.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


class UdpListener:
    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[bytes] = []

    async def serve(self, *, task_status) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", self.port))
        task_status.started()
        with sock:
            while True:
                self.messages.append(await sock.recv(65536))


class WebhookServer:
    """HTTP(S) in a thread: keeps each POST's body and Authorization header;
    answers ``status`` (200 unless told otherwise)."""

    def __init__(self, port: int, certs: tuple[Path, Path, Path] | None = None) -> None:
        self.port = port
        self.certs = certs
        self.posts: list[tuple[str, dict]] = []
        self.status = 200
        self._server: http.server.ThreadingHTTPServer | None = None
        self._connections: list[socket.socket] = []

    def up(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                owner._connections.append(self.connection)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if owner.status == 200:
                    owner.posts.append((self.headers.get("Authorization", ""), json.loads(data)))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.certs:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.certs[1], self.certs[2])
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in self._connections:  # kept alive by the client: down means these too
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._connections.clear()


class ThreadedSyslog:
    """A TCP syslog receiver in a thread, for tests that drive real
    ``immune-node`` processes without a trio loop of their own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def docs(self) -> list[dict]:
        return [body(m) for m in list(self.messages)]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                self.messages += split_frames(buf)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
