"""Record decoding and verdict lines on hand-made records: no kernel needed.
The layouts are written out here independently of kmod/_decode.py, from
kmod/bpf/sensor.h."""

import errno
import socket
import struct
import time

import pytest

from kmod import Decoder, Policy, Verdicts, verdict_line
from wire import Bind, Connect, Exec, Exit, Fork, Notice, Open, SetId

OFFSET = 1_000_000_000_000


def hdr(kind, pid=100, tid=None, ppid=1, uid=0, euid=0, gid=0, gen=0, flags=0, ts=5,
        cgroup=7, comm=b"cmd", vpid=None, mntns=4026531841, pidns=4026531836):
    return struct.pack("<BBHIIIIIIIQQ16sII", kind, flags, gen, pid, tid or pid, ppid, uid, euid,
                       gid, pid if vpid is None else vpid, ts, cgroup, comm, mntns, pidns)


def pathbuf(path: str) -> bytes:
    comps = [c for c in path.split("/") if c][::-1]
    body = b"".join(c.encode().ljust(64, b"\0") for c in comps).ljust(16 * 64, b"\0")
    return struct.pack("<H6x", len(comps)) + body


def later() -> int:
    """A kernel stamp after anything noted in Verdicts so far."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 1


def exec_rec(filename, argv, result=0, exe="/usr/bin/x", cwd="/", flags=0, pid=100, ts=5):
    args = b"".join(a.encode() + b"\0" for a in argv)
    return (hdr(1, pid=pid, flags=flags, ts=ts) + struct.pack("<iHH", result, len(args), 0)
            + filename.encode().ljust(256, b"\0") + args.ljust(1280, b"\0")
            + pathbuf(exe) + pathbuf(cwd))


def open_rec(path, result=3, oflags=0, pid=100, ts=5, count=1, flags=0):
    raw = path.encode() + b"\0"
    return hdr(4, pid=pid, ts=ts, flags=flags) + struct.pack("<iIIIHH", result, oflags, 0, count,
                                                             len(raw), 0) + raw


def sock_rec(kind, family, address, port, verdict=0, rule=0xFFFFFFFF, proto=6, gen=0):
    packed = socket.inet_pton(family, address).ljust(16, b"\0")
    return hdr(kind, gen=gen) + struct.pack("<HHBBHI16s4x", family, port, proto, verdict, 0,
                                            rule, packed)


@pytest.fixture
def decoder():
    return Decoder(Policy.default(), Verdicts(), clock_offset_ns=OFFSET)


def test_successful_exec(decoder):
    ev = decoder.decode(exec_rec("./run", ["./run", "-x", ""], exe="/usr/local/bin/run",
                                 cwd="/home/a"))
    assert isinstance(ev, Exec)
    assert (ev.filename, ev.exe, ev.argv, ev.cwd) == \
        ("./run", "/usr/local/bin/run", ["./run", "-x", ""], "/home/a")
    assert (ev.pid, ev.tid, ev.ppid, ev.comm, ev.cgroup, ev.time) == (100, 100, 1, "cmd", 7,
                                                                      OFFSET + 5)
    assert ev.verdict == "allow" and ev.argv_truncated is False
    assert verdict_line(ev) is None


def test_a_stepped_wall_clock_is_followed_from_the_next_record(decoder):
    """Boot time (the records' clock) never steps; the wall clock may (NTP,
    an operator): times follow the offset read again at each drain."""
    before = decoder.decode(exec_rec("/bin/true", ["true"], ts=5))
    assert decoder.follow_clock(OFFSET + 3_600_000_000_000) == 3_600_000_000_000  # an hour forward
    after = decoder.decode(exec_rec("/bin/true", ["true"], ts=6))
    assert (before.time, after.time) == (OFFSET + 5, OFFSET + 3_600_000_000_000 + 6)
    now = Decoder.wall_offset() + time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert abs(now - time.time_ns()) < 50_000_000


def test_exec_blocked_by_fanotify_names_its_rule(decoder):
    decoder.verdicts.record("exec", 3158, "exec-from-temp", "block", "/tmp/test.sh")
    # the process's own start, stamped before the verdict, does not take it
    start = decoder.decode(exec_rec("/usr/bin/python3", ["python3"], pid=3158))
    assert start.verdict == "allow"
    ev = decoder.decode(exec_rec("/tmp/test.sh", ["/tmp/test.sh"], result=-errno.EPERM, pid=3158,
                                 ts=later()))
    assert (ev.verdict, ev.rule, ev.exe, ev.result) == \
        ("block", "exec-from-temp", "/tmp/test.sh", -errno.EPERM)
    assert verdict_line(ev) == "IMMUNE: [BLOCKED] exec /tmp/test.sh (pid=3158)"
    # taken once: a later exec of the same process is judged afresh
    assert decoder.verdicts.take("exec", 3158, later()) is None


def test_exec_matching_a_block_rule_that_went_through_is_audited(decoder):
    ev = decoder.decode(exec_rec("/tmp/x", ["/tmp/x"], exe="/tmp/x"))
    assert (ev.verdict, ev.rule) == ("audit", "exec-from-temp")


def test_exec_refused_before_our_responder_saw_it_is_still_blocked(decoder):
    # another agent's fanotify group denied first: ours was never asked
    ev = decoder.decode(exec_rec("/tmp/x", ["/tmp/x"], result=-errno.EPERM, exe=""))
    assert (ev.verdict, ev.rule, ev.exe) == ("block", "exec-from-temp", "")
    other = decoder.decode(exec_rec("/tmp/x", ["/tmp/x"], result=-errno.EACCES, exe=""))
    assert other.verdict == "audit"


def test_every_record_carries_its_namespaces(decoder):
    records = [exec_rec("/bin/a", ["a"], pid=4242), open_rec("/etc/shadow", pid=4242),
               sock_rec(6, socket.AF_INET, "10.0.0.1", 80), hdr(5) + struct.pack("<IIIi", 1, 0, 1, 0),
               hdr(2) + struct.pack("<I4x", 11), hdr(3) + struct.pack("<i4x", 0)]
    for rec in records:
        rec = rec[:28] + struct.pack("<I", 7) + rec[32:64] + struct.pack("<II", 4026532174, 4026532175) \
            + rec[72:]
        ev = decoder.decode(rec)
        assert (ev.vpid, ev.mntns, ev.pidns) == (7, 4026532174, 4026532175), type(ev)


def unguarded_exec(filename, exe, **kw):
    return exec_rec(filename, [filename], exe=exe, flags=32, ts=later(), **kw)


def test_exec_from_a_filesystem_not_marked_yet_is_unguarded(decoder):
    """The kernel flags an exec whose file is on a superblock the guard had
    not marked: fanotify was never asked, so the verdict says that, and the
    rule is the one that would have applied."""
    ev = decoder.decode(unguarded_exec("/tmp/sh", "/tmp/sh", pid=3170))
    assert (ev.verdict, ev.rule, ev.result) == ("unguarded", "exec-from-temp", 0)
    assert verdict_line(ev) == "IMMUNE: [UNGUARDED] exec /tmp/sh (pid=3170)"
    other = decoder.decode(unguarded_exec("/opt/app/run", "/opt/app/run"))
    assert (other.verdict, other.rule) == ("unguarded", "")
    # a verdict fanotify noted wins: that exec was guarded after all
    decoder.verdicts.record("exec", 3171, "exec-from-temp", "audit", "/tmp/sh")
    seen = decoder.decode(unguarded_exec("/tmp/sh", "/tmp/sh", pid=3171))
    assert (seen.verdict, seen.rule) == ("audit", "exec-from-temp")


def test_truncation_flags(decoder):
    ev = decoder.decode(exec_rec("/bin/a", ["a"], flags=1 | 2,
                                 exe="/" + "/".join(f"d{i}" for i in range(16))))
    assert ev.argv_truncated
    assert ev.exe.startswith("/\u2026/d0/")


def test_open_audit_and_prefix_false_positive(decoder):
    ev = decoder.decode(open_rec("/etc/shadow", oflags=0o100000))
    assert isinstance(ev, Open)
    assert (ev.path, ev.flags, ev.result, ev.verdict, ev.rule) == \
        ("/etc/shadow", 0o100000, 3, "audit", "open-credentials")
    assert verdict_line(ev) == "IMMUNE: [AUDIT] open /etc/shadow (pid=100)"
    # /etc/sudoers.d/ is a kernel prefix; a path under it matches "/etc/sudoers.d/*"
    assert decoder.decode(open_rec("/etc/sudoers.d/x/y")) is None
    folded = decoder.decode(open_rec("/etc/shadow", result=0, count=999, flags=4))
    assert (folded.path, folded.count, folded.result) == ("/etc/shadow", 999, 0)
    assert verdict_line(folded) == "IMMUNE: [AUDIT] open /etc/shadow (pid=100, 999 times)"


def test_open_block_uses_the_fanotify_verdict():
    p = Policy.parse('[[rule]]\nname="keys"\nhook="open"\naction="block"\nmatch.path="/k/*"')
    d = Decoder(p, Verdicts(), 0)
    d.verdicts.record("open", 100, "keys", "block", "/k/a")
    assert d.decode(open_rec("/k/a", result=-errno.EPERM, ts=later())).verdict == "block"
    # failed open: fanotify did not answer in time, the call went through
    assert d.decode(open_rec("/k/a", result=4, ts=later())).verdict == "audit"
    # refused before our responder was asked
    assert d.decode(open_rec("/k/a", result=-errno.EPERM, ts=later())).verdict == "block"


def test_connect_and_bind(decoder):
    ev = decoder.decode(sock_rec(6, socket.AF_INET, "127.0.0.1", 4444, verdict=2, rule=1))
    assert isinstance(ev, Connect)
    assert (ev.address, ev.port, ev.family, ev.protocol, ev.verdict, ev.rule) == \
        ("127.0.0.1", 4444, 2, "tcp", "block", "connect-c2-ports")
    assert verdict_line(ev) == "IMMUNE: [BLOCKED] connect 127.0.0.1:4444 (pid=100)"
    ev6 = decoder.decode(sock_rec(7, socket.AF_INET6, "::1", 4444, verdict=2, rule=2, proto=17))
    assert isinstance(ev6, Bind)
    assert (ev6.address, ev6.protocol, ev6.rule) == ("::1", "udp", "bind-c2-ports")
    assert verdict_line(ev6) == "IMMUNE: [BLOCKED] bind [::1]:4444 (pid=100)"
    allowed = decoder.decode(sock_rec(6, socket.AF_INET, "10.1.2.3", 80))
    assert (allowed.verdict, allowed.rule) == ("allow", "")


def test_rules_keep_the_name_of_the_policy_that_decided(decoder):
    new = Policy.parse('[[rule]]\nname="other"\nhook="connect"\naction="audit"\nmatch.port=1')
    decoder.set_policy(1, new)
    old = decoder.decode(sock_rec(6, socket.AF_INET, "127.0.0.1", 4444, verdict=2, rule=1))
    assert old.rule == "connect-c2-ports"
    fresh = decoder.decode(sock_rec(6, socket.AF_INET, "127.0.0.1", 1, verdict=1,
                                    rule=1 << 16 | 0, gen=1))
    assert fresh.rule == "other"


def test_setid_fork_exit(decoder):
    ev = decoder.decode(hdr(5, pid=3162) + struct.pack("<IIIi", 1, 0, 65534, 0))
    assert isinstance(ev, SetId)
    assert (ev.call, ev.old, ev.new, ev.result, ev.verdict) == ("setuid", 0, 65534, 0, "audit")
    assert verdict_line(ev) == "IMMUNE: [AUDIT] setuid 0->65534 (pid=3162)"
    unseen = decoder.decode(hdr(5, pid=7) + struct.pack("<IIIi", 3, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    assert (unseen.call, unseen.old, unseen.new) == ("setresuid", -1, -1)
    assert verdict_line(unseen) == "IMMUNE: [AUDIT] setresuid ?->-1 (pid=7)"
    fork = decoder.decode(hdr(2, pid=10) + struct.pack("<I4x", 11))
    assert isinstance(fork, Fork) and fork.child_pid == 11 and fork.rule == "process-fork"
    assert verdict_line(fork) == "IMMUNE: [AUDIT] fork 11 (pid=10)"
    assert decoder.decode(hdr(3) + struct.pack("<i4x", 3 << 8)).code == 3
    killed = decoder.decode(hdr(3) + struct.pack("<i4x", 9))
    assert isinstance(killed, Exit) and killed.code == -9


def test_unknown_kind_is_an_error(decoder):
    with pytest.raises(ValueError, match="unknown kernel record kind 42"):
        decoder.decode(hdr(42))


def test_verdict_line_ignores_notices():
    assert verdict_line(Notice(what="drops", verdict="audit")) is None


def test_verdicts_expire():
    v = Verdicts(ttl=0.001)
    v.record("exec", 1, "r", "block", "/x")
    assert v.take("exec", 1, later() + 10**7) is None
    v = Verdicts(limit=2)
    for pid in range(3):
        v.record("exec", pid, "r", "block", "/x")
    assert v.take("exec", 0, later()) is None
    assert v.take("exec", 2, later()) == ("r", "block", "/x")
