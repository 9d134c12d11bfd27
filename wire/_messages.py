"""The wire contract between agents and the hive.

Every message is a msgspec Struct in a tagged union; the tag is the ``type``
field on the wire.  Version 1 is this file.  Rules for changing it:

* a field added later always has a default, so an older peer's message still
  decodes;
* a field is never renamed or retyped; add a new one instead;
* ``WIRE_VERSION`` is bumped only for a change an older peer cannot read.

Agents and the hive both import this module; neither imports the other.
"""

from __future__ import annotations

import msgspec

WIRE_VERSION = 1


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
    time: int = 0
    """Wall-clock time of the call, nanoseconds since the Unix epoch."""
    pid: int = 0
    tid: int = 0
    ppid: int = 0
    uid: int = 0
    euid: int = 0
    gid: int = 0
    comm: str = ""
    cgroup: int = 0
    """cgroup v2 id of the calling task."""
    verdict: str = "allow"
    """``allow``, ``audit`` or ``block``."""
    rule: str = ""
    """Name of the policy rule that produced the verdict, if any."""

    # Enrichment by the agent relay.
    agent: str = ""
    image: str = ""
    cmdline: str = ""
    parent_image: str = ""
    parent_cmdline: str = ""
    user: str = ""
    sha256: str = ""
    unit: str = ""
    container: str = ""
    cwd: str = ""


class Exec(Event, tag="exec"):
    filename: str = ""
    """The path as given to execve (Sigma's ``Image``)."""
    exe: str = ""
    """The executable the kernel resolved it to."""
    argv: list[str] = []
    argv_truncated: bool = False
    result: int = 0
    """0, or the negative errno the call failed with."""


class Fork(Event, tag="fork"):
    child_pid: int = 0


class Exit(Event, tag="exit"):
    code: int = 0


class Open(Event, tag="open"):
    path: str = ""
    flags: int = 0
    result: int = 0
    """The fd, or -errno; 0 for success when ``count`` > 1."""
    count: int = 1
    """How many identical opens (same thread, path, flags and outcome) this
    event stands for: the sensor folds a thread's repeats within a second of
    reporting one into a single later event, so a storm of them cannot flood
    the pipeline.  ``time`` is the latest one's."""


class SetId(Event, tag="setid"):
    call: str = ""
    """setuid, setreuid, setresuid, setfsuid, setgid, setregid, setresgid, setfsgid."""
    old: int = 0
    """The effective id before the call (for setfsuid/setfsgid, the fs id);
    -1 if the sensor never saw the thread's ids."""
    new: int = 0
    """The effective id asked for, else the first id given; -1: unchanged."""
    result: int = 0

    def change(self) -> str:
        """``old->new`` as the verdict lines print it; an unknown old id is ``?``."""
        return f"{'?' if self.old < 0 else self.old}->{self.new}"


class Connect(Event, tag="connect"):
    family: int = 0
    """2 (AF_INET) or 10 (AF_INET6)."""
    protocol: str = "tcp"
    address: str = ""
    port: int = 0
    src_address: str = ""
    src_port: int = 0
    hostname: str = ""
    """DNS name the agent saw resolve to ``address``, if any (Sigma's ``DestinationHostname``)."""


class Bind(Event, tag="bind"):
    family: int = 0
    protocol: str = "tcp"
    address: str = ""
    port: int = 0


class Notice(Event, tag="notice"):
    """Something the agent itself reports: drops, watchdog fail-open, spool loss."""

    what: str = ""
    count: int = 0
    detail: str = ""


AnyEvent = Exec | Fork | Exit | Open | SetId | Connect | Bind | Notice
EVENT_KINDS = ("exec", "fork", "exit", "open", "setid", "connect", "bind", "notice")


# --------------------------------------------------------------------------
# Agent -> hive
# --------------------------------------------------------------------------


class Hello(Struct, tag="hello", tag_field="type"):
    agent: str
    hostname: str = ""
    addresses: list[str] = []
    os: str = ""
    kernel: str = ""
    agent_version: str = ""
    policy_version: str = ""
    wire_version: int = WIRE_VERSION
    pid: int = 0
    """The agent daemon's pid (0: not said), so the hive's playbooks refuse
    to act on it before a command is even sent."""


class Heartbeat(Struct, tag="heartbeat", tag_field="type"):
    """Sent every few seconds; any message counts as a sign of life, this one
    carries the agent's own health."""

    time: int = 0
    spooled: int = 0
    """Events on disk not yet acknowledged."""
    dropped: int = 0
    """Events lost on the agent so far (spool full, ring buffer drops)."""


class EventBatch(Struct, tag="events", tag_field="type"):
    """Events the agent has spooled to disk, in order.

    ``seq`` counts 1, 2, 3, ... within one ``stream`` (a spool's random id,
    new when a spool is created from nothing).  The hive stores a batch only
    if its seq is the next one it expects for that (agent, stream); anything
    lower is a redelivery (acknowledged again, stored nothing), anything
    higher is a gap (refused with an ``Ack(resend=True)``)."""

    seq: int
    stream: str = ""
    events: list[AnyEvent] = []


class CommandResult(Struct, tag="result", tag_field="type"):
    command: str
    """Id of the command this answers."""
    ok: bool = False
    detail: str = ""
    data: dict[str, object] = {}


AgentMessage = Hello | Heartbeat | EventBatch | CommandResult


# --------------------------------------------------------------------------
# Hive -> agent
# --------------------------------------------------------------------------


class Ack(Struct, tag="ack", tag_field="type"):
    seq: int
    """Every batch of ``stream`` up to and including this one is stored;
    the agent may delete them."""
    stream: str = ""
    resend: bool = False
    """The hive expected ``seq + 1`` and got something else: send again from there."""


class Command(Struct, tag="command", tag_field="type"):
    id: str
    action: str
    """kill_process, block_connect, block_exec, isolate_host, unisolate,
    quarantine_file, collect_evidence, unblock."""
    params: dict[str, object] = {}
    expires: int = 0
    """Unix ns after which the agent must not act on it; 0 = never."""


HiveMessage = Ack | Command


# --------------------------------------------------------------------------
# Enrollment: on the hive's enrollment endpoint, where any CURVE key may
# connect but only a valid one-time token gets that key enrolled.
# --------------------------------------------------------------------------


class Enroll(Struct, tag="enroll", tag_field="type"):
    token: str
    """The secret part of the one-time token ``immune-node enroll token`` printed."""
    agent: str
    """The name the agent asks for; the connection's CURVE key is what gets enrolled."""


class Enrolled(Struct, tag="enrolled", tag_field="type"):
    ok: bool
    agent: str = ""
    detail: str = ""


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
    time: int = 0
    events: list[AnyEvent] = []
    incident: str = ""
    detail: str = ""
