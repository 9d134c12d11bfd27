"""quarantine_file: move a file out of reach, keep it for analysis.

The path is the process's own (see ``_view``): opened in its root, never
leaving it.  The file goes to ``<data>/quarantine/<sha256>`` (mode 0400, in a 0700
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
from ._root import open_in, split
from ._view import AGENT_VIEW, View, describe

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


def _identities(paths: Iterable[str]) -> set[tuple[int, int]]:
    out = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def quarantine_file(path: object, folder: Path, *, command: str = "", view: View = AGENT_VIEW,
                    protected: Iterable[str] = (), max_bytes: int = MAX_BYTES) -> dict:
    """Move ``path``, as the process of ``view`` sees it, into ``folder``;
    returns the sidecar's content."""
    if not isinstance(path, str):
        raise ResponseError(f"path must be an absolute path, not {path!r}")
    parent, name = split(path)
    where = _where(view)
    root = view.open_root()
    try:
        folder_fd = open_in(root, parent, os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ResponseError(f"{path} does not exist{where} (removed already?)") from None
        raise ResponseError(f"cannot look at {path}{where}: {e.strerror}") from None
    finally:
        if root is not None:
            os.close(root)
    try:
        return _quarantine(folder_fd, name, path, view, folder, command, protected, max_bytes)
    finally:
        os.close(folder_fd)


def _where(view: View) -> str:
    return f" in the root of {view.how}" if view.pid else ""


def _quarantine(at: int, name: str, path: str, view: View, folder: Path, command: str,
                protected: Iterable[str], max_bytes: int) -> dict:
    """``name`` in the folder ``at`` (a descriptor in the process's view)."""
    where = _where(view)
    try:
        st = os.stat(name, dir_fd=at, follow_symlinks=False)
    except FileNotFoundError:
        raise ResponseError(f"{path} does not exist{where} (removed already?)") from None
    except OSError as e:
        raise ResponseError(f"cannot look at {path}{where}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"refused: {path} is a symbolic link to {os.readlink(name, dir_fd=at)}{where}; "
                      "quarantine the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"refused: {path} is not a regular file{where}")
    # By identity, not name: a hard link or another root's name for the same file is the same file.
    if (st.st_dev, st.st_ino) in _identities({*protected, *protected_files()}):
        raise Refused(f"refused: {path} is an executable the agent or the host needs to run")
    if st.st_size > max_bytes:
        raise ResponseError(f"{path} is {st.st_size} bytes, more than the {max_bytes} a quarantine takes")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    incoming = folder / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    try:
        _move(at, name, st, incoming)
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
        raise ResponseError(f"cannot quarantine {path}{where}: {e.strerror}") from None
    sidecar = {
        "original": path, "sha256": digest, "size": st.st_size, "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime, "ctime": st.st_ctime,
        "quarantined": time.time(), "command": command, "path": str(target),
    }
    if view.pid:
        sidecar["view"] = describe(view)
    write_json(target.with_name(target.name + ".json"), sidecar)
    return sidecar


def _move(at: int, name: str, st: os.stat_result, target: Path) -> None:
    """Move the file ``st`` describes; ResponseError if ``name`` became
    another file since (it is put back, or left)."""
    try:
        os.rename(name, target, src_dir_fd=at)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    else:
        moved = os.stat(target)
        if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
            os.rename(target, name, dst_dir_fd=at)
            raise ResponseError(f"{name} was replaced while being quarantined; left in place")
        return
    # Another filesystem or mount (/tmp is often tmpfs; a container's root
    # is its own mount): copy, make it durable, then remove.
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
    with open(src, "rb") as f, open(target, "xb") as dst:
        now = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise ResponseError(f"{name} was replaced while being quarantined; left in place")
        while chunk := f.read(_CHUNK):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    now = os.stat(name, dir_fd=at, follow_symlinks=False)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise ResponseError(f"{name} was replaced while being quarantined; a copy of the first is kept")
    os.unlink(name, dir_fd=at)
