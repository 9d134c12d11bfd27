"""How our wire events become Sigma events: logsources and field names.

This is the one place the mapping is defined; rules, the index and the
correlator all read Sigma field names produced here.

Logsources (``product: linux`` or no product; no ``service`` but ``auditd``):

=====================  ================================================================
category               events
=====================  ================================================================
process_creation       ``Exec`` that succeeded, or that our kernel policy blocked
                       (an attempt is worth an alert; a failed PATH lookup is not)
network_connection     ``Connect`` (outbound; ``Initiated`` is always ``'true'``)
file_event             ``Open`` with write intent (O_WRONLY, O_RDWR, O_CREAT or O_TRUNC)
                       that succeeded or was blocked: Sigma's file creation/modification;
                       and a ``File`` that made a name: rename (its new name), link,
                       symlink, mknod
file_access            every ``Open``, reads and writes, failed or not: reads of secrets,
                       model weights and devices (ours; a failed read of /etc/shadow is
                       still an attempt)
file_delete            ``File`` unlink and rmdir (Sigma's)
file_rename            ``File`` rename (Sigma's category; also in file_event)
file_change            ``File`` chmod, chown, setxattr, removexattr (ours)
setid                  ``SetId``: setuid, setgid and their re/res/fs variants (ours)
bind                   ``Bind``: a socket bound to a local address (ours)
fork                   ``Fork`` (ours)
ptrace                 ``Ptrace``: a request aimed at another process (ours)
signal                 ``Signal``: a signal sent to a protected process (ours)
bpf                    ``Bpf``: a BPF program loaded by another process (ours)
mount                  ``Mount``: mount, umount, move_mount, fsmount, mount_setattr (ours)
auditd                 ``service: auditd`` (SigmaHQ's): each event as the records auditd
                       writes for the same call; see "auditd" below
=====================  ================================================================

A ``File`` call that failed changed nothing: it is in no category but auditd.

Fields present in every logsource (when the sensor or the relay filled them):

=====================  ================================================================
Sigma field            from
=====================  ================================================================
Agent                  ``agent`` (set by the hive on receipt)
ProcessId              ``pid``
ParentProcessId        ``ppid``
Image                  ``Exec``: ``filename``, the path given to execve (else ``image``,
                       else ``exe``), a relative one read from ``cwd`` (else ``exe``);
                       other events: ``image``, the process's executable
CommandLine            ``cmdline``; for ``Exec`` the joined ``argv`` when ``cmdline`` is empty
ParentImage            ``parent_image``
ParentCommandLine      ``parent_cmdline``
User                   ``user`` (a name, resolved on the agent)
CurrentDirectory       ``cwd``
LogonId                ``uid``: the Linux rules compare it with 0 for root-started services
Uid, Euid, Gid         ``uid``, ``euid``, ``gid``
Comm                   ``comm``
Hashes                 ``SHA256=<sha256>`` (Sysmon's form)
Unit                   ``unit``: the innermost systemd unit of the process's cgroup
ContainerId            ``container``: the id (a runtime's 64 hex digits, or the name where
                       the runtime has no other: runc, crun, LXC, systemd-nspawn);
                       ``Container`` is the same value, kept for rules written before
ContainerRuntime       ``container_runtime``: docker, containerd, podman, cri-o, crun, runc,
                       lxc or systemd-nspawn
ContainerName          ``container_name``, where the runtime's state names one
ContainerImage         ``container_image``, as the runtime recorded it (docker: as given
                       to ``docker run``; Kubernetes: fully qualified, ``docker.io/...``)
MountNamespace         ``mntns``: the mount namespace's inode number (integer)
PidNamespace           ``pidns``: the pid namespace's inode number (integer)
VirtualProcessId       ``vpid``: the pid as the process's own pid namespace sees it
Package                ``package``: the package that installed the process's program
                       (dpkg's lists; a script's own path first), on the host
PackageSession         ``package_session``: the package manager the process descends
                       from or is (``/usr/bin/dpkg``, ``/usr/bin/apt-get``, ...): it runs
                       in a package management session (maintainer scripts, triggers)
=====================  ================================================================

Per logsource:

* process_creation: ``Exe`` (the path the kernel resolved), ``Result``.
* network_connection: ``DestinationIp``, ``DestinationPort``, ``DestinationHostname``,
  ``DestinationIsIpv6`` (``'true'``/``'false'``), ``SourceIp``, ``SourcePort`` (the local
  end), ``Protocol``, ``Initiated``.
* file_event, file_access: ``TargetFilename``, ``Flags`` (the open flags), ``Access``
  (``read``, ``write`` or ``readwrite``), ``Result``.
* setid: ``Call``, ``OldId``, ``NewId``, ``Result``, ``NewIdHeld`` (``'true'``: the
  process's program held NewId before the call, since its exec, as a real uid it ran as
  or an effective one it gave up, so the call returns to it; ``'false'``: it never did;
  absent: not known, and for the set*gid calls).
* bind: ``SourceIp``, ``SourcePort`` (the local address bound), ``Protocol``.
* fork: ``ChildProcessId``.
* process_creation also: ``Fileless`` (``'true'``: run from a memfd or a deleted file;
  absent otherwise).
* file_event, file_delete, file_rename, file_change from a ``File``: ``TargetFilename`` (the
  name made, removed or changed: rename's new name, the link), ``SourceFilename`` (rename's
  old name, link's existing file, symlink's text), ``Operation`` (the call: rename, unlink,
  chmod, ...), ``Result``; file_change also ``Mode`` (chmod's permission bits as four octal
  digits, ``'4755'``: rules match digits, ``Mode|re: '^[2-7]'`` for set-id bits), ``Owner``,
  ``Group`` (chown's ids; absent when unchanged), ``Xattr`` (the attribute's name;
  ``security.capability``: file capabilities).
* ptrace: ``Request`` (attach, seize, pokedata, ...), ``TargetProcessId``, ``TargetComm``,
  ``Result``.  signal: ``Signal`` (the number), ``TargetProcessId``, ``TargetComm``, ``Result``.
* bpf: ``Command`` (prog_load, ...), ``ProgramType`` (kprobe, xdp, ...), ``ProgramName``,
  ``Result``.  mount: ``Call``, ``Source``, ``Target`` (the mount point), ``FsType``,
  ``Flags``, ``Result``.
* auditd: records with auditd's field names.  ``EXECVE`` (an ``Exec``): ``argc``, ``a0`` ..
  ``a63`` (its arguments).  ``SYSCALL`` (an ``Exec``, ``File``, ``Ptrace``, ``Signal``,
  ``Bpf``, ``Mount``): ``SYSCALL`` (execve; the ``File`` op; ptrace; kill; bpf; the mount
  call), ``exe``, ``comm``, ``pid``, ``ppid``, ``uid``, ``euid``, ``gid``, ``success``
  (``yes``/``no``), ``exit``, ``cwd``.  ``PATH`` (a ``File``; an ``Open`` with write intent,
  as a write watch records it): ``name``, ``nametype`` (``CREATE`` for a name made, and for
  an open with O_CREAT, which auditd would call ``NORMAL`` if the file existed; ``DELETE``
  for a name removed, rename's old name too; else ``NORMAL``).  Left out, for cost and
  because no shipped rule needs them: reads' records and an open's SYSCALL record.  Rules
  that need auditd's own configuration (a rule ``key``, a service ``unit``) do not load.

An empty string or a missing enrichment is an absent field: ``|exists: false`` and
``null`` match it, every other test fails on it.  Integers stay integers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from wire import Bind, Bpf, Connect, Exec, File, Fork, Mount, Open, Ptrace, SetId, Signal

# Write intent, as in <asm-generic/fcntl.h>.
_O_ACCMODE = 0o3
_O_WRONLY = 0o1
_O_RDWR = 0o2
_O_CREAT = 0o100
_O_TRUNC = 0o1000
_WRITE_INTENT = _O_WRONLY | _O_RDWR | _O_CREAT | _O_TRUNC

_COMMON_FIELDS = frozenset({
    "Agent", "ProcessId", "ParentProcessId", "Image", "CommandLine", "ParentImage",
    "ParentCommandLine", "User", "CurrentDirectory", "LogonId", "Uid", "Euid", "Gid", "Comm",
    "Hashes", "Container", "Unit", "ContainerId", "ContainerRuntime", "ContainerName", "ContainerImage",
    "MountNamespace", "PidNamespace", "VirtualProcessId", "Package", "PackageSession",
})
_FILE_FIELDS = _COMMON_FIELDS | {"TargetFilename", "Flags", "Access", "Result"}
_NAME_FIELDS = _COMMON_FIELDS | {"TargetFilename", "SourceFilename", "Operation", "Result"}
_TARGET_FIELDS = _COMMON_FIELDS | {"TargetProcessId", "TargetComm", "Result"}
AUDIT_ARGS = 64
"""Arguments of an exec given as auditd's EXECVE fields a0..a63 (rules name a handful)."""
_AUDITD_FIELDS = frozenset({
    "type", "argc", *(f"a{n}" for n in range(AUDIT_ARGS)), "SYSCALL", "exe", "comm", "pid", "ppid",
    "uid", "euid", "gid", "success", "exit", "name", "nametype", "cwd",
})

FIELDS: dict[str, frozenset[str]] = {
    "process_creation": _COMMON_FIELDS | {"Exe", "Result", "Fileless"},
    "network_connection": _COMMON_FIELDS | {
        "DestinationIp", "DestinationPort", "DestinationHostname", "DestinationIsIpv6",
        "SourceIp", "SourcePort", "Protocol", "Initiated",
    },
    "file_event": _FILE_FIELDS,
    "file_access": _FILE_FIELDS,
    "setid": _COMMON_FIELDS | {"Call", "OldId", "NewId", "Result", "NewIdHeld"},
    "bind": _COMMON_FIELDS | {"SourceIp", "SourcePort", "Protocol"},
    "fork": _COMMON_FIELDS | {"ChildProcessId"},
    "file_delete": _NAME_FIELDS,
    "file_rename": _NAME_FIELDS,
    "file_change": _NAME_FIELDS | {"Mode", "Owner", "Group", "Xattr"},
    "ptrace": _TARGET_FIELDS | {"Request"},
    "signal": _TARGET_FIELDS | {"Signal"},
    "bpf": _COMMON_FIELDS | {"Command", "ProgramType", "ProgramName", "Result"},
    "mount": _COMMON_FIELDS | {"Call", "Source", "Target", "FsType", "Flags", "Result"},
    "auditd": _AUDITD_FIELDS,
}
"""Sigma field names each logsource category provides (``auditd``: ``service: auditd``)."""
FIELDS["file_event"] = FIELDS["file_event"] | {"SourceFilename", "Operation"}

CATEGORIES = tuple(FIELDS)

_AUDITED = frozenset({"exec", "open", "file", "ptrace", "signal", "bpf", "mount"})
SENSOR_KINDS: dict[str, frozenset[str]] = {
    "process_creation": frozenset({"exec"}),
    "network_connection": frozenset({"connect"}),
    "file_event": frozenset({"open", "file"}),
    "file_access": frozenset({"open"}),
    "file_delete": frozenset({"file"}),
    "file_rename": frozenset({"file"}),
    "file_change": frozenset({"file"}),
    "setid": frozenset({"setid"}),
    "bind": frozenset({"bind"}),
    "fork": frozenset({"fork"}),
    "ptrace": frozenset({"ptrace"}),
    "signal": frozenset({"signal"}),
    "bpf": frozenset({"bpf"}),
    "mount": frozenset({"mount"}),
    "auditd": _AUDITED,
}
"""The sensor's event kinds (wire tags) each category is made from, as the
table above says: what an agent whose rules read a category must have
delivered at once (kmod ``Sensor.wake_at_once``)."""

SUBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "process_creation": ("Image", "CommandLine"),
    "network_connection": ("Image", "DestinationIp", "DestinationPort"),
    "file_event": ("Image", "TargetFilename"),
    "file_access": ("Image", "TargetFilename"),
    "setid": ("Image", "Call", "NewId"),
    "bind": ("Image", "SourceIp", "SourcePort"),
    "fork": ("Image", "CommandLine"),
    "file_delete": ("Image", "TargetFilename"),
    "file_rename": ("Image", "TargetFilename"),
    "file_change": ("Image", "TargetFilename", "Operation"),
    "ptrace": ("Image", "Request", "TargetComm"),
    "signal": ("Image", "Signal", "TargetComm"),
    "bpf": ("Image", "ProgramName"),
    "mount": ("Image", "Target"),
    "auditd": ("type", "exe", "SYSCALL", "name", "a0", "a1", "a2"),
}
"""What makes two hits of one rule on one agent "the same" for repeat suppression."""


def _common(event, fields: dict) -> dict:
    fields["ProcessId"] = event.pid
    fields["ParentProcessId"] = event.ppid
    fields["LogonId"] = event.uid
    fields["Uid"] = event.uid
    fields["Euid"] = event.euid
    fields["Gid"] = event.gid
    for name, value in (
        ("Agent", event.agent), ("CommandLine", event.cmdline),
        ("ParentImage", event.parent_image), ("ParentCommandLine", event.parent_cmdline),
        ("User", event.user), ("CurrentDirectory", event.cwd), ("Comm", event.comm),
        ("Unit", event.unit),
    ):
        if value:
            fields[name] = value
    # Outside the loop: a pair more in it costs every event about 0.1 us.
    package, session = event.package, event.package_session
    if package:
        fields["Package"] = package
    if session:
        fields["PackageSession"] = session
    if event.container:
        fields["Container"] = fields["ContainerId"] = event.container
        for name, value in (("ContainerRuntime", event.container_runtime), ("ContainerName", event.container_name),
                            ("ContainerImage", event.container_image)):
            if value:
                fields[name] = value
    # 0: not known (a kernel that does not say, or an event from an older agent).
    if event.mntns:
        fields["MountNamespace"] = event.mntns
    if event.pidns:
        fields["PidNamespace"] = event.pidns
    if event.vpid:
        fields["VirtualProcessId"] = event.vpid
    if event.sha256:
        fields["Hashes"] = "SHA256=" + event.sha256
    return fields


def _process_creation(event: Exec) -> dict:
    fields = {"Result": event.result}
    image = event.filename or event.image or event.exe
    if image and image[0] != "/":
        # ``./x`` or ``bin/x``: rules compare Image with absolute paths (``/dev/shm/``),
        # so a relative name is read from the process's folder, else the kernel's path.
        image = posixpath.normpath(posixpath.join(event.cwd, image)) if event.cwd else event.exe or image
    if image:
        fields["Image"] = image
    if event.exe:
        fields["Exe"] = event.exe
    if event.fileless:
        fields["Fileless"] = "true"
    _common(event, fields)
    if "CommandLine" not in fields and event.argv:
        fields["CommandLine"] = " ".join(event.argv)
    return fields


def _with_image(event, fields: dict) -> dict:
    if event.image:
        fields["Image"] = event.image
    return _common(event, fields)


def _network_connection(event: Connect) -> dict:
    fields = {
        "Initiated": "true",
        "DestinationIsIpv6": "true" if event.family == 10 else "false",
        "DestinationPort": event.port,
        "SourcePort": event.src_port,
        "Protocol": event.protocol,
    }
    for name, value in (
        ("DestinationIp", event.address), ("SourceIp", event.src_address),
        ("DestinationHostname", event.hostname),
    ):
        if value:
            fields[name] = value
    return _with_image(event, fields)


def _file(event: Open) -> dict:
    mode = event.flags & _O_ACCMODE
    fields = {
        "Flags": event.flags,
        "Access": "write" if mode == _O_WRONLY else "readwrite" if mode == _O_RDWR else "read",
        "Result": event.result,
    }
    if event.path:
        fields["TargetFilename"] = event.path
    return _with_image(event, fields)


def _setid(event: SetId) -> dict:
    fields = {"OldId": event.old, "NewId": event.new, "Result": event.result}
    if event.call:
        fields["Call"] = event.call
    if event.held is not None:
        fields["NewIdHeld"] = "true" if event.held else "false"
    return _with_image(event, fields)


def _bind(event: Bind) -> dict:
    fields = {"SourcePort": event.port, "Protocol": event.protocol}
    if event.address:
        fields["SourceIp"] = event.address
    return _with_image(event, fields)


def _fork(event: Fork) -> dict:
    return _with_image(event, {"ChildProcessId": event.child_pid})


def _names(event: File) -> dict:
    fields = {"Operation": event.op, "Result": event.result}
    if event.path:
        fields["TargetFilename"] = event.path
    if event.source:
        fields["SourceFilename"] = event.source
    return _with_image(event, fields)


def _file_change(event: File) -> dict:
    fields = _names(event)
    if event.mode >= 0:
        fields["Mode"] = format(event.mode & 0o7777, "04o")  # "4755": rules test digits, not bits
    if event.owner >= 0:
        fields["Owner"] = event.owner
    if event.group >= 0:
        fields["Group"] = event.group
    if event.xattr:
        fields["Xattr"] = event.xattr
    return fields


def _targeted(event, fields: dict) -> dict:
    fields["TargetProcessId"] = event.target_pid
    fields["Result"] = event.result
    if event.target_comm:
        fields["TargetComm"] = event.target_comm
    return _with_image(event, fields)


def _ptrace(event: Ptrace) -> dict:
    return _targeted(event, {"Request": event.request} if event.request else {})


def _signal(event: Signal) -> dict:
    return _targeted(event, {"Signal": event.signal})


def _bpf(event: Bpf) -> dict:
    fields = {"Result": event.result}
    for name, value in (("Command", event.command), ("ProgramType", event.prog_type),
                        ("ProgramName", event.prog_name)):
        if value:
            fields[name] = value
    return _with_image(event, fields)


def _mount(event: Mount) -> dict:
    fields = {"Flags": event.flags, "Result": event.result}
    for name, value in (("Call", event.call), ("Source", event.source), ("Target", event.target),
                        ("FsType", event.fstype)):
        if value:
            fields[name] = value
    return _with_image(event, fields)


# -- auditd's records ---------------------------------------------------------------
# SigmaHQ's ``service: auditd`` rules match auditd's records one at a time: EXECVE (the
# arguments a0..aN), SYSCALL (the call by name, the program, its ids) and PATH (a name the
# call used, with nametype CREATE, DELETE or NORMAL).  An event is given as the records
# auditd would write for the same call.

_CREATES = frozenset({"rename", "link", "symlink", "mknod"})
_DELETES = frozenset({"unlink", "rmdir"})


def _syscall(event, call: str, result: int = 0) -> dict:
    fields = {"type": "SYSCALL", "SYSCALL": call, "pid": event.pid, "ppid": event.ppid, "uid": event.uid,
              "euid": event.euid, "gid": event.gid, "success": "no" if result < 0 else "yes", "exit": result}
    exe = event.exe if type(event) is Exec and event.exe else event.image
    if exe:
        fields["exe"] = exe
    if event.comm:
        fields["comm"] = event.comm
    if event.cwd:
        fields["cwd"] = event.cwd
    return fields


def _path(name: str, nametype: str = "NORMAL") -> tuple[str, dict]:
    return ("auditd", {"type": "PATH", "name": name, "nametype": nametype})


def _execve(event: Exec) -> dict:
    argv = event.argv
    fields = {"type": "EXECVE", "argc": len(argv)}
    for n, arg in enumerate(argv[:AUDIT_ARGS]):
        fields[f"a{n}"] = arg
    return fields


def _exec_sources(event: Exec):
    if event.result == 0 or event.verdict == "block":
        return (("process_creation", _process_creation(event)), ("auditd", _execve(event)),
                ("auditd", _syscall(event, "execve", event.result)))
    return ()


def _file_sources(event: File):
    op, fields = event.op, None
    call = ("auditd", _syscall(event, op, event.result))
    if event.result < 0:  # nothing was created, removed or changed: auditd's record only
        return (call, *((_path(event.path),) if event.path else ()))
    if op in _CREATES:
        fields = _names(event)
        pairs = [("file_event", fields)]
        if op == "rename":
            pairs.append(("file_rename", fields))
            if event.source:
                pairs.append(_path(event.source, "DELETE"))
        return (*pairs, call, _path(event.path, "CREATE"))
    if op in _DELETES:
        return (("file_delete", _names(event)), call, _path(event.path, "DELETE"))
    return (("file_change", _file_change(event)), call, _path(event.path))


def _open_sources(event: Open):
    fields = _file(event)
    if event.flags & _WRITE_INTENT and (event.result >= 0 or event.verdict == "block"):
        # and auditd's PATH record, as a write watch (-p wa) writes it; reads (most events)
        # and an open's SYSCALL record are left out: no shipped auditd rule needs them.
        # O_CREAT: auditd's CREATE (it would say NORMAL for a file that already existed).
        return (("file_access", fields), ("file_event", fields),
                _path(event.path, "CREATE" if event.flags & _O_CREAT else "NORMAL"))
    return (("file_access", fields),)


def _with_syscall(category: str, build: Callable[[object], dict], call: Callable[[object], str]):
    return lambda event: ((category, build(event)), ("auditd", _syscall(event, call(event), event.result)))


def _single(category: str, build: Callable[[object], dict]):
    return lambda event: ((category, build(event)),)


_SOURCES: dict[type, Callable[[object], tuple[tuple[str, dict], ...]]] = {
    Exec: _exec_sources,
    Open: _open_sources,
    File: _file_sources,
    Ptrace: _with_syscall("ptrace", _ptrace, lambda e: "ptrace"),
    Signal: _with_syscall("signal", _signal, lambda e: "kill"),
    Bpf: _with_syscall("bpf", _bpf, lambda e: "bpf"),
    Mount: _with_syscall("mount", _mount, lambda e: e.call or "mount"),
    Connect: _single("network_connection", _network_connection),
    SetId: _single("setid", _setid),
    Bind: _single("bind", _bind),
    Fork: _single("fork", _fork),
}


def sigma_events(event) -> tuple[tuple[str, dict], ...]:
    """The (logsource category, Sigma fields) pairs one wire event stands for.

    Exit and Notice events stand for none.
    """
    sources = _SOURCES.get(type(event))
    return sources(event) if sources is not None else ()
