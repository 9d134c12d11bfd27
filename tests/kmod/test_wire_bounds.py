"""What the kernel side hands the relay is within the wire's bounds: the
kmod reader encodes it, the relay decodes it with the contract's decoder.
A value outside them (or a text no UTF-8 encoder takes) would crash the
reader or lose its whole batch."""

import errno
import os
import shutil
import struct

import pytest

import wire
from actors import Codec
from kmod import Decoder, LinuxSensor, Policy, Verdicts

from tests.ports import free_port

from .conftest import _REASON, collect, flush, private_rules, run_child
from .test_decode import OFFSET, hdr, later

RELAY = Codec(wire.AgentMessage)  # the relay's decoder of the reader's batches


def round_trips(ev) -> bool:
    batch = wire.EventBatch(seq=1, events=[ev])
    return RELAY.decode(RELAY.encode(batch)) == batch


def longest_pathbuf(fill: bytes) -> bytes:
    """A dentry walk that hit the component limit, every name at its longest, unterminated."""
    return struct.pack("<H6x", 16) + fill * (16 * 64)


@pytest.mark.parametrize("fill", [b"\xff", b"a"])
@pytest.mark.parametrize("args", [b"\0" * 1280, b"\xfe" * 1280])
def test_the_longest_exec_record_the_sensor_writes_is_within_bounds(fill, args):
    rec = (hdr(1, flags=1 | 2, comm=fill * 16) + struct.pack("<iHH", 0, 1280, 0) + fill * 256 + args
           + longest_pathbuf(fill) + longest_pathbuf(fill))
    ev = Decoder(Policy.default(), Verdicts(), clock_offset_ns=OFFSET).decode(rec)
    assert len(ev.filename) == 256 and len(ev.exe) == len(ev.cwd) == 2 + 16 * 65
    assert len(ev.argv) <= 1280 and sum(map(len, ev.argv)) <= 1280
    assert round_trips(ev)


def test_the_longest_resolved_open_is_within_bounds():
    rec = (hdr(4, flags=8 | 16 | 2) + struct.pack("<iIIIHH", -errno.ENOENT, 0, 0, 1, 0, 0)
           + longest_pathbuf(b"\xff") + b"\xff" * 64)
    # A policy that audits every open, so that the record becomes an event.
    policy = Policy.parse('[[rule]]\nname = "all"\nhook = "open"\naction = "audit"\nmatch.path = "/**"\n')
    ev = Decoder(policy, Verdicts(), clock_offset_ns=OFFSET).decode(rec)
    assert len(ev.path) == 2 + 16 * 65 + 65
    assert round_trips(ev)


def test_a_blocked_exec_of_a_name_not_utf8_reads_as_the_kernel_spells_it():
    decoder = Decoder(Policy.default(), Verdicts(), clock_offset_ns=OFFSET)
    name = b"/tmp/run-\xff\xfe"
    # fanotify's responder notes the path readlink gave it: surrogates
    decoder.verdicts.record("exec", 100, "exec-from-temp", "block", os.fsdecode(name))
    rec = (hdr(1, ts=later()) + struct.pack("<iHH", -errno.EPERM, 0, 0) + name.ljust(256, b"\0")
           + bytes(1280) + struct.pack("<H6x", 0) + bytes(1024) + struct.pack("<H6x", 0) + bytes(1024))
    ev = decoder.decode(rec)
    assert ev.verdict == "block" and ev.exe == ev.filename == "/tmp/run-\ufffd\ufffd"
    assert round_trips(ev)


@pytest.mark.kernel
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_a_real_blocked_exec_of_a_name_not_utf8_can_be_sent(workdir):
    # Any user could run this (the default policy blocks execs under /tmp):
    # before, the event's exe held surrogates and the kmod reader's encoder
    # raised on it, crashing the reader at each such exec.
    s = LinuxSensor(Policy.parse(private_rules(workdir, free_port())))
    s.start()
    try:
        bad = os.fsencode(workdir) + b"/run-\xff\xfe"
        shutil.copy("/bin/true", bad)
        flush(s)
        child = run_child("exec", os.fsdecode(bad))
        assert child.errno == errno.EPERM
        (ev,) = collect(s, lambda e: isinstance(e, wire.Exec) and e.pid == child.pid and e.result)
    finally:
        s.close()
    assert ev.verdict == "block" and ev.rule == "test-exec"
    assert ev.exe == ev.filename == bad.decode(errors="replace")
    assert round_trips(ev)
