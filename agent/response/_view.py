"""Whose view a path is in: a live process of the right mount namespace.

A command that names a file (``quarantine_file``) says whose file it is:
the pid of the event, and the mount namespace and container the sensor
saw it in.  Its path is opened in the root of a live process of that view
(see ``_root``):

1. the pid itself, if it still runs in that mount namespace and container;
2. else its nearest living ancestor the process table remembers (a
   blocked exec's caller exits at once; its shell lives on), or any process
   of the container, or any process of that mount namespace;
3. else the command fails, saying why: the path is never looked up in
   another view, least of all the host's.

A candidate must match every identity the command gives.  Processes of
one mount namespace may still have different roots (a chroot inside it):
the pid's own family is tried first for that reason.  One that gives
none (an older playbook, a hand-made command) is read in the agent's own
root, as before; one that gives only a pid is read in that pid's root, or
its nearest living ancestor's, and the result says it was not checked.

The process table is the relay's (shared in the agent's process; see
``node/_trees.py``).  It is read from a worker thread while the relay's
thread updates it: only single dictionary lookups, which the GIL keeps
whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._errors import Gone
from ._process import stat
from ._root import open_root

MAX_ANCESTORS = 16


@dataclass(frozen=True)
class View:
    pid: int
    """The live process whose root the path is opened in; 0: the agent's own."""
    start: int = 0
    """Its start time, so a pid reused since it was chosen is noticed."""
    how: str = "the agent's own root"

    def open_root(self) -> int | None:
        """An O_PATH descriptor of the view's root (None: the agent's own,
        opened by plain paths).  Raises Gone if the process exited since it
        was chosen."""
        if not self.pid:
            return None
        try:
            fd = open_root(self.pid)
        except OSError:
            raise Gone(f"pid {self.pid}, whose root the path was to be opened in, exited meanwhile") from None
        now = stat(self.pid)
        if now is None or now.start != self.start:
            os.close(fd)
            raise Gone(f"pid {self.pid}, whose root the path was to be opened in, exited meanwhile")
        return fd


AGENT_VIEW = View(0)


def mount_ns(pid: int) -> int:
    """The inode of ``pid``'s mount namespace (what events carry as ``mntns``); 0 if gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return 0


def known(table: Any, pid: int) -> Any:
    """What the process table knew of ``pid``, running or recently exited
    (a ``agent.Process``), or None (also without a table)."""
    if table is None or pid <= 0:
        return None
    return table.known(pid)


def ancestors(table: Any, pid: int) -> Iterator[Any]:
    """The table's processes above ``pid``, nearest first."""
    seen = {pid}
    p = known(table, pid)
    while p is not None and len(seen) <= MAX_ANCESTORS and p.ppid > 0 and p.ppid not in seen:
        seen.add(p.ppid)
        p = known(table, p.ppid)
        if p is not None:
            yield p


def container_of(pid: int) -> tuple[str, str]:
    """(id, name) of the container ``pid`` runs in; ("", "") for the host."""
    from kmod import machine_containers

    found = machine_containers().of_pid(pid)
    return (found.id, found.name) if found is not None else ("", "")


def container_pids(container: str) -> list[int]:
    """Live processes of the container whose id or name is ``container``, oldest first."""
    from kmod import machine_containers

    out = []
    for pid, found in machine_containers().processes():
        st = stat(pid) if container in (found.id, found.name) else None
        if st is not None:
            out.append((st.start, st.pid))
    return [p for _, p in sorted(out)]


def _mount_ns_pids(mntns: int) -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit() and mount_ns(int(name)) == mntns:
            yield int(name)


def find_view(pid: int = 0, *, container: str = "", mntns: int = 0, table: Any = None) -> View:
    """The view a command's path is in (see the module's text); raises
    ResponseError (Gone when no live process has it) with the reason."""
    if not pid and not container and not mntns:
        return AGENT_VIEW
    checked = bool(container or mntns)

    def candidates() -> Iterator[tuple[int, str]]:
        if pid:
            yield pid, f"pid {pid}"
            for p in ancestors(table, pid):
                yield p.pid, f"pid {p.pid}, an ancestor of pid {pid}"
        if container:
            for p in container_pids(container):
                yield p, f"pid {p} of container {container}"
        if mntns:
            for p in _mount_ns_pids(mntns):
                yield p, f"pid {p} of mount namespace mnt:[{mntns}]"

    tried = set()
    for candidate, how in candidates():
        if candidate in tried:
            continue
        tried.add(candidate)
        st = stat(candidate)
        if st is None or st.dead:
            continue
        if mntns and mount_ns(candidate) != mntns:
            continue
        if container and container not in container_of(candidate):
            continue
        if not checked:
            how += " (not checked: the command names no mount namespace or container)"
        return View(candidate, st.start, how)
    whose = " and ".join(w for w in (f"pid {pid}" if pid else "", f"container {container}" if container else "",
                                     f"mount namespace mnt:[{mntns}]" if mntns else "") if w)
    raise Gone(f"no live process has the view of {whose}: the path cannot be resolved where the process saw it")


def describe(view: View) -> dict[str, Any]:
    """The view as a result's data names it."""
    return {"pid": view.pid, "how": view.how}

