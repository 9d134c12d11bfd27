"""quarantine_file: move a file out of reach, keep it for analysis.

The file goes to ``<data>/quarantine/<sha256>`` (mode 0400, in a 0700
folder), with a JSON sidecar saying where it came from, its owner, mode,
size and times, and which command put it there.  Its exec is then denied
by SHA-256 wherever a copy of it lies (the executor adds that rule)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from ._errors import Refused, ResponseError
from ._policy import write_json

MAX_BYTES = 512 << 20
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def protected_files() -> set[str]:
    """Executables the host and the agent need: the agent's interpreter, its
    launcher (``immune-node`` in its environment, and the script it was
    started as) and init.  Quarantining or exec-blocking them would stop the
    agent from restarting, or the host from booting."""
    out = set()
    for link in ("/proc/self/exe", "/proc/1/exe"):
        try:
            out.add(os.path.realpath(link))
        except OSError:
            continue
    for launcher in (os.path.join(sys.prefix, "bin", "immune-node"), sys.argv[0] if sys.argv else ""):
        if launcher and os.path.isfile(launcher):
            out.add(os.path.realpath(launcher))
    return out


def quarantine_file(path: object, folder: Path, *, command: str = "", protected: Iterable[str] = (),
                    max_bytes: int = MAX_BYTES) -> dict:
    """Move ``path`` into ``folder``; returns the sidecar's content."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ResponseError(f"path must be an absolute path, not {path!r}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ResponseError(f"{path} does not exist (removed already?)") from None
    except OSError as e:
        raise ResponseError(f"cannot look at {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"refused: {path} is a symbolic link to {os.readlink(path)}; quarantine the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"refused: {path} is not a regular file")
    real = os.path.realpath(path)
    if real in set(protected) | protected_files():
        raise Refused(f"refused: {path} is an executable the agent or the host needs to run")
    if st.st_size > max_bytes:
        raise ResponseError(f"{path} is {st.st_size} bytes, more than the {max_bytes} a quarantine takes")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    incoming = folder / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    try:
        _move(path, incoming)
        incoming.chmod(0o400)
        # Hashed where only root can reach it, so the digest is what was kept.
        digest = sha256_file(incoming)
        target = folder / digest
        n = 1
        while target.exists():  # the same content again: keep each arrival
            target = folder / f"{digest}-{n}"
            n += 1
        os.rename(incoming, target)
    except OSError as e:
        raise ResponseError(f"cannot quarantine {path}: {e.strerror}") from None
    sidecar = {
        "original": path, "sha256": digest, "size": st.st_size, "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime, "ctime": st.st_ctime,
        "quarantined": time.time(), "command": command, "path": str(target),
    }
    write_json(target.with_name(target.name + ".json"), sidecar)
    return sidecar


def _move(source: str, target: Path) -> None:
    try:
        os.rename(source, target)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    # Another filesystem (/tmp is often tmpfs): copy, make it durable, then remove.
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.unlink(source)
