"""Workloads for connect and bind: the kernel decides those calls by
address tries that know no process, so a rule that selects a workload
(``match.cgroup``, ``match.container_*``) reaches the kernel as a tag.

Each set of selected workloads a cgroup is in gets a tag; the tries hold,
under each tag, the rules for everyone and those of its workloads in the
policy's order (``Policy.sock_entries``), and ``cgroup_tags`` maps every
cgroup v2 id of those workloads (sub-cgroups too) to its tag.  At connect
or bind the kernel looks up the caller's cgroup id, then its tag's entries:
one hash lookup more than without workloads.

Cgroups made later (a unit restarted, a container started): the kernel's
``cgroup_mkdir`` program tags one at once, before any process can enter
it, by its whole path when a selector names it without wildcards, else as
its parent.  It also sends the news here; this thread matches the globs
and containers the kernel cannot, and corrects the tag: the window between
the cgroup's mkdir and that correction is measured (``statistics()``).  A
container's identity may come later than its cgroup (runc writes its state
~20 ms after), so a new cgroup is asked again for a few seconds while any
selector names containers; and the whole tree is walked again every
``RESCAN`` seconds, for news lost to a full ring."""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._containers import Containers, ContainerIdentity
from ._libbpf import map_delete, map_keys, map_update
from ._policy import Policy, has_wildcard
from ._ringbuf import RingBuffer

log = logging.getLogger("kmod.workloads")

RING_SIZE = 64 << 10  # the cgroups ring, as in kmod/bpf/sensor.bpf.c
CG_PATH_LEN = 256     # struct cg_path_key, struct cgroup_rec
_REC = struct.Struct(f"<QQII{CG_PATH_LEN}s")  # struct cgroup_rec
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
RETRIES = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
"""Seconds after a new cgroup's news to match it again while a selector
names containers (the runtime's state is written after the cgroup)."""
RESCAN = 30.0


@dataclass(frozen=True)
class WorkloadStatistics:
    selectors: int = 0
    tags: int = 0
    cgroups: int = 0
    """cgroups with a tag now."""
    news: int = 0
    """cgroups made since the policy was installed, as the kernel told."""
    corrected: int = 0
    """... whose tag userspace set or changed (globs, containers)."""
    window_last_us: float = 0.0
    window_max_us: float = 0.0
    """For those: from the mkdir to the tag being in force."""


@dataclass
class Plan:
    """What the kernel maps hold for one policy."""
    tags: dict[int, frozenset[int]]           # tag -> workloads (indexes into sock_selectors)
    cgroups: dict[int, int]                   # cgroup id -> tag
    paths: dict[str, int]                     # whole path -> tag (selectors without wildcards)


class Workloads:
    """The cgroup tags of one sensor.  ``cgroup2``: the cgroup v2 mount."""

    def __init__(self, bpf, containers: Callable[[], Containers], cgroup2: str):
        self._bpf = bpf
        self._containers = containers
        self._root = cgroup2.rstrip("/") or "/"
        self._lock = threading.Lock()
        self._policy: Policy | None = None
        self._by_set: dict[frozenset[int], int] = {}
        self._cgroups: dict[int, int] = {}
        self._next_tag = 1
        self._retry: dict[int, tuple[str, int, int]] = {}  # cgroup id -> (path, retries done, tag)
        self._retry_at: dict[int, float] = {}
        self._news = self._corrected = 0
        self._window_last = self._window_max = 0.0
        self._ring: RingBuffer | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._on_tags: Callable[[dict[int, frozenset[int]]], None] | None = None

    @property
    def active(self) -> bool:
        return self._policy is not None and bool(self._policy.sock_selectors())

    # ---- planning ------------------------------------------------------------------------

    def plan(self, policy: Policy) -> Plan:
        """Tags for ``policy``: every cgroup now, and the whole paths the
        kernel tags at mkdir.  Fresh tag numbers, so the old ones' trie
        entries stay valid until the switch (``LinuxSensor._install``)."""
        self._by_set = {}
        if not policy.sock_selectors():
            return Plan({}, {}, {})
        cgroups: dict[int, int] = {}
        for cid, path in self._walk():
            tag = self._tag_for(policy, path, cid)
            if tag:
                cgroups[cid] = tag
        paths: dict[str, int] = {}
        for globs, containers in policy.sock_selectors():
            if containers is not None:
                continue  # a container is known by its runtime, after its cgroup
            for g in globs:
                if not has_wildcard(g) and len(g.encode()) < CG_PATH_LEN:
                    tag = self._tag_for(policy, g, 0)
                    if tag:
                        paths[g] = tag
        return Plan({t: s for s, t in self._by_set.items()}, cgroups, paths)

    def _tag_for(self, policy: Policy, path: str, cid: int) -> int:
        """The tag of the workloads ``path`` is in (0: none), made if new."""
        def container() -> ContainerIdentity | None:
            return self._containers().identify(f"0::{path}\n", cid)
        workloads = policy.sock_workloads(path, container)
        if not workloads:
            return 0
        tag = self._by_set.get(workloads)
        if tag is None:
            tag = self._by_set[workloads] = self._next_tag
            self._next_tag = self._next_tag % 0xFFFFFFFE + 1
        return tag

    def _walk(self):
        """(id, path) of every cgroup under the v2 root.  A cgroup's id is
        its directory's inode, which getdents gives without a stat."""
        stack = [("", self._root)]
        while stack:
            rel, full = stack.pop()
            try:
                with os.scandir(full) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            path = f"{rel}/{e.name}"
                            yield e.inode(), path
                            stack.append((path, e.path))
            except OSError:
                continue  # removed while walked

    # ---- installing (LinuxSensor._install) ---------------------------------------------------

    @property
    def lock(self) -> threading.Lock:
        """Held by ``LinuxSensor._install`` from ``plan`` to ``commit``: news
        waits until the new policy is in, then is matched against it."""
        return self._lock

    def commit(self, policy: Policy, plan: Plan) -> list:
        """Write the cgroup maps for ``plan`` (after its trie entries);
        returns the stale (fd, key) to delete after the switch."""
        tags_fd, paths_fd = self._bpf.map_fd("cgroup_tags"), self._bpf.map_fd("cg_paths")
        path_keys = {p.encode().ljust(CG_PATH_LEN, b"\0"): t for p, t in plan.paths.items()}
        for key, tag in path_keys.items():
            map_update(paths_fd, key, _U32.pack(tag))
        for cid, tag in plan.cgroups.items():
            map_update(tags_fd, _U64.pack(cid), _U32.pack(tag))
        stale = [(paths_fd, k) for k in set(map_keys(paths_fd, CG_PATH_LEN)) - set(path_keys)]
        ids = {_U64.pack(c) for c in plan.cgroups}
        stale += [(tags_fd, k) for k in set(map_keys(tags_fd, 8)) - ids]
        self._policy = policy
        self._cgroups = dict(plan.cgroups)
        self._retry.clear()
        self._retry_at.clear()
        if plan.tags:
            log.info("workloads: %d selectors, %d tags, %d cgroups tagged",
                     len(policy.sock_selectors()), len(plan.tags), len(plan.cgroups))
        return stale

    def set_tries_writer(self, write: Callable[[dict[int, frozenset[int]]], None]) -> None:
        """How to add a new tag's trie entries (a cgroup in a set of
        workloads no cgroup was in at install)."""
        self._on_tags = write

    # ---- news --------------------------------------------------------------------------------

    def start(self) -> None:
        self._ring = RingBuffer(self._bpf.map_fd("cgroups"), RING_SIZE)
        self._thread = threading.Thread(target=self._run, name="immune-workloads", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stop_r = self._stop_w = -1

    def _run(self) -> None:
        poller = select.epoll()
        poller.register(self._bpf.map_fd("cgroups"), select.EPOLLIN)
        poller.register(self._stop_r, select.EPOLLIN)
        next_scan = time.monotonic() + RESCAN
        try:
            while True:
                now = time.monotonic()
                with self._lock:
                    due = min([next_scan, *self._retry_at.values()])
                ready = poller.poll(max(0.0, due - now))
                if any(fd == self._stop_r for fd, _ in ready):
                    return
                try:
                    self._drain()
                    now = time.monotonic()
                    with self._lock:
                        for cid in [c for c, at in self._retry_at.items() if at <= now]:
                            self._again(cid)
                    if now >= next_scan:
                        next_scan = now + RESCAN
                        self.rescan()
                except Exception:  # never let the thread die: the kernel's tags still hold
                    log.exception("workloads: news not handled")
        finally:
            poller.close()

    def _drain(self) -> None:
        ring = self._ring
        records = ring.read(256)
        try:
            news = [_REC.unpack_from(ring.buffer, at) for at in records]
        finally:
            ring.release()
        if not news:
            return
        with self._lock:
            for cid, ts, tag, _level, raw in news:
                self._news += 1
                path = raw.split(b"\0", 1)[0].decode(errors="surrogateescape")
                if len(raw.rstrip(b"\0")) >= CG_PATH_LEN - 1:  # cut: ask the kernel by its id
                    full = self._containers().cgroup_path(0, cid)
                    if full is None:
                        continue
                    path = full
                if os.path.isdir(self._root + path):  # not removed already
                    self._correct(cid, path, tag, ts, news=True)
                if self._policy is not None and any(c is not None for _, c in self._policy.sock_selectors()):
                    self._retry[cid] = (path, 0, ts)
                    self._retry_at[cid] = time.monotonic() + RETRIES[0]

    def _again(self, cid: int) -> None:
        path, done, ts = self._retry.pop(cid)
        del self._retry_at[cid]
        if not os.path.isdir(self._root + path):
            return
        self._correct(cid, path, self._cgroups.get(cid, 0), ts)
        if done + 1 < len(RETRIES):
            self._retry[cid] = (path, done + 1, ts)
            self._retry_at[cid] = time.monotonic() + RETRIES[done + 1] - RETRIES[done]

    def _correct(self, cid: int, path: str, tag: int, ts: int, news: bool = False) -> None:
        """Give cgroup ``cid`` its tag if the kernel's guess (``tag``) was
        not it.  For news the tag is written even if it was: a reload may
        have deleted the kernel's entry as stale after the mkdir."""
        if self._policy is None:
            return
        known = set(self._by_set.values())
        want = self._tag_for(self._policy, path, cid)
        if want and want not in known and self._on_tags is not None:
            self._on_tags({want: next(s for s, t in self._by_set.items() if t == want)})
        fd = self._bpf.map_fd("cgroup_tags")
        if want == tag:
            if news and want:
                map_update(fd, _U64.pack(cid), _U32.pack(want))
                self._cgroups[cid] = want
            return
        if want:
            map_update(fd, _U64.pack(cid), _U32.pack(want))
            self._cgroups[cid] = want
        else:
            map_delete(fd, _U64.pack(cid))
            self._cgroups.pop(cid, None)
        self._corrected += 1
        window = (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ts) / 1000 if ts else 0.0
        if ts:  # not a rescan's
            self._window_last, self._window_max = window, max(self._window_max, window)
        log.debug("workloads: cgroup %s tagged %d (was %d), %.0f us after its mkdir", path, want, tag, window)

    def rescan(self) -> None:
        """Match every cgroup again (news lost to a full ring)."""
        with self._lock:
            if self._policy is None or not self._policy.sock_selectors():
                return
            seen = set()
            for cid, path in self._walk():
                seen.add(cid)
                self._correct(cid, path, self._cgroups.get(cid, 0), 0)
            for cid in set(self._cgroups) - seen:  # gone: the kernel dropped it at rmdir, unless
                del self._cgroups[cid]             # its news came after and wrote it again
                map_delete(self._bpf.map_fd("cgroup_tags"), _U64.pack(cid))

    def statistics(self) -> WorkloadStatistics:
        with self._lock:
            sel = len(self._policy.sock_selectors()) if self._policy is not None else 0
            return WorkloadStatistics(sel, len(self._by_set), len(self._cgroups), self._news, self._corrected,
                                      round(self._window_last, 1), round(self._window_max, 1))
