"""msgpack codec with a versioned envelope and one typed decoder per socket.

A frame is ``[version, body]``.  The decoder is built for the exact type a
socket accepts, so a frame of the wrong type fails at the edge with
:class:`DecodeError` instead of deep inside an actor.
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
        except msgspec.ValidationError as e:
            raise DecodeError(f"wrong message: {e}") from None
        except msgspec.DecodeError as e:
            raise DecodeError(f"malformed frame: {e}") from None
        if env.v > self.version:
            raise DecodeError(f"envelope version {env.v} is newer than supported {self.version}")
        return env.body
