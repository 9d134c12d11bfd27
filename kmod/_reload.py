"""Reloading the sensor's policy from its file: when the file changes, and
on SIGHUP.

``PolicyFile`` is the plain part: the file, whether it changed since it was
last read, and the last policy from it the sensor accepted.  A new file that
does not parse is refused (one log line, a ``policy_refused`` notice) and
the policy in force stays; a good one is applied (a log line, a
``policy_reloaded`` notice naming its SHA-256).  ``watch_policy`` is the
trio task the reader actor runs beside its drain loop.

A change is noticed through inotify on the file's folder (and the folder of
the file a symlink leads to): a write that closed the file, a rename into
place (editors, ``sed -i``, a Kubernetes ConfigMap's symlink swap), a
deletion.  Not an open for writing, so a file being written is not read
half-done.  Without inotify the file is looked at every second."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import trio

from actors import Context, log_event

from ._errors import PolicyError
from ._policy import DEFAULT_POLICY, Policy
from ._system import IN_ATTRIB, IN_CLOSE_WRITE, IN_DELETE, IN_IGNORED, IN_MOVED_FROM, IN_MOVED_TO, Inotify

_FOLDER_EVENTS = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB
_SETTLE = 0.05
"""After a change, wait this long for the rest of it (a rename after a write)."""
_POLL = 1.0


class PolicyFile:
    """The file a sensor's policy is read from.  One per path in a process
    (``of``), so that a restarted reader still knows the last good policy
    when the file on disk was refused meanwhile."""

    _known: dict[str, PolicyFile] = {}

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.applied: Policy | None = None
        """The last policy from this file the sensor accepted."""
        self._seen: tuple | None = None

    @classmethod
    def of(cls, policy: Policy | str | os.PathLike | None) -> PolicyFile | None:
        """The file behind ``policy`` (None: the default policy's), or None
        for a policy built in code, which has no file to watch."""
        if isinstance(policy, Policy):
            return None
        path = os.path.abspath(policy if policy is not None else DEFAULT_POLICY)
        return cls._known.setdefault(path, cls(path))

    def _identity(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def in_force(self) -> str:
        """SHA-256 of the policy from this file the sensor runs: the last one
        a reader in this process applied (a broken edit since does not
        replace it), else the file's as it is now; "" if it cannot be read."""
        if self.applied is not None:
            return self.applied.digest
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return ""

    def reloaded(self, policy: Policy) -> str:
        """The detail of the ``policy_reloaded`` notice for ``policy``."""
        return f"{self.path}: {len(policy.rules)} rules, sha256 {policy.digest}"

    def changed(self) -> bool:
        """Whether the file (or where its symlink leads) is not what was last read."""
        return self._identity() != self._seen

    def load(self) -> Policy:
        """Read and parse the file; PolicyError if it does not parse.  Either
        way it counts as read: a broken file is refused once, not at every look."""
        self._seen = self._identity()
        return Policy.load(self.path)

    def folders(self) -> list[Path]:
        """Where a change to the file shows: its folder, and the folder of
        the file its symlinks lead to."""
        out = [self.path.parent]
        real = Path(os.path.realpath(self.path)).parent
        if real != out[0]:
            out.append(real)
        return out


@contextlib.contextmanager
def sighup_receiver() -> Iterator[AsyncIterator[int] | None]:
    """SIGHUP caught from now on, for ``watch_policy`` (None outside the main
    thread, where Python cannot catch signals).  Opened before the sensor
    starts, which takes seconds: SIGHUP's default action ends the process."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    with trio.open_signal_receiver(signal.SIGHUP) as hups:
        yield hups


async def watch_policy(ctx: Context, source: PolicyFile, apply: Callable[[Policy], None],
                       notice: Callable[[str, str], None], *, hups: AsyncIterator[int] | None,
                       on_change: bool = True) -> None:
    """Reload ``source`` into the sensor on each signal from ``hups``
    (``sighup_receiver``) and, with ``on_change``, when the file changes.
    ``apply`` puts a policy into the sensor (raising if it cannot);
    ``notice(what, detail)`` reports to the hive.  Counted in the actor's
    statistics: ``policy_reloads``, ``policy_refusals``."""
    log, stats = ctx.log, ctx.stats.extra
    stats.setdefault("policy_reloads", 0)
    stats.setdefault("policy_refusals", 0)

    async def reload(why: str) -> None:
        try:
            policy = await trio.to_thread.run_sync(source.load)
        except PolicyError as e:
            refuse(str(e))
            return
        except Exception as e:  # whatever a hostile file makes the parser do, never a crash
            refuse(f"{source.path}: cannot be read as a policy: {type(e).__name__}: {e}")
            return
        if source.applied is not None and policy.digest == source.applied.digest:
            log_event(log, "policy.unchanged", path=str(source.path), why=why)
            return
        try:
            apply(policy)
        except Exception as e:  # the sensor or the response layer refused it: the old one stays
            refuse(f"{source.path}: the sensor refused it: {e}")
            return
        source.applied = policy
        stats["policy_reloads"] = int(stats["policy_reloads"]) + 1
        log_event(log, "policy.reloaded", logging.WARNING, path=str(source.path), sha256=policy.digest,
                  rules=len(policy.rules), why=why)
        notice("policy_reloaded", source.reloaded(policy))

    def refuse(reason: str) -> None:
        stats["policy_refusals"] = int(stats["policy_refusals"]) + 1
        in_force = source.applied.digest if source.applied is not None else ""
        log_event(log, "policy.refused", logging.ERROR, reason=reason, in_force=in_force)
        notice("policy_refused", f"{reason}; the policy in force stays")

    async with trio.open_nursery() as nursery:
        if hups is not None:
            nursery.start_soon(_on_sighup, hups, reload)
        else:
            log_event(log, "policy.no_sighup", logging.WARNING,
                      reason="not in the main thread: reload on SIGHUP is off")
        if on_change:
            nursery.start_soon(_on_change, log, source, reload)


async def _on_sighup(hups: AsyncIterator[int], reload: Callable[[str], Awaitable[None]]) -> None:
    async for _ in hups:
        await reload("SIGHUP")


async def _on_change(log: logging.Logger, source: PolicyFile, reload: Callable[[str], Awaitable[None]]) -> None:
    inotify: Inotify | None = None
    try:
        inotify = Inotify()
        _watch(inotify, source)
    except OSError as e:
        inotify = _polling(log, source, inotify, e)
    try:
        while True:
            # First of all: a change made since the file was read, before the watch began, shows no event.
            if source.changed():
                await reload("file changed")
            if inotify is None:
                await trio.sleep(_POLL)
            else:
                await trio.lowlevel.wait_readable(inotify)
                await trio.sleep(_SETTLE)
                if any(mask & IN_IGNORED for _, mask, _ in inotify.read()):
                    try:  # a folder was removed or replaced: watch what is there now
                        _watch(inotify, source)
                    except OSError as e:
                        inotify = _polling(log, source, inotify, e)
    finally:
        if inotify is not None:
            _close(inotify)


def _watch(inotify: Inotify, source: PolicyFile) -> None:
    for folder in source.folders():
        inotify.watch(folder, _FOLDER_EVENTS)


def _polling(log: logging.Logger, source: PolicyFile, inotify: Inotify | None, e: OSError) -> None:
    log_event(log, "policy.polling", logging.WARNING, path=str(source.path), every=_POLL,
              reason=f"cannot watch with inotify: {e.strerror}")
    if inotify is not None:
        _close(inotify)


def _close(inotify: Inotify) -> None:
    trio.lowlevel.notify_closing(inotify)
    inotify.close()
