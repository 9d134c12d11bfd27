"""The wire contract between agents and the hive.

Every message is a msgspec Struct in a tagged union; the tag is the ``type``
field on the wire.  Version 3 is this file.  Rules for changing it:

* a field added later always has a default, so an older peer's message still
  decodes;
* a field is never renamed or retyped; add a new one instead;
* a constraint (a range, a length) may be tightened: a value outside it was
  never one a real peer sent, so nothing that worked stops working;
* ``WIRE_VERSION`` is bumped only for a change an older peer cannot read.
  Version 2: a command is one Struct per action (``KillProcess``, ...)
  instead of ``Command(action, params)``.
  Version 3: event kinds ``file``, ``ptrace``, ``signal``, ``bpf``,
  ``mount`` and ``edge``, and ``Exec.fileless``; policy bundles (``PolicyBundle`` down,
  ``BundleStatus`` up).  An older hive cannot decode them, so hives are
  upgraded before agents; commands are as in version 2 (``COMMANDS_SINCE``),
  so a version 2 agent still gets them (but no bundle).
  Later in version 3 (additions, the same order of upgrade): event kind
  ``profile``, ``Edge.detail/workload/novel`` and command
  ``update_profile`` (learned self, issue 17), which ``immune-node
  profile`` and the console send only to an agent whose profile or
  novelty alert the hive holds (so one that reads it).  Then ``Profile.cgroup_path`` (default "": an older agent's profiles
  decode, and an older hive skips it).

Every value is bounded here, at decoding, so nothing out of range reaches
the hive's store, its arithmetic or its memory: integers fit the range of
what they stand for and at most a signed 64-bit int (SQLite's), strings and
lists have a length limit.  The limits are far above what the kernel
sensor and the agent produce (the figures are at each constant); a frame
outside them is refused whole, with a reason naming the field.

Agents and the hive both import this module; neither imports the other.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
from msgspec import Meta

WIRE_VERSION = 3
COMMANDS_SINCE = 2
"""The oldest wire version a hive speaks (one back): its agents decode this
version's commands, and the hive takes their events.  An agent outside
``COMMANDS_SINCE`` to ``WIRE_VERSION`` is refused (``Ack.refused``)."""

# --------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------

INT64_MAX = 2**63 - 1
"""SQLite's largest integer: no integer on the wire is larger."""
PID_MAX = 4_194_304
"""Linux's PID_MAX_LIMIT on 64-bit: no pid or tid is above it."""
MAX_NAME = 256
"""Names and ids: comm (16 in the kernel), user, unit (256 in systemd), rule
(64 in kmod), agent (128 at enrollment), hostname (253 in DNS), stream."""
MAX_PATH = 4096
"""Linux's PATH_MAX.  The sensor reports at most 16 components of 63 bytes
(about 1 KiB) for a resolved path, 255 bytes for an exec's filename."""
MAX_CMDLINE = 16384
"""The agent's process table keeps 8192 characters of a command line."""
MAX_ARGV = 4096
"""Arguments in one exec.  The sensor copies 1280 bytes of them, so at most
1280 (empty) arguments."""
MAX_ARG = 4096
"""Characters in one argument (the sensor: 1280 in all).  Their total is
not checked at decoding (a per-event hook cost 15% of the hive's decoding
rate); the frame size limit bounds it."""
MAX_TEXT = 16384
"""Free text: a notice's or a result's detail."""
MAX_ADDRESS = 64
"""An IP address or network as text (an IPv6 network with its prefix is at
most 49 characters)."""
MAX_ADDRESSES = 1024
"""Addresses in a Hello, or in an isolation's allow list."""
MAX_BATCH = 4096
"""Events in one batch: the agent's relay sends ``agent.batch`` (256 by
default) and the kernel reader drains at most 4096 at a time."""
MAX_BATCH_BYTES = 512 << 10
"""Bytes of an agent's encoded ``EventBatch`` frame: its relay starts a new
batch rather than go above it, so a batch of one event is the only one that
may (an event is at most about 231 KiB: every text the agent writes at its
bound in 4-byte characters, the kernel's at the size of its record).  Well
under the least ``hive.max_frame`` (1 MiB), which no agent batch can exceed;
large enough that a batch of ``agent.batch`` usual events (0.3 to 2 KiB
each) is never split, so per-batch costs (ack, fsync, commit) stay spread."""
MAX_PORTS = 1024
"""Ports in one block (kmod's limit per rule)."""
MAX_TTL = 365 * 86400
"""Longest time-to-live of a block or an isolation, in seconds."""
MAX_ITEMS = 65536
"""Items in one list or mapping of a result's ``data``."""
MAX_DEPTH = 4
"""Lists and mappings nested in a result's ``data`` (an evidence manifest
is 3 deep)."""
MAX_RESULT_BYTES = 768 << 10
"""Bytes of an agent's encoded ``CommandResult`` frame: its executor leaves
an archive on the agent, then data out, rather than go above it, so that a
result always fits the least ``hive.max_frame`` (1 MiB)."""
MAX_ARCHIVE = 640 << 10
"""An evidence archive sent inline; a larger one stays on the agent (the
result says where), within ``MAX_RESULT_BYTES`` with room for the manifest."""

Int64 = Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
TimeNs = Annotated[int, Meta(ge=0, le=INT64_MAX, description="Unix time in nanoseconds")]
Pid = Annotated[int, Meta(ge=0, le=PID_MAX)]
"""A pid or tid; 0: none or not known."""
Id32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
"""A user or group id as the kernel has it (``(uid_t)-1`` is 4294967295)."""
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
"""A syscall's return value: an fd, 0, or a negative errno."""
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Name = Annotated[str, Meta(max_length=MAX_NAME)]
Path = Annotated[str, Meta(max_length=MAX_PATH)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
Cmdline = Annotated[str, Meta(max_length=MAX_CMDLINE)]
Address = Annotated[str, Meta(max_length=MAX_ADDRESS)]
Argv = Annotated[list[Annotated[str, Meta(max_length=MAX_ARG)]], Meta(max_length=MAX_ARGV)]


class Struct(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Base of everything on the wire: keyword-only, defaults not sent.

    ``gc=False``: messages hold only plain data and never form reference
    cycles, so the cyclic collector need not track them; at high event rates
    that tracking was the largest cost after decoding itself.
    """


# --------------------------------------------------------------------------
# Events: what the sensor saw.  The kernel fills the first block, the agent's
# relay the enrichment block, the hive the ``agent`` field on receipt.
# --------------------------------------------------------------------------


class Event(Struct, tag_field="kind"):
    time: TimeNs = 0
    """Wall-clock time of the call, nanoseconds since the Unix epoch."""
    pid: Pid = 0
    tid: Pid = 0
    ppid: Pid = 0
    uid: Id32 = 0
    euid: Id32 = 0
    gid: Id32 = 0
    comm: Name = ""
    cgroup: Count = 0
    """cgroup v2 id of the calling task."""
    verdict: Name = "allow"
    """``allow``, ``audit`` or ``block``."""
    rule: Name = ""
    """Name of the policy rule that produced the verdict, if any."""

    # Enrichment by the agent relay.
    agent: Name = ""
    image: Path = ""
    cmdline: Cmdline = ""
    parent_image: Path = ""
    parent_cmdline: Cmdline = ""
    user: Name = ""
    sha256: Name = ""
    unit: Name = ""
    container: Name = ""
    """The container's id (a runtime's 64 hex digits, or its name where the
    runtime has no other: LXC, systemd-nspawn, a bare crun/runc id)."""
    container_runtime: Name = ""
    """docker, containerd, podman, cri-o, crun, runc, lxc or systemd-nspawn."""
    container_name: Name = ""
    container_image: Name = ""
    """What the runtime's own state on disk says; "" where it says nothing."""
    cwd: Path = ""
    package: Name = ""
    """The package that installed the process's program (dpkg's file lists;
    a script's own path first, else its executable): "" if none, not known
    (no dpkg database) or in a container."""
    package_session: Path = ""
    """The package manager (its path: /usr/bin/dpkg, /usr/bin/apt-get, ...)
    the process descends from, or is: it runs in a package management
    session (maintainer scripts, triggers).  "" if none."""

    # Namespaces, from the kernel: 0 where not known.
    mntns: U32 = 0
    """Inode number of the task's mount namespace (``readlink /proc/PID/ns/mnt``)."""
    pidns: U32 = 0
    """Inode number of the task's pid namespace."""
    vpid: Pid = 0
    """The pid as the task's own pid namespace sees it (``pid`` is the host's)."""


class Exec(Event, tag="exec"):
    filename: Path = ""
    """The path as given to execve (Sigma's ``Image``)."""
    exe: Path = ""
    """The executable the kernel resolved it to."""
    argv: Argv = []
    """At most ``MAX_ARGV`` arguments of at most ``MAX_ARG`` characters each."""
    argv_truncated: bool = False
    result: Int32 = 0
    """0, or the negative errno the call failed with."""
    fileless: bool = False
    """The executable has no name in any filesystem: a memfd, or a file
    deleted before or while it was executed (``exe`` ends in " (deleted)"
    or is ``/memfd:NAME``)."""


class Fork(Event, tag="fork"):
    child_pid: Pid = 0


class Exit(Event, tag="exit"):
    code: Annotated[int, Meta(ge=-128, le=255)] = 0
    """The exit status, or minus the number of the signal that killed it."""


class Open(Event, tag="open"):
    path: Path = ""
    flags: U32 = 0
    result: Int32 = 0
    """The fd, or -errno; 0 for success when ``count`` > 1."""
    count: U32 = 1
    """How many identical opens (same thread, path, flags and outcome) this
    event stands for: the sensor folds a thread's repeats within a second of
    reporting one into a single later event, so a storm of them cannot flood
    the pipeline.  ``time`` is the latest one's."""


class SetId(Event, tag="setid"):
    call: Name = ""
    """setuid, setreuid, setresuid, setfsuid, setgid, setregid, setresgid, setfsgid."""
    old: Annotated[int, Meta(ge=-1, le=2**32 - 1)] = 0
    """The effective id before the call (for setfsuid/setfsgid, the fs id);
    -1 if the sensor never saw the thread's ids."""
    new: Annotated[int, Meta(ge=-1, le=2**32 - 1)] = 0
    """The effective id asked for, else the first id given; -1: unchanged."""
    result: Int32 = 0
    held: bool | None = None
    """Set by the agent for the set*uid calls: whether the process's program
    held the user id asked for before the call (since its exec: a real uid it
    ran as, or an effective one it gave up), so returning to it is no gain;
    None: its history is not known (first seen at this call, or an older
    agent)."""

    def change(self) -> str:
        """``old->new`` as the verdict lines print it; an unknown old id is ``?``."""
        return f"{'?' if self.old < 0 else self.old}->{self.new}"


class Connect(Event, tag="connect"):
    family: Annotated[int, Meta(ge=0, le=65535)] = 0
    """2 (AF_INET) or 10 (AF_INET6)."""
    protocol: Name = "tcp"
    address: Address = ""
    port: Port = 0
    src_address: Address = ""
    src_port: Port = 0
    hostname: Name = ""
    """DNS name the agent saw resolve to ``address``, if any (Sigma's ``DestinationHostname``)."""


class Bind(Event, tag="bind"):
    family: Annotated[int, Meta(ge=0, le=65535)] = 0
    protocol: Name = "tcp"
    address: Address = ""
    port: Port = 0


Mode = Annotated[int, Meta(ge=-1, le=0xFFFF)]
"""A file mode as the kernel keeps it (type and permission bits); -1: not given."""
OptionalId = Annotated[int, Meta(ge=-1, le=2**32 - 1)]
"""A user or group id, or -1 for "unchanged" (chown's -1)."""
Signo = Annotated[int, Meta(ge=0, le=64)]


class File(Event, tag="file"):
    """A change to a file's name or attributes: what an ``Open`` does not
    show.  (Creating and writing a file are ``Open`` events with write
    intent.)"""

    op: Name = ""
    """rename, unlink, rmdir, link, symlink, mknod, chmod, chown, setxattr or
    removexattr."""
    path: Path = ""
    """The name the call creates, removes or changes: rename's new name,
    link's and symlink's new link, the file chmod, chown or *xattr change."""
    source: Path = ""
    """rename: the old name; link: the existing file; symlink: the text the
    link holds (its target)."""
    mode: Mode = -1
    """chmod's and mknod's mode."""
    owner: OptionalId = -1
    """chown's user id (-1: unchanged)."""
    group: OptionalId = -1
    """chown's group id (-1: unchanged)."""
    xattr: Name = ""
    """setxattr's and removexattr's attribute name (``security.capability``: file capabilities)."""
    result: Int32 = 0


class Ptrace(Event, tag="ptrace"):
    """A ptrace request aimed at another process (attach, seize, memory and
    register access); ``pid`` is the tracer."""

    request: Name = ""
    """The request without its prefix, lower case: attach, seize, peekdata, pokedata, ..."""
    target_pid: Pid = 0
    target_comm: Name = ""
    result: Int32 = 0


class Signal(Event, tag="signal"):
    """A signal sent to a protected process (the agent and its family); ``pid`` is the sender."""

    signal: Signo = 0
    target_pid: Pid = 0
    target_comm: Name = ""
    result: Int32 = 0


class Bpf(Event, tag="bpf"):
    """A BPF program loaded into the kernel by another process than the agent."""

    command: Name = ""
    """The bpf(2) command, lower case: prog_load, ..."""
    prog_type: Name = ""
    """The program type, lower case without its prefix: kprobe, tracepoint, xdp, ..."""
    prog_name: Name = ""
    result: Int32 = 0


class Mount(Event, tag="mount"):
    """A filesystem mounted, moved or unmounted."""

    call: Name = ""
    """mount, umount, move_mount, fsmount or mount_setattr."""
    source: Path = ""
    """The device or source given (mount)."""
    target: Path = ""
    """The mount point."""
    fstype: Name = ""
    flags: Count = 0
    result: Int32 = 0


class Notice(Event, tag="notice"):
    """Something the agent itself reports: drops, watchdog fail-open, spool loss."""

    what: Name = ""
    count: Count = 0
    detail: Text = ""


class EdgeAction(Struct):
    """A command the agent ran on its own, as its edge playbook decided."""

    id: Name
    """The command's id (``edge-...``)."""
    action: Name
    """kill_process, block_exec, block_connect, quarantine_file, ..."""
    detail: Text = ""
    """Its parameters as the playbook filled them; once answered, the result's detail."""
    ok: bool | None = None
    """None: decided and handed to the executor; then its result."""


class Edge(Event, tag="edge"):
    """An alert the agent raised and answered itself, from the rules and
    playbooks of the hive's bundle: spooled right after the event it came
    from, whose ``pid`` and ``time`` it carries, so the hive files one
    alert (``alert``) for both, taken at the edge, and does not act on it
    again."""

    alert: Name = ""
    """The alert's id, which the hive's alert for that event takes."""
    rule_id: Name = ""
    title: Text = ""
    level: Name = ""
    tags: Annotated[list[Name], Meta(max_length=256)] = []
    playbooks: Annotated[list[Name], Meta(max_length=64)] = []
    """The playbooks that ran on it at the edge (their auto-mode steps were taken there)."""
    actions: Annotated[list[EdgeAction], Meta(max_length=64)] = []
    answered: bool = False
    """False: the decision, spooled right after the event; True: results of
    its actions (``actions[].ok`` set), spooled as they come."""
    bundle: Count = 0
    """The bundle version whose rules raised it."""
    detail: Text = ""
    """What the alert's detail says instead of the actions taken (a
    novelty alert: what was new, what the profile held)."""
    workload: Name = ""
    """A novelty alert's workload (``unit:``, ``image:`` or ``cgroup:``)."""
    novel: Annotated[list[Text], Meta(max_length=64)] = []
    """A novelty alert's profile items, as ``profile accept`` puts them in."""


MAX_PROFILE = 256 << 10
"""Bytes of an encoded profile: 4096 items (the agent's cap) of about 60."""


class Profile(Event, tag="profile"):
    """A workload's learned profile (agent/_profile.py), sent when it
    changed: the hive keeps the latest revision per agent and workload."""

    workload: Name = ""
    state: Name = ""
    """learning, stable or enforcing."""
    revision: Count = 0
    items: Count = 0
    profile_version: Annotated[int, Meta(ge=0, le=65535)] = 0
    """Of ``body``'s encoding."""
    body: Annotated[bytes, Meta(max_length=MAX_PROFILE)] = b""
    """The profile, msgpack."""
    cgroup_path: Path = ""
    """A ``cgroup:ID`` workload's cgroup v2 path, as in ``body`` (also
    when the body is too large to send): what a proposed policy selects."""


AnyEvent = Exec | Fork | Exit | Open | SetId | Connect | Bind | File | Ptrace | Signal | Bpf | Mount | Edge | Notice \
    | Profile
EVENT_KINDS = tuple(c.__struct_config__.tag for c in AnyEvent.__args__)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# Agent -> hive
# --------------------------------------------------------------------------


class Hello(Struct, tag="hello", tag_field="type"):
    agent: Name
    hostname: Name = ""
    addresses: Annotated[list[Address], Meta(max_length=MAX_ADDRESSES)] = []
    os: Name = ""
    kernel: Name = ""
    agent_version: Name = ""
    policy_version: Name = ""
    wire_version: Annotated[int, Meta(ge=0, le=65535)] = WIRE_VERSION
    pid: Pid = 0
    """The agent daemon's pid (0: not said), so the hive's playbooks refuse
    to act on it before a command is even sent."""
    bundle_version: Count = 0
    """The version of the hive's policy bundle the agent runs (0: none)."""


class Heartbeat(Struct, tag="heartbeat", tag_field="type"):
    """Sent every few seconds; any message counts as a sign of life, this one
    carries the agent's own health."""

    time: TimeNs = 0
    spooled: Count = 0
    """Events on disk not yet acknowledged."""
    dropped: Count = 0
    """Events lost on the agent so far (spool full, ring buffer drops)."""


class EventBatch(Struct, tag="events", tag_field="type"):
    """Events the agent has spooled to disk, in order.

    ``seq`` counts 1, 2, 3, ... within one ``stream`` (a spool's random id,
    new when a spool is created from nothing).  The hive stores a batch only
    if its seq is the next one it expects for that (agent, stream); anything
    lower is a redelivery (acknowledged again, stored nothing), anything
    higher is a gap (refused with an ``Ack(resend=True)``).  Never 0: inside
    the hive seq 0 marks the hive's own events, which are not deduplicated.
    At most ``MAX_BATCH`` events."""

    seq: Annotated[int, Meta(ge=1, le=INT64_MAX)]
    stream: Name = ""
    events: Annotated[list[AnyEvent], Meta(max_length=MAX_BATCH)] = []


def _nested(depth: int) -> Any:
    """What a result's ``data`` may hold, ``depth`` lists or mappings deep."""
    scalar = Union[None, bool, Int64, float, Text]
    t: Any = scalar
    for _ in range(depth):
        t = Union[scalar, Annotated[list[t], Meta(max_length=MAX_ITEMS)],
                  Annotated[dict[Name, t], Meta(max_length=MAX_ITEMS)]]
    return t


Data = Annotated[dict[Name, _nested(MAX_DEPTH)], Meta(max_length=MAX_ITEMS)]  # type: ignore[misc]
"""A result's details: null, booleans, 64-bit integers, floats and strings
in lists and mappings at most ``MAX_DEPTH`` deep."""


class CommandResult(Struct, tag="result", tag_field="type"):
    command: Name
    """Id of the command this answers."""
    ok: bool = False
    detail: Text = ""
    data: Data = {}
    archive: Annotated[bytes, Meta(max_length=MAX_ARCHIVE)] = b""
    """collect_evidence: the evidence as a .tar.gz, when small enough to send."""


MAX_BUNDLE = 768 << 10
"""Bytes of a signed policy bundle (``fleet.MAX_BUNDLE``), so that one
travels in a frame under the least ``hive.max_frame``."""


class BundleStatus(Struct, tag="bundle_status", tag_field="type"):
    """What became of the policy bundle of ``version`` the hive sent."""

    version: Count
    ok: bool = False
    detail: Text = ""
    """Why it was refused or rolled back; what it changed when ok."""
    running: Count = 0
    """The version the agent runs after it (``version`` when ok)."""


AgentMessage = Hello | Heartbeat | EventBatch | CommandResult | BundleStatus


# --------------------------------------------------------------------------
# Hive -> agent
# --------------------------------------------------------------------------


class Ack(Struct, tag="ack", tag_field="type"):
    seq: Count
    """Every batch of ``stream`` up to and including this one is stored;
    the agent may delete them (0: none yet)."""
    stream: Name = ""
    resend: bool = False
    """The hive expected ``seq + 1`` and got something else: send again from there."""
    refused: Text = ""
    """The hive takes nothing from this agent, and why (its wire version is
    one the hive does not speak): the agent keeps its spool and says so.
    An older agent ignores the field (msgspec skips unknown fields)."""


PositivePid = Annotated[int, Meta(ge=1, le=PID_MAX, description=f"a positive integer (a pid, 1-{PID_MAX})")]
AbsolutePath = Annotated[str, Meta(min_length=1, max_length=MAX_PATH, pattern=r"\A/[^\x00]*\Z",
                                   description="an absolute path")]
"""Any absolute path: every character but NUL, up to ``MAX_PATH``."""
OptionalPath = Annotated[str, Meta(max_length=MAX_PATH, pattern=r"\A(/[^\x00]*)?\Z",
                                   description="an absolute path")]
"""An absolute path, or "" for none."""
Ttl = Annotated[float, Meta(ge=0, le=MAX_TTL, description=f"a number of seconds in [0, {MAX_TTL}]")]
Network = Annotated[str, Meta(max_length=MAX_ADDRESS, description="an IP address or network (CIDR)")]
PortNumber = Annotated[int, Meta(ge=1, le=65535, description="a port number (1-65535)")]


def _network(text: str, what: str) -> None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


class Command(Struct, tag_field="type", kw_only=True):
    """What the hive asks an agent to do: one Struct per action, tagged with
    the action's name.  The agent must not act on it after ``expires``.

    ``one_of``: fields of which at least one must be given (checked at
    decoding, like every type and range)."""

    one_of: ClassVar[tuple[str, ...]] = ()

    id: Name
    expires: TimeNs = 0
    """Unix ns after which the agent must not act on it; 0 = never."""

    @property
    def action(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]

    def __post_init__(self) -> None:
        if self.one_of and not any(getattr(self, f) for f in self.one_of):
            raise ValueError(f"{self.action} needs one of {', '.join(self.one_of)}")


class KillProcess(Command, tag="kill_process", kw_only=True):
    """Kill ``pid`` (and with ``tree`` its descendants), unless it is init,
    the agent or its family, or no longer runs ``exe`` (when given)."""

    pid: PositivePid
    tree: bool = False
    signal: Annotated[Literal["KILL", "TERM"], Meta(description="KILL or TERM")] = "KILL"
    exe: OptionalPath = ""


class BlockConnect(Command, tag="block_connect", kw_only=True):
    """Refuse connects to ``address`` (an address or CIDR) and/or ``port``
    (one or a list), optionally only for ``protocol``; lifted by the agent
    itself a grace period after ``ttl`` seconds (0: only by ``Unblock``)."""

    one_of = ("address", "port")

    address: Network = ""
    port: Union[PortNumber, Annotated[list[PortNumber], Meta(min_length=1, max_length=MAX_PORTS)], None] = None
    protocol: Annotated[Literal["", "tcp", "udp"], Meta(description="tcp or udp")] = ""
    ttl: Ttl = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.address:
            _network(self.address, "address")


class BlockExec(Command, tag="block_exec", kw_only=True):
    """Refuse execs of the file at ``path`` (exactly that name, whatever
    characters it holds), of files matching ``glob`` (``*``, ``?``, ``**``,
    ``[..]``), or of a file whose SHA-256 is ``sha256``; ``ttl`` as for
    ``BlockConnect``."""

    one_of = ("path", "glob", "sha256")

    path: OptionalPath = ""
    glob: OptionalPath = ""
    sha256: Annotated[str, Meta(pattern=r"\A([0-9a-fA-F]{64})?\Z", description="64 hex digits")] = ""
    ttl: Ttl = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sha256 = self.sha256.lower()


class IsolateHost(Command, tag="isolate_host", kw_only=True):
    """Refuse every connect and bind but to the hive, loopback and ``allow``;
    ``ttl`` as for ``BlockConnect``."""

    allow: Annotated[list[Network], Meta(max_length=MAX_ADDRESSES,
                                         description="a list of addresses or CIDRs")] = []
    ttl: Ttl = 0

    def __post_init__(self) -> None:
        for a in self.allow:
            _network(a, "allow")


class Unisolate(Command, tag="unisolate", kw_only=True):
    """Lift the isolation."""


class Unblock(Command, tag="unblock", kw_only=True):
    """Lift the block named ``rule`` (a block's result names it)."""

    rule: Annotated[str, Meta(min_length=1, max_length=MAX_NAME, description="a rule name")]


class QuarantineFile(Command, tag="quarantine_file", kw_only=True):
    """Move ``path`` into the agent's quarantine and refuse execs of its SHA-256.

    ``path`` is as process ``pid`` saw it, in its root and mount namespace
    (``mntns``), in ``container``: the event's own (0 and "" where not
    known).  If ``pid`` has exited, the path is opened in the root of a live
    process of the same mount namespace or container; with none of the
    three, in the agent's own root."""

    path: AbsolutePath
    pid: Pid = 0
    container: Annotated[str, Meta(max_length=MAX_NAME, pattern=r"\A[^\x00/]*\Z",
                                   description="a container id or name")] = ""
    mntns: U32 = 0


class CollectEvidence(Command, tag="collect_evidence", kw_only=True):
    """Collect /proc state, descriptors, sockets and (``exe``) the executable of ``pid``."""

    pid: PositivePid
    exe: bool = True


ContainerId = Annotated[str, Meta(min_length=1, max_length=MAX_NAME, pattern=r"\A[^\x00/]+\Z",
                                  description="a container id or name")]


class IsolateContainer(Command, tag="isolate_container", kw_only=True):
    """Cut the network of one container (by ``container``, its id or name as
    events carry it) and keep the host's; ``ttl`` as for ``BlockConnect``."""

    container: ContainerId
    ttl: Ttl = 0


class UnisolateContainer(Command, tag="unisolate_container", kw_only=True):
    """Give ``container`` its network back."""

    container: ContainerId


class UpdateProfile(Command, tag="update_profile", kw_only=True):
    """Accept ``accept`` (profile items a novelty alert named) into
    ``workload``'s profile and/or move it to ``state`` ("" keeps it)."""

    one_of = ("accept", "state")

    workload: Annotated[str, Meta(min_length=1, max_length=MAX_NAME, description="a workload")]
    accept: Annotated[list[Text], Meta(max_length=64, description="profile items")] = []
    state: Annotated[Literal["", "learning", "stable", "enforcing"],
                     Meta(description="learning, stable or enforcing")] = ""


AnyCommand = KillProcess | BlockConnect | BlockExec | IsolateHost | Unisolate | Unblock | QuarantineFile \
    | CollectEvidence | IsolateContainer | UnisolateContainer | UpdateProfile
COMMANDS: dict[str, type[Command]] = {c.__struct_config__.tag: c for c in AnyCommand.__args__}  # type: ignore[attr-defined]
"""The command types by action name."""

class PolicyBundle(Struct, tag="bundle", tag_field="type"):
    """A policy bundle the hive assigned to the agent: a ``fleet.Signed``,
    encoded, which the agent verifies with the key it pinned at enrollment."""

    version: Count
    signed: Annotated[bytes, Meta(max_length=MAX_BUNDLE + 256)]


HiveMessage = Union[Ack, PolicyBundle, AnyCommand]


# --------------------------------------------------------------------------
# Enrollment: on the hive's enrollment endpoint, where any CURVE key may
# connect but only a valid one-time token gets that key enrolled.
# --------------------------------------------------------------------------


class Enroll(Struct, tag="enroll", tag_field="type"):
    token: Name
    """The secret part of the one-time token ``immune-node enroll token`` printed."""
    agent: Name
    """The name the agent asks for; the connection's CURVE key is what gets enrolled."""


class Enrolled(Struct, tag="enrolled", tag_field="type"):
    ok: bool
    agent: Name = ""
    detail: Text = ""
    bundle_key: Annotated[bytes, Meta(max_length=32)] = b""
    """The hive's Ed25519 public key for policy bundles (version 3), which
    the agent pins; the channel it comes on is the CURVE one pinned by the token."""


# --------------------------------------------------------------------------
# Detections (hive internal, and what the API and playbooks see)
# --------------------------------------------------------------------------


class Alert(Struct, tag="alert", tag_field="type"):
    id: str
    rule_id: str
    title: str
    level: str = "medium"
    tags: list[str] = []
    agent: str = ""
    time: TimeNs = 0
    events: list[AnyEvent] = []
    incident: str = ""
    detail: str = ""
    count: Annotated[int, Meta(ge=1, le=INT64_MAX)] = 1
    """Hits it stands for: itself and its repeats within the suppression window,
    which the store counts on it (the hive's ``Repeat``)."""
    edge: bool = False
    """Raised and answered by the agent itself (its ``Edge`` event is among
    ``events``): the hive's playbooks do not act on it again."""
    last_seen: TimeNs = 0
    """When its latest hit happened, as stored: its own time until a repeat comes."""
