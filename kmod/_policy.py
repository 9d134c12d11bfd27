"""The sensor policy: rules ``{name, hook, match, action}`` read from TOML,
matched in userspace and compiled into what the kernel side needs (BPF map
entries, fanotify marks).  Plain objects: no kernel needed to test them.

The file format is documented in ``default_policy.toml``."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import signal
import struct
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ._containers import RUNTIMES, ContainerIdentity, Containers, machine_containers
from ._errors import PolicyError

DEFAULT_POLICY = Path(__file__).parent / "default_policy.toml"

HOOKS = ("exec", "open", "connect", "bind", "setid", "fork", "file")
PROCESS_HOOKS = ("ptrace", "signal", "bpf", "mount")  # kmod/_procs.py
HOOKS += PROCESS_HOOKS
AUDIT_ONLY = {"signal": "a signal cannot be refused without an LSM hook",
              "mount": "a mount cannot be refused without an LSM hook"}
PTRACE_TARGETS = ("protected", "any")
# enum bpf_prog_type, without its BPF_PROG_TYPE_ prefix, lower case
BPF_PROG_TYPES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops",
    "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local",
    "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable",
    "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter",
)
ACTIONS = ("block", "audit", "allow")
ALLOWING = ("exec", "open")
"""The hooks an ``allow`` rule may be for: decided in userspace, first
match wins, so an allow rule lets through what a later rule would refuse
(a workload's own programs before its ``/**`` block: issue 17's proposals)."""
SETID_CALLS = ("setuid", "setreuid", "setresuid", "setfsuid",
               "setgid", "setregid", "setresgid", "setfsgid")
PROTOCOLS = {"tcp": 6, "udp": 17}
FILE_OPS = ("rename", "unlink", "rmdir", "link", "symlink", "mknod", "chmod", "chown",
            "setxattr", "removexattr")
"""What a ``file`` rule's match.op names; the kernel's enum file_op is the index + 1."""
CONTAINER_KEYS = ("container_id", "container_name", "container_image", "container_runtime")
"""Keys of ``match`` that select containers."""
WORKLOAD_KEYS = ("cgroup", *CONTAINER_KEYS)
"""Keys of ``match`` that select a workload: exec and open rules (decided in
userspace) and connect and bind rules (decided in the kernel by the tag of
the caller's cgroup, kmod/_workloads.py)."""
SELECTING = ("exec", "open", "connect", "bind")
_MAX_CGROUP_PATH = 4095
_MATCH_KEYS = {
    "exec": {"path", "sha256", *WORKLOAD_KEYS},
    "open": {"path", *WORKLOAD_KEYS},
    "connect": {"address", "port", "protocol", *WORKLOAD_KEYS},
    "bind": {"address", "port", "protocol", *WORKLOAD_KEYS},
    "setid": {"call", "id"},
    "fork": set(),
    "file": {"path", "op"},
}
_MATCH_KEYS["exec"] |= {"fileless"}
_MATCH_KEYS.update(ptrace={"target"}, signal={"signal"}, bpf={"prog_type"}, mount={"path", "fstype"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PORTS_PER_RULE = 1024
UNHASHED = ("allow", "block")
_MAX_HASH_MB = 65536
# Kernel constants, mirrored from kmod/bpf/sensor.h.
PATH_LEN = 256
HEAD_BITS = 16
HEAD_MULT = 0x9E3779B97F4A7C15
VERDICT_CODE = {"audit": 1, "block": 2}
HOOK_CODE = {"connect": 1, "bind": 2}


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` within one path component, ``**`` across, ``[..]`` classes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise PolicyError(f"glob {pattern!r}: '[' without a closing ']'")
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\").replace("[", "\\[") + "]")  # "[[]": a literal [
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard."""
    m = re.search(r"[*?\[]", pattern)
    return pattern if m is None else pattern[:m.start()]


D_NAMES, D_PARENT, D_ANY = 1, 2, 3  # kmod/bpf/sensor.h
DIR_BITS = 12


def has_wildcard(pattern: str) -> bool:
    return literal_prefix(pattern) != pattern


def bitmap(values: Iterable[int], bits: int) -> bytes:
    """A kernel filter (``struct heads``, ``struct dir_filter``): 2**bits bits
    as little-endian u64 words, with each value's bit set, hashed as the BPF
    side does (Fibonacci hashing of a u64)."""
    words = [0] * (1 << (bits - 6))
    for v in values:
        bit = _filter_bit(v, bits)
        words[bit >> 6] |= 1 << (bit & 63)
    return struct.pack(f"<{len(words)}Q", *words)


def _filter_bit(value: int, bits: int) -> int:
    return ((value * HEAD_MULT) & (2**64 - 1)) >> (64 - bits)


def head_bit(head: bytes) -> int:
    """The open filter's bit for a path's first 8 bytes (the kernel reads
    them as a little-endian u64)."""
    return _filter_bit(int.from_bytes(head, "little"), HEAD_BITS)


@dataclass(frozen=True)
class Rule:
    name: str
    hook: str
    action: str
    description: str = ""
    paths: tuple[str, ...] = ()
    sha256: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ports: tuple[int, ...] = ()
    protocol: str = ""
    calls: frozenset[str] = frozenset()
    ops: frozenset[str] = frozenset()
    """file rules: the calls they apply to (empty: all of FILE_OPS)."""
    ids: frozenset[int] = frozenset()
    containers: ContainerSelector | None = None
    """None: the rule applies on the host and in every container alike."""
    cgroups: tuple[str, ...] = ()
    """match.cgroup: cgroup v2 path globs; the rule applies to processes in
    a matching cgroup or below one.  Empty: in every cgroup."""
    target: str = ""
    """ptrace: "protected" (the agent and its family) or "any"."""
    signals: frozenset[int] = frozenset()
    prog_types: frozenset[str] = frozenset()
    fstypes: frozenset[str] = frozenset()
    fileless: bool = False
    """exec: the rule is for images with no name (memfd, deleted), decided in the kernel."""
    _regexes: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    _cgroup_regexes: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def match_path(self, path: str) -> bool:
        return any(r.match(path) for r in self._regexes)

    @property
    def selects(self) -> bool:
        """Does the rule apply to some workloads only?"""
        return self.containers is not None or bool(self.cgroups)

    @property
    def workload(self) -> tuple[tuple[str, ...], ContainerSelector | None]:
        """What the rule selects, as a key: rules that select alike share it."""
        return self.cgroups, self.containers

    def match_cgroup(self, path: str | None) -> bool:
        """Is a process in cgroup ``path`` (None: not known) in or below
        one of the rule's cgroups?  True for a rule without match.cgroup."""
        if not self._cgroup_regexes:
            return True
        return path is not None and any(r.match(p) for p in cgroup_lineage(path) for r in self._cgroup_regexes)

    def selects_caller(self, cgroup_path: Callable[[], str | None],
                       container: Callable[[], ContainerIdentity | None]) -> bool:
        """Does the rule apply to this caller?  The callables are asked only
        if the rule needs them."""
        if self._cgroup_regexes and not self.match_cgroup(cgroup_path()):
            return False
        return self.containers is None or self.containers.matches(container())


def cgroup_lineage(path: str) -> list[str]:
    """A cgroup's path and its ancestors' below the root, nearest first."""
    out = []
    while path and path != "/":
        out.append(path)
        path = path[:path.rindex("/")]
    return out


def cgroup_globs(value, where: str) -> tuple[str, ...]:
    """match.cgroup, checked: globs over cgroup v2 paths from the cgroup2
    mount (``/system.slice/x.service``, ``/kubepods.slice/**``)."""
    globs = _strings(value, f"{where}: match.cgroup")
    for g in globs:
        what = f"{where}: match.cgroup {g!r}"
        if "\0" in g:
            raise PolicyError(f"{what}: a cgroup path cannot hold a NUL")
        if g.startswith("/sys/fs/cgroup"):
            raise PolicyError(f"{what}: give the path from the cgroup2 mount "
                              f"({g[len('/sys/fs/cgroup'):] or '/'!r}), as /proc/PID/cgroup shows it")
        if not g.startswith("/"):
            raise PolicyError(f"{what}: must be absolute from the cgroup2 root, as /proc/PID/cgroup "
                              "shows it (/system.slice/NAME.service)")
        if g == "/" or g.strip("/*") == "":
            raise PolicyError(f"{what}: selects every process; leave match.cgroup out instead")
        if g.endswith("/") or "//" in g:
            raise PolicyError(f"{what}: an empty path component (a doubled or trailing '/')")
        if any(part in (".", "..") for part in g.split("/")):
            raise PolicyError(f"{what}: '.' and '..' are not cgroup names")
        if len(g.encode()) > _MAX_CGROUP_PATH:
            raise PolicyError(f"{what}: longer than a path can be ({_MAX_CGROUP_PATH} bytes)")
        try:
            glob_regex(g)
        except PolicyError as e:
            raise PolicyError(f"{where}: match.cgroup: {e}") from None
    return tuple(dict.fromkeys(globs))


def image_forms(image: str) -> tuple[str, ...]:
    """The ways people write one image: as the runtime recorded it, the
    short form (``vllm/vllm-openai:v1``, ``nginx``) and the fully qualified
    one (``docker.io/vllm/vllm-openai:v1``, ``docker.io/library/nginx``).
    Docker records what was typed, Kubernetes the qualified name."""
    short = image
    for prefix in ("docker.io/library/", "docker.io/"):
        if short.startswith(prefix):
            short = short[len(prefix):]
            break
    first, slash, _ = short.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return (image,)  # another registry: no other form
    full = "docker.io/" + ("" if slash else "library/") + short
    return tuple(dict.fromkeys((image, short, full)))


@dataclass(frozen=True)
class ContainerSelector:
    """Which containers a rule (or a scope) applies to: each key given must
    match (one of its globs), the process outside any container never does.
    Globs as for paths: ``*`` stays within a ``/``-separated component."""

    ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    runtimes: frozenset[str] = frozenset()
    _regexes: tuple[tuple[re.Pattern[str], ...], ...] = field(default=((), (), ()), repr=False, compare=False)

    @classmethod
    def of(cls, ids=(), names=(), images=(), runtimes=()) -> ContainerSelector:
        return cls(tuple(ids), tuple(names), tuple(images), frozenset(runtimes),
                   tuple(tuple(glob_regex(g) for g in globs) for globs in (ids, names, images)))

    def matches(self, c: ContainerIdentity | None) -> bool:
        if c is None:
            return False
        ids, names, images = self._regexes
        if ids and not any(r.match(c.id) for r in ids):
            return False
        if names and not (c.name and any(r.match(c.name) for r in names)):
            return False
        if images and not (c.image and any(r.match(form) for form in image_forms(c.image) for r in images)):
            return False
        return not self.runtimes or c.runtime in self.runtimes

    def __str__(self) -> str:
        return " ".join(f"{key}={','.join(sorted(v))}" for key, v in (
            ("id", self.ids), ("name", self.names), ("image", self.images), ("runtime", self.runtimes)) if v)


def container_selector(match: dict, where: str) -> ContainerSelector | None:
    """The container keys of a rule's ``match`` (or a scope's), checked."""
    given = {k: _strings(match[k], f"{where}: match.{k}") for k in CONTAINER_KEYS if k in match}
    if not given:
        return None
    for key, globs in given.items():
        for g in globs:
            if key == "container_runtime" and g not in RUNTIMES:
                raise PolicyError(f"{where}: match.container_runtime: {g!r} is not a runtime "
                                  f"(one of {', '.join(RUNTIMES)})")
            if key != "container_runtime":
                try:
                    glob_regex(g)
                except PolicyError as e:
                    raise PolicyError(f"{where}: match.{key}: {e}") from None
    return ContainerSelector.of(given.get("container_id", ()), given.get("container_name", ()),
                                given.get("container_image", ()), given.get("container_runtime", ()))


@dataclass(frozen=True)
class GuardSettings:
    """The ``[guard]`` table: how the exec guard treats a file whose SHA-256
    it does not know when a digest rule needs it."""

    unhashed: str = "allow"
    """``allow``: the digest rules are skipped for it (later rules still
    apply); ``block``: the exec is refused, as rule ``guard-unhashed``."""
    hash_max_mb: int = 64
    """Larger files are never hashed: decided by ``unhashed`` at once."""

    @property
    def hash_max_bytes(self) -> int:
        return self.hash_max_mb << 20


UNHASHED_RULE = Rule(name="guard-unhashed", hook="exec", action="block",
                     description="a digest rule needed the SHA-256 of a file that was not hashed "
                                 "(over [guard] hash_max_mb, or not hashed in time)")


def _guard(table: object, origin: str) -> GuardSettings:
    if not isinstance(table, dict):
        raise PolicyError(f"{origin}: 'guard' must be a table ([guard])")
    unknown = set(table) - {"unhashed", "hash_max_mb"}
    if unknown:
        raise PolicyError(f"{origin}: [guard]: unknown key(s) {', '.join(sorted(unknown))}")
    unhashed = table.get("unhashed", GuardSettings.unhashed)
    if unhashed not in UNHASHED:
        raise PolicyError(f"{origin}: [guard] unhashed must be allow or block (got {unhashed!r})")
    mb = table.get("hash_max_mb", GuardSettings.hash_max_mb)
    if not isinstance(mb, int) or isinstance(mb, bool) or not 1 <= mb <= _MAX_HASH_MB:
        raise PolicyError(f"{origin}: [guard] hash_max_mb must be a whole number of MiB "
                          f"from 1 to {_MAX_HASH_MB} (got {mb!r})")
    return GuardSettings(unhashed=unhashed, hash_max_mb=mb)


def _as_list(value, what: str) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    raise PolicyError(f"{what}: expected a value or a list, got {type(value).__name__}")


def _strings(value, what: str) -> list[str]:
    items = _as_list(value, what)
    for v in items:
        if not isinstance(v, str) or not v:
            raise PolicyError(f"{what}: expected non-empty strings, got {v!r}")
    return items


def _known(value, known: tuple[str, ...], what: str) -> frozenset[str]:
    names = _strings(value, what)
    bad = [n for n in names if n not in known]
    if bad:
        raise PolicyError(f"{what}: unknown {', '.join(bad)} (known: {', '.join(known)})")
    return frozenset(names)


def _ports(value, what: str) -> tuple[int, ...]:
    out: list[int] = []
    for v in _as_list(value, what):
        if isinstance(v, int) and not isinstance(v, bool):
            low = high = v
        elif isinstance(v, str) and re.fullmatch(r"\d+-\d+", v):
            low, high = (int(x) for x in v.split("-"))
        else:
            raise PolicyError(f"{what}: {v!r} is not a port or a 'low-high' range")
        if not 1 <= low <= high <= 65535:
            raise PolicyError(f"{what}: {v!r} is outside 1-65535 or reversed")
        out.extend(range(low, high + 1))
    if len(out) > _MAX_PORTS_PER_RULE:
        raise PolicyError(f"{what}: {len(out)} ports; at most {_MAX_PORTS_PER_RULE} per rule")
    return tuple(dict.fromkeys(out))


def _rule(table: object, index: int) -> Rule:
    where = f"rule #{index + 1}"
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: expected a table")
    unknown = set(table) - {"name", "hook", "action", "description", "match"}
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(f"{where}: 'name' must be 1-64 letters, digits or _.:- (got {name!r})")
    where = f"rule {name!r}"
    hook, action = table.get("hook"), table.get("action")
    if hook not in HOOKS:
        raise PolicyError(f"{where}: 'hook' must be one of {', '.join(HOOKS)} (got {hook!r})")
    if action not in ACTIONS:
        raise PolicyError(f"{where}: 'action' must be block, audit or allow (got {action!r})")
    if action == "allow" and hook not in ALLOWING:
        raise PolicyError(f"{where}: only exec and open rules can allow ({hook} is decided in the kernel, "
                          "where a rule can only audit or block)")
    if action == "block" and hook in ("setid", "fork"):
        raise PolicyError(f"{where}: {hook} can only be audited (no LSM hook to refuse it here)")
    if action == "block" and hook == "file":
        raise PolicyError(f"{where}: file rules can only audit: rename, unlink, link, symlink, mknod, "
                          "chmod, chown and *xattr have no refusal point here (BPF LSM programs do not "
                          "load on this kernel, and fanotify refuses only opens and execs)")
    if action == "block" and hook in AUDIT_ONLY:
        raise PolicyError(f"{where}: {hook} can only be audited ({AUDIT_ONLY[hook]})")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise PolicyError(f"{where}: 'description' must be a string")
    match = table.get("match", {})
    if not isinstance(match, dict):
        raise PolicyError(f"{where}: 'match' must be a table")
    selecting = sorted(set(match) & set(WORKLOAD_KEYS))
    if selecting and hook not in SELECTING:
        raise PolicyError(f"{where}: match.{selecting[0]}: only exec, open, connect and bind rules select "
                          f"workloads ({hook} has no selector; run an agent scoped to the workload instead, "
                          "--scope cgroup:PATH or container:NAME)")
    unknown = set(match) - _MATCH_KEYS[hook]
    if unknown:
        allowed = ", ".join(sorted(_MATCH_KEYS[hook])) or "none"
        raise PolicyError(f"{where}: {hook} rules do not match on {', '.join(sorted(unknown))} "
                          f"(allowed: {allowed})")

    kw: dict = {}
    if "path" in match:
        paths = _strings(match["path"], f"{where}: match.path")
        for p in paths:
            if not p.startswith("/"):
                raise PolicyError(f"{where}: path {p!r} must be absolute")
            if hook in ("open", "file") and len(literal_prefix(p).encode()) >= PATH_LEN:
                raise PolicyError(f"{where}: path {p!r} is longer than the kernel keeps")
            if hook == "open" and action == "block" and "/" in p[len(literal_prefix(p)):]:
                raise PolicyError(
                    f"{where}: open block path {p!r} has a wildcard before its last "
                    "component; fanotify watches single directories, so list them")
        kw["paths"] = tuple(paths)
        kw["_regexes"] = tuple(glob_regex(p) for p in paths)
    if "sha256" in match:
        digests = [d.lower() for d in _strings(match["sha256"], f"{where}: match.sha256")]
        for d in digests:
            if not _SHA256.fullmatch(d):
                raise PolicyError(f"{where}: {d!r} is not a SHA-256 hex digest")
        kw["sha256"] = frozenset(digests)
    kw.update(_process_match(hook, match, where))
    if kw.get("fileless") and set(match) != {"fileless"}:
        raise PolicyError(f"{where}: match.fileless is decided in the kernel, which knows no path, digest "
                          "or container: give it alone")
    if kw.get("fileless") and action == "allow":
        raise PolicyError(f"{where}: a fileless image cannot be allowed: the kernel decides it, and only audits "
                          "or kills it")
    if hook in ("exec", "open", "file") and not kw.get("paths") and not kw.get("sha256") and not kw.get("fileless"):
        need = "path or sha256" if hook == "exec" else "path"
        raise PolicyError(f"{where}: {hook} rules need match.{need}")
    if "address" in match:
        nets = []
        for a in _strings(match["address"], f"{where}: match.address"):
            try:
                nets.append(ipaddress.ip_network(a, strict=False))
            except ValueError as e:
                raise PolicyError(f"{where}: {e}") from None
        kw["networks"] = tuple(nets)
    if "port" in match:
        kw["ports"] = _ports(match["port"], f"{where}: match.port")
    if "protocol" in match:
        proto = match["protocol"]
        if proto not in PROTOCOLS:
            raise PolicyError(f"{where}: protocol must be tcp or udp (got {proto!r})")
        kw["protocol"] = proto
    if "call" in match:
        kw["calls"] = _known(match["call"], SETID_CALLS, f"{where}: match.call")
    if "op" in match:
        kw["ops"] = _known(match["op"], FILE_OPS, f"{where}: match.op")
    if "id" in match:
        ids = _as_list(match["id"], f"{where}: match.id")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids):
            raise PolicyError(f"{where}: match.id must be ids between 0 and 2^32-1")
        kw["ids"] = frozenset(ids)
    kw["containers"] = container_selector(match, where)
    if "cgroup" in match:
        kw["cgroups"] = cgroup_globs(match["cgroup"], where)
        kw["_cgroup_regexes"] = tuple(glob_regex(g) for g in kw["cgroups"])
    return Rule(name=name, hook=hook, action=action, description=description, **kw)


def _process_match(hook: str, match: dict, where: str) -> dict:
    """The match keys of the process hooks (kmod/_procs.py) and exec's fileless."""
    kw: dict = {}
    if "fileless" in match:
        if match["fileless"] is not True:
            raise PolicyError(f"{where}: match.fileless must be true")
        kw["fileless"] = True
    if hook == "ptrace":
        target = match.get("target", "protected")
        if target not in PTRACE_TARGETS:
            raise PolicyError(f"{where}: match.target must be protected or any (got {target!r})")
        kw["target"] = target
    if "signal" in match:
        signals = set()
        for v in _as_list(match["signal"], f"{where}: match.signal"):
            name = v.upper() if isinstance(v, str) else v
            if isinstance(name, str) and not name.startswith("SIG"):
                name = "SIG" + name
            try:
                signals.add(int(signal.Signals[name] if isinstance(name, str) else signal.Signals(name)))
            except (KeyError, ValueError):
                raise PolicyError(f"{where}: match.signal: {v!r} is not a signal") from None
        kw["signals"] = frozenset(signals)
    if "prog_type" in match:
        kw["prog_types"] = _known(match["prog_type"], BPF_PROG_TYPES[1:], f"{where}: match.prog_type")
    if "fstype" in match:
        kw["fstypes"] = frozenset(_strings(match["fstype"], f"{where}: match.fstype"))
    return kw


_UNSEEN = object()


def _decided(candidates: tuple[Rule, ...]) -> Rule | tuple[Rule, ...] | None:
    """What a path's candidate rules come to: the first one if it needs
    neither a container nor a digest to decide (then it wins whoever calls),
    None if there are none; else the candidates, to walk at each call."""
    if not candidates:
        return None
    first = candidates[0]
    if not first.selects and not first.sha256:
        return first
    return candidates


class _Caller:
    """A process a rule may select, its cgroup and container each looked
    up once, and only if a rule asks.  pid 0: not known (as on the host,
    in no cgroup a rule names)."""

    __slots__ = ("_policy", "_pid", "_cgroup", "_path", "_who")

    def __init__(self, policy: Policy, pid: int, cgroup: int):
        self._policy, self._pid, self._cgroup = policy, pid, cgroup
        self._path = self._who = _UNSEEN

    def cgroup_path(self) -> str | None:
        if self._path is _UNSEEN:
            self._path = self._policy.containers.cgroup_path(self._pid, self._cgroup) if self._pid > 0 else None
        return self._path  # type: ignore[return-value]

    def container(self) -> ContainerIdentity | None:
        if self._who is _UNSEEN:
            self._who = self._policy.containers.of_pid(self._pid, self._cgroup) if self._pid > 0 else None
        return self._who  # type: ignore[return-value]


def _remember(cache: dict, key, value, limit: int = 4096) -> None:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


class Policy:
    """An ordered list of rules; within a hook the first match wins.
    ``digest`` is the SHA-256 of the text it was read from ("" if built in
    code), to tell which file a running sensor enforces.  ``containers``
    resolves the container of a process for the rules that select
    containers (default: the machine's, ``kmod.machine_containers()``)."""

    def __init__(self, rules: Iterable[Rule] = (), origin: str = "<policy>",
                 guard: GuardSettings | None = None, digest: str = "",
                 containers: Containers | None = None):
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.origin = origin
        self.guard = guard or GuardSettings()
        self.digest = digest
        self._containers = containers
        if len(self.rules) > 0xFFFF:
            raise PolicyError(f"{origin}: {len(self.rules)} rules; at most 65535")
        seen: set[str] = set()
        for r in self.rules:
            if r.name in seen:
                raise PolicyError(f"{origin}: two rules are named {r.name!r}")
            seen.add(r.name)
        self._by_hook = {h: [(i, r) for i, r in enumerate(self.rules) if r.hook == h and not r.fileless]
                         for h in HOOKS}
        self._fileless = next((r for r in self.rules if r.fileless), None)
        # Paths repeat: the decoder matches every open and exec it sees.
        # Per path: the rule if it needs nothing more to decide, else the
        # candidates (rules that need a container or a digest), walked per call.
        self._open_cache: dict[str, Rule | tuple[Rule, ...] | None] = {}
        self._exec_cache: dict[str, Rule | tuple[Rule, ...] | None] = {}

    @property
    def containers(self) -> Containers:
        if self._containers is None:
            self._containers = machine_containers()
        return self._containers

    @classmethod
    def parse(cls, text: str, origin: str = "<policy>", containers: Containers | None = None) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{origin}: not valid TOML: {e}") from None
        unknown = set(doc) - {"version", "rule", "guard"}
        if unknown:
            raise PolicyError(f"{origin}: unknown top-level key(s) {', '.join(sorted(unknown))}")
        if doc.get("version", 1) != 1:
            raise PolicyError(f"{origin}: policy version {doc['version']!r} is not supported (1 is)")
        tables = doc.get("rule", [])
        if not isinstance(tables, list):
            raise PolicyError(f"{origin}: 'rule' must be an array of tables ([[rule]])")
        guard = _guard(doc.get("guard", {}), origin)
        try:
            rules = [_rule(t, i) for i, t in enumerate(tables)]
        except PolicyError as e:
            raise PolicyError(f"{origin}: {e}") from None
        return cls(rules, origin, guard, hashlib.sha256(text.encode()).hexdigest(), containers)

    @classmethod
    def load(cls, path: str | Path, containers: Containers | None = None) -> Policy:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise PolicyError(f"cannot read policy {path}: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"{path}: not UTF-8 text (byte {e.start})") from None
        return cls.parse(text, str(path), containers)

    @classmethod
    def default(cls) -> Policy:
        return cls.load(DEFAULT_POLICY)

    def rule(self, index: int) -> Rule | None:
        return self.rules[index] if 0 <= index < len(self.rules) else None

    # ---- matching in userspace -------------------------------------------

    def match_exec(self, path: str, digest: Callable[[], str | None] | None = None,
                   with_hash: bool = True, pid: int = 0, cgroup: int = 0) -> Rule | None:
        """First exec rule matching ``path``.  ``digest`` gives the file's
        SHA-256, called only if a rule needs it, or None when it is not known
        (then ``guard.unhashed`` decides: a digest block rule either becomes
        ``UNHASHED_RULE`` or is skipped).  With ``with_hash=False`` rules that
        need a digest are skipped (the decoder has no file to hash).  ``pid``
        (and its cgroup id, if known) is the caller, whose container is
        looked up only if a rule that selects containers matches the path;
        0: not known, as on the host."""
        try:  # the hot path: no global name looked up (the decoder matches every exec)
            found = self._exec_cache[path]
        except KeyError:
            found = self._entry("exec", path)
        if found.__class__ is not tuple:
            return found  # type: ignore[return-value]
        caller = _Caller(self, pid, cgroup)
        for r in found:
            if r.selects and not r.selects_caller(caller.cgroup_path, caller.container):
                continue
            if r.sha256:
                if not with_hash or digest is None:
                    continue
                known = digest()
                if known is None:
                    if r.action == "block" and self.guard.unhashed == "block":
                        return UNHASHED_RULE
                    continue
                if known not in r.sha256:
                    continue
            return r
        return None

    def match_open(self, path: str, pid: int = 0, cgroup: int = 0) -> Rule | None:
        try:  # the hot path, as in match_exec: every audited open
            found = self._open_cache[path]
        except KeyError:
            found = self._entry("open", path)
        if found.__class__ is not tuple:
            return found  # type: ignore[return-value]
        caller = _Caller(self, pid, cgroup)
        return next((r for r in found if not r.selects or r.selects_caller(caller.cgroup_path, caller.container)),
                    None)

    def varies_by_container(self, hook: str, path: str) -> bool:
        """Does the verdict on ``path`` depend on the caller's workload (its
        container or cgroup)?  Then the fanotify guard must not cache it on
        the file for everyone."""
        found = self._entry(hook, path)
        return type(found) is tuple and any(r.selects for r in found)

    def _entry(self, hook: str, path: str) -> Rule | tuple[Rule, ...] | None:
        """The path's cache entry, made if missing (an exec rule without a
        path is a candidate for every path: it matches on digests)."""
        cache = self._exec_cache if hook == "exec" else self._open_cache
        found = cache.get(path, _UNSEEN)
        if found is _UNSEEN:
            found = _decided(tuple(r for _, r in self._by_hook[hook] if not r.paths or r.match_path(path)))
            _remember(cache, path, found)
        return found  # type: ignore[return-value]

    def match_setid(self, call: str, new: int) -> Rule | None:
        for _, r in self._by_hook["setid"]:
            if (not r.calls or call in r.calls) and (not r.ids or new in r.ids):
                return r
        return None

    def match_file(self, op: str, path: str, source: str = "") -> Rule | None:
        """First file rule for ``op`` naming ``path`` or ``source`` (rename's
        old name, link's file, an absolute symlink target)."""
        for _, r in self._by_hook["file"]:
            if (not r.ops or op in r.ops) and (r.match_path(path) or (source and r.match_path(source))):
                return r
        return None

    def match_fork(self) -> Rule | None:
        return self.first("fork")

    def first(self, hook: str) -> Rule | None:
        rules = self._by_hook[hook]
        return rules[0][1] if rules else None

    def match_fileless(self) -> Rule | None:
        """The exec rule for images with no name: it applies to every
        fileless exec whatever rules come before it (the kernel decides it)."""
        return self._fileless

    def match_ptrace(self, protected: bool) -> Rule | None:
        """First ptrace rule for a request naming a protected process (any
        request) or another one (attach and seize)."""
        return next((r for _, r in self._by_hook["ptrace"] if protected or r.target == "any"), None)

    def match_signal(self, signo: int) -> Rule | None:
        return next((r for _, r in self._by_hook["signal"] if not r.signals or signo in r.signals), None)

    def match_bpf(self, prog_type: str) -> Rule | None:
        """First bpf rule for a program of this type ("": one of a type
        that only rules without match.prog_type cover)."""
        return next((r for _, r in self._by_hook["bpf"] if not r.prog_types or prog_type in r.prog_types),
                    None)

    def match_mount(self, target: str, fstype: str) -> Rule | None:
        return next((r for _, r in self._by_hook["mount"]
                     if (not r.paths or r.match_path(target)) and (not r.fstypes or fstype in r.fstypes)),
                    None)

    # ---- what the kernel side needs ----------------------------------------

    @functools.cached_property
    def needs_exec_guard(self) -> bool:
        """Exec blocks and digest checks need fanotify's FAN_OPEN_EXEC_PERM."""
        return any(r.action == "block" or r.sha256 for _, r in self._by_hook["exec"])

    @functools.cached_property
    def hashes_exec(self) -> bool:
        return any(r.sha256 for _, r in self._by_hook["exec"])

    def open_prefixes(self) -> dict[bytes, int]:
        """LPM entries for the kernel's open filter: the literal prefix of each
        glob (a whole path ends in NUL so it matches only itself) -> rule index."""
        out: dict[bytes, int] = {}
        for i, r in self._by_hook["open"]:
            for p in r.paths:
                prefix = literal_prefix(p).encode() if has_wildcard(p) else p.encode() + b"\0"
                out.setdefault(prefix, i)
        return out

    def open_dirs(self) -> dict[str, tuple[int, frozenset[str]]]:
        """How the kernel judges an open by a relative path: directory ->
        (D_NAMES, the file names in it the rules name), (D_PARENT, any file
        in it) or (D_ANY, any file below it, for "**" or a wildcard before a
        later "/")."""
        how: dict[str, int] = {}
        names: dict[str, set[str]] = {}
        for _, r in self._by_hook["open"]:
            for p in r.paths:
                base = literal_prefix(p) if has_wildcard(p) else p
                directory = base[:base.rindex("/")] or "/"
                rest = p[len(base):]
                if not has_wildcard(p):
                    kind = D_NAMES
                    names.setdefault(directory, set()).add(p[len(directory):].lstrip("/"))
                else:
                    kind = D_ANY if "/" in rest or "**" in rest else D_PARENT
                how[directory] = max(how.get(directory, 0), kind)
        return {d: (k, frozenset(names.get(d, ()) if k == D_NAMES else ())) for d, k in how.items()}

    def open_heads(self) -> bytes | None:
        """The kernel's first check on an open: a bitmap with a bit set for
        the first 8 bytes of every open prefix; None when a prefix is shorter
        than that (then every absolute path goes on to the full lookup)."""
        prefixes = self.open_prefixes()
        if any(len(p) < 8 for p in prefixes):
            return None
        return bitmap((int.from_bytes(p[:8], "little") for p in prefixes), HEAD_BITS)

    def open_marks(self) -> list[tuple[str, bool]]:
        """fanotify FAN_OPEN_PERM marks for open block rules: (path, on_child).
        A glob, or a whole path, marks its directory's children: a file
        replaced by a rename (as ``passwd`` writes /etc/shadow) is a new
        inode, which a mark on the old one would not see.  A whole path
        that exists marks that file too, so that it is asked about under
        any other name (a hard link)."""
        marks: dict[str, bool] = {}
        for p in self.open_block_paths(wildcards=True):
            base = literal_prefix(p) if has_wildcard(p) else p
            directory = base[:base.rindex("/") + 1] or "/"
            marks[directory.rstrip("/") or "/"] = True
            if not has_wildcard(p) and Path(p).exists():
                marks.setdefault(p, False)
        return list(marks.items())

    def open_trees(self) -> list[str]:
        """The folders of open block globs ending in ``**``: a mark on a
        folder sees only its children, so every folder below needs one
        (kmod/_trees.py).  A wildcard before the last ``/`` is refused at
        parse, so nothing else reaches below a folder's children."""
        out: dict[str, None] = {}
        for p in self.open_block_paths(wildcards=True):
            if has_wildcard(p) and "**" in p[len(literal_prefix(p)):]:
                base = literal_prefix(p)
                out[base[:base.rindex("/")] or "/"] = None
        return list(out)

    def open_block_paths(self, wildcards: bool = False) -> list[str]:
        """The paths open block rules name: whole ones (and globs too, with
        ``wildcards``), each once, in policy order."""
        out: dict[str, None] = {}
        for _, r in self._by_hook["open"]:
            if r.action == "block":
                out.update((p, None) for p in r.paths if wildcards or not has_wildcard(p))
        return list(out)

    @functools.cached_property
    def _sock_probes(self) -> tuple[Rule, ...]:
        """The first connect or bind rule of each workload selected."""
        probes: dict = {}
        for r in self.rules:
            if r.hook in HOOK_CODE and r.selects:
                probes.setdefault(r.workload, r)
        return tuple(probes.values())

    def sock_selectors(self) -> tuple[tuple[tuple[str, ...], ContainerSelector | None], ...]:
        """The workloads the connect and bind rules select, each once, in
        order: a cgroup's tag (kmod/_workloads.py) stands for the set of
        them it is in, as indexes into this tuple."""
        return tuple(r.workload for r in self._sock_probes)

    def sock_workloads(self, path: str, container: Callable[[], ContainerIdentity | None]) -> frozenset[int]:
        """The indexes in ``sock_selectors()`` of the workloads cgroup
        ``path`` is in (or below); ``container`` gives its container, asked
        only if a selector names containers."""
        return frozenset(i for i, r in enumerate(self._sock_probes) if r.selects_caller(lambda: path, container))

    def sock_entries(self, generation: int = 0, tags: dict[int, frozenset[int]] | None = None,
                     ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """LPM entries (key, value) for the connect/bind tries, IPv4 and IPv6.

        Key: prefixlen (u32, bits) then [tag (u32), hook, proto, port_hi,
        port_lo, address] where proto 0 and port 0 mean any.  Value: the
        rule, as its index with the policy generation in the high 16 bits (so
        a record names the rule of the policy that decided it, even across a
        reload), and the verdict.

        ``tags``: tag -> the workloads (indexes into ``sock_selectors()``) a
        cgroup with that tag is in.  Tag 0 holds the rules that select no
        workload; every other tag those and the rules of its workloads, in
        the policy's order, so the kernel looks up one tag per call and the
        first matching rule still wins."""
        v4: dict[bytes, bytes] = {}
        v6: dict[bytes, bytes] = {}
        selectors = {w: i for i, w in enumerate(self.sock_selectors())}
        for tag, workloads in {0: frozenset(), **(tags or {})}.items():
            for i, r in enumerate(self.rules):
                if r.hook not in HOOK_CODE or (r.selects and selectors[r.workload] not in workloads):
                    continue
                value = struct.pack("<II", (generation & 0xFFFF) << 16 | i, VERDICT_CODE[r.action])
                nets = r.networks or (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
                proto = PROTOCOLS.get(r.protocol, 0)
                for net in nets:
                    table = v4 if net.version == 4 else v6
                    for port in r.ports or (0,):
                        data = struct.pack("<IBB", tag, HOOK_CODE[r.hook], proto) + port.to_bytes(2, "big")
                        key = struct.pack("<I", 64 + net.prefixlen) + data + net.network_address.packed
                        table.setdefault(key, value)  # an earlier rule wins
        return v4, v6
