"""File changes an open does not show (kmod/bpf/files.bpf.h): the policy's
``file`` rules compiled into the kernel's filters, and its records decoded
into ``wire.File``.

The kernel's filter is a superset, exact globs are matched here: an absolute
path by the literal prefix of a rule's glob (``file_prefixes``), any path by
its last component when the rule's glob ends in a literal name after a
wildcard (``file_names``: ``/home/*/.bash_history``), a relative path or an
fd by the directories above it that the rules name (``file_dirs``).  Two
kinds of call are always reported, whatever the policy: a chmod that sets
the set-user-ID or set-group-ID bit, and a setxattr of
``security.capability`` (file capabilities)."""

from __future__ import annotations

import os
import posixpath
import struct

from wire import File

from ._decode import _HDR, _PATHBUF, NAME_LEN, _cstr, _id, _join
from ._libbpf import map_delete, map_keys, map_lookup, map_update
from ._policy import DIR_BITS, FILE_OPS, HEAD_BITS, Policy, Rule, bitmap, has_wildcard, literal_prefix

K_FILE = 9  # kmod/bpf/sensor.h
W_RULE, W_SETID, W_CAP = 1, 2, 4
FP_NONE, FP_TEXT, FP_DIR, FP_FILE = range(4)
F_PATH_TRUNC = 2
PATH_LEN = 256

SETID_BITS_RULE = Rule(name="file-setid-bits", hook="file", action="audit",
                       description="a chmod setting the set-user-ID or set-group-ID bit (always reported)")
CAPABILITY_RULE = Rule(name="file-capability", hook="file", action="audit",
                       description="a setxattr of security.capability: file capabilities (always reported)")

# struct file_path, struct file_rec
_PATH = struct.Struct(f"<BB6x{_PATHBUF.size}s{PATH_LEN}s")
_FILE = struct.Struct(_HDR + f"iBBHIII4x{NAME_LEN}s")
_PATH_OFF = _FILE.size
_SOURCE_OFF = _PATH_OFF + _PATH.size
_DIR_OFF = 8  # the pathbuf within struct file_path


def op_bits(rule: Rule) -> int:
    """The kernel's mask of the ops a rule applies to (1 << enum file_op)."""
    return sum(1 << (FILE_OPS.index(op) + 1) for op in (rule.ops or FILE_OPS))


def _by_name(pattern: str) -> str | None:
    """The last component, when the kernel should find a path by it: a
    literal name after a wildcard in a directory (``/home/*/.bash_history``,
    ``/**/.zsh_history``), whose literal prefix alone would send far more."""
    head, _, name = pattern.rpartition("/")
    if has_wildcard(name) or not has_wildcard(head) or not name:
        return None
    return name


class FileFilters:
    """What the kernel needs of a policy's file rules: literal prefix ->
    ops, last component -> ops, directory -> (ops for files directly in
    it, ops for files at any depth below it)."""

    def __init__(self, policy: Policy):
        own: dict[bytes, int] = {}
        self.names: dict[str, int] = {}
        self.dirs: dict[str, tuple[int, int]] = {}
        for r in policy.rules:
            if r.hook != "file":
                continue
            bits = op_bits(r)
            for p in r.paths:
                name = _by_name(p)
                if name is not None:
                    self.names[name] = self.names.get(name, 0) | bits
                    continue
                prefix = literal_prefix(p).encode() if has_wildcard(p) else p.encode() + b"\0"
                own[prefix] = own.get(prefix, 0) | bits
                base = literal_prefix(p) if has_wildcard(p) else p
                directory = base[:base.rindex("/")] or "/"
                below = "/" in p[len(base):] or "**" in p[len(base):]
                direct, deep = self.dirs.get(directory, (0, 0))
                self.dirs[directory] = (direct | bits, deep | (bits if below else 0))
        # The kernel finds only the longest prefix a path has: each carries
        # the ops of the shorter ones it extends.
        self.prefixes = {k: v | _covering(k, own) for k, v in own.items()}

    def heads(self) -> bytes | None:
        """The kernel's first check on an absolute path, as Policy.open_heads;
        None when a prefix is shorter than 8 bytes (every path goes to the trie)."""
        if any(len(p) < 8 for p in self.prefixes):
            return None
        return bitmap((int.from_bytes(p[:8], "little") for p in self.prefixes), HEAD_BITS)


def _covering(key: bytes, own: dict[bytes, int]) -> int:
    bits = 0
    for p, v in own.items():
        if not p.endswith(b"\0") and key.startswith(p):
            bits |= v
    return bits


_U32 = struct.Struct("<I")
_DIR_KEY = struct.Struct("<QI4x")  # struct dir_key
_CONF = struct.Struct("<IIII")  # struct file_conf


def dir_key(path: str) -> bytes | None:
    """A directory's watched-dirs key (inode, device as the kernel encodes it);
    None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _DIR_KEY.pack(st.st_ino, os.major(st.st_dev) << 20 | os.minor(st.st_dev))


def install(bpf, policy: Policy) -> None:
    """Bring the kernel's file filters to ``policy``: add first, then count,
    then delete what is gone (a call in between meets a superset)."""
    f = FileFilters(policy)
    prefixes = {_U32.pack(len(k) * 8) + k.ljust(PATH_LEN, b"\0"): _U32.pack(v)
                for k, v in f.prefixes.items()}
    names = {n.encode()[:NAME_LEN - 1].ljust(NAME_LEN, b"\0"): _U32.pack(v) for n, v in f.names.items()}
    dirs: dict[bytes, tuple[int, int]] = {}
    for path, (direct, below) in f.dirs.items():
        key = dir_key(path)
        if key is not None:  # one directory by two names: both rules' ops
            was = dirs.get(key, (0, 0))
            dirs[key] = (was[0] | direct, was[1] | below)
    dir_values = {k: struct.pack("<II", *v) for k, v in dirs.items()}
    filter_fd = bpf.map_fd("file_dir_filter")
    inodes = [_DIR_KEY.unpack(k)[0] for k in dirs]
    stale = []
    for name, entries, key_size in (("file_prefixes", prefixes, 4 + PATH_LEN),
                                     ("file_names", names, NAME_LEN),
                                     ("file_dirs", dir_values, _DIR_KEY.size)):
        fd = bpf.map_fd(name)
        old = set(map_keys(fd, key_size))
        stale += [(fd, key) for key in old - set(entries)]
        if name == "file_dirs":  # the union of both filters until the old ones are gone
            map_update(filter_fd, _U32.pack(0), bitmap([*inodes, *(_DIR_KEY.unpack(k)[0] for k in old)],
                                                       DIR_BITS))
        for key, value in entries.items():
            map_update(fd, key, value)
    heads = f.heads()
    conf = _CONF.pack(len(prefixes), len(names), len(dirs), heads is not None)
    if heads is not None:  # the union of both until the old prefixes are gone
        old = map_lookup(bpf.map_fd("file_heads"), _U32.pack(0), len(heads))
        map_update(bpf.map_fd("file_heads"), _U32.pack(0), bytes(a | b for a, b in zip(old, heads)))
    map_update(bpf.map_fd("file_settings"), _U32.pack(0), conf)
    for fd, key in stale:
        map_delete(fd, key)
    map_update(filter_fd, _U32.pack(0), bitmap(inodes, DIR_BITS))
    if heads is not None:
        map_update(bpf.map_fd("file_heads"), _U32.pack(0), heads)


def _path(rec, at: int, truncated: bool) -> tuple[str, bool]:
    """(path, is_absolute_text) of a struct file_path."""
    how, _, _, text = _PATH.unpack_from(rec, at)
    text = _cstr(text)
    if how == FP_TEXT:
        return text, text.startswith("/")
    if how == FP_DIR:
        return posixpath.normpath(f"{_join(rec, at + _DIR_OFF, truncated)}/{text}"), True
    if how == FP_FILE:
        return _join(rec, at + _DIR_OFF, truncated), True
    return "", False


def decode_file(decoder, rec, at) -> File | None:
    """A K_FILE record as a ``wire.File``; None if the kernel's filter let it
    through but no rule's glob (or op) matches."""
    (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
     result, op_code, why, _, mode, owner, group, xattr) = _FILE.unpack_from(rec, at)
    op = FILE_OPS[op_code - 1] if 1 <= op_code <= len(FILE_OPS) else str(op_code)
    truncated = bool(flags & F_PATH_TRUNC)
    path, _ = _path(rec, at + _PATH_OFF, truncated)
    source, source_is_path = _path(rec, at + _SOURCE_OFF, truncated)
    r = None
    if why & W_RULE:
        # a symlink's target is text: a rule names it only if it is an absolute path
        r = decoder._policy(gen).match_file(op, path, source if source_is_path else "")
    if r is None:
        r = SETID_BITS_RULE if why & W_SETID else CAPABILITY_RULE if why & W_CAP else None
    if r is None:
        return None
    ev = File(time=ts + decoder._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid, gid=gid,
              comm=decoder._str(comm), cgroup=cgroup, op=op, path=path, source=source,
              result=result, verdict="audit", rule=r.name)
    if op in ("chmod", "mknod"):
        ev.mode = mode & 0xFFFF
    elif op == "chown":
        ev.owner, ev.group = _id(owner), _id(group)
    elif op in ("setxattr", "removexattr"):
        ev.xattr = _cstr(xattr)
    ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
    return ev


def file_what(ev: File) -> str:
    """The verdict line's words for a file change, e.g. ``chmod /x 4755``,
    ``rename /a -> /b``, ``symlink /root/.bash_history -> /dev/null``."""
    if ev.op == "rename":
        return f"rename {ev.source} -> {ev.path}"
    if ev.op in ("link", "symlink"):
        return f"{ev.op} {ev.path} -> {ev.source}"
    if ev.op == "chmod":
        return f"chmod {ev.path} {ev.mode & 0o7777:o}"
    if ev.op == "mknod":
        return f"mknod {ev.path} {ev.mode:o}"
    if ev.op == "chown":
        return f"chown {ev.path} {ev.owner}:{ev.group}"
    if ev.xattr:
        return f"{ev.op} {ev.path} {ev.xattr}"
    return f"{ev.op} {ev.path}"
