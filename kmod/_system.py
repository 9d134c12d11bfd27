"""What the sensor needs from the machine: root, BTF, a cgroup v2 mount and
tracefs.  Each check fails with a message that says what is missing."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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
