"""The process table: who is behind every event.

Seeded from /proc at start and kept current by the sensor's exec, fork and
exit events, so that enriching an event costs dictionary lookups, not
/proc reads.  /proc is read only for a process no event announced (it
started before the seed, or its fork was lost), and the executable is hashed
once per (device, inode, mtime, size).  Hashing reads up to ``hash_limit``
bytes: :meth:`ProcessTable.enrich_all` leaves it to a :class:`HashJob` that
the caller runs on another thread, so the relay's trio thread never waits
for a disk.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import stat
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import wire
from kmod import ContainerIdentity, Containers, cgroup2_mount, machine_containers
from wire import fit_text

from ._packages import PackageIndex, is_manager, system_packages

TOO_LARGE = "too-large"
"""``sha256`` of an executable bigger than the hash limit: not hashed, on purpose."""

ENRICHED = frozenset({"image", "cmdline", "parent_image", "parent_cmdline", "user", "sha256", "unit", "container",
                      "container_runtime", "container_name", "container_image", "package", "package_session"})
"""The event fields enrichment writes, and the only ones but ``SetId.held``
(a flag, nothing to fit): the relay fits these into the wire's bounds
before it spools an event.  The table spells
the names it reads from the system as the kernel sensor does (a byte that
is not UTF-8 as U+FFFD, ``wire.fit_text``), once per process, user or
cgroup: the same file has one name whichever told it, and the relay's fit
has nothing to rewrite.  Only ``Process.exe``, which names the file to
hash, keeps the bytes (as ``os.fsdecode``'s surrogates)."""

_UNIT = re.compile(r"\.(?:service|scope|socket|mount|swap)$")
_RECENT_EXITS = 1024
_CACHE = 4096
_PATHS_TRIED = 4
_UID_CALLS = frozenset({"setuid", "setreuid", "setresuid", "setfsuid"})
_LINEAGE_DEPTH = 64


def _real_uid(status: bytes) -> frozenset[int] | None:
    """The real uid on the ``Uid:`` line of /proc/PID/status."""
    at = status.find(b"\nUid:")
    if at < 0:
        return None
    fields = status[at + 5:status.find(b"\n", at + 1)].split()
    return frozenset({int(fields[0])}) if fields and fields[0].isdigit() else None


def parse_cgroup(text: str) -> tuple[str, str]:
    """``(path, unit)`` from the text of /proc/PID/cgroup.

    The path is the cgroup v2 one (``0::/...``), else the v1 systemd one.
    The unit is the innermost systemd unit in it, as the wire spells it (the
    path keeps its bytes, to be looked up).  The container is
    ``kmod.Containers``'s to say."""
    path = ""
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, p = rest.partition(":")
        if hier == "0" and controllers == "":
            path = p
            break
        if controllers == "name=systemd" or (not path and p):
            path = p
    unit = ""
    for part in path.split("/"):
        if _UNIT.search(part):
            unit = part
    return path, fit_text(unit)


class _Hashing:
    """An executable to hash, and the events and processes that wait for its digest."""

    __slots__ = ("key", "paths", "digest", "waiting")

    def __init__(self, key: tuple[int, int, int, int], path: str) -> None:
        self.key = key
        self.paths = [path]
        """Where it was seen (a /proc/PID/exe may be gone by the time it is read)."""
        self.digest: str | None = None
        self.waiting: list[wire.Event | Process] = []


class HashJob:
    """Executables :meth:`ProcessTable.enrich_all` left to hash.  :meth:`run`
    reads them and touches nothing else, so it may run on any thread; then
    :meth:`ProcessTable.complete` fills their digests in."""

    def __init__(self, files: list[_Hashing]) -> None:
        self.files = files

    def run(self) -> None:
        for f in self.files:
            for path in f.paths:
                f.digest = _digest(path, f.key)
                if f.digest is not None:
                    break


def _digest(path: str, key: tuple[int, int, int, int]) -> str | None:
    """SHA-256 of ``path`` if it is still the file ``key`` names, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, now.st_mtime_ns, now.st_size) != key:
            return None  # replaced in between: do not file a digest under the old identity
        h = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            h.update(chunk)
            offset += len(chunk)
        return h.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


class Process:
    __slots__ = ("pid", "ppid", "image", "exe", "cmdline", "cgroup", "unit", "container", "sha256",
                 "hashing", "package", "session", "uids")

    def __init__(self, pid: int, ppid: int = 0, image: str = "", exe: str = "", cmdline: str = "",
                 cgroup: int = 0, unit: str = "", container: ContainerIdentity | None = None,
                 package: str = "", uids: frozenset[int] | None = None) -> None:
        self.pid = pid
        self.ppid = ppid
        self.image = image
        """What rules call Image: the path given to execve, or /proc's exe for a seeded process,
        spelled as the wire does."""
        self.exe = exe
        """The executable the kernel resolved (what gets hashed)."""
        self.cmdline = cmdline
        self.cgroup = cgroup
        self.unit = unit
        self.container = container
        """None on the host."""
        self.sha256: str | None = None
        """None until first needed."""
        self.hashing: _Hashing | None = None
        """Its executable being hashed (sha256 is then still None)."""
        self.package = package
        """The package its program came from ("" if none, or in a container)."""
        self.session: str | None = None
        """The package manager it descends from (itself included), "" if none;
        None until first needed."""
        self.uids = uids
        """The user ids its program held: the real uid it was started with
        (at its exec, or as read from /proc), the real ones it ran as since
        and the effective ones it gave up; None if not known.  An exec starts
        it again: what root's setpriv or cron held is not the user program's
        it execs.  Learned from fork, exec and set*uid calls only, never from
        other events: a process whose credentials a kernel exploit rewrote
        does not vouch for itself."""

    def copy(self, pid: int, ppid: int) -> "Process":
        child = Process(pid, ppid, self.image, self.exe, self.cmdline, self.cgroup, self.unit, self.container,
                        self.package, self.uids)
        child.session = self.session
        child.sha256 = self.sha256
        if self.hashing is not None:
            child.hashing = self.hashing
            self.hashing.waiting.append(child)
        return child

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, ppid={self.ppid}, image={self.image!r}, cmdline={self.cmdline!r})"


@dataclass(frozen=True)
class ProcessTableStatistics:
    processes: int
    seeded: int
    loaded: int
    """Processes read from /proc because no event had announced them."""
    unknown: int
    """Processes gone before they could be read: their events carry less."""
    evicted: int
    """Live processes forgotten because the table was full."""
    hashed: int
    hash_hits: int
    hash_skipped: int
    """Executables over the hash limit."""
    hash_failed: int


class ProcessTable:
    """Processes by pid.  :meth:`enrich` both reads and updates it."""

    def __init__(self, *, proc: str | os.PathLike = "/proc", cgroup_root: str | os.PathLike | None = None,
                 max_processes: int = 32768, hash_limit: int = 32 << 20, cmdline_limit: int = 8192,
                 containers: Containers | None = None, packages: PackageIndex | None = None) -> None:
        self.proc = Path(proc)
        # "" if cgroup v2 is mounted nowhere: then cgroup ids are not resolved.
        self.cgroup_root = str(cgroup_root) if cgroup_root is not None else cgroup2_mount(str(self.proc))
        # The machine's resolver, whose cache the sensor's policy and the response
        # share, unless this table reads another procfs (a test's).
        if containers is None:
            containers = (machine_containers() if (str(proc), cgroup_root) == ("/proc", None)
                          else Containers(proc=self.proc, cgroup2=self.cgroup_root))
        self.containers = containers
        self.packages = packages if packages is not None else system_packages()
        self.max_processes = max_processes
        self.hash_limit = hash_limit
        self.cmdline_limit = cmdline_limit
        self._procs: OrderedDict[int, Process] = OrderedDict()
        self._exited: OrderedDict[int, Process] = OrderedDict()
        """Recently exited, for a child's event that races its parent's exit."""
        self._users: dict[int, str] = {}
        self._hashes: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._to_hash: dict[tuple[int, int, int, int], _Hashing] = {}
        self._units: OrderedDict[int, str] = OrderedDict()
        """cgroup id -> unit, for a process seen moving (docker exec).  Its
        container is the resolver's to cache: an answer found before the
        runtime wrote its state must not stick."""
        self._seeded = self._loaded = self._unknown = self._evicted = 0
        self._hashed = self._hash_hits = self._hash_skipped = self._hash_failed = 0

    # -- the table ---------------------------------------------------------------

    def seed(self) -> int:
        """Read every process in /proc; return how many were added."""
        n = 0
        for name in os.listdir(self.proc):
            if name.isdigit():
                p = self._read(int(name))
                if p is not None:
                    self._put(p)
                    n += 1
        self._seeded += n
        return n

    def get(self, pid: int) -> Process | None:
        return self._procs.get(pid)

    def known(self, pid: int) -> Process | None:
        """The live process, else one that exited recently (what the table
        knew of it when it went)."""
        return self._procs.get(pid) or self._exited.get(pid)

    def __len__(self) -> int:
        return len(self._procs)

    def _put(self, p: Process) -> None:
        procs = self._procs
        procs[p.pid] = p
        procs.move_to_end(p.pid)
        if len(procs) > self.max_processes:
            procs.popitem(last=False)
            self._evicted += 1

    def _lookup(self, pid: int, ppid: int) -> Process:
        p = self._procs.get(pid)
        if p is not None:
            self._procs.move_to_end(pid)
            return p
        p = self._read(pid)
        if p is None:
            # Gone already: remember it anyway so its other events do not
            # each try /proc again.
            p = Process(pid, ppid)
            self._unknown += 1
        else:
            self._loaded += 1
        self._put(p)
        return p

    def _parent(self, ppid: int) -> Process | None:
        if ppid <= 0:
            return None
        return self.known(ppid) or self._lookup(ppid, 0)

    # -- enrichment -----------------------------------------------------------------

    def enrich(self, event: wire.Event) -> None:
        """Fill the event's image, cmdline, parent_image, parent_cmdline,
        user, sha256, unit and container, and apply what it says (exec, fork,
        exit) to the table.  ``cwd`` comes from the sensor on exec events and
        is not guessed for others (chdir is not traced).  Hashes here, on
        the calling thread: see :meth:`enrich_all` for the way that does not."""
        job = self.enrich_all((event,))
        if job is not None:
            job.run()
            self.complete(job)

    def enrich_all(self, events: Iterable[wire.Event]) -> HashJob | None:
        """:meth:`enrich` the events in order, except the digests of
        executables not hashed yet: those are left for the job returned
        (None if there are none), to :meth:`HashJob.run` anywhere and then
        :meth:`complete` here, before the events are used."""
        for event in events:
            self._enrich(event)
        if not self._to_hash:
            return None
        job = HashJob(list(self._to_hash.values()))
        self._to_hash.clear()
        return job

    def complete(self, job: HashJob) -> None:
        """Fill in the digests of a job (run or not: a file not hashed gets "")."""
        for f in job.files:
            if f.digest is None:
                self._hash_failed += 1
                digest = ""
            else:
                self._hashed += 1
                digest = f.digest
                self._remember_digest(f.key, digest)
            for w in f.waiting:
                if type(w) is Process:
                    if w.hashing is f:  # else it has exec'd something else since
                        w.sha256, w.hashing = digest, None
                else:
                    w.sha256 = digest

    def _enrich(self, event: wire.Event) -> None:
        kind = type(event)
        if kind is wire.Notice or event.pid <= 0:
            return
        if kind is wire.Exec:
            p = self._exec(event)  # type: ignore[arg-type]
        else:
            # A process first seen at its set*id call is read from /proc as the call left it.
            fresh = kind is wire.SetId and event.pid not in self._procs
            p = self._lookup(event.pid, event.ppid)
            event.image = p.image
            event.cmdline = p.cmdline
            event.package = p.package
            if kind is wire.SetId:
                self._setid(p, event, fresh)  # type: ignore[arg-type]
        session = p.session
        event.package_session = session if session is not None else self._session(p)
        if event.cgroup and event.cgroup != p.cgroup:
            self._moved(p, event.cgroup)
        parent = self._parent(event.ppid or p.ppid)
        if parent is not None:
            event.parent_image = parent.image
            event.parent_cmdline = parent.cmdline
        event.user = self._user(event.uid)
        if kind is not wire.Exec or event.result == 0:  # type: ignore[attr-defined]
            if p.sha256 is None and p.hashing is None:
                digest = self._hash_process(p)
                if type(digest) is _Hashing:
                    p.hashing = digest
                    digest.waiting.append(p)
                else:
                    p.sha256 = digest
            if p.hashing is not None:
                p.hashing.waiting.append(event)
            else:
                event.sha256 = p.sha256
        event.unit = p.unit
        c = p.container
        if c is not None:
            event.container = c.id
            event.container_runtime = c.runtime
            event.container_name = c.name
            event.container_image = c.image
        if kind is wire.Fork:
            self._put(p.copy(event.child_pid, event.pid))  # type: ignore[attr-defined]
        elif kind is wire.Exit:
            self._exit(event.pid)

    def _exec(self, event: wire.Exec) -> Process:
        fn = event.filename
        if fn and not fn.startswith("/") and event.cwd:
            fn = os.path.normpath(os.path.join(event.cwd, fn))
        image = fn or event.exe
        cmdline = " ".join(event.argv)[:self.cmdline_limit]
        event.image = image
        event.cmdline = cmdline
        p = self._lookup(event.pid, event.ppid)
        # Asked at each exec, the refused ones too (their caller, often just
        # moved into the container by its runtime, is gone by now: the
        # resolver answers by cgroup id), and because a runtime writes its
        # state after its first process is in the container's cgroup.
        p.container = self.containers.of_pid(p.pid, event.cgroup or p.cgroup, gone=p.container)
        if event.result != 0:
            # The caller keeps its old image; the event is about the file it tried.
            path = event.exe or image
            digest = self._hash_path(path) if path.startswith("/") and not p.container else ""
            if type(digest) is _Hashing:
                digest.waiting.append(event)
            else:
                event.sha256 = digest
            event.package = self._owner(p.container, image, path)
            return p
        p.image = image
        p.exe = event.exe or image
        p.cmdline = cmdline
        p.sha256 = p.hashing = None
        event.package = p.package = self._owner(p.container, image, p.exe)
        if is_manager(image) or is_manager(p.exe):
            p.session = image
        p.uids = frozenset((event.uid,))  # the real uid: an exec never changes it
        if event.ppid:
            p.ppid = event.ppid
        return p

    def _owner(self, container: ContainerIdentity | None, image: str, exe: str) -> str:
        """The package of the program at ``image`` (a script's own path), else
        of ``exe``; "" in a container, whose paths are not the host's files."""
        if container is not None:
            return ""
        return self.packages.owner(image) or (self.packages.owner(exe) if exe != image else "")

    def _session(self, p: Process) -> str:
        """The package manager ``p`` descends from, found up its ancestry
        once and kept on each process walked (they share it)."""
        walked = []
        q: Process | None = p
        session = ""
        for _ in range(_LINEAGE_DEPTH):
            if q is None:
                break
            if q.session is not None:
                session = q.session
                break
            if is_manager(q.image) or is_manager(q.exe):
                session = q.session = q.image
                break
            walked.append(q)
            if q.ppid <= 0 or q.ppid == q.pid:
                break
            q = self._parent(q.ppid)
        for w in walked:
            w.session = session
        return session

    def _setid(self, p: Process, event: wire.SetId, fresh: bool) -> None:
        """Whether the process held the user id it asks for (``event.held``),
        then what the call taught: the real uid after it, the effective one
        given up.  Group calls are left alone (no rule needs their history)."""
        if event.call not in _UID_CALLS:
            return
        uids = p.uids
        if uids is not None and not fresh and event.new >= 0:
            event.held = event.new in uids
        if event.call == "setuid" and event.old == 0 and event.result == 0:
            # Root's setuid sets the real, effective and saved ids: nothing
            # to go back to (a daemon's drop, cron's child becoming its user).
            p.uids = frozenset((event.uid,))
        # setfs*id returns the old id; the others 0 on success.
        elif event.result == 0 or event.call == "setfsuid":
            learned = {event.uid, event.old} if event.old >= 0 else {event.uid}
            if uids is None or not learned <= uids:
                p.uids = (uids or frozenset()) | learned

    def _exit(self, pid: int) -> None:
        p = self._procs.pop(pid, None)
        if p is not None:
            self._exited[pid] = p
            if len(self._exited) > _RECENT_EXITS:
                self._exited.popitem(last=False)

    def _user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = fit_text(pwd.getpwuid(uid).pw_name)
            except KeyError:
                name = str(uid)
            if len(self._users) >= _CACHE:
                self._users.clear()
            self._users[uid] = name
        return name

    # -- /proc ----------------------------------------------------------------------

    def _read(self, pid: int) -> Process | None:
        base = f"{self.proc}/{pid}"
        try:
            with open(f"{base}/stat", "rb") as f:
                stat_line = f.read()
            with open(f"{base}/cmdline", "rb") as f:
                raw = f.read(self.cmdline_limit * 4)
            with open(f"{base}/cgroup", "rb") as f:
                cgroup_text = os.fsdecode(f.read())  # anyone may name a delegated cgroup
            with open(f"{base}/status", "rb") as f:
                status = f.read()
        except OSError:
            return None
        # The comm in parentheses may hold anything, so split after the last ')'.
        ppid = int(stat_line[stat_line.rindex(b")") + 2:].split()[1])
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:
            exe = ""  # a kernel thread, or no permission
        args = raw.split(b"\0")
        if args and args[-1] == b"":
            args.pop()
        cmdline = " ".join(a.decode(errors="replace") for a in args)[:self.cmdline_limit]
        path, unit = parse_cgroup(cgroup_text)
        cgroup = self._cgroup_id(path)
        container = self.containers.identify(cgroup_text, cgroup)
        if cgroup:
            self._remember_unit(cgroup, unit)
        image = fit_text(exe)
        return Process(pid, ppid, image, exe, cmdline, cgroup, unit, container,
                       self._owner(container, image, image), _real_uid(status))

    def _cgroup_id(self, path: str) -> int:
        """The cgroup v2 id the sensor reports is the inode of its folder."""
        if not path or not self.cgroup_root:
            return 0
        try:
            return os.stat(self.cgroup_root + path).st_ino
        except OSError:
            return 0

    def _remember_unit(self, cgroup: int, unit: str) -> None:
        self._units[cgroup] = unit
        if len(self._units) > _CACHE:
            self._units.popitem(last=False)

    def _moved(self, p: Process, cgroup: int) -> None:
        """The process is in another cgroup than we knew (docker exec,
        systemd-run): its unit read once per cgroup, its container asked
        of the resolver (which caches by cgroup id what is final)."""
        unit = self._units.get(cgroup)
        if unit is None:
            try:
                with open(f"{self.proc}/{p.pid}/cgroup", "rb") as f:
                    text = os.fsdecode(f.read())
            except OSError:
                # Gone: its unit stays what we knew; its container the resolver
                # still finds by the cgroup's id.
                p.container = self.containers.of_pid(p.pid, cgroup, gone=p.container)
                return
            path, unit = parse_cgroup(text)
            cgroup_id = self._cgroup_id(path) or cgroup
            self._remember_unit(cgroup_id, unit)
            p.container = self.containers.identify(text, cgroup_id)
        else:
            p.container = self.containers.of_pid(p.pid, cgroup, gone=p.container)
        p.cgroup = cgroup
        p.unit = unit

    # -- hashing --------------------------------------------------------------------

    def _hash_process(self, p: Process) -> str | _Hashing:
        """Hash the running process's executable through /proc/PID/exe,
        which is exactly the file it runs even if the path was replaced or
        lives in a container.  If the process has gone or runs something
        else by now (a quick second exec), fall back to the path, but never
        for a container, whose paths mean other files on the host."""
        if not p.exe:
            return ""
        link = f"{self.proc}/{p.pid}/exe"
        try:
            st = os.stat(link)
            # Checked after the stat: if it still names our image, the file
            # we looked at is that image.  The sensor's exe is spelled for
            # the wire (a byte not UTF-8 as U+FFFD), readlink's is not.
            target = os.readlink(link)
            if target == p.exe or fit_text(target) == p.exe:
                return self._hash(link, st)
        except OSError:
            pass
        if p.container or not p.exe.startswith("/"):
            return ""
        return self._hash_path(p.exe)

    def _hash_path(self, path: str) -> str | _Hashing:
        try:
            st = os.stat(path)
        except OSError:
            self._hash_failed += 1
            return ""
        return self._hash(path, st)

    def _hash(self, path: str, st: os.stat_result) -> str | _Hashing:
        """The digest of the file ``st`` describes, from the cache if it was
        seen with the same device, inode, mtime and size; else the file to
        hash, which the next job takes."""
        if not stat.S_ISREG(st.st_mode):
            return ""
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        digest = self._hashes.get(key)
        if digest is not None:
            self._hashes.move_to_end(key)
            self._hash_hits += 1
            return digest
        if st.st_size > self.hash_limit:
            self._hash_skipped += 1
            self._remember_digest(key, TOO_LARGE)
            return TOO_LARGE
        queued = self._to_hash.get(key)
        if queued is None:
            queued = self._to_hash[key] = _Hashing(key, path)
        elif len(queued.paths) < _PATHS_TRIED and path not in queued.paths:
            queued.paths.append(path)
        return queued

    def _remember_digest(self, key: tuple[int, int, int, int], digest: str) -> None:
        self._hashes[key] = digest
        if len(self._hashes) > _CACHE:
            self._hashes.popitem(last=False)

    def statistics(self) -> ProcessTableStatistics:
        return ProcessTableStatistics(
            processes=len(self._procs), seeded=self._seeded, loaded=self._loaded, unknown=self._unknown,
            evicted=self._evicted, hashed=self._hashed, hash_hits=self._hash_hits,
            hash_skipped=self._hash_skipped, hash_failed=self._hash_failed,
        )
