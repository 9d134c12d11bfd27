"""The Linux sensor: BPF programs (tracepoints, cgroup sock_addr hooks) and
a fanotify guard, behind the ``Sensor`` interface."""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import select
import struct
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

from wire import Event, Notice, Open

from ._build import choose_object
from ._decode import KINDS, PROTOCOL_NAMES, Decoder, Verdicts, address_text, endpoint_text
from ._errors import KmodError
from . import _files
from ._fanotify import Guard
from ._interface import Sensor, SensorStatistics
from ._libbpf import BpfObject, kernel_has_btf_tracepoint, map_delete, map_keys, map_lookup, map_update
from ._mounts import Superblocks
from ._policy import D_NAMES, DIR_BITS, HEAD_MULT, Policy, bitmap
from ._procs import hooks_off, hooks_off_line, procs_config
from ._ringbuf import RingBuffer
from ._scope import S_CGROUP, S_NETNS, Scope, in_netns
from ._workloads import Workloads, WorkloadStatistics
from ._system import DEBUGFS_TRACING, TRACEFS, cgroup2_root, ensure_tracefs, require_btf, require_root

log = logging.getLogger("kmod")
CLOCK_STEP_NS = 500_000_000
"""A change of the wall clock against boot time worth a log line (NTP's
slewing moves it by microseconds)."""

# struct sensor_config in kmod/bpf/sensor.h
RING_KINDS = 16  # as in kmod/bpf/sensor.h
_CONFIG = struct.Struct(f"<IIQQQIIQIIQ{RING_KINDS}QIIII")

# How much of the ring buffer each kind's records may fill (the kernel's
# ring_limit; kmod/bpf/sensor.bpf.c, within_limit).  The cheaper a call is to
# repeat, the smaller its share: a storm of opens (an eighth) or of set*id,
# connect or bind calls (a quarter) is dropped and counted while the kinds
# above it keep the rest of the ring; exec, fork and exit, which cost a
# process each, may fill it all.  A share is also how far behind a storm
# can put the events above it: they wait until the reader has drained it.
RING_SHARES = {"exec": 1.0, "fork": 1.0, "exit": 1.0, "setid": 0.25, "connect": 0.25,
               "bind": 0.25, "open": 0.125}
RING_SHARES["file"] = 0.125  # 2.7 KB records: about 750 in a burst (kmod/_files.py)
RING_SHARES.update(ptrace=0.25, signal=0.25, bpf=0.25, mount=0.25)  # kmod/_procs.py: repeatable at will
_U32 = struct.Struct("<I")
_MOUNTS_RING = 64 << 10  # the mounts ring's size, as in kmod/bpf/sensor.bpf.c
K_MOUNT = 8
# Records lost, per kind: the events' kinds, and the mount news for the exec guard.
_DROP_KINDS = {**KINDS, K_MOUNT: "mount_news"}
_CUT = struct.Struct("<HHB3xI16s")  # struct cut_rec
_OPEN_KEY_SIZE = 4 + 256
_SOCK4_KEY_SIZE = 4 + 8 + 4  # prefixlen, [tag, hook, proto, port], address
_SOCK6_KEY_SIZE = 4 + 8 + 16
_DIR_KEY = struct.Struct("<QI4x")  # struct dir_key
_NAME_LEN = 64

_libc = ctypes.CDLL(None, use_errno=True)
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


def _coerce_policy(policy: Policy | str | os.PathLike | None) -> Policy:
    if policy is None:
        return Policy.default()
    if isinstance(policy, Policy):
        return policy
    return Policy.load(policy)


# Descriptors that hold a BPF object, an attachment or a fanotify group.
_KERNEL_HANDLES = ("anon_inode:bpf", "anon_inode:[perf_event]", "anon_inode:[fanotify]")
_live: weakref.WeakSet[LinuxSensor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A child forked without exec must not keep its parent's sensors alive:
    its copies of their descriptors would keep the programs attached, and the
    fanotify group holding permission events that nobody answers, after the
    parent dies.  So the child drops them all."""
    if not _live:
        return
    for sensor in list(_live):
        sensor._forsake()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith(_KERNEL_HANDLES):
                os.close(int(name))
        except OSError:
            continue


os.register_at_fork(after_in_child=_after_fork_in_child)


class LinuxSensor(Sensor):
    """Everything the kernel offers here: exec, fork, exit, open, set*id,
    connect and bind events; connect/bind blocks in BPF; exec/open blocks
    through fanotify.

    ``latency`` bounds how late a lone event is delivered: the kernel wakes
    the reader at most that often (or when ``wake_bytes`` are pending), and
    after each drain a one-shot timer collects the tail of a burst.  An idle
    sensor wakes nobody.

    ``fold``: a thread's identical audited opens within this many seconds
    of one reported are sent as one event with a ``count`` (0: never fold);
    see kmod/bpf/sensor.bpf.c.

    ``ring_size``: the one ring buffer's bytes, of which each kind of event
    may fill only its share (``RING_SHARES``), so that a storm of opens never
    takes the room of an exec.

    ``namespaces``: every event carries the task's mount and pid namespaces
    and its pid as its own pid namespace sees it (``mntns``, ``pidns``,
    ``vpid``); False leaves them 0 (bench/bench_sensor.py measures the cost).

    A hook this kernel lacks (a tracepoint, a BTF raw tracepoint) is left
    out and reported (``statistics().hooks_off``, ``attachments()["off"]``,
    a log line); the others run.  ``skip_programs`` leaves programs out by
    name as if their hook were missing: for tests and drills."""

    def __init__(self, policy: Policy | str | os.PathLike | None = None, *,
                 scope: Scope | str | None = None, exclude_pids: Iterable[int] = (),
                 exclude_self: bool = True, ring_size: int = 16 << 20, latency: float = 0.02,
                 wake_bytes: int | None = None, watchdog_bound: float = 0.25,
                 fold: float = 1.0, namespaces: bool = True, skip_programs: Iterable[str] = ()):
        if ring_size < 1 << 16 or ring_size & (ring_size - 1):
            raise ValueError(f"ring_size must be a power of two of at least 64 KiB, not {ring_size}")
        if not 0 < latency <= 10:
            raise ValueError(f"latency must be in (0, 10] seconds, not {latency}")
        if not 0 <= fold <= 60:
            raise ValueError(f"fold must be in [0, 60] seconds, not {fold}")
        if not 0 < watchdog_bound <= 60:
            raise ValueError(f"watchdog_bound must be in (0, 60] seconds, not {watchdog_bound}")
        self._policy = _coerce_policy(policy)
        self._scope = Scope.parse(scope) if isinstance(scope, str) else scope or Scope.machine()
        self._excluded: set[int] = set(exclude_pids)
        if exclude_self:
            self._excluded.add(os.getpid())
        self._ring_size = ring_size
        self._ring_limits = [int(ring_size * RING_SHARES.get(KINDS.get(code), 1.0))
                             for code in range(RING_KINDS)]
        self._latency = latency
        self._fold = fold
        self._namespaces = bool(namespaces)
        self._flush_at: float | None = None  # when to send the folds of quiet threads
        self._flush_more = False  # an open was reported after that flush was set
        self._n_dirs = 0  # entries in the kernel's watched_dirs
        self._wake_bytes = wake_bytes if wake_bytes is not None else min(ring_size // 16, 1 << 20)
        if not 0 < self._wake_bytes <= min(self._ring_limits):  # or a storm wakes nobody early
            raise ValueError(f"wake_bytes must be in (0, {min(self._ring_limits)}], not {wake_bytes}")
        self._bound = watchdog_bound
        self._wake_kinds = 0  # bit per kind code: wake the reader at once (wake_at_once)
        self._generation = 0
        self._verdicts = Verdicts()
        self._decoder = Decoder(self._policy, self._verdicts)
        self._notices: collections.deque[Notice] = collections.deque()
        self._counts = dict.fromkeys(KINDS.values(), 0)
        self._drops_seen = dict.fromkeys(_DROP_KINDS.values(), 0)
        self._drops_checked = 0.0
        self._malformed = 0
        self._bpf: BpfObject | None = None
        self._ring: RingBuffer | None = None
        self._mounts_ring: RingBuffer | None = None
        self._guard: Guard | None = None
        self._fds: list[int] = []
        self._epoll: select.epoll | None = None
        self._timer = self._event = -1
        self._resolved = None
        self._started = False
        self._hooks_off: dict[str, str] = {}
        self._skip = frozenset(skip_programs)
        self._off: list[str] = []  # programs left out
        self._object: tuple[str, str] | None = None  # (path, where it came from)
        self._workloads: Workloads | None = None

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise KmodError("sensor already started")
        self._started = True
        _live.add(self)
        require_root()
        require_btf()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        ensure_tracefs()
        obj, origin = choose_object()
        self._object = (str(obj), origin)
        log.info("BPF object %s (%s)", obj, origin)
        self._resolved = resolved = self._scope.resolve()
        bpf = self._bpf = BpfObject(obj)
        off = _missing_hooks(bpf, self._skip)
        for name in off:
            bpf.disable(name)
        self._off = sorted(off)
        bpf.set_max_entries("events", self._ring_size)
        bpf.load()
        for pid in self._excluded:
            map_update(bpf.map_fd("excluded"), _U32.pack(pid), b"\1")
        cgroup_fd = self._open_fd(resolved.cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
        if resolved.code == S_CGROUP:
            map_update(bpf.map_fd("scope_cgroup"), _U32.pack(0), _U32.pack(cgroup_fd))
        self._workloads = Workloads(bpf, lambda: self._policy.containers, str(cgroup2_root()))
        self._workloads.set_tries_writer(self._add_tags)
        self._install(self._policy, 0)
        bpf.attach_tracing()  # cgroup_mkdir with it: cgroups made from here on are news
        self._workloads.start()
        self._workloads.rescan()  # those made between the install's walk and the attach
        bpf.run_iterator("seed_ids")  # after the fork hook: no thread is missed
        bpf.attach_cgroup(cgroup_fd)  # the scope's cgroup, else the v2 root: the whole machine

        self._ring = RingBuffer(bpf.map_fd("events"), self._ring_size)
        self._timer = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self._timer < 0:
            raise KmodError(f"timerfd_create failed: {os.strerror(ctypes.get_errno())}")
        self._fds.append(self._timer)
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(self._event)
        self._epoll = select.epoll()
        for fd in (bpf.map_fd("events"), self._timer, self._event):
            self._epoll.register(fd, select.EPOLLIN)

        self._mounts_ring = RingBuffer(bpf.map_fd("mounts"), _MOUNTS_RING)
        self._guard = Guard(self._policy, resolved, self._excluded, self._verdicts, self.notice,
                            self._bound, news=self._mounts_ring, news_fd=bpf.map_fd("mounts"),
                            kernel=Superblocks(bpf.map_fd("guarded_devs"), bpf.map_fd("exec_guard"),
                                               bpf.map_fd("unguarded_asked")))
        self._guard.start()
        log.info("kernel sensor started (scope %s, %d rules)", self._scope, len(self._policy.rules))
        self._hooks_off = {**hooks_off(), **off}
        if off:  # less is seen than the policy asks for: say so, here and to the hive
            log.warning("hooks off: %s", hooks_off_line(self._hooks_off))
            self.notice("hooks_off", hooks_off_line(off), count=len(off))
        elif self._hooks_off:
            log.info("hooks off: %s", hooks_off_line(self._hooks_off))

    def _open_fd(self, path, flags: int) -> int:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except OSError as e:
            raise KmodError(f"cannot open {path}: {e.strerror}") from None
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        """Detach everything.  Safe to call twice, or after a failed start."""
        if self._workloads is not None:
            self._workloads.close()
            self._workloads = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        if self._bpf is not None:
            self._bpf.close()
            self._bpf = None
        for ring in (self._ring, self._mounts_ring):
            if ring is not None:
                ring.close()
        self._ring = self._mounts_ring = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._timer = self._event = -1

    def _forsake(self) -> None:
        """In a forked child: let go of everything without detaching it,
        which would detach it for the parent too."""
        if self._guard is not None:
            self._guard.forsake()
            self._guard = None
        self._workloads = None  # its thread is not in the child
        self._bpf = self._ring = self._mounts_ring = None  # their descriptors go in the sweep
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    # ---- waiting and draining ----------------------------------------------------

    def fileno(self) -> int:
        if self._epoll is None:
            raise KmodError("sensor not started")
        return self._epoll.fileno()

    def wait(self, timeout: float | None = None) -> bool:
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        return bool(poller.poll(None if timeout is None else int(timeout * 1000)))

    def drain(self, max_events: int = 4096) -> list[Event]:
        if self._ring is None or self._epoll is None:
            raise KmodError("sensor not started")
        for fd, _ in self._epoll.poll(0):
            if fd in (self._timer, self._event):
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    pass
        out: list[Event] = []
        while self._notices and len(out) < max_events:
            out.append(self._notices.popleft())
        records = self._ring.read(max_events - len(out))
        # Two clock reads a drain (not an event): a stepped wall clock is
        # followed from the next batch on.
        step = self._decoder.follow_clock(self._decoder.wall_offset())
        if abs(step) > CLOCK_STEP_NS:
            log.warning("the wall clock moved %+.3f s against boot time; event times follow it", step / 1e9)
        buf, decode, counts = self._ring.buffer, self._decoder.decode, self._counts
        try:
            for at in records:
                try:
                    ev = decode(buf, at)
                except (ValueError, struct.error) as e:  # sources and decoder disagree
                    self._malformed += 1
                    log.error("undecodable kernel record skipped: %s", e)
                    continue
                if ev is not None:
                    counts[KINDS[buf[at]]] += 1
                    out.append(ev)
        finally:
            self._ring.release()
        now = time.monotonic()
        # A reported open may be followed by folded ones: a flush at least
        # `fold` later has the kernel send what quiet threads still hold.
        if self._fold and not self._flush_more and any(
                type(e) is Open and e.count == 1 for e in out):
            if self._flush_at is None:
                self._flush_at = now + self._fold + self._latency
            else:
                self._flush_more = True
        if self._flush_at is not None and now >= self._flush_at:
            self.flush()
            self._flush_at = now + self._fold + self._latency if self._flush_more else None
            self._flush_more = False
        if records:
            self._arm_timer(self._latency)  # collect what arrives without a wake-up
        elif self._flush_at is not None:
            self._arm_timer(self._flush_at - now)
        if now - self._drops_checked > 0.5:
            self._drops_checked = now
            self._check_drops()
            while self._notices and len(out) < max_events:
                out.append(self._notices.popleft())
        return out

    def flush(self) -> None:
        if self._bpf is None:
            raise KmodError("sensor not started")
        self._bpf.run_iterator("flush_folds")

    def _arm_timer(self, seconds: float) -> None:
        ns = max(int(seconds * 1e9), 1)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        _libc.timerfd_settime(self._timer, 0, ctypes.byref(spec), None)

    def notice(self, what: str, detail: str, count: int = 0) -> None:
        """Queue a notice for the next drain; safe from any thread."""
        self._notices.append(Notice(time=time.time_ns(), pid=os.getpid(), what=what,
                                    count=count, detail=detail, verdict="audit"))
        if self._event >= 0:
            os.eventfd_write(self._event, 1)

    def _read_drops(self) -> dict[str, int]:
        fd, size = self._bpf.map_fd("drops"), 8 * _possible_cpus()
        out = {}
        for code, kind in _DROP_KINDS.items():
            raw = map_lookup(fd, _U32.pack(code), size)
            out[kind] = sum(struct.unpack(f"<{size // 8}Q", raw)) if raw else 0
        return out

    def _check_drops(self) -> None:
        drops = self._read_drops()
        lost = {k: n - self._drops_seen[k] for k, n in drops.items() if n > self._drops_seen[k]}
        if lost:
            self._drops_seen = drops
            detail = " ".join(f"{k}={n}" for k, n in lost.items())
            log.error("kernel ring buffer full for their kind: lost %s", detail)
            self.notice("drops", f"ring buffer full for their kind, records lost: {detail}",
                         count=sum(lost.values()))
            if "mount_news" in lost and self._guard is not None:
                self._guard.rescan()  # a namespace with a new filesystem may not be known

    # ---- policy, exclusions -------------------------------------------------------

    def _write_config(self, policy: Policy | None = None) -> None:
        r = self._resolved
        heads = (policy or self._policy).open_heads() is not None
        value = _CONFIG.pack(r.code, self._generation, r.netns_cookie, self._wake_bytes,
                             int(self._latency * 1e9), len(self._excluded), heads,
                             int(self._fold * 1e9), self._n_dirs, *_cgroup_place(r),
                             *self._ring_limits, self._namespaces, self._wake_kinds,
                             self._workloads is not None and self._workloads.active, 0)
        map_update(self._bpf.map_fd("settings"), _U32.pack(0), value)

    def _install(self, new: Policy, generation: int) -> None:
        """Bring the policy maps and the config to ``new``: add and overwrite
        first, switch the config, delete what is gone last, so no rule has a
        gap in between."""
        bpf = self._bpf
        prefixes = {_U32.pack(len(k) * 8) + k.ljust(256, b"\0"): _U32.pack(v)
                    for k, v in new.open_prefixes().items()}
        dirs, names, dir_bits = _dir_entries(new.open_dirs())
        pending, pending_bits = _pending_entries(new.open_dirs())
        filter_fd = bpf.map_fd("dir_filter")
        # the union of both filters until the old directories are gone
        old_bits = map_lookup(filter_fd, _U32.pack(0), len(dir_bits))
        map_update(filter_fd, _U32.pack(0), bytes(a | b for a, b in zip(old_bits, dir_bits)))
        pending_fd = bpf.map_fd("pending_filter")
        old_pending = map_lookup(pending_fd, _U32.pack(0), len(pending_bits))
        map_update(pending_fd, _U32.pack(0), bytes(a | b for a, b in zip(old_pending, pending_bits)))
        heads_fd, heads = bpf.map_fd("open_heads"), new.open_heads()
        if heads is None:  # stop relying on the filter before it changes
            self._write_config(new)
        else:  # the union of both filters until the config switches
            old = map_lookup(heads_fd, _U32.pack(0), len(heads))
            map_update(heads_fd, _U32.pack(0), bytes(a | b for a, b in zip(old, heads)))
        # All under the workload thread's lock, stale entries deleted too: a
        # cgroup made meanwhile got an old tag from the kernel (its parent's),
        # deleted here with the old tags' entries; its news, handled after,
        # gives it the new one.
        with self._workloads.lock:
            plan = self._workloads.plan(new)
            new4, new6 = new.sock_entries(generation, plan.tags)
            stale = self._write_maps(new, generation, prefixes, new4, new6, dirs, names, pending)
            stale += self._workloads.commit(new, plan)
            self._write_config()  # workloads on or off, now that its maps are written
            if heads is not None:
                map_update(heads_fd, _U32.pack(0), heads)
            for fd, key in stale:
                map_delete(fd, key)
        map_update(filter_fd, _U32.pack(0), dir_bits)
        map_update(pending_fd, _U32.pack(0), pending_bits)
        _files.install(bpf, new)

    def _write_maps(self, new: Policy, generation: int, prefixes, new4, new6, dirs, names, pending) -> list:
        """Add and overwrite the policy maps' entries, switch the config;
        returns the stale entries, for the caller to delete after."""
        bpf, stale = self._bpf, []
        for name, entries, key_size in (("open_prefixes", prefixes, _OPEN_KEY_SIZE),
                                         ("sock4_rules", new4, _SOCK4_KEY_SIZE),
                                         ("watched_dirs", dirs, _DIR_KEY.size),
                                         ("watched_names", names, _DIR_KEY.size + _NAME_LEN),
                                         ("pending_dirs", pending, _DIR_KEY.size + _NAME_LEN),
                                         ("sock6_rules", new6, _SOCK6_KEY_SIZE)):
            fd = bpf.map_fd(name)
            stale += [(fd, key) for key in set(map_keys(fd, key_size)) - set(entries)]
            for key, value in entries.items():
                map_update(fd, key, value)
        map_update(bpf.map_fd("procs_rules"), _U32.pack(0), procs_config(new))
        self._policy, self._generation = new, generation
        self._n_dirs = len(dirs) + len(pending)
        self._write_config()
        return stale

    def _add_tags(self, tags: dict) -> None:
        """Trie entries for a tag made after the install (the workload
        thread, a cgroup in a new set of workloads): before its cgroup gets it."""
        new4, new6 = self._policy.sock_entries(self._generation, tags)
        for name, entries in (("sock4_rules", new4), ("sock6_rules", new6)):
            fd = self._bpf.map_fd(name)
            for key, value in entries.items():
                map_update(fd, key, value)

    def workloads(self) -> WorkloadStatistics:
        """The cgroup tags of connect and bind rules that select workloads."""
        return self._workloads.statistics() if self._workloads is not None else WorkloadStatistics()

    def reload(self, policy: Policy | str | os.PathLike) -> None:
        new = _coerce_policy(policy)
        if self._bpf is None:
            raise KmodError("sensor not started")
        generation = (self._generation + 1) & 0xFFFF
        self._decoder.set_policy(generation, new)
        self._install(new, generation)
        self._guard.reload(new)
        log.info("policy reloaded: generation %d, %d rules", generation, len(new.rules))
        self._cut_connections()

    def _cut_connections(self) -> None:
        """Reset the scope's connections that the connect rules now refuse
        (kmod/bpf/sensor.bpf.c, cut_tcp/cut_udp), each logged and noticed.
        The iterators see our network namespace, or the scope's; in a cgroup
        scope they cut only sockets its processes made."""
        r = self._resolved

        def run() -> bytes:
            return self._bpf.run_iterator("cut_tcp") + self._bpf.run_iterator("cut_udp")

        out = in_netns(r.scope.path, run) if r.code == S_NETNS else run()
        for at in range(0, len(out) - _CUT.size + 1, _CUT.size):
            family, port, proto, rule_id, addr = _CUT.unpack_from(out, at)
            rule = self._policy.rule(rule_id & 0xFFFF)
            what = (f"{PROTOCOL_NAMES.get(proto, proto)} connection to "
                    f"{endpoint_text(family, address_text(family, addr), port)} reset "
                    f"(rule {rule.name if rule else rule_id})")
            log.warning("%s", what)
            self.notice("connection_cut", what, count=1)

    def wake_at_once(self, kinds: Iterable[str]) -> None:
        codes = {name: code for code, name in KINDS.items()}
        unknown = sorted(set(kinds) - codes.keys())
        if unknown:
            raise ValueError(f"no such event kind: {', '.join(unknown)} (known: {', '.join(codes)})")
        self._wake_kinds = sum(1 << codes[k] for k in set(kinds))
        log.info("events delivered at once for the edge's rules: %s", ", ".join(sorted(set(kinds))) or "none")
        if self._bpf is not None:
            self._write_config()

    def exclude(self, *pids: int) -> None:
        for pid in pids:
            self._excluded.add(pid)
            if self._bpf is not None:
                map_update(self._bpf.map_fd("excluded"), _U32.pack(pid), b"\1")
        if self._bpf is not None:
            self._write_config()

    def include(self, *pids: int) -> None:
        for pid in pids:
            self._excluded.discard(pid)
            if self._bpf is not None:
                map_delete(self._bpf.map_fd("excluded"), _U32.pack(pid))
        if self._bpf is not None:
            self._write_config()

    # ---- introspection ---------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def guard(self) -> Guard | None:
        """The fanotify guard (for drills: ``sensor.guard.stall(seconds)``)."""
        return self._guard

    def statistics(self) -> SensorStatistics:
        fan = self._guard.statistics() if self._guard else {}
        return SensorStatistics(
            events=dict(self._counts),
            drops=self._read_drops() if self._bpf else dict(self._drops_seen),
            pending_bytes=self._ring.pending() if self._ring else 0,
            fanotify={k: v for k, v in fan.items() if k != "state"},
            watchdog=str(fan.get("state", "off")),
            policy_generation=self._generation,
            malformed=self._malformed,
            hooks_off=dict(self._hooks_off),
        )

    def attachments(self) -> dict[str, list]:
        """Kernel ids of this sensor's programs and links, to prove they go
        away; ``off``: the programs left out because their hook is missing."""
        if self._bpf is None:
            return {"programs": [], "links": [], "off": []}
        return {"programs": self._bpf.program_ids(), "links": self._bpf.link_ids(),
                "off": list(self._off)}

    @property
    def bpf_object(self) -> tuple[str, str] | None:
        """(path, where it came from) of the loaded BPF object, once started."""
        return self._object


def _tracing_events() -> Path:
    # where libbpf looks up tracepoint ids: debugfs's copy when mounted
    return DEBUGFS_TRACING / "events" if (DEBUGFS_TRACING / "events").is_dir() else TRACEFS / "events"


def _missing_hooks(bpf: BpfObject, skip: frozenset[str]) -> dict[str, str]:
    """Programs to leave out: program name -> why.  A tracepoint the kernel
    lacks would fail the attach, a BTF raw tracepoint it lacks the whole
    load; cgroup hooks and iterators exist on every kernel with BTF."""
    sections = bpf.sections()
    unknown = sorted(skip - sections.keys())
    if unknown:
        raise ValueError(f"skip_programs: no such program {', '.join(unknown)}")
    off, events = {}, _tracing_events()
    for name, section in sections.items():
        kind, _, target = section.partition("/")
        if name in skip:
            if kind == "iter":
                raise ValueError(f"skip_programs: {name} is an iterator the sensor runs itself")
            off[name] = f"{section}: left out (skip_programs)"
        elif kind in ("tracepoint", "tp") and not (events / target).is_dir():
            off[name] = f"{section}: no such tracepoint in this kernel"
        elif kind == "tp_btf" and not kernel_has_btf_tracepoint(target):
            off[name] = f"{section}: no such raw tracepoint in this kernel's BTF"
    return off


def _possible_cpus() -> int:
    """Per-CPU map values have one slot per possible CPU, not per online one."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        n = 0
        for part in f.read().strip().split(","):
            low, _, high = part.partition("-")
            n = max(n, int(high or low) + 1)
        return n


def _dir_entries(dirs: dict[str, tuple[int, frozenset[str]]]) -> tuple[dict, dict, bytes]:
    """The kernel's view of Policy.open_dirs: watched_dirs entries (device
    as the kernel encodes it, inode) -> how; watched_names entries; the
    inode filter.  A directory that does not exist yet is not watched until
    a reload."""
    found: dict[bytes, tuple[int, set[str]]] = {}
    for path, (how, names) in dirs.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = _DIR_KEY.pack(st.st_ino, os.major(st.st_dev) << 20 | os.minor(st.st_dev))
        was_how, was_names = found.get(key, (0, set()))  # one directory by two names
        found[key] = (max(was_how, how), was_names | names)
    entries, name_entries = {}, {}
    for key, (how, names) in found.items():
        entries[key] = bytes([how])
        for name in names if how == D_NAMES else ():
            name_entries[key + name.encode()[:_NAME_LEN - 1].ljust(_NAME_LEN, b"\0")] = b"\1"
    inodes = (_DIR_KEY.unpack(key)[0] for key in found)
    return entries, name_entries, bitmap(inodes, DIR_BITS)


def _pending_entries(dirs: Iterable[str]) -> tuple[dict, bytes]:
    """The directories of Policy.open_dirs that do not exist (yet), for the
    kernel to find by name: pending_dirs entries (the nearest existing
    ancestor's key and the first missing component's name), and the
    ancestors' inode filter.  A file in such a directory made later is
    judged by its whole path."""
    entries: dict[bytes, bytes] = {}
    for path in dirs:
        missing, parent = "", path
        while parent != "/" and not os.path.isdir(parent):
            parent, missing = os.path.split(parent)
        if not missing:
            continue
        st = os.stat(parent)
        key = _DIR_KEY.pack(st.st_ino, os.major(st.st_dev) << 20 | os.minor(st.st_dev))
        entries[key + missing.encode()[:_NAME_LEN - 1].ljust(_NAME_LEN, b"\0")] = b"\1"
    return entries, bitmap((_pending_bit(k) for k in entries), DIR_BITS)


def _pending_bit(entry: bytes) -> int:
    """What pending_filter holds of a pending_dirs entry: the ancestor's
    inode and the name's first 8 bytes (kmod/bpf/sensor.bpf.c pending_covers)."""
    ino = _DIR_KEY.unpack(entry[:_DIR_KEY.size])[0]
    head = int.from_bytes(entry[_DIR_KEY.size:_DIR_KEY.size + 8], "little")
    return ino ^ (head * HEAD_MULT & (2**64 - 1))


def _cgroup_place(r) -> tuple[int, int]:
    """(depth below the cgroup2 root, id) of a cgroup scope's cgroup; zeros
    otherwise.  A cgroup's id is the inode of its directory."""
    if r.code != S_CGROUP:
        return 0, 0
    return len([part for part in r.cgroup_rel.split("/") if part]), os.stat(r.cgroup_dir).st_ino

