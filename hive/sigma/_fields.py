"""How our wire events become Sigma events: logsources and field names.

This is the one place the mapping is defined; rules, the index and the
correlator all read Sigma field names produced here.

Logsources (``product: linux`` or no product; no ``service``):

=====================  ================================================================
category               events
=====================  ================================================================
process_creation       ``Exec`` that succeeded, or that our kernel policy blocked
                       (an attempt is worth an alert; a failed PATH lookup is not)
network_connection     ``Connect`` (outbound; ``Initiated`` is always ``'true'``)
file_event             ``Open`` with write intent (O_WRONLY, O_RDWR, O_CREAT or O_TRUNC)
                       that succeeded or was blocked: Sigma's file creation/modification
file_access            every ``Open``, reads and writes, failed or not: reads of secrets,
                       model weights and devices (ours; a failed read of /etc/shadow is
                       still an attempt)
setid                  ``SetId``: setuid, setgid and their re/res/fs variants (ours)
bind                   ``Bind``: a socket bound to a local address (ours)
fork                   ``Fork`` (ours)
=====================  ================================================================

Fields present in every logsource (when the sensor or the relay filled them):

=====================  ================================================================
Sigma field            from
=====================  ================================================================
Agent                  ``agent`` (set by the hive on receipt)
ProcessId              ``pid``
ParentProcessId        ``ppid``
Image                  ``Exec``: ``filename``, the path given to execve (else ``image``,
                       else ``exe``); other events: ``image``, the process's executable
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

An empty string or a missing enrichment is an absent field: ``|exists: false`` and
``null`` match it, every other test fails on it.  Integers stay integers.
"""

from __future__ import annotations

from collections.abc import Callable

from wire import Bind, Connect, Exec, Fork, Open, SetId

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

FIELDS: dict[str, frozenset[str]] = {
    "process_creation": _COMMON_FIELDS | {"Exe", "Result"},
    "network_connection": _COMMON_FIELDS | {
        "DestinationIp", "DestinationPort", "DestinationHostname", "DestinationIsIpv6",
        "SourceIp", "SourcePort", "Protocol", "Initiated",
    },
    "file_event": _FILE_FIELDS,
    "file_access": _FILE_FIELDS,
    "setid": _COMMON_FIELDS | {"Call", "OldId", "NewId", "Result", "NewIdHeld"},
    "bind": _COMMON_FIELDS | {"SourceIp", "SourcePort", "Protocol"},
    "fork": _COMMON_FIELDS | {"ChildProcessId"},
}
"""Sigma field names each logsource category provides."""

CATEGORIES = tuple(FIELDS)

SUBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "process_creation": ("Image", "CommandLine"),
    "network_connection": ("Image", "DestinationIp", "DestinationPort"),
    "file_event": ("Image", "TargetFilename"),
    "file_access": ("Image", "TargetFilename"),
    "setid": ("Image", "Call", "NewId"),
    "bind": ("Image", "SourceIp", "SourcePort"),
    "fork": ("Image", "CommandLine"),
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
    if image:
        fields["Image"] = image
    if event.exe:
        fields["Exe"] = event.exe
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


def _exec_sources(event: Exec):
    if event.result == 0 or event.verdict == "block":
        return (("process_creation", _process_creation(event)),)
    return ()


def _open_sources(event: Open):
    fields = _file(event)
    if event.flags & _WRITE_INTENT and (event.result >= 0 or event.verdict == "block"):
        return (("file_access", fields), ("file_event", fields))
    return (("file_access", fields),)


def _single(category: str, build: Callable[[object], dict]):
    return lambda event: ((category, build(event)),)


_SOURCES: dict[type, Callable[[object], tuple[tuple[str, dict], ...]]] = {
    Exec: _exec_sources,
    Open: _open_sources,
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
