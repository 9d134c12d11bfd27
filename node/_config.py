"""The node's TOML configuration: typed sections with documented defaults.

Every key is optional; ``immune.example.toml`` next to this file lists them
all with their defaults and ranges.  Command-line flags override the file
and are checked the same way.  Anything unusable (a broken file, a value out
of range, a data folder the node cannot write) is refused with one line
naming the file and key (or the flag) and what is wrong.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

import wire

DEFAULT_CONFIG = Path("/etc/immune/immune.toml")

# The longest socket name the node binds in its run folder: a unix socket
# path holds at most 107 bytes.
_SOCKET_NAME_ROOM = len("/correlate.sock")
_IPC_PATH_MAX = 107


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the user."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NodeConfig(_Section):
    data: str = "/var/lib/immune"
    """Folder where the node keeps its state (store, spool, keys, run files)."""
    log_level: str = "info"
    log_format: str = "text"
    """``text`` (one line per record) or ``json`` (one JSON object per line, Elastic Common Schema names)."""
    log_to: str = "stderr"
    """``stderr`` or ``journald`` (its native socket: fields stay fields; the format is the journal's)."""
    shutdown_timeout: Annotated[float, Meta(gt=0, le=600)] = 5.0
    """Seconds each actor gets to stop before it is abandoned or killed."""


class StoreConfig(_Section):
    url: str = ""
    """Where the hive keeps its state: empty for ``hive.db`` in the data
    folder, ``sqlite:///PATH`` for another SQLite file (one that several
    hive nodes on this machine may share), or
    ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` for a PostgreSQL
    database that hive nodes on several machines may share."""


ROLES = ("router", "detect", "correlate", "respond", "all")


class ClusterConfig(_Section):
    nats: list[str] = []
    """The NATS servers of the cluster (``nats://HOST:PORT``, any of them;
    the client finds the others).  Empty: a single hive node, as always."""
    node: str = ""
    """This node's name in the cluster (letters, digits, ``-_.``); empty: the host name."""
    role: str = "all"
    """What this node does: ``router`` (agents' door and store writer),
    ``detect`` (Sigma rules), ``correlate``, ``respond`` (playbooks) or ``all``."""
    partitions: Annotated[int, Meta(ge=1, le=1024)] = 16
    """Partitions of the agents' batches (by agent), each stored by one
    node's writer at a time through a lease; the same on every node."""
    correlate_partitions: Annotated[int, Meta(ge=1, le=256)] = 8
    """Partitions of correlation, each owned by one correlate node at a time
    through a lease: Sigma correlations spread over them by (rule, group-by
    values); partition 0 also holds the host correlator (lateral movement,
    spread, incidents), whose key is the whole hive.  The same on every node."""
    lease: Annotated[float, Meta(ge=1, le=300)] = 10.0
    """Seconds a partition's lease lasts without renewal: a dead owner's
    partitions move after about this long."""
    pack: bool = True
    """Routers pack many agents' batches into one JetStream message per
    partition, and store writers pass stored batches on to detection packed
    too (JetStream's cost is per message).  Nodes of this version read both
    forms; a node of a version before packing reads only single batches, so
    in a rolling upgrade from one set ``pack = false`` on the upgraded nodes
    until every node runs this version."""


class HiveConfig(_Section):
    listen: str = "tcp://0.0.0.0:7400"
    """Where agents connect (ZeroMQ endpoint; CURVE-encrypted)."""
    enroll_listen: str = ""
    """Where agents enroll with a one-time token (CURVE-encrypted); empty:
    ``listen`` with the port plus one."""
    rules: list[str] = []
    """Extra Sigma rule folders, loaded after the built-in pack."""
    playbooks: list[str] = []
    """Extra playbook folders, loaded after the built-in ones."""
    webhook: str = ""
    """URL the ``notify`` playbook action posts alerts to (a SOC, a chat, an AI triage service)."""
    dry_run: bool = False
    """Run every playbook in dry-run: record what would be done, do nothing."""
    heartbeat_timeout: Annotated[float, Meta(ge=1, le=86400)] = 30.0
    """An agent silent for this long is marked offline."""
    retention_days: Annotated[float, Meta(gt=0, le=36500)] = 30.0
    retention_mb: Annotated[int, Meta(ge=1, le=1 << 24)] = 10240
    max_frame: Annotated[int, Meta(ge=1 << 20, le=64 << 20)] = 4 << 20
    """Largest frame accepted from an agent, in bytes (the router's own
    default, ``hive._actors.DEFAULT_MAX_FRAME``); at least an agent's largest
    batch (``wire.MAX_BATCH_BYTES``) and event, so none is ever refused."""


class AgentConfig(_Section):
    id: str = ""
    """This agent's name at the hive; default: the host name."""
    hive: str | list[str] = "tcp://127.0.0.1:7400"
    """The hive's endpoint, or a list of hive nodes' endpoints sharing one
    store and one identity key: the agent delivers to the first, moves to the
    next when one fails and goes back to the first when it answers again."""
    failover_after: Annotated[float, Meta(ge=0.1, le=3600)] = 3.0
    """Seconds without a connection to a hive node before moving to the next in ``hive``."""
    hive_key: str = ""
    """The hive's public key (Z85), pinned at enrollment; default: read from the data folder."""
    spool_mb: Annotated[int, Meta(ge=1, le=1 << 20)] = 1024
    """Disk spool bound; when full the oldest events are dropped and reported."""
    batch: Annotated[int, Meta(ge=1, le=wire.MAX_BATCH)] = 256
    heartbeat: Annotated[float, Meta(ge=0.5, le=3600)] = 5.0

    @property
    def endpoints(self) -> list[str]:
        """``hive`` as a list, in order of preference."""
        return [self.hive] if isinstance(self.hive, str) else list(self.hive)


class SensorConfig(_Section):
    enabled: bool = True
    policy: str = ""
    """Policy file; empty: the built-in default policy."""
    scope: str = "machine"
    """``machine``, ``cgroup:/path/in/cgroup2`` or ``netns:/run/netns/NAME``."""
    watchdog_ms: Annotated[int, Meta(ge=10, le=60000)] = 250
    """Fail open when the exec/open responder cannot answer within this bound."""
    fold_ms: Annotated[int, Meta(ge=0, le=60000)] = 1000
    """A thread's identical audited opens this soon after one reported are sent
    as one event with a count; 0: report every open."""


class ProfileConfig(_Section):
    """Learned self (agent/_profile.py): each workload's behaviour learned
    by the agent, what falls outside it alerted once stable."""

    enabled: bool = True
    learn_hours: Annotated[float, Meta(gt=0, le=8760)] = 24.0
    """A new workload learns for this long at least."""
    stable_hours: Annotated[float, Meta(ge=0, le=8760)] = 1.0
    """... and becomes stable once this long passed without a new item."""
    realert_hours: Annotated[float, Meta(ge=0, le=8760)] = 1.0
    """A novelty not accepted is alerted again after this long."""
    folder_cap: Annotated[int, Meta(ge=1, le=4096)] = 16
    """A folder with more children than this is kept as ``FOLDER/**``."""
    peer_cap: Annotated[int, Meta(ge=1, le=4096)] = 8
    """More peers of one /24 on a port than this are kept as the /24."""
    max_workloads: Annotated[int, Meta(ge=1, le=65536)] = 256
    max_items: Annotated[int, Meta(ge=16, le=65536)] = 4096
    """Items per profile; a workload that does more learns no more."""
    cgroups: bool = True
    """Learn processes outside any service or container by their cgroup."""
    enforce_action: str = "kill"
    """``kill``: an ``enforcing`` workload's process that does what its
    proposed policy would refuse is killed by the agent at once; ``alert``:
    only alerted, as in ``stable``."""


class ConsoleConfig(_Section):
    enabled: bool = True
    """Serve the console (web pages, JSON API, metrics) from the hive."""
    listen: str = "https://127.0.0.1:7480"
    """Where the console listens: ``https://HOST:PORT``."""
    cert: str = ""
    """PEM certificate file; empty (with ``key`` empty): a self-signed pair
    made on first start in the data folder (console.crt, console.key)."""
    key: str = ""
    """PEM private key file of ``cert``."""
    session_hours: Annotated[float, Meta(gt=0, le=720)] = 12.0
    """A login lasts this long."""


class AiConfig(_Section):
    """AI triage: incidents summarised (secrets redacted) and sent to an
    OpenAI-compatible chat-completions endpoint for a verdict.  Off while
    ``url`` is empty: then nothing about an incident leaves the hive."""

    url: str = ""
    """The endpoint: ``http(s)://HOST:PORT/v1`` (``/chat/completions`` is
    added) or the full ``.../chat/completions`` URL, used as given."""
    model: str = ""
    """The model name sent in each request (llama.cpp ignores it; vLLM, Ollama and hosted services need it)."""
    token: str = ""
    """Sent as ``Authorization: Bearer TOKEN``; empty: no header."""
    timeout: Annotated[float, Meta(gt=0, le=600)] = 60.0
    """Seconds one request may take in all."""
    retries: Annotated[int, Meta(ge=0, le=10)] = 2
    """Requests tried again after a failure that may pass (no connection, timeout, HTTP 429 or 5xx)."""
    calls_per_hour: Annotated[int, Meta(ge=1, le=100000)] = 60
    """Requests to the model in any hour, retries included; beyond it a triage fails with the reason."""
    delay: Annotated[float, Meta(ge=0, le=86400)] = 30.0
    """A new incident is triaged once it has not changed for this many seconds."""
    max_kb: Annotated[int, Meta(ge=4, le=4096)] = 64
    """Largest summary sent, in KiB (the least telling parts are dropped to fit)."""


class OutputConfig(_Section):
    """One ``[[outputs]]`` table: where the hive forwards alerts (and
    events) as ECS JSON, from a cursor kept in the store."""

    name: str
    """Its name in logs, metrics and the store's cursor (letters, digits, ``-_.``)."""
    kind: str
    """``file``, ``syslog`` or ``webhook``."""
    target: str
    """file: a path; syslog: ``udp://``, ``tcp://`` or ``tls://HOST:PORT``; webhook: an http(s) URL."""
    what: str = "alerts"
    """``alerts``, ``events`` or ``both``."""
    backfill: bool = False
    """On its first start, forward what the store already holds (else what arrives from then on)."""
    ca: str = ""
    """CA file that signs the receiver's certificate (tls://, https://); empty: the system's CAs."""
    token: str = ""
    """webhook: sent as ``Authorization: Bearer TOKEN``."""
    timeout: Annotated[float, Meta(gt=0, le=600)] = 10.0
    """Seconds a connection or a delivery may take before it counts as failed."""
    retry_max: Annotated[float, Meta(ge=1, le=3600)] = 60.0
    """Longest wait between retries (they start at 1 s and double)."""
    facility: str = "local0"
    """syslog facility name."""
    max_mb: Annotated[int, Meta(ge=1, le=1 << 20)] = 100
    """file: rotated once this big."""
    keep: Annotated[int, Meta(ge=1, le=1000)] = 5
    """file: rotated files kept beside the current one."""


class HerdPeer(_Section):
    """One ``[[herd.peers]]`` table: another hive's indicators (or a feed's)."""

    name: str
    """Its name in alerts, blocks, logs and ``immune-node intel list`` (letters, digits, ``-_.``)."""
    url: str = ""
    """The https:// URL of a TAXII 2.1 collection (another hive's: ``https://HOST:7480/taxii2/immune/collections/indicators/``)."""
    path: str = ""
    """Or a STIX 2.1 bundle or MISP feed file, read again when it changes (set one of url and path)."""
    token: str = ""
    """url: the API token the other hive made for this one (``users token NAME`` of a ``peer`` user)."""
    trust: str = "observe"
    """``observe``: alert on events that match; ``enforce``: also push blocks to every agent."""
    ca: str = ""
    """url: CA file of the other hive's console certificate (its console.crt); empty: the system's CAs."""
    key: str = ""
    """The sender's herd key (64 hex digits, ``immune-node intel key`` on its hive): objects not signed by it
    are refused.  Required for ``enforce``."""
    interval: Annotated[float, Meta(ge=5, le=86400)] = 300.0
    """Seconds between pulls."""


class HerdConfig(_Section):
    serve: bool = True
    """Serve this hive's indicators over TAXII 2.1 at the console's /taxii2/ (to ``peer`` users' tokens)."""
    share_days: Annotated[float, Meta(gt=0, le=365)] = 30.0
    """An indicator served is valid this long after the hive last saw it."""
    max_days: Annotated[float, Meta(gt=0, le=365)] = 90.0
    """A pulled indicator lasting longer than this is cut to it (and one with no expiry gets it)."""
    peers: Annotated[list[HerdPeer], Meta(max_length=64)] = []


class Config(_Section):
    node: NodeConfig = msgspec.field(default_factory=NodeConfig)
    hive: HiveConfig = msgspec.field(default_factory=HiveConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    agent: AgentConfig = msgspec.field(default_factory=AgentConfig)
    sensor: SensorConfig = msgspec.field(default_factory=SensorConfig)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    profile: ProfileConfig = msgspec.field(default_factory=ProfileConfig)
    outputs: Annotated[list[OutputConfig], Meta(max_length=64)] = []
    ai: AiConfig = msgspec.field(default_factory=AiConfig)
    herd: HerdConfig = msgspec.field(default_factory=HerdConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data)

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def node_name(self) -> str:
        """This node's name in the cluster."""
        import socket

        return self.cluster.node or re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64]

    @property
    def store_location(self) -> Path | str:
        """The hive's store, as ``hive.Store`` opens it: a SQLite file's
        path, or a PostgreSQL URL."""
        if not self.store.url:
            return self.data_dir / "hive.db"
        if self.store.url.startswith(_POSTGRES_SCHEMES):
            return self.store.url
        return Path(self.store.url.removeprefix("sqlite://"))


_LEVELS = {"debug", "info", "warning", "error"}

# What a command may ask ``load_config`` to check on disk besides the values.
WRITE_DATA = "write data"
"""The data folder is made if missing, and must be a folder the node can read and write."""
READ_DATA = "read data"
"""The data folder, if it exists, must be a folder the node can read."""
HIVE_FOLDERS = "hive folders"
"""``hive.rules`` and ``hive.playbooks`` must be readable folders, outputs' CA files readable
files and file outputs' folders present."""
POLICY_FILE = "policy file"
"""``sensor.policy``, if set, must be a readable file."""


def ranges() -> dict[str, str]:
    """``section.key``: the allowed range of each numeric key, as errors and
    the example file say it."""
    out = {}
    for section in msgspec.inspect.type_info(Config).fields:
        t = section.type
        table = t.item_type if isinstance(t, msgspec.inspect.ListType) else t
        for field in table.fields:
            t = field.type
            if isinstance(t, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
                kind = "an integer" if isinstance(t, msgspec.inspect.IntType) else "a number"
                span = (f"from {_num(t.ge)} to" if t.ge is not None else f"greater than {_num(t.gt)} and at most")
                out[f"{section.name}.{field.name}"] = f"{kind} {span} {_num(t.le)}"
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class _Origin:
    """Where each value came from, so that an error names the file and key,
    the flag, or the default."""

    def __init__(self, path: Path, raw: dict, flags: Iterable[str]) -> None:
        self.path = path
        self.raw = raw
        self.flags = set(flags)

    def error(self, key: str, problem: str) -> ConfigError:
        section, _, name = key.partition(".")
        in_file = self.raw.get(section, {})
        flag = re.sub(r"\[[0-9]+\]$", "", key)  # agent.hive[1]: one of several --hive
        if flag in self.flags:
            where = f"--{flag.partition('.')[2].replace('_', '-')}"
        elif not name or not isinstance(in_file, dict) or name.partition("[")[0] in in_file or "[" in section:
            where = f"config {self.path}: {key or 'top level'}"
        else:
            where = f"{key} (the default)"
        return ConfigError(f"{where}: {problem}")


def load_config(path: str | os.PathLike | None = None, check: Iterable[str] = (), **overrides: object) -> Config:
    """Read ``path`` (or the default file if it exists), then apply
    ``overrides`` given as ``section_key=value`` (``None`` values ignored).
    Every value is checked; ``check`` names what must also hold on disk
    (``WRITE_DATA``, ``READ_DATA``, ``HIVE_FOLDERS``, ``POLICY_FILE``)."""
    src = Path(path) if path else DEFAULT_CONFIG
    raw = _read(src) if path or src.exists() else {}
    flags = []
    merged = {section: dict(keys) if isinstance(keys, dict) else keys for section, keys in raw.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition("_")
        target = merged.setdefault(section, {})
        if isinstance(target, dict):  # else the file's own error is reported
            target[name] = value
            flags.append(f"{section}.{name}")
    origin = _Origin(src, raw, flags)
    try:
        cfg = msgspec.convert(merged, Config)
    except msgspec.ValidationError as e:
        raise _type_error(origin, merged, e) from None
    for key, problem in _problems(cfg):
        raise origin.error(key, problem)
    if not cfg.hive.enroll_listen:
        head, _, port = cfg.hive.listen.rpartition(":")
        if cfg.hive.listen.startswith("ipc://") or int(port) == 65535:
            raise origin.error("hive.enroll_listen", f"set it, since hive.listen {cfg.hive.listen!r} "
                               "has no next port to derive it from")
        cfg.hive.enroll_listen = f"{head}:{int(port) + 1}"
    for key, problem in _disk_problems(cfg, set(check)):
        raise origin.error(key, problem)
    return cfg


def _read(src: Path) -> dict:
    try:
        with open(src, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config {src}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config {src}: is a folder, not a file") from None
    except OSError as e:
        raise ConfigError(f"config {src}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {src}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {src}: {_one_line(str(e))}") from None


def _one_line(text: str) -> str:
    return text.replace("\n", " ")


def _type_error(origin: _Origin, merged: dict, err: msgspec.ValidationError) -> ConfigError:
    # msgspec says "Expected `int` >= 1048576 - at `$.hive.max_frame`".
    text = _one_line(str(err))
    m = re.match(r"(.*) - at `\$\.?(.*)`$", text)
    key, text = (m.group(2), m.group(1)) if m else ("", text)
    allowed = ranges().get(re.sub(r"\[[0-9]+\]", "", key))
    if allowed:
        section, _, name = key.partition(".")
        m = re.fullmatch(r"(\w+)\[([0-9]+)\]", section)
        table = merged[m.group(1)][int(m.group(2))] if m else merged[section]
        return origin.error(key, f"must be {allowed}, not {table[name]!r}")
    if key == "outputs" and "got `object`" in text:
        text = "is a list: write each output as an [[outputs]] table"
    return origin.error(key, text[:1].lower() + text[1:])


_PORT = re.compile(r"[0-9]{1,5}")
_AGENT_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")


def _problems(cfg: Config) -> Iterator[tuple[str, str]]:
    """(key, what is wrong) for each value out of its shape."""
    for section in msgspec.structs.fields(cfg):
        values = getattr(cfg, section.name)
        tables = ([(f"{section.name}[{i}]", v) for i, v in enumerate(values)] if isinstance(values, list)
                  else [(section.name, values)])
        for where, table in tables:
            for field in msgspec.structs.fields(table):
                value = getattr(table, field.name)
                if any(isinstance(text, str) and "\0" in text for text in (value if isinstance(value, list) else [value])):
                    yield f"{where}.{field.name}", "contains a NUL character"
    if not cfg.node.data:
        yield "node.data", "must name a folder"
    longest = len(os.fsencode(cfg.node.data)) + len("/run") + _SOCKET_NAME_ROOM
    if longest > _IPC_PATH_MAX:
        yield "node.data", (f"{cfg.node.data!r} is too long: the node's sockets in its run folder "
                            f"need a path under {_IPC_PATH_MAX + 1} bytes")
    if cfg.node.log_level.lower() not in _LEVELS:
        yield "node.log_level", f"{cfg.node.log_level!r} is not one of {sorted(_LEVELS)}"
    from actors._log import DESTINATIONS, FORMATS

    if cfg.node.log_format not in FORMATS:
        yield "node.log_format", f"{cfg.node.log_format!r} is not one of {', '.join(FORMATS)}"
    if cfg.node.log_to not in DESTINATIONS:
        yield "node.log_to", f"{cfg.node.log_to!r} is not one of {', '.join(DESTINATIONS)}"
    for key, endpoint in (("hive.listen", cfg.hive.listen), ("hive.enroll_listen", cfg.hive.enroll_listen)):
        if endpoint or key != "hive.enroll_listen":
            problem = _endpoint_problem(endpoint)
            if problem:
                yield key, problem
    yield from _hive_list_problems(cfg.agent.hive)
    for key, folders in (("hive.rules", cfg.hive.rules), ("hive.playbooks", cfg.hive.playbooks)):
        if "" in folders:
            yield key, "an empty folder name"
    if cfg.store.url:
        problem = _store_url_problem(cfg.store.url)
        if problem:
            yield "store.url", problem
    yield from _cluster_problems(cfg.cluster)
    if cfg.hive.webhook and not _is_http_url(cfg.hive.webhook):
        yield "hive.webhook", f"{cfg.hive.webhook!r} is not an http:// or https:// URL"
    if cfg.agent.id and not _AGENT_ID.fullmatch(cfg.agent.id):
        yield "agent.id", f"{cfg.agent.id!r}: up to 256 characters, no spaces or control characters"
    if cfg.agent.hive_key:
        from actors import KeyFileError, check_key

        try:
            check_key(cfg.agent.hive_key.encode(), "")
        except KeyFileError as e:
            yield "agent.hive_key", str(e).lstrip(": ")
    if cfg.console.enabled:
        from hive.console._tls import parse_listen

        try:
            parse_listen(cfg.console.listen)
        except ValueError as e:
            yield "console.listen", str(e)
        if bool(cfg.console.cert) != bool(cfg.console.key):
            yield ("console.key" if cfg.console.cert else "console.cert"), "set console.cert and console.key together"
    kind, _, where = cfg.sensor.scope.partition(":")
    if not (cfg.sensor.scope == "machine" or kind in ("cgroup", "netns", "container") and where):
        yield "sensor.scope", (f"{cfg.sensor.scope!r}: expected machine, cgroup:PATH, netns:PATH "
                               "or container:SELECTOR")
    elif kind == "container":
        from kmod import Scope, ScopeError

        try:
            Scope.parse(cfg.sensor.scope)  # its KEY=GLOB pairs
        except ScopeError as e:
            yield "sensor.scope", str(e).removeprefix("scope ")
    yield from _output_problems(cfg.outputs)
    if cfg.ai.url and not _is_http_url(cfg.ai.url):
        yield "ai.url", f"{cfg.ai.url!r} is not an http:// or https:// URL"
    elif cfg.ai.url and urlsplit(cfg.ai.url).query:
        yield "ai.url", f"{cfg.ai.url!r}: no query string (the path ends in /v1 or /chat/completions)"
    if cfg.ai.url and not cfg.ai.model.strip():
        yield "ai.model", "set it to the model's name (the server's, e.g. llama3.1:8b) when ai.url is set"
    if cfg.ai.token and not _TOKEN.fullmatch(cfg.ai.token):
        yield "ai.token", "1 to 4096 printable ASCII characters without spaces"
    yield from _herd_problems(cfg.herd.peers)
    if cfg.profile.enforce_action not in ("kill", "alert"):
        yield "profile.enforce_action", f"{cfg.profile.enforce_action!r} is not one of kill, alert"


_TRUSTS = ("observe", "enforce")


def _herd_problems(peers: list[HerdPeer]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for i, p in enumerate(peers):
        key = f"herd.peers[{i}]"
        for field in msgspec.structs.fields(p):
            value = getattr(p, field.name)
            if isinstance(value, str) and "\0" in value:
                yield f"{key}.{field.name}", "contains a NUL character"
        if not _OUTPUT_NAME.fullmatch(p.name):
            yield f"{key}.name", f"{p.name!r}: 1 to 64 letters, digits, '-', '_' or '.'"
        elif p.name in seen:
            yield f"{key}.name", f"{p.name!r} is the name of an earlier peer"
        seen.add(p.name)
        if bool(p.url) == bool(p.path):
            yield f"{key}.url", "set one of url (a TAXII collection) and path (a STIX bundle or MISP feed file)"
        elif p.url and not (p.url.startswith("https://") and _is_http_url(p.url)):
            yield f"{key}.url", f"{p.url!r} is not an https:// URL"
        if p.trust not in _TRUSTS:
            yield f"{key}.trust", f"{p.trust!r} is not one of {', '.join(_TRUSTS)}"
        if p.key:
            from hive.herd import parse_key

            try:
                parse_key(p.key)
            except ValueError as e:
                yield f"{key}.key", str(e)
        elif p.trust == "enforce":
            yield f"{key}.key", "an enforce peer must pin its key: blocks are pushed only for indicators it signed"
        if p.token and (not p.url or not _TOKEN.fullmatch(p.token)):
            yield f"{key}.token", ("only for a url" if not p.url
                                   else "1 to 4096 printable ASCII characters without spaces")
        if p.ca and not p.url:
            yield f"{key}.ca", "only for a url"


_OUTPUT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_OUTPUT_KINDS = ("file", "syslog", "webhook")
_OUTPUT_WHAT = ("alerts", "events", "both")
_SYSLOG_SCHEMES = ("udp", "tcp", "tls")
_TOKEN = re.compile(r"[!-~]{1,4096}")  # printable ASCII, no spaces: it goes into a header


_NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _cluster_problems(c: ClusterConfig) -> Iterator[tuple[str, str]]:
    for i, url in enumerate(c.nats):
        u = urlsplit(url)
        try:
            port = u.port
        except ValueError:
            port = None
        if u.scheme not in ("nats", "tls") or not u.hostname or port is None or u.path not in ("", "/"):
            yield f"cluster.nats[{i}]", f"{url!r} is not nats://HOST:PORT (or tls://HOST:PORT)"
    if len(set(c.nats)) != len(c.nats):
        yield "cluster.nats", "names a server twice"
    if c.node and not _NODE_NAME.fullmatch(c.node):
        yield "cluster.node", f"{c.node!r}: 1-64 letters, digits or -_."
    if c.role not in ROLES:
        yield "cluster.role", f"{c.role!r} is not one of {', '.join(ROLES)}"
    elif c.role != "all" and not c.nats:
        yield "cluster.role", f"{c.role!r} needs cluster.nats: a single node does everything"


def _output_problems(outputs: list[OutputConfig]) -> Iterator[tuple[str, str]]:
    from hive.outputs import FACILITIES

    seen: set[str] = set()
    for i, o in enumerate(outputs):
        key = f"outputs[{i}]"
        if not _OUTPUT_NAME.fullmatch(o.name):
            yield f"{key}.name", f"{o.name!r}: 1 to 64 letters, digits, '-', '_' or '.'"
        elif o.name in seen:
            yield f"{key}.name", f"{o.name!r} is the name of an earlier output"
        seen.add(o.name)
        if o.kind not in _OUTPUT_KINDS:
            yield f"{key}.kind", f"{o.kind!r} is not one of {', '.join(_OUTPUT_KINDS)}"
            continue
        if o.what not in _OUTPUT_WHAT:
            yield f"{key}.what", f"{o.what!r} is not one of {', '.join(_OUTPUT_WHAT)}"
        problem = _target_problem(o)
        if problem:
            yield f"{key}.target", problem
        if o.ca and not (o.kind == "syslog" and o.target.startswith("tls://")
                         or o.kind == "webhook" and o.target.startswith("https://")):
            yield f"{key}.ca", "only for a tls:// syslog or an https:// webhook target"
        if o.token and (o.kind != "webhook" or not _TOKEN.fullmatch(o.token)):
            yield f"{key}.token", ("only for a webhook" if o.kind != "webhook"
                                   else "1 to 4096 printable ASCII characters without spaces")
        if o.facility not in FACILITIES:
            yield f"{key}.facility", f"{o.facility!r} is not a syslog facility (kern, user, ..., local0-local7)"


def _target_problem(o: OutputConfig) -> str | None:
    if o.kind == "file":
        return None if o.target else "must name a file"
    if o.kind == "webhook":
        return None if _is_http_url(o.target) else f"{o.target!r} is not an http:// or https:// URL"
    try:
        url = urlsplit(o.target)
        port = url.port
    except ValueError:  # a port out of range, a broken IPv6 address
        port = None
        url = None
    if url is None or url.scheme not in _SYSLOG_SCHEMES or not url.hostname or not port or url.path or url.query:
        return f"{o.target!r} is not udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT (port 1 to 65535)"
    return None


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _store_url_problem(url: str) -> str | None:
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return None
    if not url.startswith(_POSTGRES_SCHEMES):
        return f"{url!r} is not sqlite:///PATH (an absolute path) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    parts = urlsplit(url)
    shown = url.replace(f":{parts.password}@", ":...@") if parts.password else url
    try:
        parts.port
    except ValueError:
        return f"{shown!r}: the port is not a number from 1 to 65535"
    if not parts.path.strip("/"):
        return f"{shown!r} names no database (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    return None


def _is_http_url(text: str) -> bool:
    try:
        url = urlsplit(text)
        return url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # "Invalid IPv6 URL", a port out of range
        return False


def _hive_list_problems(hive: str | list[str]) -> Iterator[tuple[str, str]]:
    if isinstance(hive, str):
        problem = _endpoint_problem(hive)
        if problem:
            yield "agent.hive", problem
        return
    if not hive:
        yield "agent.hive", "an empty list: give at least one hive endpoint"
    for i, endpoint in enumerate(hive):
        problem = _endpoint_problem(endpoint)
        if problem:
            yield f"agent.hive[{i}]", problem
        elif endpoint in hive[:i]:
            yield f"agent.hive[{i}]", f"{endpoint!r} is listed twice"


def _endpoint_problem(endpoint: str) -> str | None:
    scheme, sep, rest = endpoint.partition("://")
    if scheme == "ipc" and rest:
        if len(os.fsencode(rest)) > _IPC_PATH_MAX:
            return f"{endpoint!r}: the path is longer than {_IPC_PATH_MAX} bytes"
        return None
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if host and _PORT.fullmatch(port) and 1 <= int(port) <= 65535:
            return None
    return f"{endpoint!r} is not a ZeroMQ endpoint (tcp://HOST:PORT with a port from 1 to 65535, or ipc://PATH)"


def _disk_problems(cfg: Config, check: set[str]) -> Iterator[tuple[str, str]]:
    if WRITE_DATA in check:
        problem = _writable_folder(cfg.data_dir)
        if problem:
            yield "node.data", problem
    elif READ_DATA in check and os.path.lexists(cfg.data_dir):
        problem = _readable_folder(cfg.data_dir)
        if problem:
            yield "node.data", problem
    if HIVE_FOLDERS in check:
        for key, folders in (("hive.rules", cfg.hive.rules), ("hive.playbooks", cfg.hive.playbooks)):
            for folder in folders:
                problem = _readable_folder(Path(folder))
                if problem:
                    yield key, problem
        for i, o in enumerate(cfg.outputs):
            if o.ca:
                try:
                    with open(o.ca, "rb"):
                        pass
                except IsADirectoryError:
                    yield f"outputs[{i}].ca", f"{o.ca}: is a folder, not a file"
                except OSError as e:
                    yield f"outputs[{i}].ca", f"{o.ca}: {e.strerror}"
            if o.kind == "file":
                target = Path(o.target)
                problem = _readable_folder(target.parent) or (f"{target}: is a folder" if target.is_dir() else None)
                if problem:
                    yield f"outputs[{i}].target", problem
    if HIVE_FOLDERS in check:
        for i, p in enumerate(cfg.herd.peers):
            for name, value in (("ca", p.ca), ("path", p.path)):
                if value:
                    try:
                        with open(value, "rb"):
                            pass
                    except IsADirectoryError:
                        yield f"herd.peers[{i}].{name}", f"{value}: is a folder, not a file"
                    except OSError as e:
                        yield f"herd.peers[{i}].{name}", f"{value}: {e.strerror}"
    if POLICY_FILE in check and cfg.sensor.policy:
        try:
            with open(cfg.sensor.policy, "rb"):
                pass
        except IsADirectoryError:
            yield "sensor.policy", f"{cfg.sensor.policy}: is a folder, not a file"
        except OSError as e:
            yield "sensor.policy", f"{cfg.sensor.policy}: {e.strerror}"


def _readable_folder(folder: Path) -> str | None:
    try:
        os.listdir(folder)
    except FileNotFoundError:
        return f"{folder}: no such folder"
    except NotADirectoryError:
        return f"{folder}: not a folder"
    except OSError as e:
        return f"{folder}: cannot read it: {e.strerror}"
    return None


def _writable_folder(folder: Path) -> str | None:
    """Make ``folder`` if missing, then prove the node can list it and write
    a block there (a full disk is found now, not by the first actor that
    writes)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{folder}: not a folder"
    except OSError as e:
        return f"{folder}: cannot make it: {e.strerror}"
    problem = _readable_folder(folder)
    if problem:
        return problem
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        return f"{folder}: cannot write there: {e.strerror}"
    return None
