"""CPU time and memory of process trees, read from /proc (no psutil here):
what a benchmark's servers (hive nodes, nats-server, PostgreSQL) spent."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces: the fields start after its ')'.
    return text[text.rindex(")") + 2:].split()


def tree(roots: list[int]) -> list[int]:
    """``roots`` and every live descendant."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f:
                parents[int(entry)] = int(f[1])
    out, todo = [], [r for r in roots if r in parents]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return out


def cpu_seconds(roots: list[int]) -> float:
    """User and system time of the trees under ``roots``, with their reaped
    children's (a PostgreSQL backend that ended is in its postmaster's)."""
    total = 0
    for pid in tree(roots):
        f = _stat(pid)
        if f:  # utime, stime, cutime, cstime are fields 14-17 of stat
            total += sum(int(x) for x in f[11:15])
    return total / TICK


def rss_bytes(roots: list[int]) -> int:
    total = 0
    for pid in tree(roots):
        f = _stat(pid)
        if f:
            total += int(f[21]) * PAGE
    return total


def postmaster(data: Path) -> int:
    """The PostgreSQL server's pid, from its data folder."""
    return int((data / "postmaster.pid").read_text().split()[0])
