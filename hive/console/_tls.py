"""The console's certificate: the configured pair, or a self-signed one made
on first start in the data folder (EC P-256, which every browser takes;
names 127.0.0.1, ::1, localhost and the host name; the key file 0600).
Its SHA-256 fingerprint is what a user compares with the browser's."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path


class TLSError(Exception):
    """The certificate or key cannot be used; one line naming the config key."""


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of ``https://HOST:PORT`` (an IPv6 host in brackets); ValueError says why not."""
    scheme, sep, rest = listen.partition("://")
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if scheme != "https" or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 \
            or "/" in rest or "[" in host:
        raise ValueError(f"{listen!r} is not https://HOST:PORT (a port from 1 to 65535)")
    return host, int(port)


def make_self_signed(cert: Path, key: Path, *, days: int = 825) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = socket.gethostname()
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"immune console {host}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
           x509.IPAddress(ipaddress.ip_address("::1"))]
    if host and host != "localhost":
        alt.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    # The key is written under a temporary name with 0600 from the start, then renamed.
    tmp = key.with_name(key.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    os.replace(tmp, key)
    tmp = cert.with_name(cert.name + ".tmp")
    tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert)


def fingerprint(cert: Path) -> str:
    """SHA-256 of the certificate (DER), as browsers show it: AB:CD:..."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text("ascii"))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def certificate(cert: str, key: str, data: Path) -> tuple[Path, Path, bool]:
    """(cert file, key file, made now): the configured pair (both or
    neither), else the self-signed pair under ``data``, made if missing."""
    if bool(cert) != bool(key):
        raise TLSError(f"console.{'key' if cert else 'cert'}: set console.cert and console.key together")
    if cert:
        return Path(cert), Path(key), False
    c, k = data / "console.crt", data / "console.key"
    if c.exists() and k.exists():
        return c, k, False
    try:
        make_self_signed(c, k)
    except OSError as e:
        raise TLSError(f"console.cert (the default): cannot make {c}: {e.strerror}") from None
    return c, k, True


def server_context(cert: Path, key: Path, default: bool) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the pair; :class:`TLSError` naming the key at fault."""
    where = " (the default)" if default else ""
    for name, path in (("cert", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except IsADirectoryError:
            raise TLSError(f"console.{name}{where}: {path}: is a folder, not a file") from None
        except OSError as e:
            raise TLSError(f"console.{name}{where}: {path}: {e.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise TLSError(f"console.cert/console.key{where}: {cert}, {key}: not a matching PEM certificate and "
                       f"key ({e.reason or e})") from None
    try:
        fingerprint(cert)
    except (ValueError, UnicodeDecodeError):
        raise TLSError(f"console.cert{where}: {cert}: no PEM certificate in it") from None
    return context
