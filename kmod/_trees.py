"""Folder trees whose every folder must carry a fanotify mark.

fanotify's mark on a folder reports its children only, so an open block on
``/srv/keys/**`` needs a mark on every folder below ``/srv/keys``, and on
each folder made there later.  fanotify cannot report a new folder to a
group that answers permission events (that needs FAN_REPORT_FID, which
such a group may not have), so inotify watches each folder of the trees
for new sub-folders.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
from collections.abc import Callable

from ._system import IN_CREATE, IN_DONT_FOLLOW, IN_IGNORED, IN_ISDIR, IN_MOVED_TO, IN_ONLYDIR, IN_Q_OVERFLOW, Inotify

log = logging.getLogger("kmod.fanotify")

MOST_FOLDERS = 20_000
"""Folders watched at most, over all trees: a mark and a watch each (about
1 KiB of kernel memory a watch)."""


def could_hold(pattern: str, folder: str) -> bool:
    """Could a file below ``folder`` (at any depth) match ``pattern`` (the
    policy's globs: ``*``, ``?`` and ``[..]`` within a component, ``**``
    across)?  Only such folders need a mark."""
    want = pattern.strip("/").split("/")
    have = [c for c in folder.strip("/").split("/") if c]
    for i, part in enumerate(have):
        if i < len(want) and "**" in want[i]:
            return True
        if i >= len(want) - 1 or not fnmatch.fnmatchcase(part, want[i]):
            return False  # as deep as the file itself, or off the pattern
    return True


class Trees:
    """The folders below some roots, each watched for new sub-folders.
    :meth:`add` and :meth:`news` return the folders to mark."""

    def __init__(self, most: int = MOST_FOLDERS) -> None:
        self._inotify = Inotify()
        self.most = most
        self._paths: dict[int, str] = {}  # watch descriptor -> folder
        self._keep: dict[int, Callable[[str], bool]] = {}  # and what its new sub-folders must pass
        self.capped = False
        """Some folder was left unwatched: over ``most``."""

    @property
    def fd(self) -> int:
        return self._inotify.fileno()

    def __len__(self) -> int:
        return len(self._paths)

    def add(self, root: str, keep: Callable[[str], bool] = lambda folder: True) -> list[str]:
        """Watch ``root`` and every folder below it that ``keep`` keeps (not
        following links); returns them, ``root`` first."""
        found: list[str] = []
        stack = [root]
        while stack:
            folder = stack.pop()
            if not keep(folder):
                continue
            if len(self._paths) >= self.most:
                if not self.capped:
                    log.warning("open blocks: over %d folders in the guarded trees; %s and what is below it "
                                "are not watched", self.most, folder)
                self.capped = True
                break
            try:
                wd = self._inotify.watch(folder, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR | IN_DONT_FOLLOW)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR):  # gone or replaced meanwhile: nothing to watch
                    log.warning("open blocks: cannot watch %s for new folders: %s", folder, e.strerror)
                continue
            self._paths[wd] = folder
            self._keep[wd] = keep
            found.append(folder)
            try:
                with os.scandir(folder) as it:
                    stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
        return found

    def news(self) -> list[str]:
        """The folders made (or moved) into watched ones since the last call,
        and everything below them, now watched too."""
        made: list[str] = []
        for wd, mask, name in self._inotify.read():
            if mask & IN_IGNORED:
                self._paths.pop(wd, None)
                self._keep.pop(wd, None)
            elif mask & IN_Q_OVERFLOW:
                for w, folder in list(self._paths.items()):  # events were lost: look again
                    made.extend(self.add(folder, self._keep[w])[1:])
            elif mask & IN_ISDIR and wd in self._paths:
                made.extend(self.add(os.path.join(self._paths[wd], name), self._keep[wd]))
        return made

    def close(self) -> None:
        self._inotify.close()
