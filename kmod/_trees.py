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
import logging
import os

from ._system import IN_CREATE, IN_DONT_FOLLOW, IN_IGNORED, IN_ISDIR, IN_MOVED_TO, IN_ONLYDIR, IN_Q_OVERFLOW, Inotify

log = logging.getLogger("kmod.fanotify")

MOST_FOLDERS = 20_000
"""Folders watched at most, over all trees: a mark and a watch each (about
1 KiB of kernel memory a watch)."""


class Trees:
    """The folders below some roots, each watched for new sub-folders.
    :meth:`add` and :meth:`news` return the folders to mark."""

    def __init__(self, most: int = MOST_FOLDERS) -> None:
        self._inotify = Inotify()
        self.most = most
        self._paths: dict[int, str] = {}  # watch descriptor -> folder
        self.capped = False
        """Some folder was left unwatched: over ``most``."""

    @property
    def fd(self) -> int:
        return self._inotify.fileno()

    def __len__(self) -> int:
        return len(self._paths)

    def add(self, root: str) -> list[str]:
        """Watch ``root`` and every folder below it (not following links);
        returns them, ``root`` first."""
        found: list[str] = []
        stack = [root]
        while stack:
            folder = stack.pop()
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
            elif mask & IN_Q_OVERFLOW:
                for folder in list(self._paths.values()):  # events were lost: look again
                    made.extend(self.add(folder)[1:])
            elif mask & IN_ISDIR and wd in self._paths:
                made.extend(self.add(os.path.join(self._paths[wd], name)))
        return made

    def close(self) -> None:
        self._inotify.close()
