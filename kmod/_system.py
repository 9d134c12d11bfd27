"""What the sensor needs from the machine: root, BTF, a cgroup v2 mount and
tracefs.  Each check fails with a message that says what is missing.  And
inotify, for the policy watcher."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

from ._errors import KernelError, PrivilegeError

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
# Where we mount cgroup2 ourselves when the machine has no cgroup2 mount.
OWN_CGROUP2 = Path("/run/sentinel-immune/cgroup2")
TRACEFS = Path("/sys/kernel/tracing")
# libbpf prefers this one when it exists (debugfs mounted).
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "the kernel sensor needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): "
            "run it as root")


def require_btf() -> None:
    if not BTF_PATH.exists():
        raise KernelError(
            f"{BTF_PATH} is missing: this kernel was built without BTF "
            "(CONFIG_DEBUG_INFO_BTF=y), which the CO-RE programs need")


def mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, fstype) for every line of /proc/self/mounts."""
    out = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            source, target, fstype = line.split()[:3]
            out.append((_unescape(source), _unescape(target), fstype))
    return out


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mount(source: str, target: Path, fstype: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"cannot mount {fstype} on {target}: {os.strerror(err)}")


def cgroup2_root() -> Path:
    """The cgroup v2 mount point, mounting cgroup2 if the machine has none.

    Hybrid layouts put it at /sys/fs/cgroup/unified, pure v2 at
    /sys/fs/cgroup: read it from /proc/mounts rather than guessing."""
    for _, target, fstype in mounts():
        if fstype == "cgroup2":
            return Path(target)
    require_root()
    _mount("cgroup2", OWN_CGROUP2, "cgroup2")
    return OWN_CGROUP2


def ensure_tracefs() -> None:
    """libbpf finds tracepoint ids in tracefs; mount it if nobody has."""
    for base in (DEBUGFS_TRACING, TRACEFS):
        if (base / "events").is_dir():
            return
    if DEBUGFS_TRACING.exists():
        raise KernelError(f"{DEBUGFS_TRACING} exists but has no events/: is tracefs broken?")
    _mount("tracefs", TRACEFS, "tracefs")


# inotify(7): what the policy watcher needs to learn that a file changed
# without waking up to look.
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name


class Inotify:
    """An inotify descriptor (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self._fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")

    def fileno(self) -> int:
        return self._fd

    def watch(self, path: str | os.PathLike, mask: int) -> int:
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        return wd

    def read(self) -> list[tuple[int, int, str]]:
        """(watch, mask, name) of what is queued; [] if nothing is."""
        out = []
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return out
            at = 0
            while at + _EVENT.size <= len(buf):
                wd, mask, _, length = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size:at + _EVENT.size + length].split(b"\0", 1)[0]
                out.append((wd, mask, os.fsdecode(name)))
                at += _EVENT.size + length

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
