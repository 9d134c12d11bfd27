"""Which package owns a program, and which programs are package managers.

dpkg's file lists (``/var/lib/dpkg/info/*.list``) name every file a package
installed.  They are read once into sorted arrays of the paths' hashes and
their packages, twelve bytes a path (1.5 MB for this machine's 123,000),
instead of the paths themselves (17 MB), and read again on a worker thread when dpkg's database
changes (its folder's mtime, looked at no more than every few seconds); the
old index answers meanwhile.  A path dpkg listed under /bin, /sbin or /lib is
the same file as its /usr twin where those are symlinks (merged /usr), so both
sides are spelled the /usr way.

Hashes are Python's own (``hash(bytes)``), kept only in this process: two
paths of 64 bits colliding among a million is a one-in-ten-million chance,
and a collision only makes a program look packaged.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

DPKG_INFO = "/var/lib/dpkg/info"

MANAGERS = frozenset({
    "/usr/bin/dpkg", "/usr/bin/apt-get", "/usr/bin/apt", "/usr/bin/aptitude", "/usr/bin/unattended-upgrade",
    "/usr/lib/apt/apt.systemd.daily", "/usr/bin/rpm", "/usr/bin/dnf", "/usr/bin/dnf-3", "/usr/bin/dnf5",
    "/usr/bin/yum", "/usr/bin/microdnf", "/usr/bin/zypper", "/usr/bin/pacman", "/sbin/apk", "/usr/sbin/apk",
    "/usr/libexec/packagekitd", "/usr/lib/packagekit/packagekitd",
})
"""Package managers by where their distributions install them: the programs
whose descendants run maintainer scripts (a package management session)."""

_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def merged_usr(root: str = "/") -> tuple[tuple[bytes, bytes], ...]:
    """(``/bin/``, ``/usr/bin/``) for each top folder that is a symlink to its
    /usr twin here."""
    pairs = []
    for name in _MERGED:
        try:
            if os.readlink(os.path.join(root, name)).strip("/") == f"usr/{name}":
                pairs.append((f"/{name}/".encode(), f"/usr/{name}/".encode()))
        except OSError:
            pass
    return tuple(pairs)


def _spelled(path: bytes, merged: tuple[tuple[bytes, bytes], ...]) -> bytes:
    for short, usr in merged:
        if path.startswith(short):
            return usr + path[len(short):]
    return path


@dataclass(frozen=True)
class PackageIndexStatistics:
    paths: int
    packages: int
    builds: int
    build_seconds: float
    """How long the last build took."""
    skipped: int
    """Paths left out of the last build, over ``max_paths``."""
    failed: int
    """Lists that could not be read in the last build."""


_ANSWERS = 4096


class _Index:
    __slots__ = ("keys", "owners", "names", "answers")

    def __init__(self, keys: array, owners: array, names: list[str]) -> None:
        self.keys = keys
        self.owners = owners
        self.names = names
        self.answers: dict[str, str] = {}
        """path -> owner, for the programs a host runs again and again
        (a lookup in the arrays costs 2 us, a hit 0.1 us)."""

    def owner(self, key: int) -> str:
        i = bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return self.names[self.owners[i]]
        return ""


_EMPTY = _Index(array("q"), array("I"), [])


class PackageIndex:
    """``owner(path)``: the package that installed the file, "" if none (or
    no dpkg database here).  ``background``: rebuild on a worker thread (the
    first build too, so the first answers may be ""); else in the caller."""

    def __init__(self, info: str = DPKG_INFO, *, root: str = "/", max_paths: int = 2_000_000,
                 recheck: float = 5.0, background: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.info = info
        self.max_paths = max_paths
        self.recheck = recheck
        self.background = background
        self._clock = clock
        self._merged = merged_usr(root)
        self._index = _EMPTY
        self._built_for: int | None = None
        """The mtime of the lists' folder the index was built from."""
        self._checked = -float("inf")
        self._building = False
        self._builds = self._skipped = self._failed = 0
        self._seconds = 0.0
        self._lock = threading.Lock()

    def owner(self, path: str) -> str:
        if not path.startswith("/"):
            return ""
        self._refresh()
        index = self._index
        answer = index.answers.get(path)
        if answer is None:
            answer = index.owner(hash(_spelled(os.fsencode(path), self._merged)))
            if len(index.answers) >= _ANSWERS:
                index.answers.clear()
            index.answers[path] = answer
        return answer

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self.recheck:
            return
        self._checked = now
        try:
            mtime = os.stat(self.info).st_mtime_ns
        except OSError:
            mtime = None
        if mtime == self._built_for:
            return
        with self._lock:
            if self._building:
                return
            self._building = True
        if self.background:
            threading.Thread(target=self._build, args=(mtime,), name="package-index", daemon=True).start()
        else:
            self._build(mtime)

    def _build(self, mtime: int | None) -> None:
        start = time.perf_counter()
        pairs: list[tuple[int, int]] = []
        names: list[str] = []
        skipped = failed = 0
        try:
            entries = sorted(e.name for e in os.scandir(self.info) if e.name.endswith(".list"))
        except OSError:
            entries = []
        for name in entries:
            try:
                with open(os.path.join(self.info, name), "rb") as f:
                    lines = [line for line in f.read().split(b"\n") if line]
            except OSError:
                failed += 1
                continue
            room = self.max_paths - len(pairs)
            if len(lines) > room:
                skipped += len(lines) - room
                lines = lines[:room]
            n = len(names)
            names.append(name[:-5].partition(":")[0])  # libc6:amd64.list
            merged = self._merged
            pairs.extend((hash(_spelled(line, merged)), n) for line in lines)
        pairs.sort()
        index = _Index(array("q", [k for k, _ in pairs]), array("I", [v for _, v in pairs]), names)
        with self._lock:
            self._index, self._built_for, self._building = index, mtime, False
            self._builds += 1
            self._skipped, self._failed = skipped, failed
            self._seconds = time.perf_counter() - start

    def statistics(self) -> PackageIndexStatistics:
        index = self._index
        return PackageIndexStatistics(paths=len(index.keys), packages=len(index.names), builds=self._builds,
                                      build_seconds=self._seconds, skipped=self._skipped, failed=self._failed)


def is_manager(path: str) -> bool:
    """Whether ``path`` (an image or executable) is a package manager's; /bin
    and /sbin spelled as their /usr twins."""
    return path in MANAGERS or (path.startswith(("/bin/", "/sbin/")) and "/usr" + path in MANAGERS)


_SYSTEM: PackageIndex | None = None


def system_packages() -> PackageIndex:
    """The index of this machine's dpkg database, one per process."""
    global _SYSTEM
    if _SYSTEM is None:
        _SYSTEM = PackageIndex()
    return _SYSTEM
