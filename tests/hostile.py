"""Frames an attacker sends: shared by the attack tests and bench/bench_flood.py."""

from __future__ import annotations

import msgspec

DEPTH = 2000
"""Nesting of the hostile frames: deeper than msgspec's recursion limit."""


def nested_junk(head: dict) -> bytes:
    """A codec frame ``[1, head + {"junk": [[[...]]]}]``: ``head`` as a msgpack
    map with one more key whose value is DEPTH nested arrays.  About 2 KB that
    once raised RecursionError in the decoder (it skips unknown keys by
    recursing into them)."""
    enc = msgspec.msgpack.encode(head)
    assert 0x80 <= enc[0] < 0x8F, "head must be a small map"
    body = bytes([enc[0] + 1]) + enc[1:] + msgspec.msgpack.encode("junk") + b"\x91" * DEPTH + b"\xc0"
    return b"\x92\x01" + body
