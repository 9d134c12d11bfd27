"""Policy bundles: what the hive assigns to agents, signed, versioned.

A bundle carries what an agent runs that the hive manages: the sensor
policy, and the rules and playbooks it runs at the edge.  The hive signs
each bundle with its Ed25519 signing key; an agent holds the hive's public
key (pinned at enrollment, like its CURVE key) and takes a bundle only if
the signature holds and its version is above the one it runs, so a bundle
cannot be forged, altered, or replayed to roll an agent back.

Versions come from one counter per hive, not per assignment: an agent whose
labels move it to another assignment still sees a higher number.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wire import MAX_BUNDLE

from ._errors import BundleRefused

_DOMAIN = b"immune-bundle-v1\0"
"""Signed with the bundle, so a signature made for anything else never verifies as one."""
MAX_FILES = 4096

Text = Annotated[str, msgspec.Meta(max_length=MAX_BUNDLE)]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"\A[^/\x00]+\Z")]
LABEL_KEY = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z"
"""A label's key: a letter or digit, then letters, digits, '.', '_' or '-'; at most 63."""
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=LABEL_KEY)]
LabelValue = Annotated[str, msgspec.Meta(max_length=255, pattern=r"\A[^\x00]*\Z")]
Files = Annotated[dict[FileName, Text], msgspec.Meta(max_length=MAX_FILES)]


class Bundle(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")]
    """The assignment it came from."""
    version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    issued: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    """Unix ns when the hive signed it."""
    labels: Annotated[dict[Label, LabelValue], msgspec.Meta(max_length=64)] = {}
    """The agents it is for: those whose labels include all of these ({} is every agent)."""
    policy: Text = ""
    """The sensor policy (TOML); "" leaves the agent's own file in force."""
    rules: Files = {}
    """Sigma rules for the edge, by file name."""
    playbooks: Files = {}
    """Playbooks for the edge, by file name."""


class Signed(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A bundle as it travels and as the agent keeps it on disk."""

    bundle: Annotated[bytes, msgspec.Meta(max_length=MAX_BUNDLE)]
    """The encoded ``Bundle``, byte for byte what was signed."""
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


_encode = msgspec.msgpack.Encoder().encode
_decode_signed = msgspec.msgpack.Decoder(Signed).decode
_decode_bundle = msgspec.msgpack.Decoder(Bundle).decode


def _said(e: Exception) -> str:
    """msgspec's message, which may quote the input, on one line."""
    return str(e).encode("unicode_escape").decode("ascii")


def selects(labels: dict[str, str], agent_labels: dict[str, str]) -> bool:
    """Whether a bundle for ``labels`` is for an agent labelled ``agent_labels``."""
    return all(agent_labels.get(k) == v for k, v in labels.items())


def assigned(bundles: Iterable[Any], agent_labels: dict[str, str]) -> Any | None:
    """Of ``bundles`` (each with ``labels`` and ``version``: the latest of
    each name), the one an agent labelled ``agent_labels`` runs: the most
    specific that selects it (the most labels), then the newest.  None if
    none does: the agent keeps what it runs."""
    best = None
    for b in bundles:
        if selects(b.labels, agent_labels) and (
                best is None or (len(b.labels), b.version) > (len(best.labels), best.version)):
            best = b
    return best


class SigningKey:
    """The hive's Ed25519 key pair for bundles."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes_raw()
        """32 bytes: what agents pin."""

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> SigningKey:
        if len(raw) != 32:
            raise ValueError(f"a signing key is 32 bytes, not {len(raw)}")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes_raw()

    @classmethod
    def load_or_create(cls, folder: str | Path) -> SigningKey:
        """The key in ``folder``/bundle.key (made, 0600, with bundle.pub
        beside it, if there is none)."""
        folder = Path(folder)
        path = folder / "bundle.key"
        try:
            return cls.from_bytes(path.read_bytes())
        except FileNotFoundError:
            pass
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        key = cls.generate()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process
            return cls.load_or_create(folder)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes())
        (folder / "bundle.pub").write_bytes(key.public)
        return key

    def sign_data(self, data: bytes) -> bytes:
        """The signature of ``data``, which must begin with a domain of its own
        (e.g. ``hive.herd``'s): never a bundle's, so it can pass for none."""
        if data.startswith(_DOMAIN):
            raise ValueError("data in the bundles' signing domain")
        return self._private.sign(data)

    def sign(self, bundle: Bundle) -> Signed:
        if not bundle.issued:
            bundle = msgspec.structs.replace(bundle, issued=time.time_ns())
        data = _encode(bundle)
        try:  # what an agent would refuse (a label too long, a file name with a slash) is never signed
            _decode_bundle(data)
        except msgspec.ValidationError as e:
            raise ValueError(_said(e)) from None
        if len(data) > MAX_BUNDLE:
            raise ValueError(f"bundle {bundle.name!r} is {len(data)} bytes encoded, above {MAX_BUNDLE}")
        return Signed(bundle=data, signature=self._private.sign(_DOMAIN + data))


def encode(signed: Signed) -> bytes:
    return _encode(signed)


def verify(signed: Signed | bytes, public: bytes, running: int = 0) -> Bundle:
    """The bundle in ``signed`` if the hive whose key is ``public`` signed it
    and its version is above ``running`` (the version the agent runs).

    Raises ``BundleRefused`` saying why not: not decodable, not signed by
    that key, not newer."""
    if isinstance(signed, (bytes, bytearray, memoryview)):
        try:
            signed = _decode_signed(signed)
        except msgspec.DecodeError as e:
            raise BundleRefused(f"not a signed bundle: {_said(e)}") from None
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signed.signature, _DOMAIN + signed.bundle)
    except (InvalidSignature, ValueError):
        raise BundleRefused("its signature is not the hive's: altered, or signed by another key") from None
    try:
        bundle = _decode_bundle(signed.bundle)
    except msgspec.DecodeError as e:  # signed, so the hive made it: a newer format
        raise BundleRefused(f"signed, but not a bundle this agent can read: {_said(e)}") from None
    if bundle.version <= running:
        raise BundleRefused(f"version {bundle.version} is not newer than the version running ({running}): "
                            "a replay or a stale copy")
    return bundle
