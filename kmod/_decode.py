"""Kernel records -> wire events, and the seed's verdict lines.

The record layouts are ``kmod/bpf/sensor.h``; the structs below unpack them
byte for byte.  Exec and open BLOCK verdicts are given by fanotify, which
notes them in ``Verdicts`` before answering, so they are known by the time
the kernel's record of the failed call is decoded."""

from __future__ import annotations

import errno
import functools
import ipaddress
import posixpath
import struct
import threading
import time

from wire import MAX_PATH, Bind, Connect, Event, Exec, Exit, File, Fork, Open, SetId, fit_text

from ._policy import SETID_CALLS, Policy

K_EXEC, K_FORK, K_EXIT, K_OPEN, K_SETID, K_CONNECT, K_BIND = range(1, 8)
KINDS = {K_EXEC: "exec", K_FORK: "fork", K_EXIT: "exit", K_OPEN: "open",
         K_SETID: "setid", K_CONNECT: "connect", K_BIND: "bind"}
KINDS[9] = "file"  # K_FILE: kmod/_files.py
K_PTRACE, K_SIGNAL, K_BPF, K_MOUNTED = range(10, 14)  # kmod/_procs.py decodes them
KINDS.update({K_PTRACE: "ptrace", K_SIGNAL: "signal", K_BPF: "bpf", K_MOUNTED: "mount"})
F_ARGS_TRUNC = 1
F_PATH_TRUNC = 2
F_RESOLVED = 8
F_IN_DIR = 16
F_UNGUARDED = 32
F_FILELESS = 128  # the image has no name (kmod/bpf/procs.bpf.h)
RULE_NONE = 0xFFFFFFFF
COMP_MAX, COMP_LEN, NAME_LEN = 16, 64, 64
_VERDICTS = ("allow", "audit", "block")
PROTOCOL_NAMES = {6: "tcp", 17: "udp"}
_EPERM = -errno.EPERM

_HDR = "<BBHIIIIIIIQQ16sII"  # struct hdr; vpid after gid, mntns and pidns at the end
# Header and body in one unpack per record: this is the hot path.
_EXEC = struct.Struct(_HDR + "iHH256s1280s")
_PATHBUF = struct.Struct(f"<H6x{COMP_MAX * COMP_LEN}s")
_FORK = struct.Struct(_HDR + "I4x")
_EXIT = struct.Struct(_HDR + "i4x")
_OPEN = struct.Struct(_HDR + "iIIIHH")
_SETID = struct.Struct(_HDR + "IIIi")
_SOCK = struct.Struct(_HDR + "HHBBHI16s4x")
_EXE_OFF = _EXEC.size
_CWD_OFF = _EXE_OFF + _PATHBUF.size
_CACHE_LIMIT = 4096


def _id(raw: int) -> int:
    """A user or group id; (uid_t)-1, "unknown" or "unchanged", as -1."""
    return -1 if raw == 0xFFFFFFFF else raw


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _join(buf, at: int, truncated: bool) -> str:
    depth, comps = _PATHBUF.unpack_from(buf, at)
    names = [_cstr(comps[i * COMP_LEN:(i + 1) * COMP_LEN]) for i in range(min(depth, COMP_MAX))]
    path = "/" + "/".join(reversed(names))
    return "/\u2026" + path if truncated and depth >= COMP_MAX else path


def wait_status_code(status: int) -> int:
    """Exit status of a normal exit, minus the signal number of a killed one."""
    return (status >> 8) & 0xFF if status & 0x7F == 0 else -(status & 0x7F)


class Verdicts:
    """Rule hits fanotify decided, keyed by (hook, pid), until the decoder
    meets the kernel's record of the same call.  Shared between threads.

    Times are CLOCK_BOOTTIME, the kernel records' clock: a hit noted before
    the answer can only belong to a record stamped after it, which keeps it
    from sticking to an earlier call of the same process still in the ring."""

    def __init__(self, ttl: float = 10.0, limit: int = 4096):
        self._ttl = int(ttl * 1e9)
        self._limit = limit
        self._hits: dict[tuple[str, int], tuple[int, str, str, str]] = {}
        self._lock = threading.Lock()

    def record(self, hook: str, pid: int, rule: str, action: str, path: str) -> None:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        with self._lock:
            if len(self._hits) >= self._limit:
                for key in [k for k, v in self._hits.items() if now - v[0] > self._ttl]:
                    del self._hits[key]
                if len(self._hits) >= self._limit:  # never decoded: drop the oldest
                    del self._hits[next(iter(self._hits))]
            self._hits[(hook, pid)] = (now, rule, action, path)

    def take(self, hook: str, pid: int, stamp: int) -> tuple[str, str, str] | None:
        """(rule, action, path) noted for the call of this process whose
        record is stamped ``stamp`` (boot-time ns), if any."""
        with self._lock:
            hit = self._hits.get((hook, pid))
            if hit is None or hit[0] > stamp:
                return None
            del self._hits[(hook, pid)]
        if stamp - hit[0] > self._ttl:
            return None
        return hit[1:]


class Decoder:
    """Turns raw records into wire events under the policy generation that
    produced them (a reload must not rename the verdicts still in the ring).

    Records are read in place (bytes, or the ring buffer's memoryview and
    an offset); nothing returned keeps a reference to them."""

    def __init__(self, policy: Policy, verdicts: Verdicts | None = None,
                 clock_offset_ns: int | None = None):
        self.verdicts = verdicts or Verdicts()
        self._policies: dict[int, Policy] = {0: policy}
        self._current = 0
        self._offset = self.wall_offset() if clock_offset_ns is None else clock_offset_ns
        self._strings: dict[bytes, str] = {}  # comm and paths repeat a lot
        self._decoders = {K_EXEC: self._exec, K_FORK: self._fork, K_EXIT: self._exit,
                          K_OPEN: self._open, K_SETID: self._setid,
                          K_CONNECT: self._sock, K_BIND: self._sock}
        from ._files import K_FILE, decode_file  # it builds on this module
        self._decoders[K_FILE] = functools.partial(decode_file, self)
        from ._procs import procs_decoders  # which imports this module
        self._decoders.update(procs_decoders(self))

    @staticmethod
    def wall_offset() -> int:
        """Wall clock minus boot time, now (ns)."""
        return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def follow_clock(self, offset_ns: int) -> int:
        """Stamp records from here on with ``offset_ns`` (``wall_offset()``
        read again): the kernel's clock is boot time, which NTP never steps,
        so a wall clock stepped after the start would otherwise shift every
        event's time by the step.  Returns the change (ns)."""
        change, self._offset = offset_ns - self._offset, offset_ns
        return change

    def set_policy(self, generation: int, policy: Policy) -> None:
        self._policies[generation] = policy
        self._current = generation
        for old in [g for g in self._policies if g not in (generation, (generation - 1) & 0xFFFF)]:
            del self._policies[old]

    def _policy(self, generation: int) -> Policy:
        return self._policies.get(generation) or self._policies[self._current]

    def _str(self, raw: bytes) -> str:
        """Decode a C string field (NUL-terminated or not), cached."""
        s = self._strings.get(raw)
        if s is None:
            if len(self._strings) >= _CACHE_LIMIT:
                self._strings.clear()
            s = self._strings[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return s

    def decode(self, buf: bytes | memoryview, at: int = 0) -> Event | None:
        """The event for the record at ``buf[at:]``; None for an open the
        kernel's prefix filter let through but no rule's glob matches."""
        fn = self._decoders.get(buf[at])
        if fn is None:
            raise ValueError(f"unknown kernel record kind {buf[at]}")
        return fn(buf, at)

    # Each decoder spells out the header fields: building a dict of them and
    # passing it as **kwargs costs a third of the time per event.  And no call
    # passes more than 15 keywords: CPython 3.11 compiles a call with more into
    # one through a dict, which made a Connect 2.5 times slower to build; the
    # namespaces (and for an exec, two more fields) are set after.

    def _exec(self, rec, at) -> Exec:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         result, args_len, _, filename, args) = _EXEC.unpack_from(rec, at)
        truncated = bool(flags & F_PATH_TRUNC)
        argv = args[:args_len].split(b"\0")
        if argv and argv[-1] == b"":
            argv.pop()
        exe = _join(rec, at + _EXE_OFF, truncated) if result == 0 else ""
        filename = self._str(filename)
        verdict, rule = "allow", ""
        hit = self.verdicts.take("exec", pid, ts)
        fileless = bool(flags & F_FILELESS)
        if fileless and not exe.startswith("/memfd:"):
            exe += " (deleted)"  # as /proc/PID/exe says it
        if fileless and (r := self._policy(gen).match_fileless()) is not None:
            verdict, rule = r.action, r.name  # the kernel killed it at once under block
        elif hit is not None:
            rule, action, path = hit
            verdict = "block" if action == "block" and result == _EPERM else "audit"
            # fanotify's path is readlink's, a name not UTF-8 in surrogates that
            # no encoder takes: spelled as the kernel's own strings are.
            exe = exe or fit_text(path, MAX_PATH)
        else:
            # No verdict noted: refused anyway (another agent's fanotify group
            # answered first), or let through (failed open, or from a filesystem
            # the guard had not marked yet), or failed otherwise.
            r = self._policy(gen).match_exec(exe or filename, with_hash=False, pid=pid, cgroup=cgroup)
            if flags & F_UNGUARDED:  # fanotify was never asked; the rule it would have met
                verdict, rule = "unguarded", r.name if r else ""
            elif r is not None:
                verdict = "allow" if r.action == "allow" else \
                    "block" if r.action == "block" and result == _EPERM else "audit"
                rule = r.name
        ev = Exec(time=ts + self._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid,
                  gid=gid, comm=self._str(comm), cgroup=cgroup, filename=filename, exe=exe,
                  argv=[a.decode(errors="replace") for a in argv], result=result,
                  verdict=verdict, rule=rule)
        ev.argv_truncated, ev.cwd = bool(flags & F_ARGS_TRUNC), _join(rec, at + _CWD_OFF, truncated)
        ev.fileless = fileless
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def _fork(self, rec, at) -> Fork:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         child) = _FORK.unpack_from(rec, at)
        r = self._policy(gen).match_fork()
        ev = Fork(time=ts + self._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid,
                  gid=gid, comm=self._str(comm), cgroup=cgroup, child_pid=child,
                  verdict="audit" if r else "allow", rule=r.name if r else "")
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def _exit(self, rec, at) -> Exit:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         status) = _EXIT.unpack_from(rec, at)
        ev = Exit(time=ts + self._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid,
                  gid=gid, comm=self._str(comm), cgroup=cgroup, code=wait_status_code(status))
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def _open(self, rec, at) -> Open | None:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         result, oflags, _, count, path_len, _) = _OPEN.unpack_from(rec, at)
        start = at + _OPEN.size
        if flags & F_RESOLVED:  # by a relative path: the file's own path
            path = _join(rec, start, bool(flags & F_PATH_TRUNC))
            if flags & F_IN_DIR:  # it failed: the directory it started from, and the name
                name = _cstr(bytes(rec[start + _PATHBUF.size:start + _PATHBUF.size + NAME_LEN]))
                path = posixpath.normpath(f"{path}/{name}")
        else:
            path = self._str(bytes(rec[start:start + max(path_len - 1, 0)]))
        r = self._policy(gen).match_open(path, pid=pid, cgroup=cgroup)
        if r is None or r.action == "allow":  # allowed by name: as if no rule watched it
            return None
        verdict, rule = "audit", r.name
        if r.action == "block":
            hit = self.verdicts.take("open", pid, ts)
            if hit is not None:
                rule = hit[0]
            if result == _EPERM:
                verdict = "block"
        ev = Open(time=ts + self._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid,
                  gid=gid, comm=self._str(comm), cgroup=cgroup, path=path, flags=oflags,
                  result=result, count=count, verdict=verdict, rule=rule)
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def _setid(self, rec, at) -> SetId:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         call_code, old, new, result) = _SETID.unpack_from(rec, at)
        call = SETID_CALLS[call_code - 1] if 1 <= call_code <= len(SETID_CALLS) else str(call_code)
        old, new = _id(old), _id(new)
        r = self._policy(gen).match_setid(call, new)
        ev = SetId(time=ts + self._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid,
                   gid=gid, comm=self._str(comm), cgroup=cgroup, call=call, old=old, new=new,
                   result=result, verdict="audit" if r else "allow", rule=r.name if r else "")
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def _sock(self, rec, at) -> Connect | Bind:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         family, port, proto, verdict, _, rule_id, addr) = _SOCK.unpack_from(rec, at)
        rule = ""
        if rule_id != RULE_NONE:  # generation << 16 | index, see Policy.sock_entries
            decided_by = self._policies.get(rule_id >> 16) or self._policy(gen)
            r = decided_by.rule(rule_id & 0xFFFF)
            rule = r.name if r else ""
        cls = Connect if kind == K_CONNECT else Bind
        ev = cls(time=ts + self._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid,
                 gid=gid, comm=self._str(comm), cgroup=cgroup, family=family,
                 protocol=PROTOCOL_NAMES.get(proto) or str(proto), address=address_text(family, addr),
                 port=port, verdict=_VERDICTS[verdict] if verdict < 3 else "allow", rule=rule)
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev


@functools.lru_cache(maxsize=_CACHE_LIMIT)
def address_text(family: int, raw: bytes) -> str:
    if family == 2:
        return str(ipaddress.IPv4Address(raw[:4]))
    v6 = ipaddress.IPv6Address(raw)
    # the dotted form, as people write it (Python < 3.13 prints ::ffff:7f00:1)
    return f"::ffff:{v6.ipv4_mapped}" if v6.ipv4_mapped else str(v6)


def endpoint_text(family: int, address: str, port: int) -> str:
    return f"[{address}]:{port}" if family == 10 else f"{address}:{port}"


_TAGS = {"block": "BLOCKED", "audit": "AUDIT", "unguarded": "UNGUARDED"}


def verdict_line(event: Event) -> str | None:
    """The seed's line for a BLOCK, AUDIT or UNGUARDED verdict, e.g.
    ``IMMUNE: [BLOCKED] exec /tmp/test.sh (pid=3158)``; None otherwise."""
    tag = _TAGS.get(event.verdict)
    if tag is None:
        return None
    if isinstance(event, Exec):
        what = f"exec {event.filename}"
    elif isinstance(event, Open):
        what = f"open {event.path}"
        if event.count > 1:
            return f"IMMUNE: [{tag}] {what} (pid={event.pid}, {event.count} times)"
    elif isinstance(event, Connect):
        what = f"connect {endpoint_text(event.family, event.address, event.port)}"
    elif isinstance(event, Bind):
        what = f"bind {endpoint_text(event.family, event.address, event.port)}"
    elif isinstance(event, SetId):
        what = f"{event.call} {event.change()}"
    elif isinstance(event, Fork):
        what = f"fork {event.child_pid}"
    elif isinstance(event, File):
        from ._files import file_what
        what = file_what(event)
    else:
        from ._procs import procs_what
        what = procs_what(event)
        if what is None:
            return None
    return f"IMMUNE: [{tag}] {what} (pid={event.pid})"
