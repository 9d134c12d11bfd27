"""A thin ctypes binding of libbpf.so.1: open and load an object, reach its
maps and programs, attach them.

Every attachment is a bpf_link or a perf event owned by a file descriptor of
this process, never a legacy BPF_PROG_ATTACH: when the process dies, even by
SIGKILL, the kernel closes the descriptors and the programs detach."""

from __future__ import annotations

import collections
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ._errors import BuildError, KernelError

_LIBRARY = "libbpf.so.1"

try:
    _lib = ctypes.CDLL(_LIBRARY, use_errno=True)
except OSError as e:
    _lib = None
    _load_error = e

_c = ctypes
_p = ctypes.c_void_p


def _bind(name: str, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


if _lib is not None:
    _open_file = _bind("bpf_object__open_file", _p, _c.c_char_p, _p)
    _obj_load = _bind("bpf_object__load", _c.c_int, _p)
    _obj_close = _bind("bpf_object__close", None, _p)
    _find_map = _bind("bpf_object__find_map_by_name", _p, _p, _c.c_char_p)
    _next_prog = _bind("bpf_object__next_program", _p, _p, _p)
    _prog_name = _bind("bpf_program__name", _c.c_char_p, _p)
    _prog_fd = _bind("bpf_program__fd", _c.c_int, _p)
    _prog_type = _bind("bpf_program__type", _c.c_int, _p)
    _prog_attach = _bind("bpf_program__attach", _p, _p)
    _prog_attach_cgroup = _bind("bpf_program__attach_cgroup", _p, _p, _c.c_int)
    _prog_attach_iter = _bind("bpf_program__attach_iter", _p, _p, _p)
    _prog_section = _bind("bpf_program__section_name", _c.c_char_p, _p)
    _prog_autoload = _bind("bpf_program__autoload", _c.c_bool, _p)
    _prog_set_autoload = _bind("bpf_program__set_autoload", _c.c_int, _p, _c.c_bool)
    _vmlinux_btf = _bind("btf__load_vmlinux_btf", _p)
    _btf_find = _bind("btf__find_by_name_kind", _c.c_int, _p, _c.c_char_p, _c.c_uint32)
    _btf_free = _bind("btf__free", None, _p)
    _iter_create = _bind("bpf_iter_create", _c.c_int, _c.c_int)
    _link_destroy = _bind("bpf_link__destroy", _c.c_int, _p)
    _link_fd = _bind("bpf_link__fd", _c.c_int, _p)
    _map_fd = _bind("bpf_map__fd", _c.c_int, _p)
    _map_set_max = _bind("bpf_map__set_max_entries", _c.c_int, _p, _c.c_uint32)
    _update = _bind("bpf_map_update_elem", _c.c_int, _c.c_int, _p, _p, _c.c_uint64)
    _lookup = _bind("bpf_map_lookup_elem", _c.c_int, _c.c_int, _p, _p)
    _delete = _bind("bpf_map_delete_elem", _c.c_int, _c.c_int, _p)
    _next_key = _bind("bpf_map_get_next_key", _c.c_int, _c.c_int, _p, _p)
    _get_info = _bind("bpf_obj_get_info_by_fd", _c.c_int, _c.c_int, _p, _c.POINTER(_c.c_uint32))
    _prog_by_id = _bind("bpf_prog_get_fd_by_id", _c.c_int, _c.c_uint32)
    _link_by_id = _bind("bpf_link_get_fd_by_id", _c.c_int, _c.c_uint32)
    _set_print = _bind("libbpf_set_print", _p, _p)
    _vsnprintf = ctypes.CDLL(None).vsnprintf
    _vsnprintf.restype = _c.c_int
    _vsnprintf.argtypes = (_c.c_char_p, _c.c_size_t, _c.c_char_p, _p)

BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BTF_KIND_TYPEDEF = 8

# libbpf logs through a printf-style callback with a va_list; vsnprintf turns
# it into text.  The last lines are kept to explain a failed load.
_log: collections.deque[str] = collections.deque(maxlen=400)
_log_lock = threading.Lock()
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _on_print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(1024)
    _vsnprintf(buf, len(buf), fmt, args)
    with _log_lock:
        _log.append(buf.value.decode(errors="replace").rstrip("\n"))
    return 0


_print_cb = _PRINT_FN(_on_print)
if _lib is not None:
    _set_print(ctypes.cast(_print_cb, ctypes.c_void_p))


def _log_tail(lines: int = 60) -> str:
    with _log_lock:
        return "\n".join(list(_log)[-lines:])


def _require() -> None:
    if _lib is None:
        raise BuildError(f"cannot load {_LIBRARY} ({_load_error}): install the Debian "
                         "package libbpf1 (apt-get install libbpf1, or libbpf-dev)")


def _errno_error(what: str, err: int) -> KernelError:
    err = abs(err)
    tail = _log_tail()
    return KernelError(f"{what}: {os.strerror(err)}" + (f"\nlibbpf said:\n{tail}" if tail else ""))


def _is_iterator(prog) -> bool:
    return (_prog_section(prog) or b"").startswith(b"iter/")


def kernel_has_btf_tracepoint(name: str) -> bool:
    """Does the running kernel's BTF know the raw tracepoint ``name``?  A
    tp_btf program for one it does not know fails the whole object's load."""
    _require()
    btf = _vmlinux_btf()
    if not btf:
        raise _errno_error("cannot read the kernel's BTF", ctypes.get_errno())
    try:
        return _btf_find(btf, f"btf_trace_{name}".encode(), BTF_KIND_TYPEDEF) > 0
    finally:
        _btf_free(btf)


class Link:
    """One attachment; ``destroy()`` detaches it (so does process death)."""

    def __init__(self, ptr: int, program: str):
        self._ptr = ptr
        self.program = program

    @property
    def fd(self) -> int:
        return _link_fd(self._ptr)

    def destroy(self) -> None:
        if self._ptr:
            _link_destroy(self._ptr)
            self._ptr = None


class BpfObject:
    """A BPF object file opened with libbpf; ``load()`` puts it in the kernel."""

    def __init__(self, path: str | os.PathLike):
        _require()
        with _log_lock:
            _log.clear()
        ptr = _open_file(os.fsencode(path), None)
        if not ptr:
            raise _errno_error(f"cannot open BPF object {path}", ctypes.get_errno())
        self._ptr = ptr
        self._links: list[Link] = []

    def _map(self, name: str) -> int:
        m = _find_map(self._ptr, name.encode())
        if not m:
            raise KernelError(f"BPF object has no map {name!r}")
        return m

    def set_max_entries(self, map_name: str, n: int) -> None:
        err = _map_set_max(self._map(map_name), n)
        if err:
            raise _errno_error(f"cannot size map {map_name} to {n}", err)

    def load(self) -> None:
        err = _obj_load(self._ptr)
        if err:
            raise _errno_error("the kernel refused the BPF programs", err)

    def map_fd(self, name: str) -> int:
        fd = _map_fd(self._map(name))
        if fd < 0:
            raise KernelError(f"map {name} is not loaded")
        return fd

    def programs(self, all: bool = False) -> list[tuple[str, int]]:
        """(name, handle) of every program in the object that is loaded (or
        will be), or of every one with ``all``."""
        out, prog = [], None
        while True:
            prog = _next_prog(self._ptr, prog)
            if not prog:
                return out
            if all or _prog_autoload(prog):
                out.append((_prog_name(prog).decode(), prog))

    def sections(self) -> dict[str, str]:
        """Every program's name -> its section (what it attaches to)."""
        return {name: (_prog_section(p) or b"").decode() for name, p in self.programs(all=True)}

    def disable(self, name: str) -> None:
        """Leave program ``name`` out of the load (before ``load``)."""
        prog = next((p for n, p in self.programs(all=True) if n == name), None)
        if prog is None:
            raise KernelError(f"BPF object has no program {name!r}")
        err = _prog_set_autoload(prog, False)
        if err:
            raise _errno_error(f"cannot leave {name} out", err)

    def program_ids(self) -> list[int]:
        return [prog_info(_prog_fd(p))[0] for _, p in self.programs()]

    def attach_tracing(self) -> None:
        """Attach every tracepoint and raw tracepoint program by its section
        (iterators are run, not attached: ``run_iterator``)."""
        for name, prog in self.programs():
            if _prog_type(prog) == BPF_PROG_TYPE_CGROUP_SOCK_ADDR or _is_iterator(prog):
                continue
            link = _prog_attach(prog)
            if not link:
                raise _errno_error(f"cannot attach {name}", ctypes.get_errno())
            self._links.append(Link(link, name))

    def run_iterator(self, name: str) -> bytes:
        """Run an iterator program over everything it visits, once; returns
        what it wrote.  Socket iterators visit the calling thread's network
        namespace."""
        prog = next((p for n, p in self.programs() if n == name), None)
        if prog is None or not _is_iterator(prog):
            raise KernelError(f"BPF object has no iterator {name!r}")
        link = _prog_attach_iter(prog, None)
        if not link:
            raise _errno_error(f"cannot attach iterator {name}", ctypes.get_errno())
        try:
            fd = _iter_create(_link_fd(link))
            if fd < 0:
                raise _errno_error(f"cannot start iterator {name}", -fd)
            out = []
            try:
                while chunk := os.read(fd, 1 << 16):
                    out.append(chunk)
            finally:
                os.close(fd)
            return b"".join(out)
        finally:
            _link_destroy(link)

    def attach_cgroup(self, cgroup_fd: int) -> None:
        """Attach the cgroup sock_addr programs to one cgroup through bpf_link."""
        for name, prog in self.programs():
            if _prog_type(prog) != BPF_PROG_TYPE_CGROUP_SOCK_ADDR:
                continue
            link = _prog_attach_cgroup(prog, cgroup_fd)
            if not link:
                raise _errno_error(f"cannot attach {name} to its cgroup", ctypes.get_errno())
            self._links.append(Link(link, name))

    def link_ids(self) -> list[int]:
        return [link_info(link.fd)[0] for link in self._links]

    def close(self) -> None:
        # Each detach waits for an RCU grace period in the kernel (~60 ms
        # here), and libbpf releases the GIL meanwhile: one after the other,
        # 62 links took 3.8 s to close; side by side, the waits overlap.
        if self._links:
            with ThreadPoolExecutor(max_workers=min(32, len(self._links)), thread_name_prefix="bpf-detach") as pool:
                list(pool.map(Link.destroy, reversed(self._links)))
        self._links.clear()
        if self._ptr:
            _obj_close(self._ptr)
            self._ptr = None


# ---- maps ------------------------------------------------------------------


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    if _update(fd, key, value, flags):
        raise _errno_error("BPF map update failed", ctypes.get_errno())


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    buf = ctypes.create_string_buffer(value_size)
    if _lookup(fd, key, buf):
        err = ctypes.get_errno()
        if err == 2:  # ENOENT
            return None
        raise _errno_error("BPF map lookup failed", err)
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    if _delete(fd, key):
        err = ctypes.get_errno()
        if err == 2:
            return False
        raise _errno_error("BPF map delete failed", err)
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys, cur = [], None
    nxt = ctypes.create_string_buffer(key_size)
    while _next_key(fd, cur, nxt) == 0:
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)
    return keys


# ---- object ids: what the kernel still holds ----------------------------------


class _ProgInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("_rest", ctypes.c_uint8 * 224)]


class _LinkInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 84)]


def _info(fd: int, info: ctypes.Structure) -> ctypes.Structure:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if _get_info(fd, ctypes.byref(info), ctypes.byref(size)):
        raise _errno_error("cannot read BPF object info", ctypes.get_errno())
    return info


def prog_info(fd: int) -> tuple[int, int]:
    """(id, type) of a loaded program."""
    info = _info(fd, _ProgInfo())
    return info.id, info.type


def link_info(fd: int) -> tuple[int, int]:
    """(id, program id) of a link."""
    info = _info(fd, _LinkInfo())
    return info.id, info.prog_id


def prog_exists(prog_id: int) -> bool:
    """Is a program with this id still loaded anywhere in the kernel?"""
    _require()
    fd = _prog_by_id(prog_id)
    if fd >= 0:
        os.close(fd)
        return True
    return False


def link_exists(link_id: int) -> bool:
    _require()
    fd = _link_by_id(link_id)
    if fd >= 0:
        os.close(fd)
        return True
    return False
