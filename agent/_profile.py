"""Learned self (issue 17): each workload's normal behaviour, learned from
its own events, and what falls outside it.

Plain objects, no sockets: :class:`Profile` is one workload's behaviour as
generalised items (execs, files read and written, peers, binds, uids);
:class:`Profiles` routes events to their workload's profile, moves each
through its states (learning -> stable -> enforcing) and, once stable,
turns behaviour outside the profile into ``wire.Edge`` novelty alerts the
hive files like the edge's own.  The relay calls :meth:`Profiles.observe`
on its batches (agent/_relay.py); :class:`ProfileStore` keeps the profiles
in the agent's data folder.

An item is one line of text, ``KIND\\tFIELD...``: the unit the profile
holds, an alert names and an operator accepts (``immune-node profile
accept``), so the three never disagree on what "the same" means.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

import wire

PROFILE_VERSION = 1
"""Of the file on disk and of the body of a ``wire.Profile`` event.  A
field added with a default (``Profile.cgroup_path``) stays version 1: older
files decode with it at its default, and an older reader skips it."""

STATES = ("learning", "stable", "enforcing")
KINDS = ("exec", "read", "write", "connect", "bind", "setuid")
FIELDS = {"exec": 3, "read": 1, "write": 1, "connect": 3, "bind": 3, "setuid": 1}
"""Fields after an item's kind."""
TECHNIQUE = {
    "exec": "attack.t1059",  # a new child of a service: a command interpreter, most often
    "connect": "attack.t1071",  # a new peer: application-layer C2
    "bind": "attack.t1571",  # a new listening port: non-standard port
    "setuid": "attack.t1548",  # a new identity: elevation control
    "read": "attack.t1005",  # data from the local system
    "write": "attack.t1565.001",  # stored data manipulation
    "credential": "attack.t1552.001",  # credentials in files
}
ENFORCE_ACTIONS = ("kill", "alert")
LEVEL = "novel"
"""The alerts' own level: not a rule's verdict of malice, a change of self."""

_WRITE_INTENT = 0o1 | 0o2 | 0o100 | 0o1000  # O_WRONLY O_RDWR O_CREAT O_TRUNC
_TMP = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/")
_NUMBER = re.compile(r"\A[+-]?\d+(\.\d+)?\Z")
_HEX = re.compile(r"\A(0x)?[0-9a-fA-F]{8,}\Z")
_UUID = re.compile(r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_DIGITS = re.compile(r"\d+")
_VERSIONED = re.compile(r"\.\d+\Z")
_STAMP = re.compile(r"\d{6,}")
_WITH_DIGIT = re.compile(r"(?<=/)[^/]*\d[^/]*")
_HAS_DIGIT = re.compile(r"\d")
_GENERATED = re.compile(r"\A(?:[+-]?\d+(?:\.\d+)?|(?:0x)?[0-9a-fA-F]{8,}"
                        r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\Z")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_GENERATED_NAME = re.compile(r"\A(?:[+-]?\d+(?:\.\d+)?|(?:0x)?[0-9a-fA-F]{8,}"
                             r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
                             r"(\.[A-Za-z]{1,5})?\Z")
"""A number, hex or a uuid, with a short extension or none: most random
names, told in one match (the rest go through :func:`_random`)."""
_CREDENTIALS = (
    re.compile(r"\A/etc/(g?shadow|sudoers|security/opasswd)(-|\Z)"),
    re.compile(r"/\.ssh/(id_[a-z0-9_]+|authorized_keys|known_hosts)?"),
    re.compile(r"/\.(aws|azure|config/gcloud|kube|docker)/"),
    re.compile(r"/\.(netrc|pgpass|git-credentials|npmrc|pypirc|my\.cnf|vault-token)\Z"),
    re.compile(r"\.(pem|key|p12|pfx|kdbx)\Z"),
    re.compile(r"\A/etc/(ssl/private|ssh/ssh_host_)"),
)
MAX_PENDING = 1024
"""Novel items alerted and not accepted, per profile, within ``realert``:
beyond it a workload's novelty is counted, not alerted."""
MAX_SHAPE = 256
"""Characters of an argument shape kept."""


@functools.lru_cache(maxsize=8192)
def credential(path: str) -> bool:
    """Whether ``path`` holds secrets: never swallowed by a folder's glob,
    and its read is tagged T1552.001."""
    return any(p.search(path) for p in _CREDENTIALS)


def _random(segment: str) -> bool:
    """A name that looks generated: a number, hex, a uuid, or letters and
    digits only, a quarter of them digits at least (``tmpa8f3kq9z``; not
    ``x86_64-linux-gnu``)."""
    stem, dot, ext = segment.rpartition(".")
    if dot and stem and len(ext) <= 5 and ext.isalpha():
        segment = stem  # 50ba549f2a738cb31b3215cd01ec635f.json: its name without the extension
    if _GENERATED.match(segment):
        return True
    if len(segment) < 6 or not segment.isalnum():
        return False
    digits = len(segment) - len(segment.translate(_NO_DIGITS))
    return digits >= 3 and digits * 4 >= len(segment)


@functools.lru_cache(maxsize=4096)  # the same files are opened again and again: regexes once per name
def generalise_path(path: str, versions: bool = True) -> str:
    """``path`` with its generated parts as ``*``: numeric and random
    segments, anything under a temporary folder (one name per run); with
    ``versions``, the digits of a last name ending in a number (a library's
    version, a rotated log's) and of a date or time in a name as ``N``.  An
    executable's path keeps them: python3.12 is not python3.13."""
    if not path.startswith("/"):
        return path
    if path.startswith(_TMP):
        tmp = next(t for t in _TMP if path.startswith(t))
        return tmp + "**" if tmp != "/run/user/" else "/run/user/*/**"
    # A random name is most often the last one or the one before, in a
    # folder opened again and again (/var/lib/nginx/body/HEX, /proc/PID/status):
    # that folder is generalised once, cached, and only the two names are looked at.
    folder, _, name = path.rpartition("/")
    top, _, sub = folder.rpartition("/")
    return ((_folder(top, versions) if top else "") + ("/" if folder else "")
            + (_segment(sub, versions, False) if _HAS_DIGIT.search(sub) else sub)
            + "/" + (_segment(name, versions, True) if _HAS_DIGIT.search(name) else name))


@functools.lru_cache(maxsize=4096)
def _folder(folder: str, versions: bool) -> str:
    # What is generated has digits (a hex name without one: 1 in 2600):
    # only the names with a digit are looked at, found by one regex.
    return _WITH_DIGIT.sub(lambda m: _segment(m.group(), versions, False), folder)


def _segment(seg: str, versions: bool, last: bool) -> str:
    """One name of a path, with a digit in it, generalised."""
    m = _GENERATED_NAME.match(seg)
    if m:
        return "*" + (m.group(1) or "")
    if _random(seg):
        stem, dot, ext = seg.rpartition(".")
        return f"*.{ext}" if dot and stem and len(ext) <= 5 and ext.isalpha() else "*"
    if versions and last and _VERSIONED.search(seg):
        return _DIGITS.sub("N", seg)  # a versioned library or rotated log: libfoo.so.3.1, app.log.2
    if versions and _STAMP.search(seg):
        return _STAMP.sub("N", seg)  # a date or a time in a name: db-20231116.tgz
    return seg


def argument_shape(argv: Sequence[str]) -> str:
    """The arguments after the program's name as a shape: numbers ``N``,
    hex and uuids ``H``, paths generalised; what changes run to run gone."""
    return _shape(tuple(argv))


@functools.lru_cache(maxsize=4096)
def _shape(argv: tuple[str, ...]) -> str:
    out = []
    for a in argv[1:]:
        if _NUMBER.match(a):
            out.append("N")
        elif _HEX.match(a) or _UUID.match(a):
            out.append("H")
        elif a.startswith("/"):
            out.append(generalise_path(a))
        elif "=" in a and a.startswith("-"):
            key, _, value = a.partition("=")
            out.append(f"{key}={_shape(('', value)) or ''}")
        elif _STAMP.search(a):
            out.append(_STAMP.sub("N", a))
        else:
            out.append(_DIGITS.sub("N", a) if len(a) > 24 else a)
    return " ".join(out)[:MAX_SHAPE]


@functools.lru_cache(maxsize=4096)
def network(address: str, prefix4: int = 24, prefix6: int = 64) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/{prefix4 if ip.version == 4 else prefix6}", strict=False))


def workload_of(ev: wire.Event, cgroups: bool = True) -> str:
    """The workload an event belongs to: its container's image, else its
    systemd service, else (``cgroups``) its cgroup; "" for none (a login
    session, a user's own scope: people, not workloads)."""
    if ev.container:
        return "image:" + (ev.container_image or ev.container_name or ev.container[:12])
    unit = ev.unit
    if unit.startswith("user@") or unit.endswith(".scope") or not cgroups or not ev.cgroup:
        return ""
    if unit.endswith(".service"):
        return "unit:" + unit
    if unit.endswith(".scope") or not cgroups or not ev.cgroup:
        return ""
    return f"cgroup:{ev.cgroup}"


# --------------------------------------------------------------------------
# One workload's profile
# --------------------------------------------------------------------------


class Profile(msgspec.Struct, kw_only=True):
    """What a workload does, generalised.  ``items`` by kind, each a set of
    item lines (kept as sorted lists on disk); a path ending ``/**`` covers
    all below it (a folder whose children were too many to list)."""

    workload: str
    state: str = "learning"
    started: float = 0.0
    """When learning began (Unix seconds)."""
    changed: float = 0.0
    """When an item was last added (learning) or accepted."""
    revision: int = 0
    """Bumped on every change: the hive keeps the latest."""
    events: int = 0
    items: dict[str, list[str]] = {}
    pending: dict[str, float] = {}
    """Novel items alerted and not accepted, with when they were last alerted."""
    cgroup_path: Annotated[str, msgspec.Meta(max_length=wire.MAX_PATH)] = ""
    """A ``cgroup:ID`` workload's cgroup v2 path (from the cgroup2 mount),
    found once when its profile began: an id says no place, and a proposed
    policy's rules select by path.  "": another kind of workload, or the
    cgroup was gone (and a profile kept before the field existed)."""


class Learner:
    """A :class:`Profile` with its items as sets, to add to and test."""

    def __init__(self, profile: Profile, *, folder_cap: int = 16, peer_cap: int = 8, shape_cap: int = 16) -> None:
        self.p = profile
        self.folder_cap = folder_cap
        self.peer_cap = peer_cap
        self.shape_cap = shape_cap
        self.sets: dict[str, set[str]] = {k: set(profile.items.get(k, ())) for k in KINDS}
        self._held: set[str] = set()
        """Items found held through a network or an argument glob (the
        costly tests): a profile only grows, so they stay held (cleared
        when large)."""
        self.seen: set[tuple] = set()
        """:func:`raw_of` keys of events whose item the profile holds: an
        event seen again costs one lookup (a profile only grows, so they
        stay held; cleared when large)."""

    def remember(self, raw: tuple) -> None:
        if len(self.seen) >= 16384:  # what repeats is back after one event
            self.seen.clear()
        self.seen.add(raw)

    def export(self) -> Profile:
        self.p.items = {k: sorted(v) for k, v in self.sets.items() if v}
        return self.p

    def size(self) -> int:
        return sum(len(v) for v in self.sets.values())

    # -- membership -------------------------------------------------------

    def holds(self, item: str) -> bool:
        if item in self._held:
            return True
        if self._covered(item):
            if item[0] in "rw":  # a file's folders are a few lookups: no need to remember it
                return True
            if len(self._held) > 16384:
                self._held.clear()
            self._held.add(item)
            return True
        return False

    def _covered(self, item: str) -> bool:
        kind, _, rest = item.partition("\t")
        s = self.sets.get(kind)
        if s is None:
            return False
        if item in s:
            return True
        if kind in ("read", "write"):
            if credential(rest):
                return False  # only an exact entry allows a secret
            cut = rest.rfind("/")
            while cut > 0:
                if f"{kind}\t{rest[:cut]}/**" in s:
                    return True
                cut = rest.rfind("/", 0, cut)
            return False
        if kind == "exec":
            image, parent, _shape = (rest.split("\t") + ["", ""])[:3]
            return f"exec\t{image}\t{parent}\t*" in s
        if kind in ("connect", "bind"):
            proto, address, port = (rest.split("\t") + ["", ""])[:3]
            for a in (address, network(address), "*"):
                if f"{kind}\t{proto}\t{a}\t{port}" in s or f"{kind}\t{proto}\t{a}\t*" in s:
                    return True
        return False

    # -- learning ---------------------------------------------------------

    def add(self, item: str) -> bool:
        """Put ``item`` in the profile, generalising its neighbours when
        there are too many; False if it held it already."""
        if self.holds(item):
            return False
        kind, _, rest = item.partition("\t")
        s = self.sets[kind]
        s.add(item)
        if kind in ("read", "write"):
            self._cap_folder(kind, s, rest)
        elif kind == "exec":
            image, parent, _shape = rest.split("\t")
            prefix = f"exec\t{image}\t{parent}\t"
            shapes = [i for i in s if i.startswith(prefix)]
            if len(shapes) > self.shape_cap:
                s.difference_update(shapes)
                s.add(prefix + "*")
        elif kind in ("connect", "bind"):
            self._cap_peers(kind, s, rest)
        return True

    def _cap_folder(self, kind: str, s: set[str], path: str) -> None:
        folder = path.rsplit("/", 1)[0]
        if folder.count("/") < 2:
            return  # never /etc/** or /**: the top folders hold what matters
        prefix = f"{kind}\t{folder}/"
        under = [i for i in s if i.startswith(prefix) and not credential(i[len(kind) + 1:])]
        children = {i[len(prefix):].split("/", 1)[0] for i in under}
        if len(children) > self.folder_cap:
            s.difference_update(under)
            s.add(f"{kind}\t{folder}/**")

    def _cap_peers(self, kind: str, s: set[str], rest: str) -> None:
        proto, address, port = rest.split("\t")
        net = network(address)
        same_net = [i for i in s if i.startswith(f"{kind}\t{proto}\t") and i.endswith(f"\t{port}")
                    and network(i.split("\t")[2]) == net and i.split("\t")[2] != net]
        if len(same_net) > self.peer_cap:  # many peers of one network on a port: the network
            s.difference_update(same_net)
            s.add(f"{kind}\t{proto}\t{net}\t{port}")
        nets = [i for i in s if i.startswith(f"{kind}\t{proto}\t") and i.endswith(f"\t{port}")]
        if len(nets) > self.peer_cap * 4:  # peers all over: any address on that port
            s.difference_update(nets)
            s.add(f"{kind}\t{proto}\t*\t{port}")
        ports = [i for i in s if i.startswith(f"{kind}\t{proto}\t{address}\t")]
        if kind == "bind" and len(ports) > self.peer_cap:
            s.difference_update(ports)
            s.add(f"{kind}\t{proto}\t{address}\t*")


def valid_item(item: str, kind: str = "") -> bool:
    """Whether ``item`` is one (of ``kind``): its kind and as many fields."""
    k, _, rest = item.partition("\t")
    return k in FIELDS and (not kind or k == kind) and rest.count("\t") == FIELDS[k] - 1


def _f(text: str) -> str:
    return text.replace("\t", " ")  # a tab separates an item's fields


_QUICK_TMP = re.compile(r"\A(?:/tmp/|/var/tmp/|/dev/shm/|/run/user/)")
_QUICK = re.compile(r"(?<=/)(?=[^/]*\d)(?:[+-]?\d+(?:\.\d+)?|(?:0x)?[0-9a-fA-F]{8,}"
                    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
                    r"(?=(?:\.[A-Za-z]{1,5})?(?:/|\Z))")


def quick_path(path: str) -> str:
    """``path`` with the names :func:`generalise_path` makes ``*`` (a
    number, hex or a uuid with a digit, before a short extension or none)
    as ``*``, and anything under a temporary folder as that folder: one C
    call, and two paths the same here generalise the same, so a profile
    remembers /proc/*/status as held once, not each pid's."""
    m = _QUICK_TMP.match(path)
    return m.group() if m else _QUICK.sub("*", path)


def raw_of(ev: wire.Event) -> tuple | None:
    """The fields of ``ev`` its profile item is made of (None: it stands
    for none, as most kinds): a key the relay remembers as held, to skip
    the item of an event seen before."""
    t = type(ev)
    if t is wire.Open:
        return ("open", ev.path, bool(ev.flags & _WRITE_INTENT)) if ev.path.startswith("/") else None
    if t is wire.Exec:
        return None if ev.result < 0 else ("exec", ev.exe or ev.filename or ev.image, ev.parent_image, tuple(ev.argv))
    if t is wire.Connect:
        return None if not ev.address or ev.family not in (2, 10) else ("connect", ev.protocol, ev.address, ev.port)
    if t is wire.Bind:
        return None if ev.port == 0 else ("bind", ev.protocol, ev.address, ev.port)  # 0: a port the kernel picks
    if t is wire.SetId:
        if ev.call.startswith("set") and "uid" in ev.call and ev.new >= 0 and ev.result == 0:
            return ("setuid", ev.new)
    return None


@functools.lru_cache(maxsize=1024)  # for a second sighting: then the profile remembers it as held
def item_of(raw: tuple) -> str:
    """The profile item of a :func:`raw_of` key."""
    kind = raw[0]
    if kind == "open":
        return ("write\t" if raw[2] else "read\t") + generalise_path(raw[1]).replace("\t", " ")
    if kind == "exec":
        image = generalise_path(raw[1], versions=False)
        parent = generalise_path(raw[2], versions=False)
        return f"exec\t{_f(image)}\t{_f(parent)}\t{_f(_shape(raw[3]))}"
    if kind == "connect":
        return f"connect\t{_f(raw[1])}\t{_f(raw[2])}\t{raw[3]}"
    if kind == "bind":
        return f"bind\t{_f(raw[1])}\t{_f(raw[2]) or '*'}\t{raw[3]}"
    return f"setuid\t{raw[1]}"


def items_of(ev: wire.Event) -> list[str]:
    """The profile items an event stands for (none for most kinds)."""
    raw = raw_of(ev)
    return [] if raw is None else [item_of(raw)]


def describe(item: str) -> str:
    kind, _, rest = item.partition("\t")
    f = rest.split("\t")
    if kind == "exec":
        return f"exec {f[0]} (parent {f[1] or '?'}" + (f", args {f[2]!r})" if f[2] else ")")
    if kind in ("connect", "bind"):
        return f"{kind} {f[0]} {f[1]}:{f[2]}"
    if kind == "setuid":
        return f"setuid to {f[0]}"
    return f"{kind} {rest}"


def technique(item: str) -> str:
    kind, _, rest = item.partition("\t")
    if kind == "read" and credential(rest):
        return TECHNIQUE["credential"]
    return TECHNIQUE[kind]


def enforceable(item: str) -> bool:
    """Whether an ``enforcing`` profile kills for this novelty: what the
    policy proposed from it refuses in block mode (node/_profile.py's
    ``propose``): another exec, a connect outside its peers, a bind of a port
    up to 1024, a read of a credential file.  Other files and uids: alerts."""
    kind, _, rest = item.partition("\t")
    if kind in ("exec", "connect"):
        return True
    if kind == "bind":
        port = rest.rpartition("\t")[2]
        return port.isdigit() and int(port) <= 1024
    return kind == "read" and credential(rest)


def alert_id(agent: str, workload: str, item: str, ev: wire.Event) -> str:
    key = f"{agent}\0profile\0{workload}\0{item}\0{ev.pid}\0{ev.time}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------
# All the workloads of an agent
# --------------------------------------------------------------------------


@dataclass
class ProfileSettings:
    learn: float = 86400.0
    """Seconds of learning at least."""
    stable: float = 3600.0
    """Seconds without a new item after which a profile is stable."""
    realert: float = 3600.0
    """Seconds before a novel item not accepted is alerted again."""
    folder_cap: int = 16
    peer_cap: int = 8
    max_workloads: int = 256
    max_items: int = 4096
    """Per profile: beyond it a learning profile learns nothing more (a
    workload that does everything has no self to learn)."""
    cgroups: bool = True
    enforce_action: str = "kill"
    """What an ``enforcing`` profile does to a process whose novelty its
    proposed policy would refuse (see :func:`enforceable`): ``kill`` it at
    once, or only ``alert`` (as ``stable``)."""
    upload: float = 60.0
    """Seconds between a profile's uploads to the hive, at most one each."""
    refresh: float = 86400.0
    """Seconds after which an unchanged profile is sent again: the hive's
    retention must not age a quiet workload's profile out."""


class Profiles:
    def __init__(self, agent: str, settings: ProfileSettings | None = None, *,
                 clock: Callable[[], float] = time.time, profiles: Iterable[Profile] = (),
                 resolve: Callable[[int, int], str | None] | None = None) -> None:
        self.agent = agent
        self.resolve = resolve
        """(pid, cgroup id) -> that cgroup's v2 path or None (the process
        table's ``Containers.cgroup_path``): asked once per ``cgroup:ID``
        workload, for its profile's ``cgroup_path``."""
        self._unresolved: set[str] = set()
        """Kept ``cgroup:ID`` profiles without a path (kept before there was
        one, or its cgroup was gone then): asked once at their next event."""
        self.s = settings or ProfileSettings()
        if self.s.enforce_action not in ENFORCE_ACTIONS:
            raise ValueError(f"enforce_action {self.s.enforce_action!r}: one of {', '.join(ENFORCE_ACTIONS)}")
        self.commands: list[tuple[wire.KillProcess, str]] = []
        """Kills decided by :meth:`observe` for the executor, with their
        alert's id; taken by the relay."""
        self.killed = 0
        self._clock = clock
        self.learners: dict[str, Learner] = {}
        self.dirty: set[str] = set()
        """Changed since the last save."""
        self._unsent: set[str] = set()
        self._urgent: set[str] = set()
        """A new state: sent at the next tick whatever the rate."""
        self._sent: dict[str, float] = {}
        self.novel = self.observed = self.refused = self.suppressed = 0
        self._workloads: dict[tuple, str] = {}
        """Each event's workload by the fields it is made of."""
        self._once: set[tuple] = set()
        """Raw keys held once: remembered by their profile when seen again
        (most random names are seen once; the profile's ``seen`` keeps the rest)."""
        for p in profiles:
            self.learners[p.workload] = self._learner(p)
            self._unsent.add(p.workload)
            if p.workload.startswith("cgroup:") and not p.cgroup_path:
                self._unresolved.add(p.workload)

    def _learner(self, p: Profile) -> Learner:
        return Learner(p, folder_cap=self.s.folder_cap, peer_cap=self.s.peer_cap)

    def statistics(self) -> dict[str, int]:
        states = [lr.p.state for lr in self.learners.values()]
        return {"profiles": len(states), "learning": states.count("learning"), "stable": states.count("stable"),
                "enforcing": states.count("enforcing"), "novel": self.novel, "novel_suppressed": self.suppressed,
                "profile_events": self.observed, "enforced_kills": self.killed}

    def observe(self, events: list[wire.Event]) -> list[wire.Event]:
        """``events`` with a novelty alert (``wire.Edge``) right behind each
        event that did something its stable workload never did."""
        out: list[wire.Event] | None = None
        now = -1.0
        workloads = self._workloads
        learners = self.learners
        for i, ev in enumerate(events):
            raw = raw_of(ev)
            alerts = None
            if raw is not None:
                # What a workload is depends on these fields only: worked out once.
                key = (ev.container, ev.container_image, ev.container_name, ev.unit, ev.cgroup)
                w = workloads.get(key)
                if w is None:
                    if len(workloads) >= 4096:
                        workloads.clear()
                    w = workloads[key] = workload_of(ev, self.s.cgroups)
                if w:
                    if now < 0:
                        now = self._clock()
                    lr = learners.get(w)
                    if lr is None:
                        alerts = self._observe(w, raw, ev, now)
                    elif raw in lr.seen or raw[0] == "open" and ("name", quick_path(raw[1]), raw[2]) in lr.seen:
                        # held: nothing to learn, nothing new (a file with a
                        # generated name: held if one of its kind was)
                        self.observed += 1
                        p = lr.p
                        p.events += 1
                        if p.state == "learning" and now - p.started >= self.s.learn \
                                and now - p.changed >= self.s.stable:
                            self._set_state(lr, "stable", now)
                    else:
                        alerts = self._observe(w, raw, ev, now)
            if alerts:
                if out is None:
                    out = list(events[:i])
                out.append(ev)
                out += alerts
            elif out is not None:
                out.append(ev)
        return events if out is None else out

    def _observe(self, w: str, raw: tuple, ev: wire.Event, now: float) -> list[wire.Edge]:
        self.observed += 1
        lr = self.learners.get(w)
        if lr is None:
            if len(self.learners) >= self.s.max_workloads:
                self.refused += 1
                return []
            lr = self.learners[w] = self._learner(Profile(workload=w, started=now, changed=now,
                                                           cgroup_path=self._path_of(w, ev)))
        elif w in self._unresolved:
            self._unresolved.discard(w)
            path = self._path_of(w, ev)
            if path:
                lr.p.cgroup_path = path
                lr.p.revision += 1
                self.dirty.add(w)
                self._unsent.add(w)
        p = lr.p
        p.events += 1
        item = item_of(raw)
        if p.state == "learning":
            if lr.holds(item):
                self._remember(lr, raw)
            elif lr.size() < self.s.max_items:
                lr.add(item)
                self._remember(lr, raw)
                p.changed = now
                p.revision += 1
                self.dirty.add(w)
                self._unsent.add(w)
            if now - p.started >= self.s.learn and now - p.changed >= self.s.stable:
                self._set_state(lr, "stable", now)
            return []
        if lr.holds(item):
            self._remember(lr, raw)
            return []
        # Enforcing: every such event's process is killed and reported, also
        # the same novelty again (a respawn); the rest is alerted as in stable.
        # What the kernel already refused is not: killing a service for a
        # refused connect would turn an attacker's forged request into an outage.
        kill = (p.state == "enforcing" and self.s.enforce_action == "kill" and ev.pid > 1
                and getattr(ev, "verdict", "") != "block" and enforceable(item))
        last = p.pending.get(item)
        if not kill and last is not None and now - last < self.s.realert:
            return []
        if last is None and len(p.pending) >= MAX_PENDING:
            # A workload doing ever new things: the alerts so far say so;
            # more would flood the hive.  Room again as they age.
            p.pending = {i: t for i, t in p.pending.items() if now - t < self.s.realert}
            if len(p.pending) >= MAX_PENDING and not kill:
                self.suppressed += 1
                return []
        if len(p.pending) < MAX_PENDING or item in p.pending:
            p.pending[item] = now
        self.dirty.add(w)
        if not kill:
            return [self._alert(lr, item, ev)]
        cmd = self._kill(ev)
        alert = self._alert(lr, item, ev, cmd)
        self.commands.append((cmd, alert.alert))
        return [alert]

    def _path_of(self, workload: str, ev: wire.Event) -> str:
        """``workload``'s cgroup v2 path if it is a ``cgroup:ID`` one and
        ``ev``'s cgroup (its id) is still there; else ""."""
        if self.resolve is None or not workload.startswith("cgroup:") or not ev.cgroup:
            return ""
        try:
            path = self.resolve(ev.pid, ev.cgroup)
        except OSError:
            return ""
        # What goes on the wire and into a policy: an absolute path within its bound.
        if not isinstance(path, str) or not path.startswith("/") or len(path) > wire.MAX_PATH:
            return ""
        return path

    def _remember(self, lr: Learner, raw: tuple) -> None:
        """``raw``'s item is held: remember it on its second sighting, and
        a file's generated name by its kind at once (those are seen once)."""
        if raw[0] == "open":
            q = quick_path(raw[1])
            if q != raw[1]:
                lr.remember(("name", q, raw[2]))
        if raw in self._once:
            lr.remember(raw)
            return
        if len(self._once) >= 4096:
            self._once.clear()
        self._once.add(raw)

    def _kill(self, ev: wire.Event) -> wire.KillProcess:
        """The executor's command for ``ev``'s process: with an exec, the new
        program and what it started already; not if the pid runs something
        else by then (the executor checks ``exe``)."""
        self.killed += 1
        exe = ev.exe if type(ev) is wire.Exec else getattr(ev, "image", "")
        cmd = wire.KillProcess(id=f"profile-{uuid.uuid4().hex[:24]}", pid=ev.pid, tree=type(ev) is wire.Exec,
                               exe=exe if exe.startswith("/") else "")
        return cmd

    def _set_state(self, lr: Learner, state: str, now: float) -> None:
        lr.p.state = state
        lr.p.revision += 1
        self.dirty.add(lr.p.workload)
        self._unsent.add(lr.p.workload)
        self._urgent.add(lr.p.workload)

    def _alert(self, lr: Learner, item: str, ev: wire.Event, kill: wire.KillProcess | None = None) -> wire.Edge:
        self.novel += 1
        kind = item.partition("\t")[0]
        w = lr.p.workload
        held = sorted(lr.sets[kind])
        if kind == "exec":  # what this parent was seen to run
            parent = item.split("\t")[2]
            held = [i for i in held if i.split("\t")[2] == parent] or held
        shown = ", ".join(describe(i) for i in held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")
        detail = (f"new in {w} ({lr.p.state}): {describe(item)}; the profile held "
                  + (shown or f"no {kind}"))
        title = f"Novel behaviour of {w}: {describe(item)}"
        tag = technique(item)
        actions = []
        if kill is not None:  # said first: the detail is cut to the wire's bound from its end
            detail = (f"enforced: kill pid {kill.pid}" + (" and its children" if kill.tree else "")
                      + f" ({kill.exe or ev.comm}); " + detail)
            actions = [wire.EdgeAction(id=kill.id, action=kill.action, detail=msgspec.json.encode(
                {"pid": kill.pid, "tree": kill.tree, "exe": kill.exe}).decode())]
        return wire.fit(wire.Edge(
            time=ev.time, pid=ev.pid, tid=ev.tid, ppid=ev.ppid, uid=ev.uid, euid=ev.euid, gid=ev.gid,
            comm=ev.comm, cgroup=ev.cgroup, verdict="audit", alert=alert_id(self.agent, w, item, ev),
            rule_id=f"profile.{kind}", title=title, level=LEVEL, tags=[tag, "immune.novelty"],
            detail=detail, workload=w, novel=[item], actions=actions))

    # -- operator and time ---------------------------------------------------

    def accept(self, workload: str, items: Sequence[str], state: str = "") -> str:
        """Put ``items`` into ``workload``'s profile (an operator's decision
        on novelty alerts) and/or move it to ``state``; returns what changed,
        in words.  ValueError if the workload or an item is unknown."""
        lr = self.learners.get(workload)
        if lr is None:
            raise ValueError(f"no profile for {workload!r} on this agent")
        added = 0
        for item in items:
            if not valid_item(item):
                raise ValueError(f"not a profile item: {item[:80]!r}")
            added += lr.add(item)
            lr.p.pending.pop(item, None)
        now = self._clock()
        if added:
            lr.p.changed = now
            lr.p.revision += 1
        if state:
            if state not in STATES:
                raise ValueError(f"state {state!r}: one of {', '.join(STATES)}")
            if state == "learning":
                lr.p.started = lr.p.changed = now
            self._set_state(lr, state, now)
        self.dirty.add(workload)
        self._unsent.add(workload)
        self._urgent.add(workload)  # the operator looks for it at the hive
        return f"{workload}: {added} item(s) accepted, {lr.p.state}, revision {lr.p.revision}"

    def tick(self) -> list[wire.Event]:
        """About once a second: profiles quiet long enough become stable;
        ``wire.Profile`` events for those changed since their last upload
        (at most one per ``upload`` seconds each, but at once for a new
        state)."""
        now = self._clock()
        for lr in self.learners.values():
            p = lr.p
            if p.state == "learning" and now - p.started >= self.s.learn and now - p.changed >= self.s.stable:
                self._set_state(lr, "stable", now)
        out: list[wire.Event] = []
        self._unsent.update(w for w, sent in self._sent.items() if now - sent >= self.s.refresh)
        for w in sorted(self._unsent):
            if w not in self._urgent and now - self._sent.get(w, -1e18) < self.s.upload:
                continue
            out.append(self.upload(w, now))
            self._unsent.discard(w)
            self._urgent.discard(w)
            self._sent[w] = now
        return out

    def upload(self, workload: str, now: float | None = None) -> wire.Profile:
        lr = self.learners[workload]
        p = lr.export()
        body = msgspec.msgpack.encode(p)
        if len(body) > wire.MAX_PROFILE:  # the hive gets its state and size; the agent keeps the rest
            body = b""
        return wire.Profile(time=int((self._clock() if now is None else now) * 1e9), verdict="allow",
                            workload=workload, state=p.state, revision=p.revision, items=lr.size(),
                            profile_version=PROFILE_VERSION, body=body, cgroup_path=p.cgroup_path)

    def take_dirty(self) -> list[Profile]:
        """Copies of the profiles changed since the last call (to save on
        another thread while this one goes on changing them)."""
        out = [msgspec.structs.replace(p, pending=dict(p.pending))
               for p in (self.learners[w].export() for w in sorted(self.dirty))]
        self.dirty.clear()
        return out


def decode_profile(body: bytes) -> Profile:
    """A profile as a ``wire.Profile`` event carries it; msgspec's errors as ValueError."""
    try:
        p = msgspec.msgpack.decode(body, type=Profile)
    except msgspec.DecodeError as e:
        raise ValueError(f"not a profile: {e}") from None
    check(p)
    return p


def check(p: Profile) -> None:
    """ValueError unless every item of ``p`` is one of the kind it is listed under."""
    for kind, items in p.items.items():
        for item in items:
            if not valid_item(item, kind):
                raise ValueError(f"not a profile item of {kind!r}: {item[:80]!r}")
    for item in p.pending:
        if not valid_item(item):
            raise ValueError(f"not a profile item: {item[:80]!r}")
    if p.cgroup_path and not p.cgroup_path.startswith("/"):
        raise ValueError(f"cgroup_path {p.cgroup_path[:80]!r}: not an absolute cgroup v2 path")


# --------------------------------------------------------------------------
# On disk
# --------------------------------------------------------------------------


class _File(msgspec.Struct):
    version: int
    profile: Profile


class ProfileStore:
    """One file per workload under ``folder``: ``_File`` msgpack, written
    whole to a temporary name and renamed, so a crash leaves the old one."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, workload: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", workload)[:80]
        return self.folder / f"{safe}-{hashlib.sha256(workload.encode()).hexdigest()[:8]}.profile"

    def save(self, profiles: Iterable[Profile]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        enc = msgspec.msgpack.Encoder()
        for p in profiles:
            path = self._path(p.workload)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(enc.encode(_File(PROFILE_VERSION, p)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    def load(self) -> tuple[list[Profile], list[str]]:
        """The profiles kept, and a line per file that could not be read
        (kept aside as ``.bad``, so learning starts over rather than stops)."""
        out, bad = [], []
        if not self.folder.is_dir():
            return out, bad
        dec = msgspec.msgpack.Decoder(_File)
        for path in sorted(self.folder.glob("*.profile")):
            try:
                f = dec.decode(path.read_bytes())
                if f.version != PROFILE_VERSION:
                    raise ValueError(f"version {f.version}, this agent reads {PROFILE_VERSION}")
                check(f.profile)
                out.append(f.profile)
            except (OSError, msgspec.DecodeError, ValueError) as e:
                bad.append(f"{path.name}: {e}")
                try:
                    path.rename(path.with_suffix(".bad"))
                except OSError:
                    pass
        return out, bad


class Learning:
    """What the relay holds: the profiles, where they are kept, and the
    answers to the hive's ``update_profile`` commands.  Its disk writes are
    ``save``, for a worker thread."""

    def __init__(self, agent: str, folder: Path, settings: ProfileSettings | None = None, *,
                 clock: Callable[[], float] = time.time, log: Callable[[str], None] = lambda line: None,
                 resolve: Callable[[int, int], str | None] | None = None) -> None:
        self.store = ProfileStore(folder)
        kept, bad = self.store.load()
        for line in bad:
            log(f"profile file set aside: {line}")
        self.profiles = Profiles(agent, settings, clock=clock, profiles=kept, resolve=resolve)
        self._kills: OrderedDict[str, str] = OrderedDict()
        """Kills sent to the executor and not answered: the alert of each."""
        self._log = log

    def observe(self, events: list[wire.Event]) -> tuple[list[wire.Event], list[wire.KillProcess]]:
        """``events`` with the novelty alerts behind them, and the kills an
        enforcing profile decided, for the executor now."""
        events = self.profiles.observe(events)
        if not self.profiles.commands:
            return events, []
        decided, self.profiles.commands = self.profiles.commands, []
        for k, alert in decided:
            self._kills[k.id] = alert
            if len(self._kills) > 4096:  # a result comes within a second or is lost with the executor
                self._kills.popitem(last=False)
            self._log(f"profile.enforce alert={alert} action=kill_process pid={k.pid} exe={k.exe} id={k.id}")
        kills = [k for k, _ in decided]
        return events, kills

    def owns(self, command: str) -> bool:
        return command in self._kills

    def answered(self, result: wire.CommandResult) -> wire.Edge:
        """The Edge event that reports an enforcing kill's result, as the
        edge reports its playbooks' (spooled: the hive may be away)."""
        return wire.fit(wire.Edge(time=time.time_ns(), verdict="audit", answered=True,
                                  alert=self._kills.pop(result.command, ""), actions=[
            wire.EdgeAction(id=result.command, action="kill_process", detail=result.detail, ok=result.ok)]))

    def tick(self) -> tuple[list[wire.Event], list[Profile]]:
        """Events to spool (profiles for the hive) and profiles to save."""
        return self.profiles.tick(), self.profiles.take_dirty()

    def save(self, profiles: list[Profile]) -> None:
        self.store.save(profiles)

    def update(self, cmd: wire.UpdateProfile) -> wire.CommandResult:
        try:
            detail = self.profiles.accept(cmd.workload, cmd.accept, cmd.state)
        except ValueError as e:
            return wire.CommandResult(command=cmd.id, ok=False, detail=str(e))
        return wire.CommandResult(command=cmd.id, ok=True, detail=detail)
