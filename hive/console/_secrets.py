"""Passwords, session ids, CSRF tokens and API tokens: how each is made,
stored and checked.  Plain functions, no I/O.

A password is kept as ``scrypt$N$r$p$SALT$HASH`` (hashlib.scrypt, memory
hard: N=2**14, r=8, p=1 takes 16 MiB and about 50 ms here; a random
16-byte salt; base64 without padding).  The parameters are in the string,
so stronger ones later still verify the old hashes.

Session ids and API token secrets are 32 random bytes: guessing one is out
of reach, so the store keeps only their SHA-256 (a stolen store opens no
session) and a fast hash is enough.  Every comparison of secrets is
constant-time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAXMEM = 64 << 20

MIN_PASSWORD = 12
"""Characters a password needs at least."""
MAX_PASSWORD = 1024
"""Characters a password may have at most (hashing a huge one would cost a request its memory)."""

TOKEN_PREFIX = "imt_"
"""An API token reads ``imt_<ID>_<SECRET>``: the id names it (``users revoke-token ID``), the secret proves it."""
_TOKEN = re.compile(r"imt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SESSION = re.compile(r"[A-Za-z0-9_-]{43}")


class PasswordError(ValueError):
    """This password cannot be used; the message says why in one line."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_password(password: str) -> None:
    if not password.strip():
        raise PasswordError("the password is empty")
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"the password is too long: at most {MAX_PASSWORD} characters")
    if any(c in password for c in "\0\r\n"):
        raise PasswordError("the password contains a NUL or line break")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=_MAXMEM, dklen=_HASH_BYTES)


def hash_password(password: str) -> str:
    check_password(password)
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


# Checked when the user name is unknown, so that the answer takes as long as for a known one.
_UNKNOWN = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(_SALT_BYTES))}${_b64(bytes(_HASH_BYTES))}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (None: an unknown user, checked
    against a hash nothing matches, in the same time)."""
    try:
        kind, n, r, p, salt, digest = (stored or _UNKNOWN).split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        want = _unb64(digest)
        if kind != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        got = _scrypt(password, _unb64(salt), n_, r_, p_)
    except (ValueError, TypeError, MemoryError):
        return False  # a damaged stored hash opens nothing
    return hmac.compare_digest(got, want) and stored is not None


def digest(secret: str) -> str:
    """How a session id or an API token's secret is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_session_id() -> str:
    return _b64(secrets.token_bytes(32))


def is_session_id(text: str) -> bool:
    return bool(_SESSION.fullmatch(text))


def csrf_for(session_id: str) -> str:
    """The CSRF token of a session: derived from its id (which only the
    browser's HttpOnly cookie holds), so it needs no storage and dies with it."""
    return hmac.new(session_id.encode(), b"immune console csrf", hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_token() -> tuple[str, str]:
    """(id, the token as the user keeps it)."""
    token_id = secrets.token_hex(6)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{_b64(secrets.token_bytes(32))}"


def split_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed API token, else None."""
    m = _TOKEN.fullmatch(text)
    return (m.group(1), m.group(2)) if m else None
