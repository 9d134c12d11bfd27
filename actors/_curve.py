"""CURVE keys and a ZAP authenticator actor.

Key files hold Z85 text: ``NAME.key`` the secret key (mode 0600), ``NAME.pub``
the public key.  A server socket made with :func:`curve_server` refuses every
connection unless the ZAP handler (:func:`zap_handler`) is running and says
yes, so a crashed handler fails closed, never open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import zmq
from zmq.utils import z85

from ._actor import Context
from ._errors import ActorError
from ._log import log_event

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"immune"


class KeyFileError(ActorError):
    """A key file is missing or unreadable."""


class KeyPair:
    def __init__(self, public: bytes, secret: bytes) -> None:
        self.public = public
        self.secret = secret

    @classmethod
    def generate(cls) -> "KeyPair":
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def save(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = folder / f"{name}.key"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.secret + b"\n")
        (folder / f"{name}.pub").write_bytes(self.public + b"\n")

    @classmethod
    def load(cls, folder: Path, name: str) -> "KeyPair":
        try:
            secret = (folder / f"{name}.key").read_bytes().strip()
            public = (folder / f"{name}.pub").read_bytes().strip()
        except OSError as e:
            raise KeyFileError(f"cannot read the {name} key in {folder}: {e.strerror}") from None
        check_key(secret, f"{folder}/{name}.key")
        check_key(public, f"{folder}/{name}.pub")
        return cls(public, secret)

    @classmethod
    def load_or_create(cls, folder: Path, name: str) -> "KeyPair":
        if (folder / f"{name}.key").exists():
            return cls.load(folder, name)
        pair = cls.generate()
        pair.save(folder, name)
        return pair


def check_key(key: bytes, what: str) -> bytes:
    if len(key) != 40:
        raise KeyFileError(f"{what}: not a Z85 CURVE key (40 characters expected, got {len(key)})")
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"{what}: not a Z85 CURVE key") from None
    return key


def curve_server(sock: zmq.Socket, keys: KeyPair, domain: bytes = ZAP_DOMAIN) -> None:
    """Make ``sock`` a CURVE server whose connections the ZAP handler
    authorizes under ``domain``."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def curve_client(sock: zmq.Socket, keys: KeyPair, server_public: bytes) -> None:
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


Authorize = Callable[[bytes, str, str], "str | None"]
"""``authorize(client_public_z85, peer_address, domain) -> user id, or None to refuse``."""


async def zap_handler(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, authorize: Authorize) -> None:
    """Answer ZAP requests (RFC 27) for CURVE connections.  The user id it
    returns is attached to every message of the connection (``User-Id``)."""
    sock = ctx.socket(zmq.REP, bind=ZAP_ENDPOINT, topic="")
    task_status.started()
    while True:
        for frames in await sock.recv_frames(1):
            for sync in ctx.runtime.zap_syncs:  # doors take note of the connection first
                sync()
            await sock.send_frames(await _answer(ctx, frames, authorize))
        ctx.throttle.flush()


async def _answer(ctx: Context, frames: list[bytes], authorize: Authorize) -> list[bytes]:
    if len(frames) < 6:
        return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
    version, request_id, domain, address, _identity, mechanism = frames[:6]
    creds = frames[6:]
    addr = address.decode(errors="replace")
    if mechanism != b"CURVE" or len(creds) != 1 or len(creds[0]) != 32:
        ctx.stats.extra["refused"] = int(ctx.stats.extra.get("refused", 0)) + 1
        ctx.throttle.event("refused", "auth.refused", address=addr,
                           reason=f"mechanism {mechanism.decode(errors='replace')} is not CURVE")
        return [version, request_id, b"400", b"CURVE required", b"", b""]
    public = z85.encode(creds[0])
    try:
        # An authorizer may answer from memory (``authorize.cached(public,
        # domain)``, None when it does not know); else off the trio thread:
        # the lookup may wait on a database server.
        cached = getattr(authorize, "cached", None)
        user = cached(public, domain.decode(errors="replace")) if cached is not None else None
        if user is None:
            user = await trio.to_thread.run_sync(authorize, public, addr, domain.decode(errors="replace"))
    except Exception as e:  # a broken lookup refuses, never admits
        ctx.log.error("authorize failed", exc_info=e)
        user = None
    if user is None:
        ctx.stats.extra["refused"] = int(ctx.stats.extra.get("refused", 0)) + 1
        ctx.throttle.event("refused", "auth.refused", address=addr, key=public.decode(),
                           reason="key not enrolled or revoked")
        return [version, request_id, b"400", b"key not enrolled", b"", b""]
    ctx.stats.extra["accepted"] = int(ctx.stats.extra.get("accepted", 0)) + 1
    log_event(ctx.log, "auth.accepted", logging.DEBUG, address=addr, user=user)
    return [version, request_id, b"200", b"OK", user.encode(), b""]
