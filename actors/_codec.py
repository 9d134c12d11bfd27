"""msgpack codec with a versioned envelope and one typed decoder per socket.

A frame is ``[version, body]``.  The decoder is built for the exact type a
socket accepts, so a frame of the wrong type fails at the edge with
:class:`DecodeError` instead of deep inside an actor.  Every failure to
decode one frame is a :class:`DecodeError`, whatever raised it: a frame is
foreign input, and an actor must refuse it and go on, never crash on it.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from ._errors import DecodeError

T = TypeVar("T")


class _Envelope(msgspec.Struct, Generic[T], array_like=True):
    v: int
    body: T


class Codec(Generic[T]):
    """Encodes and decodes one message type (usually a tagged union).

    ``version`` is the newest envelope version this side writes and reads; a
    frame from a newer peer is refused with a clear reason rather than
    half-decoded.
    """

    def __init__(self, type: Any, *, version: int = 1, max_size: int = 64 << 20) -> None:
        self.type = type
        self.version = version
        self.max_size = max_size
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(_Envelope[type])

    def encode(self, msg: T) -> bytes:
        return self._encoder.encode(_Envelope(self.version, msg))

    def decode(self, frame: bytes | memoryview) -> T:
        if len(frame) > self.max_size:
            raise DecodeError(f"frame of {len(frame)} bytes exceeds the limit of {self.max_size}")
        try:
            env = self._decoder.decode(frame)
        except Exception as e:  # noqa: BLE001  (a frame is foreign input: nothing in it may crash an actor)
            raise DecodeError(_failure(e)) from None
        if env.v > self.version:
            raise DecodeError(f"envelope version {env.v} is newer than supported {self.version}")
        return env.body


def _failure(e: Exception) -> str:
    """Why foreign bytes could not be decoded, in one line, whatever raised:
    msgspec's own errors, but also RecursionError (arrays nested thousands
    deep), MemoryError, and whatever a type's ``__post_init__`` raised."""
    if isinstance(e, msgspec.ValidationError):
        return f"wrong message: {e}"
    if isinstance(e, msgspec.DecodeError):
        return f"malformed frame: {e}"
    if isinstance(e, RecursionError):
        return "malformed frame: nested too deeply"
    if isinstance(e, MemoryError):
        return "malformed frame: too large to decode"
    return f"malformed frame: {type(e).__name__}: {e}"
