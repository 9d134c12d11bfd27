"""The codec is a boundary: whatever a frame holds, decoding it either gives
the socket's message type or raises DecodeError with a one-line reason.
Nothing else may escape into an actor (a RecursionError once stopped the
hive's enroll actor and router)."""

from typing import Any

import msgspec
import pytest
import zmq

import wire
from actors import Codec, DecodeError

DEPTH = 2000
"""Deeper than msgspec's recursion limit: about 2 KB of frame."""


def envelope(body: bytes) -> bytes:
    return b"\x92\x01" + body


def nested(depth: int = DEPTH) -> bytes:
    return b"\x91" * depth + b"\xc0"


class Loose(msgspec.Struct):
    """A type that takes anything: the decoder recurses as deep as the frame."""

    value: Any


class Picky(msgspec.Struct):
    n: int

    def __post_init__(self) -> None:
        {}["a type's own check that fails with a foreign error"]


@pytest.mark.parametrize("codec,frame,reason", [
    (Codec(Loose), envelope(b"\x81\xa5value" + nested()), "malformed frame: nested too deeply"),
    (Codec(Any), envelope(nested()), "malformed frame: nested too deeply"),
    (Codec(Picky), envelope(b"\x81\xa1n\x01"), "malformed frame: KeyError"),
    (Codec(Picky), b"\xc1", "malformed frame: "),
    (Codec(Picky), envelope(b"\x81\xa1n\xa1x"), "wrong message: Expected `int`, got `str` - at `$[1].n`"),
    (Codec(wire.Enroll), envelope(b"\x83\xa4type\xa6enroll\xa5token\xa1x\xa5agent" + nested()),
     "wrong message: Expected `str`, got `array` - at `$[1].agent`"),
    (Codec(wire.AgentMessage), envelope(b"\x83\xa4type\xa6result\xa7command\xa1c\xa4data\x81\xa1k" + nested()),
     "- at `$[1].data"),
    (Codec(wire.HiveMessage), envelope(b"\x82\xa4type\xa3ack\xa3seq" + nested()),
     "wrong message: Expected `int`, got `array` - at `$[1].seq`"),
], ids=["recursion-any-field", "recursion-any", "post-init", "not-msgpack", "wrong-type", "enroll", "result-data",
        "ack"])
def test_every_failure_to_decode_is_a_decode_error_with_a_reason(codec, frame, reason):
    with pytest.raises(DecodeError) as e:
        codec.decode(frame)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


async def test_a_socket_counts_a_nested_frame_and_returns_nothing(root_ctx):
    sock = root_ctx.socket(zmq.PULL, codec=Codec(Loose))
    try:
        assert [sock.decode(envelope(b"\x81\xa5value" + nested())) for _ in range(10)] == [None] * 10
        assert sock.decode(Codec(Loose).encode(Loose(1))) == Loose(1)
        assert (sock.stats.malformed, sock.stats.last_error) == (10, "malformed frame: nested too deeply")
    finally:
        sock.close()
