"""The exec guard's reach: every filesystem one can exec from, in every mount
namespace, marked for FAN_OPEN_EXEC_PERM, including those mounted later.

fanotify refuses an exec only from a superblock the guard has marked
(FAN_MARK_FILESYSTEM), and a container runtime, ``unshare -m`` or a chroot
on a fresh overlay mounts new ones in mount namespaces of their own at any
time.  So:

* at start (and when the guard comes back on) every mount namespace is
  scanned: one process per namespace and root, its ``/proc/PID/mountinfo``,
  each superblock marked through ``/proc/PID/root/MOUNT_POINT`` (the magic
  link leads into that namespace);
* the kernel tells of new mounts as they happen (kmod/bpf/sensor.bpf.c: a
  ``struct mount_rec`` on the ``mounts`` ring when mount, move_mount,
  fsmount or mount_setattr succeeds, with a forced wake-up), and of an exec
  from a superblock not marked (``M_UNGUARDED``); the ``Marker`` thread
  marks what is new in that process's namespace at once, a detached mount
  (fsmount) through ``/proc/PID/fd/FD``, an unguarded exec's file through
  ``/proc/PID/exe`` first;
* the kernel keeps the set of marked superblocks (``guarded_devs``) to
  flag an exec from any other as unguarded.

Never on the fanotify responder's thread, never holding the guard's lock
while walking a path; requests are coalesced per namespace and bounded, so a
storm of mounts costs a scan per namespace per round, not one per mount.

Each superblock is looked at once: a mark is a path walk, which holds the
mount for a few microseconds (a umount(2) of that very mount in those
microseconds fails with EBUSY, as it would against df or findmnt), so a
superblock marked before is not walked to again.  Superblocks that went away
are pruned from that set (from the group's fdinfo) before each round; the
kernel does not rely on the set alone (it checks the superblock's own
marks), so a device number reused meanwhile costs at most one exec reported
unguarded."""

from __future__ import annotations

import collections
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ._errors import KernelError
from ._libbpf import map_delete, map_update
from ._ringbuf import RingBuffer
from ._system import _unescape

log = logging.getLogger("kmod.fanotify")

# enum mount_call in kmod/bpf/sensor.h
M_MOUNT, M_MOVE_MOUNT, M_FSMOUNT, M_MOUNT_SETATTR, M_UNGUARDED = range(1, 6)
_MOUNT_REC = struct.Struct("<BBHIIIiIQ")  # struct mount_rec
_U32 = struct.Struct("<I")

# Filesystems where nothing is executed from; marking them is pointless.
PSEUDO_FS = frozenset((
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "bpf", "tracefs", "debugfs",
    "securityfs", "pstore", "configfs", "fusectl", "binfmt_misc", "nsfs", "autofs",
    "efivarfs", "selinuxfs", "rpc_pipefs", "nfsd", "hugetlbfs",
))

PENDING_LIMIT = 1024
"""Namespaces waiting to be scanned; past it, one scan of them all replaces them."""
ROUND = 16
"""Requests served before the marker looks at its ring again."""
NEWS_PER_ROUND = 4096
"""Records read from the ring in one round (a storm refills it as fast)."""
RECONCILE_EVERY = 10.0
"""Seconds between checks of what fanotify really holds when no news comes
(a superblock that went away takes its mark with it, and its device number
may be reused); news is always preceded by one."""
LATENCIES = 1024
"""Latencies kept for the statistics (the latest)."""


def kernel_dev(st_dev: int) -> int:
    """A device number as the kernel encodes it in ``s_dev`` (major << 20 | minor)."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


class MountEntry(NamedTuple):
    dev: int          # kernel encoding
    mount_point: str  # relative to the reading process's root
    fstype: str


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The lines of a /proc/PID/mountinfo: ``ID PARENT MAJ:MIN ROOT POINT
    OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS``.  A line that does
    not parse is skipped."""
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            if not (major.isdigit() and minor.isdigit() and int(major) < 1 << 12 and int(minor) < 1 << 20):
                continue  # not a device number the kernel could have written
            out.append(MountEntry(int(major) << 20 | int(minor), _unescape(fields[4]),
                                  fields[sep + 1]))
        except (ValueError, IndexError):
            continue
    return out


def marked_superblocks(fanotify_fd: int) -> set[int]:
    """The superblocks (kernel device numbers) a fanotify group holds a
    filesystem mark on, from its fdinfo (``fanotify sdev:HEX mflags:...``;
    inode marks start ``fanotify ino:``, mount marks ``fanotify mnt_id:``)."""
    out = set()
    with open(f"/proc/self/fdinfo/{fanotify_fd}", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("fanotify sdev:"):
                out.add(int(line.split()[1][5:], 16))
    return out


def mount_namespace(pid: int) -> int:
    """The inode number of a process's mount namespace; OSError if it is gone."""
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def namespace_pids() -> Iterator[int]:
    """One process per mount namespace and root directory: what it sees in
    its mountinfo covers the namespace (a chrooted process sees only what is
    below its root, so each root counts).  The root is compared by name, not
    by stat: nothing is asked of the filesystem itself."""
    seen = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            key = (mount_namespace(int(name)), os.readlink(f"/proc/{name}/root"))
        except OSError:
            continue
        if key not in seen:
            seen.add(key)
            yield int(name)


def pid_in_namespace(mntns: int) -> int | None:
    """Any process in this mount namespace (when the one that asked is gone)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if mount_namespace(int(name)) == mntns:
                    return int(name)
            except OSError:
                continue
    return None


class News(NamedTuple):
    """One struct mount_rec."""
    call: int
    pid: int
    ppid: int
    mntns: int
    result: int
    dev: int
    ts: int   # CLOCK_BOOTTIME ns

    @classmethod
    def unpack(cls, buf, at: int = 0) -> News:
        _, call, _, pid, ppid, mntns, result, dev, ts = _MOUNT_REC.unpack_from(buf, at)
        return cls(call, pid, ppid, mntns, result, dev, ts)


@dataclass
class Request:
    """Work for the marker: a namespace to scan (through any of ``pids``),
    a detached mount (``fd`` in ``pids[0]``), or an unguarded exec's file
    (``dev``, ``pids[0]``'s exe) and its namespace."""
    mntns: int
    pids: list[int]
    ts: int                     # the earliest news it stands for
    fd: int = -1
    devs: set[int] = field(default_factory=set)


class Requests:
    """What the marker has still to do, coalesced: one request per mount
    namespace however many mounts it made (the newest pids first), detached
    mounts each on their own.  Bounded: past ``limit`` namespaces (or as
    many detached mounts), ``overflow`` asks for one scan of everything."""

    def __init__(self, limit: int = PENDING_LIMIT):
        self._limit = limit
        self._spaces: collections.OrderedDict[int, Request] = collections.OrderedDict()
        self._detached: collections.deque[Request] = collections.deque()
        self.overflow = False
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._spaces) + len(self._detached)

    def add(self, news: News) -> None:
        pids = [p for p in (news.pid, news.ppid) if p > 0]
        if news.call == M_FSMOUNT:
            if len(self._detached) >= self._limit:
                self.overflow = True
            else:
                self._detached.append(Request(news.mntns, pids[:1], news.ts, fd=news.result))
            return
        key = news.mntns or -news.pid  # 0: not known; then by the process
        req = self._spaces.get(key)
        if req is None:
            if len(self._spaces) >= self._limit:
                self.overflow = True
                return
            req = self._spaces[key] = Request(news.mntns, [], news.ts)
        else:
            self.coalesced += 1
            req.ts = min(req.ts, news.ts)
        req.pids = (pids + [p for p in req.pids if p not in pids])[:4]
        if news.call == M_UNGUARDED:
            req.devs.add(news.dev)

    def take(self, n: int) -> list[Request]:
        out = []
        while self._detached and len(out) < n:
            out.append(self._detached.popleft())
        while self._spaces and len(out) < n:
            out.append(self._spaces.popitem(last=False)[1])
        return out

    def clear(self) -> None:
        self._spaces.clear()
        self._detached.clear()
        self.overflow = False


class Superblocks:
    """The kernel's view of the exec guard (kmod/bpf/sensor.bpf.c,
    exec_unguarded): whether it is on, which superblocks it marked, and when
    an unguarded exec last asked for each (cleared when that device number
    is marked or pruned: a new superblock may reuse it, and must ask at once)."""

    def __init__(self, guarded_fd: int, switch_fd: int, asked_fd: int):
        self._guarded_fd = guarded_fd
        self._switch_fd = switch_fd
        self._asked_fd = asked_fd
        self.refused = 0

    def switch(self, on: bool) -> None:
        map_update(self._switch_fd, _U32.pack(0), _U32.pack(1 if on else 0))

    def add(self, dev: int) -> None:
        """A superblock left out (the map full) only has its execs reported
        unguarded while they are still guarded: counted, logged once."""
        try:
            map_update(self._guarded_fd, _U32.pack(dev), b"\1")
        except KernelError as e:
            if not self.refused:
                log.error("the kernel's list of marked filesystems refused one: %s", e)
            self.refused += 1
        map_delete(self._asked_fd, _U32.pack(dev))

    def discard(self, dev: int) -> None:
        map_delete(self._guarded_fd, _U32.pack(dev))
        map_delete(self._asked_fd, _U32.pack(dev))


class Marker:
    """Marks superblocks for FAN_OPEN_EXEC_PERM in every mount namespace, on
    a thread of its own fed by the kernel's ``mounts`` ring.

    ``mark(path)`` adds the guard's filesystem mark on what ``path`` leads
    to, ``unmark()`` (with the lock held) removes them all; ``fanotify_fd``
    is the guard's group (its fdinfo lists the marks).  ``lock`` is the
    guard's; ``armed()`` (called with it held) says whether marks may be
    added now (not while the guard fails open).  A mark's path walk is made
    without the lock, so a slow one (a hung FUSE server) delays only this
    thread; a mark that lands after the guard was disarmed is taken back."""

    def __init__(self, fanotify_fd: int, mark: Callable[[str], None], unmark: Callable[[], None],
                 lock: threading.Lock, armed: Callable[[], bool], kernel: Superblocks,
                 news: RingBuffer | None, news_fd: int = -1):
        self._fd = fanotify_fd
        self._add_mark = mark
        self._unmark = unmark
        self._lock = lock
        self._armed = armed
        self._kernel = kernel
        self._ring = news
        self._ring_fd = news_fd
        self.marked: set[int] = set()  # superblocks marked, as far as we know
        self._requests = Requests()
        self._pending_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._skip_mounts = False
        self._latencies: collections.deque[int] = collections.deque(maxlen=LATENCIES)
        self._next_reconcile = time.monotonic() + RECONCILE_EVERY
        self.counts = dict(mount_news=0, unguarded_news=0, mount_news_skipped=0, scans=0,
                           full_scans=0, marks=0, mark_failures=0, unmarked=0, coalesced=0)
        self._thread = threading.Thread(target=self._run, name="fanotify-marker", daemon=True)

    # ---- marking ----------------------------------------------------------------

    def _mark(self, path: str, dev: int | None = None) -> int | None:
        """Mark the superblock ``path`` leads to (device ``dev``, else found
        by stat); its device, or None."""
        with self._lock:
            if not self._armed():
                return None
        try:
            self._add_mark(path)  # the walk and the mark in one call
            if dev is None:
                dev = kernel_dev(os.stat(path).st_dev)
        except OSError as e:
            log.debug("cannot watch execs on %s: %s", path, e.strerror)
            self.counts["mark_failures"] += 1
            return None
        with self._lock:
            if not self._armed():  # failed open or switched off meanwhile
                self._unmark()
                return None
            if dev not in self.marked:
                self.marked.add(dev)
                self._kernel.add(dev)
                self.counts["marks"] += 1
        return dev

    def _scan(self, pid: int) -> bool:
        """Each superblock in pid's mountinfo not marked yet, through its
        mount point under pid's root."""
        try:
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                entries = parse_mountinfo(f.read())
        except OSError:
            return False
        self.counts["scans"] += 1
        done = set()
        for entry in entries:
            if entry.fstype in PSEUDO_FS or entry.dev in done or entry.dev in self.marked:
                continue
            done.add(entry.dev)
            self._mark(f"/proc/{pid}/root{entry.mount_point}", entry.dev)
        return True

    def mark_all(self) -> None:
        """Every mount namespace, now, on the calling thread."""
        self.counts["full_scans"] += 1
        for pid in namespace_pids():
            self._scan(pid)

    def _serve(self, req: Request) -> None:
        """Mark what the request is about; when done, the time since its
        news counts as the news-to-marked latency."""
        if self._serve_one(req):
            with self._lock:
                self._latencies.append(time.clock_gettime_ns(time.CLOCK_BOOTTIME) - req.ts)

    def _serve_one(self, req: Request) -> bool:
        if req.fd >= 0:  # a detached mount: reachable only through its fd
            return any(self._mark(f"/proc/{pid}/fd/{req.fd}") is not None for pid in req.pids)
        for pid in req.pids:  # the file itself first: no walk, hidden mounts too
            if req.devs and self._mark(f"/proc/{pid}/exe") in req.devs:
                break
        for pid in req.pids:
            try:
                if req.mntns and mount_namespace(pid) != req.mntns:
                    continue  # moved (setns) or a reused pid
            except OSError:
                continue
            if self._scan(pid):
                return True
        pid = pid_in_namespace(req.mntns) if req.mntns else None
        return pid is not None and self._scan(pid)

    def arm(self) -> None:
        """The guard marks execs from now on (the lock held): the kernel
        flags an exec from what is not marked yet."""
        self._kernel.switch(True)

    def forget(self) -> None:
        """The marks are gone (the guard failed open or was switched off):
        called with the lock held."""
        self._kernel.switch(False)
        for dev in self.marked:
            self._kernel.discard(dev)
        self.marked.clear()

    def reconcile(self) -> None:
        """Drop the superblocks whose mark is gone with them (unmounted, the
        last process of a container's namespace gone)."""
        self._next_reconcile = time.monotonic() + RECONCILE_EVERY
        with self._lock:
            before = set(self.marked)
        try:
            held = marked_superblocks(self._fd)
        except OSError as e:
            log.error("cannot read the fanotify marks: %s", e.strerror)
            return
        with self._lock:
            for dev in (before & self.marked) - held:
                self.marked.discard(dev)
                self._kernel.discard(dev)
                self.counts["unmarked"] += 1

    # ---- the thread -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def rescan(self) -> None:
        """Scan every namespace soon (from any thread): news was lost."""
        with self._pending_lock:
            self._requests.overflow = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake

    def skip_mount_news(self, skip: bool) -> None:
        """Drill: ignore what the mount hooks report, as if a mount came by a
        way they do not see (an automount): only the first exec from it,
        reported unguarded, gets it marked."""
        self._skip_mounts = skip

    def _read_news(self) -> None:
        if self._ring is None:
            return
        for _ in range(NEWS_PER_ROUND // 256):
            offsets = self._ring.read(256)
            if not offsets:
                return
            buf = self._ring.buffer
            try:
                for at in offsets:
                    news = News.unpack(buf, at)
                    if news.call == M_UNGUARDED:
                        self.counts["unguarded_news"] += 1
                    elif self._skip_mounts:
                        self.counts["mount_news_skipped"] += 1
                        continue
                    else:
                        self.counts["mount_news"] += 1
                    with self._pending_lock:
                        self._requests.add(news)
            finally:
                self._ring.release()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._ring_fd >= 0:
            poller.register(self._ring_fd, select.POLLIN)
        while not self._stop.is_set():
            with self._pending_lock:
                busy = len(self._requests) or self._requests.overflow
            wait = 0 if busy else max(0.0, self._next_reconcile - time.monotonic())
            poller.poll(int(wait * 1000) + (1 if wait else 0))
            if self._stop.is_set():
                return
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
            try:
                self._round()
            except Exception:  # the marker must outlive any one bad round
                log.exception("exec guard marker round failed")

    def _round(self) -> None:
        self._read_news()
        with self._lock:
            armed = self._armed()
        with self._pending_lock:
            full = self._requests.overflow
            if full or not armed:  # disarmed: re-arming scans everything anyway
                self._requests.clear()
            if not armed:
                return
            work = self._requests.take(ROUND)
            self.counts["coalesced"] = self._requests.coalesced
        if full or work:
            self.reconcile()  # or a new superblock with a dead one's number looks marked
        if full:
            log.warning("exec guard: more mount news than it keeps; scanning every namespace")
            self.mark_all()
        for req in work:
            if self._stop.is_set():
                return
            self._serve(req)
        if time.monotonic() >= self._next_reconcile:
            self.reconcile()

    def close(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def forsake(self) -> None:
        """In a forked child: our copies of the descriptors only."""
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def statistics(self) -> dict:
        with self._lock:
            lat = sorted(self._latencies)

        def pct(p: float) -> int:
            return lat[min(len(lat) - 1, int(p * len(lat)))] // 1000 if lat else 0

        with self._pending_lock:
            pending = len(self._requests)
        return dict(self.counts, filesystems=len(self.marked), mark_pending=pending,
                    kernel_list_refused=self._kernel.refused,
                    mark_latency_p50_us=pct(0.5), mark_latency_p99_us=pct(0.99),
                    mark_latency_max_us=lat[-1] // 1000 if lat else 0)

    def latencies(self) -> list[int]:
        """Of the latest requests served: ns from the news (a mount call's
        return, an unguarded exec) to its namespace's filesystems marked."""
        with self._lock:
            return list(self._latencies)

