"""Which container a process runs in: its id, runtime, name and image.

Read from ``/proc/PID/cgroup`` (every line: a hybrid v1/v2 machine names a
runc container in ``0::/ID`` and ``name=systemd:/ID`` alike) and from each
runtime's own state on disk; no runtime API, no socket:

==============  ===============================================  ==========================================
runtime         cgroup                                           name and image from
==============  ===============================================  ==========================================
docker          ``docker-ID.scope``, ``/docker/ID``              ``/var/lib/docker/containers/ID/config.v2.json``
                                                                 (``Name``, ``Config.Image``)
containerd      ``cri-containerd-ID.scope``, ``nerdctl-ID.scope``,  the task bundle's ``config.json``
                ``/NAMESPACE/ID``                                (``/run/containerd/io.containerd.runtime.v2.task/NS/ID``):
                                                                 annotations (``io.kubernetes.cri.*``)
cri-o           ``crio-ID.scope``                                ``overlay-containers/ID/userdata/config.json`` under
                                                                 ``/var/lib/containers/storage`` or ``/run/containers/storage``:
                                                                 annotations (``io.kubernetes.cri-o.*``)
podman          ``libpod-ID.scope``, ``/libpod_parent/...``      ``overlay-containers/containers.json`` (names, metadata's
                                                                 ``image-name``), else the bundle's annotations
runc            ``/ID`` (cgroupfs), ``runc-ID.scope``            ``/run/runc/ID/state.json``: its labels (runc copies the
                                                                 bundle's annotations there)
crun            ``/ID``, ``crun-ID.scope``                       ``/run/crun/ID/status``: the bundle's ``config.json``
lxc             ``lxc.payload.NAME``, ``/lxc/NAME``              ``/var/lib/lxc/NAME/config`` (the download template's
                                                                 ``--dist``/``--release``)
systemd-nspawn  ``systemd-nspawn@NAME.service``,                 ``/run/systemd/machines/NAME`` (``CLASS=container``;
                ``machine-NAME.scope``                           its ``ROOT`` is machined's image)
==============  ===============================================  ==========================================

A runtime without ids of its own (runc, crun, LXC, nspawn) is known by its
name, which is then both id and name.  An image comes from the runtime's
files or is left empty: an OCI bundle names one only through an annotation
(``io.kubernetes.cri.image-name``, ``io.kubernetes.cri-o.ImageName``,
``org.opencontainers.image.ref.name``).

Every file is read within a size bound, never followed into a FIFO or a
device; a file that cannot be read leaves the fields it would have given
empty, with one log line per file.  Lookups are cached: by the cgroup id the
kernel reports (unique for the life of a boot), and by the container's cgroup
path with its directory's inode (so a runc id used again by a new container
is a new entry).  A cgroup whose runc or crun directory exists without its
state file is a container being created (runc makes the directory, puts the
first process in the cgroup, then writes state.json, ~20 ms later): that
answer is never cached.  Another result found without a runtime's state is
retried after a second; entries of containers whose cgroup is gone are swept
out.  One resolver may be shared between threads: files are read
outside its lock."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from wire import fit_text

log = logging.getLogger("immune.kmod.containers")

RUNTIMES = ("docker", "containerd", "podman", "cri-o", "crun", "runc", "lxc", "systemd-nspawn")

_MAX_STATE = 1 << 20
"""Bytes of one runtime state file (a docker config.v2.json is tens of KiB)."""
_MAX_LIST = 8 << 20
"""Bytes of podman's containers.json, one entry per container of the host."""
_MAX_CGROUP = 64 << 10
_FILEID_KERNFS = 0xFE
"""A cgroup v2 directory's file handle: its 8-byte id, what the kernel reports."""
_libc = ctypes.CDLL(None, use_errno=True)
_RETRY = 1.0
"""Seconds before a container found without its runtime's state is looked up again."""
_SWEEP = 30.0
_CACHE = 4096
_LOGGED = 256
_NAMESPACES = 64
"""containerd namespaces looked into for a task (moby, k8s.io, default, ...)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCOPED = re.compile(r"(docker|cri-containerd|crio|libpod|nerdctl|runc|crun)-(.+)\.scope")
_RUNTIME_OF_PREFIX = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman",
                      "nerdctl": "containerd", "runc": "runc", "crun": "crun"}
_RUNTIME_OF_PARENT = {"docker": "docker", "libpod_parent": "podman"}
_UNIT_SUFFIXES = (".slice", ".service", ".scope", ".socket", ".mount", ".swap")
_MONITORS = ("conmon", "lxc.monitor.")
"""Cgroups of the processes that watch a container from outside (podman's and
CRI-O's conmon, LXC's monitor): not in it."""
_NSPAWN = re.compile(r"systemd-nspawn@(.+)\.service")
_MACHINE = re.compile(r"machine-(.+)\.scope")
_NAME_KEYS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name", "nerdctl/name")
_IMAGE_KEYS = ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName", "org.opencontainers.image.ref.name")
_CRIO_KEY = "io.kubernetes.cri-o."
_CONTAINERD_TASKS = "run/containerd/io.containerd.runtime.v2.task"
_STORAGES = ("var/lib/containers/storage", "run/containers/storage")


@dataclass(frozen=True, slots=True)
class ContainerIdentity:
    """A container as the runtime's own state says, spelled for the wire
    (``wire.Event.container``, ``container_runtime``, ...)."""

    id: str
    runtime: str = ""
    """One of ``RUNTIMES``; "" when the cgroup names a container id but no runtime's state was found."""
    name: str = ""
    image: str = ""
    cgroup: str = ""
    """The container's cgroup v2 path (its processes are in it or below); "" if only a v1 hierarchy names it."""


@dataclass(frozen=True, slots=True)
class _Found:
    """What the cgroup path says: a container (``sure``), or a name that is
    one only if a runtime's state says so."""

    id: str
    hint: str
    """The runtime the path's convention names, "" if none."""
    path: str
    """The cgroup path up to the container's own directory."""
    sure: bool
    v2: bool


@dataclass(frozen=True)
class ContainerStatistics:
    lookups: int
    """Identities asked of the resolver."""
    resolved: int
    """Of those, found by reading the runtime's files (the rest were cached)."""
    proc_reads: int
    """/proc/PID/cgroup files read."""
    file_errors: int
    """Runtime state files that could not be read or parsed."""
    cached: int


class _Entry:
    __slots__ = ("identity", "expires", "path", "inode")

    def __init__(self, identity: ContainerIdentity | None, expires: float, path: str, inode: int):
        self.identity, self.expires, self.path, self.inode = identity, expires, path, inode


_HOST = _Entry(None, float("inf"), "", 0)
_NAMED_BY_ID = ("runc", "crun", "lxc", "systemd-nspawn")


class Containers:
    """The container identity resolver.  ``root`` is where the runtimes'
    state lives (``/``; a test gives a folder laid out the same way),
    ``proc`` the procfs to read cgroups from, ``cgroup2`` the cgroup v2 mount
    (found in ``proc``'s mounts when None)."""

    def __init__(self, *, root: str | os.PathLike = "/", proc: str | os.PathLike = "/proc",
                 cgroup2: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.proc = str(proc)
        self.cgroup2 = str(cgroup2) if cgroup2 is not None else cgroup2_mount(self.proc)
        self._lock = threading.Lock()
        self._parsed: OrderedDict[str, tuple[_Found, ...]] = OrderedDict()
        self._known: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._by_cgroup: OrderedDict[int, _Entry] = OrderedDict()
        self._paths: OrderedDict[int, str] = OrderedDict()  # cgroup id -> v2 path (cgroup_path)
        self._logged: set[str] = set()
        self._next_sweep = time.monotonic() + _SWEEP
        self._lookups = self._resolved = self._proc_reads = self._file_errors = 0

    # -- asking ------------------------------------------------------------------------

    def of_pid(self, pid: int, cgroup: int = 0,
               gone: ContainerIdentity | None = None) -> ContainerIdentity | None:
        """The container process ``pid`` runs in (None: the host).
        ``cgroup``: its cgroup v2 id if known (what the kernel reports):
        once any process of that cgroup was seen, no /proc read, and an
        answer even for a process already gone (a refused exec's caller
        exits at once).  ``gone``: the answer when the process is gone and
        its cgroup was never seen."""
        now = time.monotonic()
        with self._lock:
            self._lookups += 1
            entry = self._by_cgroup.get(cgroup) if cgroup else None
            if entry is not None and entry.expires > now:
                return entry.identity
        text = self._read_cgroup(pid)
        if text is None and cgroup:
            # The process is gone, its cgroup may not be; an expired entry
            # (made before the runtime wrote its state) is asked again too.
            text = self._cgroup_text(cgroup)
        if text is None:
            return entry.identity if entry is not None else gone
        return self._remember(self._identify(text, now), cgroup)

    def cgroup_path(self, pid: int, cgroup: int = 0) -> str | None:
        """The cgroup v2 path (from the cgroup2 mount) process ``pid`` runs
        in, for rules that select cgroups.  ``cgroup``: its id as the kernel
        reported it, which is the truth even if the process moved since or
        is gone: its path is found once by the id's file handle and kept.
        None: neither is there any more."""
        if cgroup:
            with self._lock:
                path = self._paths.get(cgroup)
            if path is not None:
                return path
            text = self._cgroup_text(cgroup)
            if text is None and pid > 0:  # no handle (no cgroup2 mount known): where it is now
                text = self._read_cgroup(pid)
        else:
            text = self._read_cgroup(pid)
        path = v2_path(text) if text is not None else None
        if path is not None and cgroup:
            with self._lock:
                _put(self._paths, cgroup, path)
        return path

    def identify(self, cgroup_text: str, cgroup: int = 0) -> ContainerIdentity | None:
        """The container the text of a /proc/PID/cgroup names, if any;
        ``cgroup``: that cgroup's id, to answer ``of_pid`` by it later."""
        with self._lock:
            self._lookups += 1
        return self._remember(self._identify(cgroup_text, time.monotonic()), cgroup)

    def _remember(self, entry: _Entry, cgroup: int) -> ContainerIdentity | None:
        if cgroup:
            with self._lock:
                _put(self._by_cgroup, cgroup, entry)
        return entry.identity

    def running(self) -> list[ContainerIdentity]:
        """Every container with a process on this machine now (for a scope)."""
        seen: dict[tuple[str, str], ContainerIdentity] = {}
        for _, identity in self.processes():
            seen.setdefault((identity.runtime, identity.id), identity)
        return list(seen.values())

    def processes(self) -> Iterator[tuple[int, ContainerIdentity]]:
        """(pid, its container) of every process in a container now."""
        for name in os.listdir(self.proc):
            text = self._read_cgroup(int(name)) if name.isdigit() else None
            identity = self._identify(text, time.monotonic()).identity if text else None
            if identity is not None:
                yield int(name), identity

    def statistics(self) -> ContainerStatistics:
        with self._lock:
            return ContainerStatistics(lookups=self._lookups, resolved=self._resolved,
                                       proc_reads=self._proc_reads, file_errors=self._file_errors,
                                       cached=len(self._known) + len(self._by_cgroup))

    # -- the caches ----------------------------------------------------------------------

    def _identify(self, text: str, now: float) -> _Entry:
        with self._lock:
            found = self._parsed.get(text)
        if found is None:
            found = _parse(text)
            with self._lock:
                _put(self._parsed, text, found)
        if not found:
            return _HOST
        # The container's directory: its inode tells a new container under an old name.
        first = found[0]
        key = (first.path, self._inode(first))
        with self._lock:
            entry = self._known.get(key)
            if entry is not None and entry.expires > now:
                return entry
            sweep = now >= self._next_sweep
            if sweep:
                self._next_sweep = now + _SWEEP
        if sweep:
            self._sweep()
        identity, complete = self._resolve(found)
        if complete is None:  # being created: asked again at the next lookup
            expires = now
        else:
            expires = float("inf") if complete and key[1] else now + _RETRY
        entry = _Entry(identity, expires, first.path, key[1])
        with self._lock:
            self._resolved += 1
            _put(self._known, key, entry)
        return entry

    def _inode(self, found: _Found) -> int:
        if not (found.v2 and self.cgroup2):
            return 0
        try:
            return os.stat(self.cgroup2 + found.path).st_ino
        except OSError:
            return 0

    def _sweep(self) -> None:
        """Forget the containers whose cgroup is gone (or is another's now)."""
        with self._lock:
            alive = {(e.path, e.inode) for e in self._known.values() if e.inode}
        gone = set()
        for path, inode in alive:
            try:
                if os.stat(self.cgroup2 + path).st_ino != inode:
                    gone.add((path, inode))
            except OSError:
                gone.add((path, inode))
        with self._lock:
            for key in gone:
                self._known.pop(key, None)
            for cg in [cg for cg, e in self._by_cgroup.items() if (e.path, e.inode) in gone]:
                del self._by_cgroup[cg]

    def _cgroup_text(self, cgroup: int) -> str | None:
        """A /proc/PID/cgroup text naming the cgroup v2 directory whose id
        is ``cgroup``, found by its file handle (root: CAP_DAC_READ_SEARCH);
        None if it is gone or cannot be opened."""
        if not self.cgroup2:
            return None
        try:
            mount = os.open(self.cgroup2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            handle = ctypes.create_string_buffer(struct.pack("<IiQ", 8, _FILEID_KERNFS, cgroup))
            fd = _libc.open_by_handle_at(mount, handle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if fd < 0:
                return None
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        except OSError:
            return None
        finally:
            os.close(mount)
        if path != self.cgroup2 and not path.startswith(self.cgroup2 + "/"):
            return None
        return f"0::{path[len(self.cgroup2):] or '/'}\n"

    def _read_cgroup(self, pid: int) -> str | None:
        with self._lock:
            self._proc_reads += 1
        try:
            with open(f"{self.proc}/{pid}/cgroup", "rb") as f:
                return os.fsdecode(f.read(_MAX_CGROUP))  # anyone may name a delegated cgroup
        except OSError:
            return None

    # -- the runtimes' files -----------------------------------------------------------------

    def _resolve(self, found: tuple[_Found, ...]) -> tuple[ContainerIdentity | None, bool | None]:
        """(identity, complete): False when no runtime's state was found,
        to be looked up again soon; None when runc or crun is creating the
        container (its directory is there, its state not yet), to be looked
        up again at once."""
        for f in found:
            identity = self._from_runtime(f)
            if identity is not None:
                return ContainerIdentity(fit_text(identity.id), identity.runtime, fit_text(identity.name),
                                         fit_text(identity.image), f.path if f.v2 else ""), True
            creating = self._being_created(f)
            if f.sure or creating:  # the cgroup's name or a runtime's directory says container
                cid = fit_text(f.id)
                hint = f.hint or creating
                return ContainerIdentity(cid, hint, cid if hint in _NAMED_BY_ID else "", "",
                                         f.path if f.v2 else ""), None if creating else False
        return None, False

    def _being_created(self, f: _Found) -> str:
        """The runtime (runc, crun) whose directory for this id exists while
        its state file does not, "" if none.  Called once the state was not
        found; runc makes the directory before the cgroup."""
        if f.hint not in ("", "runc", "crun"):
            return ""
        for runtime in ("runc", "crun") if not f.hint else (f.hint,):
            if (self.root / "run" / runtime / f.id).is_dir():
                return runtime
        return ""

    def _from_runtime(self, f: _Found) -> ContainerIdentity | None:
        if f.hint == "lxc":
            return self._lxc(f.id)
        if f.hint in ("systemd-nspawn", "machine"):
            return self._machine(f.id, nspawn_unit=f.hint == "systemd-nspawn")
        if f.hint == "docker":
            return self._docker(f.id)
        if f.hint in ("podman", "cri-o"):
            return self._storage(f.id, f.hint)
        if f.hint == "containerd":
            return self._containerd(f.id)
        if f.hint == "runc":
            return self._runc(f.id)
        if f.hint == "crun":
            return self._crun(f.id)
        # No convention named the runtime: the one whose state has the id.
        # docker and podman run their containers through containerd and runc,
        # so they are asked first.
        return (self._docker(f.id) or self._storage(f.id, "") or self._containerd(f.id)
                or self._runc(f.id) or self._crun(f.id))

    def _docker(self, cid: str) -> ContainerIdentity | None:
        path = self.root / "var/lib/docker/containers" / cid / "config.v2.json"
        if not path.parent.is_dir():
            return None
        doc = self._json(path)
        config = doc.get("Config") if isinstance(doc, dict) else None
        return ContainerIdentity(cid, "docker", _text(doc, "Name").lstrip("/"),
                                 _text(config, "Image"))

    def _storage(self, cid: str, hint: str) -> ContainerIdentity | None:
        """podman and CRI-O share containers/storage; CRI-O's bundles carry
        its annotations."""
        userdata = [self.root / s / "overlay-containers" / cid / "userdata" for s in _STORAGES]
        present = [u for u in userdata if u.is_dir()]
        if not present:
            return None
        annotations: dict = {}
        for u in present:
            if (u / "config.json").exists():
                annotations = _annotations(self._json(u / "config.json"))
                break
        crio = hint == "cri-o" or any(k.startswith(_CRIO_KEY) for k in annotations)
        if crio:
            name = _first(annotations, ("io.kubernetes.container.name", "io.kubernetes.cri-o.ContainerName"))
            return ContainerIdentity(cid, "cri-o", name, _first(annotations, _IMAGE_KEYS))
        name = image = ""
        listing = self._json(self.root / _STORAGES[0] / "overlay-containers/containers.json", _MAX_LIST)
        for entry in listing if isinstance(listing, list) else ():
            if isinstance(entry, dict) and entry.get("id") == cid:
                names = entry.get("names")
                if isinstance(names, list) and names and isinstance(names[0], str):
                    name = names[0]
                try:
                    meta = msgspec.json.decode(entry.get("metadata") or "{}")
                except (msgspec.DecodeError, TypeError):
                    meta = {}
                image = _text(meta, "image-name")
                name = name or _text(meta, "name")
                break
        return ContainerIdentity(cid, "podman", name or _first(annotations, _NAME_KEYS),
                                 image or _first(annotations, _IMAGE_KEYS))

    def _containerd(self, cid: str) -> ContainerIdentity | None:
        tasks = self.root / _CONTAINERD_TASKS
        try:
            namespaces = sorted(os.listdir(tasks))[:_NAMESPACES]
        except OSError:
            return None
        for ns in namespaces:
            bundle = tasks / ns / cid
            if bundle.is_dir():
                annotations = _annotations(self._json(bundle / "config.json"))
                return ContainerIdentity(cid, "containerd", _first(annotations, _NAME_KEYS),
                                         _first(annotations, _IMAGE_KEYS))
        return None

    def _runc(self, cid: str) -> ContainerIdentity | None:
        path = self.root / "run/runc" / cid / "state.json"
        if not path.exists():
            return None
        doc = self._json(path)
        config = doc.get("config") if isinstance(doc, dict) else None
        labels = config.get("labels") if isinstance(config, dict) else None
        annotations = dict(label.partition("=")[::2] for label in labels if isinstance(label, str)) \
            if isinstance(labels, list) else {}
        return ContainerIdentity(cid, "runc", _first(annotations, _NAME_KEYS) or cid,
                                 _first(annotations, _IMAGE_KEYS))

    def _crun(self, cid: str) -> ContainerIdentity | None:
        path = self.root / "run/crun" / cid / "status"
        if not path.exists():
            return None
        bundle = _text(self._json(path), "bundle")
        annotations = _annotations(self._json(Path(bundle) / "config.json")) if bundle.startswith("/") else {}
        return ContainerIdentity(cid, "crun", _first(annotations, _NAME_KEYS) or cid,
                                 _first(annotations, _IMAGE_KEYS))

    def _lxc(self, name: str) -> ContainerIdentity:
        image = ""
        text = self._text_file(self.root / "var/lib/lxc" / name / "config")
        for line in (text or "").splitlines():
            # "# Parameters passed to the template: --dist debian --release bookworm --arch amd64"
            if line.startswith("# Parameters passed to the template:"):
                words = line.split(":", 1)[1].split()
                opts = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("-")}
                dist, release = opts.get("--dist") or opts.get("-d"), opts.get("--release") or opts.get("-r")
                if dist:
                    image = f"{dist}:{release}" if release else dist
        return ContainerIdentity(name, "lxc", name, image)

    def _machine(self, name: str, nspawn_unit: bool) -> ContainerIdentity | None:
        """machined's record; a ``machine-NAME.scope`` is a container only if
        it says ``CLASS=container`` (else a VM, whose processes are not in one)."""
        text = self._text_file(self.root / "run/systemd/machines" / name, quiet=not nspawn_unit)
        fields = dict(line.partition("=")[::2] for line in (text or "").splitlines())
        if not nspawn_unit and fields.get("CLASS") != "container":
            return None
        service = fields.get("SERVICE", "")
        runtime = "systemd-nspawn" if nspawn_unit or "nspawn" in service or not service else fit_text(service)
        return ContainerIdentity(name, runtime, name, fields.get("ROOT", ""))

    def _json(self, path: Path, limit: int = _MAX_STATE):
        data = self._bytes(path, limit)
        if data is None:
            return None
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as e:
            self._failed(path, f"not JSON ({e})")
            return None

    def _text_file(self, path: Path, quiet: bool = False) -> str | None:
        data = self._bytes(path, _MAX_STATE, quiet)
        return None if data is None else data.decode(errors="replace")

    def _bytes(self, path: Path, limit: int, quiet: bool = False) -> bytes | None:
        """The file's bytes if it is a regular file of at most ``limit``
        bytes; O_NONBLOCK so that a FIFO put there cannot hang us."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            if not quiet and e.errno != 2:
                self._failed(path, e.strerror or str(e))
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._failed(path, "not a regular file")
                return None
            if st.st_size > limit:
                self._failed(path, f"{st.st_size} bytes, over the {limit} read")
                return None
            data = os.read(fd, limit + 1)
            if len(data) > limit:
                self._failed(path, f"over the {limit} bytes read")
                return None
            return data
        except OSError as e:
            self._failed(path, e.strerror or str(e))
            return None
        finally:
            os.close(fd)

    def _failed(self, path: Path, why: str) -> None:
        with self._lock:
            self._file_errors += 1
            first = str(path) not in self._logged
            if first and len(self._logged) < _LOGGED:
                self._logged.add(str(path))
        if first:
            log.warning("container state %s: %s; its name and image are left empty", path, why)


def _put(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > _CACHE:
        cache.popitem(last=False)


def _text(doc, key: str) -> str:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def _annotations(doc) -> dict:
    value = doc.get("annotations") if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def _first(annotations: dict, keys: tuple[str, ...]) -> str:
    for k in keys:
        v = annotations.get(k)
        if isinstance(v, str) and v:
            return v
    return ""


def _unescape(name: str) -> str:
    """systemd's unit name escaping: ``my\\x2dbox`` is ``my-box``."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def _parse(text: str) -> tuple[_Found, ...]:
    """The containers a /proc/PID/cgroup text may name, best first: the v2
    line, then the v1 systemd one, then the other hierarchies."""
    v2, systemd, others = [], [], []
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path or path == "/":
            continue
        if hier == "0" and controllers == "":
            v2.append(path)
        elif controllers == "name=systemd":
            systemd.append(path)
        else:
            others.append(path)
    out: dict[tuple[str, str], _Found] = {}
    for path in v2 + systemd + others:
        for f in _in_path(path, v2=path in v2):
            out.setdefault((f.id, f.hint), f)
    sure = [f for f in out.values() if f.sure]
    return tuple(sure + [f for f in out.values() if not f.sure])


def _in_path(path: str, v2: bool) -> list[_Found]:
    """The outermost container a cgroup path names (a container inside a
    container has its state inside the outer one, out of our sight), or the
    names in it that a runtime's state may confirm."""
    parts = path.strip("/").split("/")
    maybe: list[_Found] = []

    def found(i: int, cid: str, hint: str, sure: bool = True) -> _Found:
        return _Found(cid, hint, "/" + "/".join(parts[:i + 1]), sure, v2)

    for i, part in enumerate(parts):
        if any(m in part for m in _MONITORS):
            return []
        if part.startswith("lxc.payload."):
            return [found(i, part[len("lxc.payload."):], "lxc")]
        if i == 1 and parts[0] == "lxc":
            return [found(i, part, "lxc")]
        m = _NSPAWN.fullmatch(part)
        if m:
            if parts[i + 1:i + 2] == ["supervisor"]:  # nspawn itself, beside the payload
                return []
            return [found(i, _unescape(m.group(1)), "systemd-nspawn")]
        m = _MACHINE.fullmatch(part)
        if m and i > 0 and parts[i - 1] == "machine.slice":
            maybe.append(found(i, _unescape(m.group(1)), "machine", sure=False))
            continue
        m = _SCOPED.fullmatch(part)
        if m:
            prefix, cid = m.groups()
            if prefix in ("runc", "crun") or _HEX64.fullmatch(cid):
                return [found(i, cid, _RUNTIME_OF_PREFIX[prefix])]
        if _HEX64.fullmatch(part):
            parent = parts[i - 1] if i else ""
            return [found(i, part, _RUNTIME_OF_PARENT.get(parent, ""))]
        if not part.endswith(_UNIT_SUFFIXES) and part not in ("payload", "supervisor"):
            maybe.append(found(i, part, "", sure=False))  # runc's, crun's or containerd's own names
    return maybe


def v2_path(cgroup_text: str) -> str | None:
    """The cgroup v2 path a /proc/PID/cgroup text names ("0::/PATH")."""
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            # a process moved out of a cgroup removed since: "/x (deleted)"
            return path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path
    return None


def cgroup2_mount(proc: str) -> str:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or .../unified on hybrid
    layouts); "" if nowhere."""
    try:
        with open(f"{proc}/mounts", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        pass
    return ""


_shared: Containers | None = None
_shared_lock = threading.Lock()


def machine_containers() -> Containers:
    """The machine's resolver, one per process: the policy's matching in
    the fanotify guard and the decoder share its cache."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Containers()
        return _shared
