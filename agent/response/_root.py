"""Opening a path as a process sees it, inside its own root.

Paths in events are the process's own: the sensor reads them from the
task's root, so a container's /tmp/x is ``/tmp/x``, which on the host is
another file or none.  A response that acts on such a path opens it under
``/proc/PID/root`` (that process's root directory, in its mount namespace)
with openat2's ``RESOLVE_IN_ROOT``: every symlink and ``..`` is resolved as
if that root were ``/``, so no name inside can lead out of it onto the
host's files."""

from __future__ import annotations

import ctypes
import os

from ._errors import ResponseError

RESOLVE_NO_MAGICLINKS = 0x02
"""No /proc/PID/fd/N-style links: they jump anywhere, root or not."""
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437  # the same number on every architecture (Linux 5.6)
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) (Python 3.11 has no binding); raises OSError."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def open_root(pid: int) -> int:
    """An O_PATH descriptor of ``pid``'s root directory; OSError if it is gone."""
    return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_in(root: int | None, path: str, flags: int = os.O_PATH) -> int:
    """``path`` opened as the process whose root is ``root`` sees it (None:
    the agent's own view, a plain open).  Raises OSError."""
    if root is None:
        return os.open(path, flags | os.O_CLOEXEC)
    return openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def runs(pid: int, exe: str) -> bool:
    """Whether ``pid`` runs the file its own root names ``exe`` (False if it
    is gone).  The kernel's readlink of /proc/PID/exe is relative to the
    reader's root, so for a chroot it names the file by the host's path;
    the file's identity is compared instead."""
    try:
        running = os.stat(f"/proc/{pid}/exe")
        root = open_root(pid)
    except OSError:
        return False
    try:
        fd = open_in(root, exe)
    except OSError:
        return False
    finally:
        os.close(root)
    try:
        named = os.fstat(fd)
    finally:
        os.close(fd)
    return (named.st_dev, named.st_ino) == (running.st_dev, running.st_ino)


def split(path: str) -> tuple[str, str]:
    """(parent, name) of an absolute path naming a file, not a folder."""
    parent, _, name = path.rpartition("/")
    if not path.startswith("/") or name in ("", ".", ".."):
        raise ResponseError(f"path must be an absolute path to a file, not {path!r}")
    return parent or "/", name
