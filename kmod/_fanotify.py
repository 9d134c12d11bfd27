"""Exec and open BLOCK through fanotify permission events.

A permission event holds the calling process until it is answered, so this
module is built around never hanging the host:

* the responder answers on its own thread and never touches a watched file
  itself (it reads through the event's descriptor, which fanotify opens
  without notification);
* files are hashed (for SHA-256 exec rules) by worker threads, a bounded
  number of files of a bounded size: an exec waits for its file's digest
  briefly, parked while the responder answers others, and is then decided
  by the policy's ``[guard] unhashed`` setting;
* execs are watched on every filesystem one can exec from, in every mount
  namespace, including those mounted later (kmod/_mounts.py, on a thread of
  its own);
* files the policy allows get an ignore mark on their inode, so running them
  again costs nothing; the kernel drops that mark when the file is modified
  (FAN_MARK_IGNORED_SURV_MODIFY is deliberately not set), and a reload
  flushes them all;
* a watchdog fails open when the responder has not answered within a bound
  (default 250 ms): it answers what is pending with FAN_ALLOW, removes the
  marks so nothing new waits, says so loudly, and puts the marks back once
  the responder answers again;
* everything is attached to one fanotify descriptor: if the process dies, the
  kernel allows whatever was pending and the marks go away."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import queue
import select
import stat
import struct
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ._decode import Verdicts
from ._errors import KernelError
from ._lifeline import Lifeline
from ._mounts import Marker, Superblocks, marked_superblocks
from ._policy import Policy
from ._ringbuf import RingBuffer
from ._scope import ResolvedScope
from ._trees import Trees

log = logging.getLogger("kmod.fanotify")

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_CONTENT = 0x4
FAN_MARK_ADD = 0x1
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_FLUSH = 0x80
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_OPEN_PERM = 0x10000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_Q_OVERFLOW = 0x4000
FAN_ALLOW = 0x1
FAN_DENY = 0x2
AT_FDCWD = -100

_HASH_WAIT = 0.1
"""Longest an exec waits for its file's digest (less under a tighter watchdog)."""
_HASH_WORKERS = 2
_HASH_QUEUE = 64
_MAX_PARKED = 1024
_DIGESTS = 4096

_METADATA = struct.Struct("<IBBHQii")
_RESPONSE = struct.Struct("<iI")
_READ_SIZE = _METADATA.size * 128

_libc = ctypes.CDLL(None, use_errno=True)
_init = _libc.fanotify_init
_init.restype = ctypes.c_int
_init.argtypes = (ctypes.c_uint, ctypes.c_uint)
_mark = _libc.fanotify_mark
_mark.restype = ctypes.c_int
_mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)


def _fanotify_mark(fd: int, flags: int, mask: int, dirfd: int = AT_FDCWD,
                   path: str | None = None) -> None:
    if _mark(fd, flags, mask, dirfd, os.fsencode(path) if path is not None else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _seen_by(pid: int, path: str) -> str:
    """``path`` (readlink's, from our root) as process ``pid`` sees it: a
    chrooted process (into an overlay a runtime mounted, say) sees the part
    below its root, which is what the policy's paths mean to it."""
    try:
        root = os.readlink(f"/proc/{pid}/root")
    except OSError:
        return path
    return path[len(root):] if root != "/" and path.startswith(root + "/") else path


_LATE_MARKS = 0.5
"""Seconds between looks for an open block's folder made after the load."""
_MAX_GUARDED = 4096
"""Files a guard learns are guarded (made or replaced since its load)."""


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes whenever the file's content can have changed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Hasher:
    """SHA-256 of files by worker threads, so the responder never reads a
    file: ``workers`` threads, at most ``backlog`` files waiting, digests kept
    by file identity.  ``done`` is called (from a worker) after each file."""

    def __init__(self, done: Callable[[], None], workers: int = _HASH_WORKERS,
                 backlog: int = _HASH_QUEUE, keep: int = _DIGESTS):
        self._done = done
        self._jobs: queue.Queue[tuple[tuple, int] | None] = queue.Queue(backlog)
        self._lock = threading.Lock()
        self._digests: OrderedDict[tuple, str] = OrderedDict()
        self._pending: set[tuple] = set()
        self._keep = keep
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"fanotify-hasher-{i}", daemon=True)
                         for i in range(workers)]
        self.counts = dict(hashed=0, hash_hits=0, hash_failed=0, hash_refused=0)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def digest(self, key: tuple) -> str | None:
        with self._lock:
            found = self._digests.get(key)
            if found is not None:
                self._digests.move_to_end(key)
                self.counts["hash_hits"] += 1
            return found

    def submit(self, key: tuple, fd: int) -> bool:
        """Hash the file open as ``fd`` (duplicated: the caller keeps its own),
        unless it is already queued; False when the backlog is full."""
        with self._lock:
            if key in self._pending:
                return True
            self._pending.add(key)
        dup = os.dup(fd)  # the same open file: reads through it notify nobody
        try:
            self._jobs.put_nowait((key, dup))
        except queue.Full:
            os.close(dup)
            with self._lock:
                self._pending.discard(key)
                self.counts["hash_refused"] += 1
            return False
        return True

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            key, fd = job
            try:
                digest = self._hash(fd, key)
            except OSError:
                digest = None
            finally:
                os.close(fd)
            with self._lock:
                self._pending.discard(key)
                if digest is None:
                    self.counts["hash_failed"] += 1
                else:
                    self.counts["hashed"] += 1
                    self._digests[key] = digest
                    if len(self._digests) > self._keep:
                        self._digests.popitem(last=False)
            self._done()

    def _hash(self, fd: int, key: tuple) -> str | None:
        size = key[2]
        h, off = hashlib.sha256(), 0
        while off < size:
            if self._stop.is_set():
                return None
            chunk = os.pread(fd, min(1 << 20, size - off), off)
            if not chunk:
                break
            h.update(chunk)
            off += len(chunk)
        # Changed while it was read: its digest would be filed under the wrong identity.
        return h.hexdigest() if _identity(os.fstat(fd)) == key else None

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                os.close(job[1])
        for _ in self._threads:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:  # a late submit: the workers see _stop after it
                pass
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=1.0)


class _DigestLookup:
    """``Policy.match_exec``'s digest for one event, looked up once."""

    __slots__ = ("guard", "fd", "deadline", "called", "digest", "wait", "final")

    def __init__(self, guard: Guard, fd: int, deadline: float | None):
        self.guard, self.fd, self.deadline = guard, fd, deadline
        self.called = self.wait = False
        self.final = True
        self.digest: str | None = None

    def __call__(self) -> str | None:
        if not self.called:
            self.called = True
            self.digest, self.wait, self.final = self.guard._file_digest(self.fd, self.deadline)
        return self.digest

    @property
    def unknown(self) -> bool:
        """A rule needed the digest and it was not known."""
        return self.called and self.digest is None


class Guard:
    """The fanotify group, its responder thread, its watchdog thread and its
    marker thread.  ``kernel``: the BPF side's view of the marks;
    ``news``: the ring of mount news (and its descriptor, to poll)."""

    def __init__(self, policy: Policy, scope: ResolvedScope, excluded: set[int],
                 verdicts: Verdicts, notify: Callable[[str, str], None], bound: float = 0.25, *,
                 kernel: Superblocks, news: RingBuffer | None = None, news_fd: int = -1):
        if bound <= 0:
            raise ValueError("the watchdog bound must be positive")
        self._policy = policy
        self._scope = scope
        self._excluded = excluded
        self._verdicts = verdicts
        self._notify = notify
        self._bound = bound
        self._lock = threading.Lock()
        self._inflight: dict[int, bool] = {}  # event fd -> already answered
        self._busy_since: float | None = None
        self._failed_open = False
        self._closed = False
        self._stall = 0.0
        # The files open block rules name, by (device, inode) -> the name the
        # rule gives: a hard link is the same file under a name no rule has.
        self._guarded: dict[tuple[int, int], str] = {}
        self._missing: dict[str, int] = {}  # open marks whose path does not exist yet -> mask
        self._roots: list[str] = []  # the folders of "**" open blocks
        self._trees: Trees | None = None  # their folders, watched for new ones
        self._trees_lock = threading.Lock()
        self._retree = False
        self._late_marker = threading.Thread()
        # Execs waiting for their file's digest: event fd -> (mask, pid, deadline).
        self._parked: dict[int, tuple[int, int, float]] = {}
        self._hash_wait = min(_HASH_WAIT, 0.4 * bound)
        self._stop = threading.Event()
        self._counts = dict(allowed=0, denied=0, audited=0, cached=0, errors=0,
                            fail_opens=0, overflows=0, failed_open_answers=0,
                            hash_waits=0, unhashed=0, linked=0, late_marks=0, tree_marks=0)
        fd = _init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK,
                   os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise KernelError(f"fanotify_init failed: {os.strerror(err)}"
                              + (" (needs root)" if err == errno.EPERM else ""))
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._hashed = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._hasher = Hasher(self._hash_done)
        self._marker = Marker(fd, self._mark_exec, self._unmark_exec, self._lock,
                              self._marks_allowed, kernel, news, news_fd)
        # The whole agent stopped (SIGSTOP, frozen) runs no watchdog either:
        # past this, an outside process kills it so the kernel answers.
        self._lifeline_timeout = max(2.0, 8 * bound)
        self._lifeline: Lifeline | None = None
        self._responder = threading.Thread(target=self._respond_loop, name="fanotify-responder",
                                           daemon=True)
        self._watchdog = threading.Thread(target=self._watch_loop, name="fanotify-watchdog",
                                          daemon=True)

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        # Before the marks: its exec must not wait for a responder that
        # has not started yet.
        self._lifeline = Lifeline(self._lifeline_timeout)
        # A child this process spawns execs under our marks, so its exec
        # waits for our responder, which needs the GIL.  Python 3.11.2 (Debian
        # 12's) keeps the GIL through a vfork until the child has exec'd:
        # the process would deadlock, and the lifeline kill it.  fork does
        # not hold the GIL while the child runs.
        subprocess._USE_VFORK = False
        self._excluded.add(self._lifeline.pid)
        self._hasher.start()
        self._responder.start()  # before the marks: no exec waits for it
        self._watchdog.start()
        with self._lock:
            self._apply_marks()
        self._mark_trees()
        if self._policy.needs_exec_guard:
            self._marker.mark_all()
        self._marker.start()

    def reload(self, policy: Policy) -> None:
        """Swap the policy and redo the marks in place (the allow cache is
        flushed: a file allowed before may be blocked now; digests stay)."""
        with self._lock:
            was_on = self._policy.needs_exec_guard
            self._policy = policy
            rescan = not self._failed_open and policy.needs_exec_guard and not was_on
            if not self._failed_open:
                self._apply_marks()
        self._mark_trees()
        if rescan:
            self._marker.mark_all()

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        for t in (self._responder, self._watchdog):
            if t.is_alive():
                t.join(timeout=1.0)
        self._marker.close()
        self._hasher.close()
        with self._trees_lock:
            if self._trees is not None:
                self._trees.close()
                self._trees = None
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)  # the kernel allows whatever is still pending
                for fd in (self._wake_r, self._wake_w, self._hashed, *self._parked):
                    os.close(fd)
                self._parked.clear()
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None

    def forsake(self) -> None:
        """In a forked child, which has none of our threads: close our copies
        of the descriptors so that the group dies with the parent."""
        self._closed = True
        for fd in (self._fd, self._wake_r, self._wake_w, self._hashed):
            os.close(fd)
        self._marker.forsake()
        if self._lifeline is not None:
            os.close(self._lifeline._w)  # or the lifeline would wait for this child too
            self._lifeline = None

    def _hash_done(self) -> None:
        """From a hasher thread: wake the responder for its parked execs."""
        with self._lock:
            if not self._closed:  # else the number may name another file by now
                os.eventfd_write(self._hashed, 1)

    def stall(self, seconds: float) -> None:
        """Drill: the responder sleeps this long before answering what it
        reads next, as a hung responder would.  The watchdog must fail open."""
        self._stall = seconds

    def rescan(self) -> None:
        """Mount news was lost: the marker scans every namespace."""
        self._marker.rescan()

    def skip_mount_news(self, skip: bool) -> None:
        """Drill: see ``Marker.skip_mount_news``."""
        self._marker.skip_mount_news(skip)

    def marked_filesystems(self) -> set[int]:
        """The superblocks (kernel device numbers) fanotify holds an exec
        mark on for us, as the kernel lists them."""
        return marked_superblocks(self._fd)

    def mark_latencies(self) -> list[int]:
        """ns from a mount's (or an unguarded exec's) news to the filesystems
        of its namespace marked, of the latest ones (``Marker.latencies``)."""
        return self._marker.latencies()

    def statistics(self) -> dict:
        state = "failed-open" if self._failed_open else "armed"
        return dict(self._counts, **self._hasher.counts, **self._marker.statistics(), state=state,
                    inflight=len(self._inflight), parked=len(self._parked))

    # ---- marks ------------------------------------------------------------------

    def _apply_marks(self) -> None:
        """Called with the lock held.  The filesystems' exec marks are the
        marker's (``mark_all`` after this, without the lock)."""
        try:
            _fanotify_mark(self._fd, FAN_MARK_FLUSH, 0)  # open marks and the allow cache
            if not self._policy.needs_exec_guard:
                _fanotify_mark(self._fd, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM, 0)
                self._marker.forget()
        except OSError as e:
            raise KernelError(f"cannot reset the fanotify marks: {e.strerror}") from None
        if self._policy.needs_exec_guard:
            self._marker.arm()
        guarded = {}
        for path in self._policy.open_block_paths():
            try:
                st = os.stat(path)
            except OSError:
                continue  # made later: its directory's mark sees it, and a block adds it
            guarded[(st.st_dev, st.st_ino)] = path
        self._guarded = guarded
        missing = {}
        for path, on_child in self._policy.open_marks():
            mask = FAN_OPEN_PERM | (FAN_EVENT_ON_CHILD if on_child else 0)
            try:
                _fanotify_mark(self._fd, FAN_MARK_ADD, mask, path=path)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    missing[path] = mask
                log.warning("cannot watch %s for open blocks: %s%s", path, e.strerror,
                            "; it is marked once it exists" if e.errno == errno.ENOENT else "")
        self._missing = missing
        self._roots = self._policy.open_trees()
        self._retree = True  # the folders below them: by _mark_trees, outside the lock
        if (missing or self._roots) and not self._late_marker.is_alive():
            self._late_marker = threading.Thread(target=self._mark_late, name="fanotify-late-marks", daemon=True)
            self._late_marker.start()

    def _mark_trees(self) -> None:
        """Mark every folder of the ``**`` open blocks' trees (walked without
        the guard's lock: the responder must not wait on a walk)."""
        with self._trees_lock:
            if not self._retree:
                return
            self._retree = False
            if self._trees is not None:
                self._trees.close()
            self._trees = Trees() if self._roots else None
            for root in self._roots:
                if os.path.isdir(root):
                    self._mark_folders(self._trees.add(root))

    def _mark_folders(self, folders: list[str]) -> None:
        mask = FAN_OPEN_PERM | FAN_EVENT_ON_CHILD
        for folder in folders:
            with self._lock:
                if self._closed or self._failed_open:
                    return
                try:
                    _fanotify_mark(self._fd, FAN_MARK_ADD, mask, path=folder)
                    self._counts["tree_marks"] += 1
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        log.warning("cannot watch %s for open blocks: %s", folder, e.strerror)

    def _mark_late(self) -> None:
        """Mark the open blocks' folders made after the load, looking every
        ``_LATE_MARKS`` seconds (its own thread: a slow filesystem must not
        hold the responder or the watchdog)."""
        while (self._missing or self._roots) and not self._stop.is_set():
            self._mark_trees()  # after a load, a reload or a recovery
            trees = self._trees
            if trees is not None:
                poller = select.poll()
                poller.register(trees.fd, select.POLLIN)
                ready = poller.poll(int(_LATE_MARKS * 1000))
                with self._trees_lock:
                    if ready and trees is self._trees and trees.fd >= 0:
                        self._mark_folders(trees.news())
            elif self._stop.wait(_LATE_MARKS):
                return
            for path, mask in list(self._missing.items()):
                if not os.path.exists(path):
                    continue
                with self._lock:
                    if self._missing.get(path) != mask or self._closed or self._failed_open:
                        continue
                    try:
                        _fanotify_mark(self._fd, FAN_MARK_ADD, mask, path=path)
                    except OSError as e:
                        log.warning("cannot watch %s for open blocks: %s", path, e.strerror)
                        continue
                    del self._missing[path]
                    self._counts["late_marks"] += 1
                    if path in self._roots:
                        self._retree = True  # and what is below it
                log.info("now watching %s for open blocks (made after the policy loaded)", path)

    def _marks_allowed(self) -> bool:
        """May the marker add exec marks now?  Called with the lock held."""
        return not (self._closed or self._failed_open) and self._policy.needs_exec_guard

    def _mark_exec(self, path: str) -> None:
        """FAN_OPEN_EXEC_PERM on the filesystem ``path`` leads to (the marker's)."""
        _fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC_PERM, path=path)

    def _unmark_exec(self) -> None:
        """Take back every filesystem mark (the marker's, with the lock held,
        when one landed after the guard was disarmed)."""
        if not self._closed:
            try:
                _fanotify_mark(self._fd, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM, 0)
            except OSError as e:
                log.error("fanotify: cannot remove the exec marks: %s", e.strerror)

    def _unmark_all(self) -> None:
        for flags in (FAN_MARK_FLUSH, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM,
                      FAN_MARK_FLUSH | FAN_MARK_MOUNT):
            try:
                _fanotify_mark(self._fd, flags, 0)
            except OSError as e:
                log.error("fanotify: cannot remove marks while failing open: %s", e.strerror)
        self._marker.forget()

    # ---- the responder ----------------------------------------------------------

    def _read_events(self) -> list[tuple[int, int, int]]:
        """(mask, fd, pid) of what is queued, without blocking."""
        try:
            buf = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        out, at = [], 0
        while at + _METADATA.size <= len(buf):
            length, _, _, _, mask, fd, pid = _METADATA.unpack_from(buf, at)
            out.append((mask, fd, pid))
            at += length
        return out

    def _respond_loop(self) -> None:
        poller = select.poll()
        for fd in (self._fd, self._wake_r, self._hashed):
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            poller.poll(self._parked_timeout())
            if self._stop.is_set():
                return
            self._busy_since = time.monotonic()
            try:
                os.eventfd_read(self._hashed)
            except BlockingIOError:
                pass
            try:
                events = self._read_events()
            except OSError as e:
                log.error("fanotify read failed: %s", e.strerror)
                self._busy_since = None
                self._stop.wait(self._hash_wait if self._parked else self._bound)
                self._busy_since = time.monotonic()
                events = []
            with self._lock:
                for _, fd, _ in events:
                    if fd >= 0:
                        self._inflight[fd] = False
            if self._stall and events:
                stall, self._stall = self._stall, 0.0
                self._stop.wait(stall)
            for mask, fd, pid in events:
                self._handle(mask, fd, pid)
            for fd, (mask, pid, deadline) in list(self._parked.items()):
                del self._parked[fd]  # back in if it still waits
                self._handle(mask, fd, pid, deadline)
            self._busy_since = None

    def _parked_timeout(self) -> int | None:
        """Milliseconds until the first parked exec must be decided."""
        if not self._parked:
            return None
        first = min(deadline for _, _, deadline in self._parked.values())
        return max(0, int((first - time.monotonic()) * 1000) + 1)

    def _handle(self, mask: int, fd: int, pid: int, deadline: float | None = None) -> None:
        if mask & FAN_Q_OVERFLOW:
            self._counts["overflows"] += 1
            self._notify("fanotify-overflow", "fanotify queue overflowed; the kernel allowed "
                                               "the calls it could not queue")
            return
        if fd < 0:
            return
        allow, cache = True, False
        try:
            decision = self._decide(mask, fd, pid, deadline)
            if decision is None:  # waits for the file's digest
                if deadline is None:
                    deadline = time.monotonic() + self._hash_wait
                    self._counts["hash_waits"] += 1
                self._parked[fd] = (mask, pid, deadline)
                return
            allow, cache = decision
        except Exception:
            self._counts["errors"] += 1
            log.exception("fanotify responder failed on an event of pid %d; allowing it", pid)
        self._answer(mask, fd, allow, cache)

    def _decide(self, mask: int, fd: int, pid: int, deadline: float | None) -> tuple[bool, bool] | None:
        """(allow, cache), or None to wait for the file's digest.  Only a
        decision that does not depend on the process may be cached: the
        ignore mark is on the file, for everyone."""
        path = _seen_by(pid, os.readlink(f"/proc/self/fd/{fd}"))
        policy = self._policy
        final = True  # the file's verdict holds until it changes
        if mask & FAN_OPEN_EXEC_PERM:
            hook = "exec"
            lookup = _DigestLookup(self, fd, deadline)
            rule = policy.match_exec(path, lookup, pid=pid)
            if lookup.wait:
                if pid in self._excluded or not self._scope.contains(pid):
                    self._counts["allowed"] += 1
                    return True, False
                return None
            final = lookup.final
            if lookup.unknown:
                self._counts["unhashed"] += 1
        else:
            hook, rule = "open", policy.match_open(path, pid=pid)
            if rule is None and self._guarded:
                st = os.fstat(fd)
                named = self._guarded.get((st.st_dev, st.st_ino))
                if named is not None:
                    rule = policy.match_open(named, pid=pid)  # another name of a guarded file
            elif rule is not None and rule.action == "block" and len(self._guarded) < _MAX_GUARDED:
                st = os.fstat(fd)  # a guarded file made or replaced since the load
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in self._guarded:
                    self._guarded[(st.st_dev, st.st_ino)] = path
                    try:  # asked about under its other names too, as a file there at the load is
                        _fanotify_mark(self._fd, FAN_MARK_ADD, FAN_OPEN_PERM, dirfd=fd)
                    except OSError as e:
                        log.debug("cannot mark a guarded file: %s", e.strerror)
        final = final and not policy.varies_by_container(hook, path)  # a verdict for this caller only
        if rule is None or rule.action == "allow":
            self._counts["allowed"] += 1
            return True, final
        if pid in self._excluded or not self._scope.contains(pid):
            self._counts["allowed"] += 1
            return True, False
        self._verdicts.record(hook, pid, rule.name, rule.action, path)
        if rule.action == "audit":
            self._counts["audited"] += 1
            return True, False
        self._counts["denied"] += 1
        return False, False

    def _file_digest(self, fd: int, deadline: float | None) -> tuple[str | None, bool, bool]:
        """(digest or None, wait, final) for the file open as ``fd``."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, False, True
        key = _identity(st)
        digest = self._hasher.digest(key)
        if digest is not None:
            return digest, False, True
        if st.st_size > self._policy.guard.hash_max_bytes:
            return None, False, True  # never hashed: unknown for good
        if deadline is not None and time.monotonic() >= deadline:
            return None, False, False  # waited long enough
        if len(self._parked) >= _MAX_PARKED or not self._hasher.submit(key, fd):
            return None, False, False
        return None, True, False

    def _answer(self, mask: int, fd: int, allow: bool, cache: bool) -> None:
        with self._lock:
            answered = self._inflight.pop(fd, True)
            if not answered and not self._closed:
                # The ignore mark before the answer: a write after the open
                # then clears it (the mark does not survive a modify), where
                # one landing after that write kept a file allowed when it
                # was renamed over a blocked name (as passwd does).
                if cache and not self._failed_open:
                    self._cache(mask, fd)
                self._write_response(fd, FAN_ALLOW if allow else FAN_DENY)
        os.close(fd)

    def _write_response(self, fd: int, response: int) -> None:
        try:
            os.write(self._fd, _RESPONSE.pack(fd, response))
        except OSError as e:  # the caller was killed while waiting: nothing to answer
            if e.errno != errno.ENOENT:
                log.error("fanotify answer failed: %s", e.strerror)

    def _cache(self, mask: int, fd: int) -> None:
        ignore = mask & (FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM)
        try:
            if os.fstat(fd).st_nlink > 1:
                # The ignore mark is on the inode: an allow under one name
                # would then let it through under another, blocked, one.
                self._counts["linked"] += 1
                return
            _fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK, ignore, dirfd=fd)
            self._counts["cached"] += 1
        except OSError as e:
            log.debug("cannot cache an allowed file: %s", e.strerror)

    # ---- the watchdog -----------------------------------------------------------

    def _watch_loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        interval_ms = max(1, int(self._bound * 1000 / 10))
        while not self._stop.is_set():
            if self._lifeline is not None:
                self._lifeline.beat()
            poller.poll(interval_ms)
            if self._stop.is_set():
                return
            try:
                self._check()
            except Exception:  # the watchdog must outlive any one bad tick
                log.exception("fanotify watchdog tick failed")

    def _check(self) -> None:
        busy = self._busy_since
        stuck_for = time.monotonic() - busy if busy is not None else 0.0
        dead = not self._responder.is_alive()
        if (stuck_for > self._bound or dead) and not self._failed_open:
            self._fail_open(stuck_for, dead)
        elif self._failed_open:
            self._allow_queued()
            if not dead and busy is None:
                self._resume()

    def _fail_open(self, stuck_for: float, dead: bool) -> None:
        why = ("the responder thread died" if dead else
               f"the responder has not answered for {stuck_for * 1000:.0f} ms")
        detail = (f"{why} (bound {self._bound * 1000:.0f} ms): FAILING OPEN, exec and open "
                  "blocks are off until it recovers")
        log.critical("fanotify watchdog: %s", detail)
        with self._lock:
            self._failed_open = True
            self._counts["fail_opens"] += 1
            if not self._closed:
                self._unmark_all()
                for fd, answered in self._inflight.items():
                    if not answered:
                        self._write_response(fd, FAN_ALLOW)
                        self._inflight[fd] = True
                        self._counts["failed_open_answers"] += 1
        self._allow_queued()
        self._notify("watchdog-fail-open", detail)

    def _allow_queued(self) -> None:
        """Answer, unread and unjudged, what was queued before the marks went."""
        while True:
            with self._lock:
                if self._closed:
                    return
                events = self._read_events()
                for _, fd, _ in events:
                    if fd >= 0:
                        self._write_response(fd, FAN_ALLOW)
                        os.close(fd)
                        self._counts["failed_open_answers"] += 1
            if not events:
                return

    def _resume(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._apply_marks()
            except KernelError as e:
                log.error("fanotify watchdog: cannot re-arm, still open: %s", e)
                return
            self._failed_open = False
        if self._policy.needs_exec_guard:
            self._marker.mark_all()
        log.warning("fanotify watchdog: the responder answers again; exec and open blocks "
                    "are back on")
        self._notify("watchdog-resumed", "the responder answers again; blocks are back on")
