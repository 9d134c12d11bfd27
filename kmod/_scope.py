"""What a sensor watches: the whole machine, one cgroup v2 subtree, one
network namespace, or one container (found by id, name or image when the
sensor starts, and then watched as its cgroup).  Several agents on one
machine (containers, or tests that simulate hosts in network namespaces)
each see and act on their own processes only."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._containers import Containers, machine_containers
from ._errors import PolicyError, ScopeError
from ._policy import ContainerSelector, container_selector
from ._system import cgroup2_root

SO_NETNS_COOKIE = 71
CLONE_NEWNET = 0x40000000
S_MACHINE, S_CGROUP, S_NETNS = 0, 1, 2

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    """``Scope.machine()``, ``Scope.cgroup(path)``, ``Scope.netns(path)`` or
    ``Scope.container(selector)``."""

    kind: str = "machine"
    path: str = ""

    @classmethod
    def machine(cls) -> Scope:
        return cls()

    @classmethod
    def cgroup(cls, path: str | os.PathLike) -> Scope:
        """A cgroup v2 directory, absolute or relative to the cgroup2 mount."""
        return cls("cgroup", os.fspath(path))

    @classmethod
    def netns(cls, path: str | os.PathLike) -> Scope:
        """A network namespace file: ``/run/netns/NAME`` or ``/proc/PID/ns/net``."""
        return cls("netns", os.fspath(path))

    @classmethod
    def container(cls, selector: str) -> Scope:
        """One container: its id (or the first 12 characters of it) or its
        name, or ``KEY=GLOB[,KEY=GLOB...]`` with keys ``id``, ``name``,
        ``image`` and ``runtime`` (as a policy rule's ``match.container_*``).
        Exactly one running container must match when the sensor starts."""
        scope = cls("container", selector)
        scope._selector()  # refused now, not at start
        return scope

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``machine``, ``cgroup:PATH``, ``netns:PATH`` (a bare netns name
        means ``/run/netns/NAME``) or ``container:SELECTOR``."""
        kind, _, path = text.partition(":")
        if kind == "machine" and not path:
            return cls.machine()
        if kind == "cgroup" and path:
            return cls.cgroup(path)
        if kind == "netns" and path:
            return cls.netns(path if "/" in path else f"/run/netns/{path}")
        if kind == "container" and path:
            return cls.container(path)
        raise ScopeError(f"scope {text!r}: expected machine, cgroup:PATH, netns:PATH or container:SELECTOR")

    def _selector(self) -> ContainerSelector | str:
        """A bare id or name, or the selector its KEY=GLOB pairs make."""
        if "=" not in self.path:
            return self.path
        pairs: dict[str, list[str]] = {}
        for part in self.path.split(","):
            key, eq, value = part.partition("=")
            if not eq or key not in ("id", "name", "image", "runtime") or not value:
                raise ScopeError(f"scope {self}: {part!r}: expected KEY=GLOB with KEY one of id, name, "
                                 "image, runtime")
            pairs.setdefault(f"container_{key}", []).append(value)
        try:
            return container_selector(pairs, f"scope {self}")  # type: ignore[return-value]
        except PolicyError as e:
            raise ScopeError(str(e).replace(": match.container_", ": ")) from None

    def find_container(self, containers: Containers | None = None):
        """The one running container this scope selects (ScopeError if none
        or several)."""
        wanted = self._selector()
        running = (containers or machine_containers()).running()
        if isinstance(wanted, str):
            found = [c for c in running if wanted in (c.id, c.name) or len(wanted) >= 12 and c.id.startswith(wanted)]
        else:
            found = [c for c in running if wanted.matches(c)]
        if not found:
            seen = ", ".join(sorted(c.name or c.id[:12] for c in running)[:10]) or "none"
            raise ScopeError(f"scope {self}: no running container matches (running: {seen})")
        if len(found) > 1:
            names = ", ".join(sorted(c.name or c.id[:12] for c in found)[:10])
            raise ScopeError(f"scope {self}: {len(found)} running containers match ({names}); a scope is one "
                             "cgroup: name one, or select them all in the policy's rules (match.container_*)")
        if not found[0].cgroup:
            raise ScopeError(f"scope {self}: container {found[0].id} has no cgroup v2 directory to watch")
        return found[0]

    def __str__(self) -> str:
        return self.kind if self.kind == "machine" else f"{self.kind}:{self.path}"

    def resolve(self) -> ResolvedScope:
        if self.kind == "machine":
            return ResolvedScope(self, S_MACHINE, cgroup_dir=cgroup2_root())
        if self.kind == "cgroup":
            root = cgroup2_root()
            path = Path(self.path)
            if not (path.is_absolute() and path.is_dir() and _under(path, root)):
                path = root / self.path.lstrip("/")
            if not path.is_dir():
                raise ScopeError(f"cgroup {self.path!r} does not exist under the cgroup2 "
                                 f"mount {root}")
            rel = path.relative_to(root)
            return ResolvedScope(self, S_CGROUP, cgroup_dir=path,
                                 cgroup_rel="/" if rel == Path(".") else f"/{rel}")
        if self.kind == "netns":
            try:
                st = os.stat(self.path)
            except OSError as e:
                raise ScopeError(f"network namespace {self.path!r}: {e.strerror}") from None
            return ResolvedScope(self, S_NETNS, cgroup_dir=cgroup2_root(),
                                 netns=(st.st_dev, st.st_ino), netns_cookie=_netns_cookie(self.path))
        if self.kind == "container":
            # Its cgroup, in the kernel as in userspace: connect and bind
            # rules reach it too, and nothing outside it.
            return dataclasses.replace(Scope.cgroup(self.find_container().cgroup).resolve(), scope=self)
        raise ScopeError(f"unknown scope kind {self.kind!r}")


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run inside the network namespace at ``path``, on a thread
    that enters it and then ends (so no thread of ours stays there)."""
    result: list = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
        except OSError as e:
            result.append(ScopeError(f"cannot enter network namespace {path!r}: {e.strerror}"))
            return
        try:
            result.append(fn())
        except BaseException as e:  # re-raised on the caller's thread
            result.append(e)

    t = threading.Thread(target=run, name="in-netns")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _netns_cookie(path: str) -> int:
    """The namespace's cookie (what bpf_get_netns_cookie() returns), asked of
    a socket created inside it."""
    def probe() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")

    return in_netns(path, probe)


@dataclass(frozen=True)
class ResolvedScope:
    scope: Scope
    code: int
    cgroup_dir: Path
    cgroup_rel: str = ""
    netns: tuple[int, int] = (0, 0)
    netns_cookie: int = 0

    def contains(self, pid: int) -> bool:
        """Is this process in scope?  For fanotify, which sees every process.
        A process that cannot be inspected counts as in scope: enforcing on
        a stranger is safer than letting a member through."""
        try:
            if self.code == S_NETNS:
                st = os.stat(f"/proc/{pid}/ns/net")
                return (st.st_dev, st.st_ino) == self.netns
            if self.code == S_CGROUP:
                with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("0::"):
                            path = line[3:].rstrip("\n")
                            rel = self.cgroup_rel.rstrip("/")
                            return path == rel or path.startswith(rel + "/") or rel == ""
                return False
        except OSError:
            return True
        return True

