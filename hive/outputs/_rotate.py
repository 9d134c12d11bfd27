"""A JSON-lines file that rotates by size: ``alerts.json``, then
``alerts.json.1`` (the newest full one) up to ``alerts.json.N``; the
oldest goes.  Blocking (the output actor calls it from a worker thread)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class RotatingFile:
    def __init__(self, path: str | os.PathLike, *, max_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        """How many rotated files are kept beside the current one."""
        self._fd: int | None = None
        self._size = 0

    def write(self, lines: Sequence[bytes]) -> None:
        """Append ``lines`` (each a record without its newline) and fsync:
        what returns is on disk.  A record never straddles two files; a
        file passes ``max_bytes`` only by a record larger than it."""
        self._open()
        chunk: list[bytes] = []
        pending = 0
        for line in lines:
            record = line + b"\n"
            if self._size + pending + len(record) > self.max_bytes and self._size + pending:
                self._flush(chunk)
                self._rotate()
                chunk, pending = [], 0
            chunk.append(record)
            pending += len(record)
        self._flush(chunk)

    def _open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._size = os.fstat(self._fd).st_size

    def _flush(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        assert self._fd is not None
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if n == self.keep:
                older.unlink(missing_ok=True)
            newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            if newer.exists():
                os.replace(newer, older)
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
