"""What an agent keeps of the bundles the hive sent it.

Two files in one folder: ``current.bundle`` (what it runs) and
``previous.bundle`` (the last good one before).  Both are signed bundles
exactly as received, so each is verified again when read: a file altered
on disk is refused like one altered on the wire.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wire import MAX_BUNDLE

from ._bundle import Bundle, Signed, verify
from ._errors import BundleRefused

log = logging.getLogger("immune.fleet")

CURRENT = "current.bundle"
PREVIOUS = "previous.bundle"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Keeper:
    def __init__(self, folder: str | Path, public: bytes) -> None:
        self.folder = Path(folder)
        self.public = public
        self.running: Bundle | None = None
        """The bundle in force (None: none yet, the agent's own files rule)."""
        self.failed: dict[int, str] = {}
        """Versions that failed to load here, and why: offered again, refused."""

    @property
    def version(self) -> int:
        return self.running.version if self.running else 0

    def _read(self, name: str) -> Bundle | None:
        path = self.folder / name
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BUNDLE + 1024)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("fleet.bundle_unreadable path=%s error=%s", path, e)
            return None
        try:
            return verify(data, self.public)
        except BundleRefused as e:
            log.warning("fleet.bundle_refused path=%s reason=%s", path, e)
            return None

    def start(self) -> Bundle | None:
        """The bundle to run at start: the current one if it verifies, else
        the previous one, else None."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.running = self._read(CURRENT) or self._read(PREVIOUS)
        return self.running

    def offer(self, data: bytes | Signed) -> Bundle:
        """The bundle in ``data`` if it may replace the running one (it is
        not kept until ``keep``); raises ``BundleRefused`` otherwise."""
        bundle = verify(data, self.public, self.version)
        if bundle.version in self.failed:
            raise BundleRefused(f"version {bundle.version} failed to load here before: {self.failed[bundle.version]}")
        return bundle

    def keep(self, data: bytes, bundle: Bundle) -> None:
        """``bundle`` (from ``data``, as offered) loaded: it becomes the
        current one, and the current one the previous."""
        current = self.folder / CURRENT
        if current.exists():
            os.replace(current, self.folder / PREVIOUS)
        _write(current, bytes(data))
        self.running = bundle

    def refuse(self, bundle: Bundle, why: str) -> None:
        """``bundle`` failed to load: the running one stays, and this version
        is not tried again."""
        self.failed[bundle.version] = why

    def previous(self) -> Bundle | None:
        """The last good bundle before the running one, verified."""
        return self._read(PREVIOUS)
