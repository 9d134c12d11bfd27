"""kill_process: a process, or its whole tree, by pidfd.

Guardrails: never pid 0/1 or a kernel thread, never the agent, its
ancestors (its supervisor, init) or its own children.  A pid is only a
number: between the alert and the kill it may have been reused, so an
``exe`` given by the playbook must still be what the process runs (the
path as the sensor saw it: in the process's own root), and
every signal goes through a pidfd opened on the process whose start time
was seen in the scan (never a bare kill(pid)).

A tree is frozen before it is killed: SIGSTOP top-down, rescanning until no
new child appears, so a process cannot fork away while its tree is being
killed; then SIGKILL to all, and a wait on the pidfds for their deaths."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._errors import Refused, ResponseError
from ._root import runs

_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
_FREEZE_ROUNDS = 16


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    start: int
    """Start time in clock ticks since boot: with the pid, one process for good."""
    comm: str
    state: str
    """R, S, D, T, Z (exited, waiting for its parent to reap it), ..."""

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X")


def _read(path: str) -> bytes | None:
    # os.open/os.read: a look at a tree reads many of these, and file
    # objects cost twice as much.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def stat(pid: int) -> ProcStat | None:
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    end = raw.rindex(b")")
    fields = raw[end + 2:].split()
    return ProcStat(pid, int(fields[1]), int(fields[19]), raw[raw.index(b"(") + 1:end].decode(errors="replace"),
                    fields[0].decode())


_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def children(pid: int) -> list[int]:
    """``pid``'s children, from its threads' ``children`` files (CONFIG_PROC_CHILDREN):
    a look at a tree costs the tree's size, not a scan of every process on
    the host (three scans were most of a kill)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        out += map(int, (_read(f"/proc/{pid}/task/{tid}/children") or b"").split())
    return out


def all_stats() -> dict[int, ProcStat]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = stat(int(name))
            if st is not None:
                out[st.pid] = st
    return out


def descendants(root: int) -> list[int]:
    """``root``'s descendants, parents before children (as they are now:
    exact once the tree is stopped).  Without CONFIG_PROC_CHILDREN, from one
    scan of /proc."""
    if _CHILDREN_FILES:
        children_of = children
    else:
        by_parent: dict[int, list[int]] = {}
        for st in all_stats().values():
            by_parent.setdefault(st.ppid, []).append(st.pid)
        children_of = lambda pid: by_parent.get(pid, [])  # noqa: E731
    out, seen, todo = [], {root}, [root]
    while todo:
        for child in children_of(todo.pop(0)):
            if child not in seen:
                seen.add(child)
                out.append(child)
                todo.append(child)
    return out


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


class Family:
    """Why a process may not be killed: init, the agent, its ancestors, its
    descendants, or the configuration's pids.  Asked per process, walking
    the process's own parents up (stopping at one seen to be clear), so a
    kill costs the victim's tree, not a look at everything the agent runs."""

    def __init__(self, extra: Iterable[int] = ()) -> None:
        self.me = me = os.getpid()
        self._why = {1: "pid 1 is init; killing it would bring the host down",
                     me: f"pid {me} is the agent itself"}
        st = stat(me)
        pid = st.ppid if st else 0
        while pid > 1 and pid not in self._why:
            st = stat(pid)
            self._why[pid] = f"pid {pid} ({st.comm if st else '?'}) is an ancestor of the agent (pid {me})"
            pid = st.ppid if st else 0
        for pid in extra:
            self._why.setdefault(pid, f"pid {pid} is protected by the agent's configuration")
        self._clear: set[int] = set()

    def get(self, pid: int) -> str | None:
        why = self._why.get(pid)
        if why is not None or pid in self._clear:
            return why
        walked, up = [], pid
        while up > 1 and up not in self._clear:
            st = stat(up)
            if st is None:
                break
            if st.ppid == self.me:
                return f"pid {pid} is a child of the agent (pid {self.me})"
            walked.append(up)
            up = st.ppid
        self._clear.update(walked)
        return None


def _kernel_thread(st: ProcStat) -> bool:
    return st.pid == 2 or st.ppid == 2


def kill_process(pid: object, *, tree: bool = False, sig: str = "KILL", exe: str = "",
                 extra_protected: Iterable[int] = (), protected: dict[int, str] | None = None,
                 wait: float = 1.0) -> dict:
    """Kill ``pid`` (and its descendants if ``tree``).  Returns what the result
    carries: ``killed`` (dead now), ``gone`` (dead before the signal) and
    ``ms``; raises Refused or ResponseError.  ``protected`` (pid -> why)
    replaces the agent's own ``Family`` (tests)."""
    return strike(pid, tree=tree, sig=sig, exe=exe, extra_protected=extra_protected,
                  protected=protected).wait(wait)


class Strike:
    """Signals sent, deaths not yet confirmed: the pidfds of the processes
    signalled (None for one gone before it).  ``wait`` confirms and closes
    them; the executor's actor sends the signals on its own thread and waits
    on a worker thread, so nothing stands between the decision and the kill."""

    def __init__(self, handles: dict[int, int | None], sig: str, started: float) -> None:
        self.handles, self.sig, self.started = handles, sig, started
        self._closed = False

    def wait(self, timeout: float) -> dict:
        try:
            dead, alive = _wait_dead({p: fd for p, fd in self.handles.items() if fd is not None}, timeout)
        finally:
            self.close()
        gone = sorted(p for p, fd in self.handles.items() if fd is None)
        out = {"killed": sorted(dead), "gone": gone, "ms": _ms(self.started)}
        if alive:
            raise ResponseError(f"still alive {timeout:g}s after SIG{self.sig}: "
                                f"pid(s) {', '.join(map(str, sorted(alive)))}")
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in self.handles.values():
                if fd is not None:
                    os.close(fd)


def strike(pid: object, *, tree: bool = False, sig: str = "KILL", exe: str = "",
           extra_protected: Iterable[int] = (), protected: dict[int, str] | None = None) -> Strike:
    """The checks and the signals of ``kill_process``, without the wait."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ResponseError(f"pid must be a positive integer, not {pid!r}")
    if sig not in _SIGNALS:
        raise ResponseError(f"signal must be one of {', '.join(_SIGNALS)}, not {sig!r}")
    started = time.monotonic()
    why_protected = (protected if protected is not None else Family(extra_protected)).get
    why = why_protected(pid)
    if why:
        raise Refused(f"refused: {why}")
    root = stat(pid)
    if root is None or root.dead:
        return Strike({pid: None}, sig, started)
    if _kernel_thread(root):
        raise Refused(f"refused: pid {pid} ({root.comm}) is a kernel thread")
    if exe:
        running = exe_of(pid)
        # Its own root may name the file otherwise than the agent's (a chroot).
        if running is not None and running != exe and not runs(pid, exe):
            raise Refused(f"refused: pid {pid} runs {running}, not {exe}: the pid may have been reused")
    handles = {pid: _open(root)}
    done = Strike(handles, sig, started)
    try:
        if handles[pid] is None:
            return done
        if tree:
            try:
                _freeze(root, handles, why_protected)
            except ResponseError:
                for fd in handles.values():  # leave nothing stopped behind a refusal
                    if fd is not None:
                        _signal(fd, signal.SIGCONT)
                raise
        signum = _SIGNALS[sig]
        for fd in handles.values():
            if fd is not None:
                _signal(fd, signum)
                if signum != signal.SIGKILL:
                    _signal(fd, signal.SIGCONT)  # a frozen process must wake to act on TERM
    except BaseException:
        done.close()
        raise
    return done


def _open(st: ProcStat) -> int | None:
    """A pidfd on exactly the process ``st`` describes (None if it is gone)."""
    try:
        fd = os.pidfd_open(st.pid)
    except ProcessLookupError:
        return None
    except OSError as e:
        raise ResponseError(f"cannot open pid {st.pid}: {e.strerror}") from None
    now = stat(st.pid)
    if now is None or now.start != st.start:
        os.close(fd)  # it died, and the pid went to someone else, after the scan
        return None
    return fd


def _signal(fd: int, signum: int) -> None:
    try:
        signal.pidfd_send_signal(fd, signum)
    except ProcessLookupError:
        pass  # died meanwhile: counted as dead by the wait
    except OSError as e:
        raise ResponseError(f"cannot signal: {e.strerror}") from None


def _freeze(root: ProcStat, handles: dict[int, int | None], why_protected: Callable[[int], str | None]) -> None:
    """Stop the root, then its descendants, looking again until a look made
    after the last stop finds nobody new (the first may come before the
    root's stop took effect: the next one catches what it forked)."""
    _signal(handles[root.pid], signal.SIGSTOP)  # type: ignore[arg-type]
    for round_ in range(_FREEZE_ROUNDS):
        new = [p for p in descendants(root.pid) if p not in handles]
        if not new and round_:
            return
        for p in new:
            why = why_protected(p)
            if why:
                raise Refused(f"refused: the tree of pid {root.pid} holds {why}")
            st = stat(p)
            if st is None or _kernel_thread(st):
                continue
            handles[p] = fd = _open(st)
            if fd is not None:
                _signal(fd, signal.SIGSTOP)
    raise ResponseError(f"the tree of pid {root.pid} kept growing for {_FREEZE_ROUNDS} rounds; "
                        f"{len(handles)} processes stopped but not killed")


def _wait_dead(fds: dict[int, int], timeout: float) -> tuple[set[int], set[int]]:
    """A pidfd is readable once its process has exited."""
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in fds.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    dead: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(dead) < len(by_fd):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            dead.add(by_fd[fd])
    return dead, set(fds) - dead


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
