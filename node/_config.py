"""The node's TOML configuration: typed sections with documented defaults.

Every key is optional; ``immune.example.toml`` next to this file lists them
all with their defaults.  Command-line flags override the file.  A broken
file is refused with one line naming the file and what is wrong.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import msgspec

DEFAULT_CONFIG = Path("/etc/immune/immune.toml")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the user."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NodeConfig(_Section):
    data: str = "/var/lib/immune"
    """Folder where the node keeps its state (store, spool, keys, run files)."""
    log_level: str = "info"
    shutdown_timeout: float = 5.0
    """Seconds each actor gets to stop before it is abandoned or killed."""


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
    heartbeat_timeout: float = 30.0
    """An agent silent for this long is marked offline."""
    retention_days: float = 30.0
    retention_mb: int = 10240
    max_frame: int = 16 << 20
    """Largest frame accepted from an agent, in bytes."""


class AgentConfig(_Section):
    id: str = ""
    """This agent's name at the hive; default: the host name."""
    hive: str = "tcp://127.0.0.1:7400"
    hive_key: str = ""
    """The hive's public key (Z85), pinned at enrollment; default: read from the data folder."""
    spool_mb: int = 1024
    """Disk spool bound; when full the oldest events are dropped and reported."""
    batch: int = 256
    heartbeat: float = 5.0


class SensorConfig(_Section):
    enabled: bool = True
    policy: str = ""
    """Policy file; empty: the built-in default policy."""
    scope: str = "machine"
    """``machine``, ``cgroup:/path/in/cgroup2`` or ``netns:/run/netns/NAME``."""
    watchdog_ms: int = 250
    """Fail open when the exec/open responder cannot answer within this bound."""
    fold_ms: int = 1000
    """A thread's identical audited opens this soon after one reported are sent
    as one event with a count; 0: report every open."""


class Config(_Section):
    node: NodeConfig = msgspec.field(default_factory=NodeConfig)
    hive: HiveConfig = msgspec.field(default_factory=HiveConfig)
    agent: AgentConfig = msgspec.field(default_factory=AgentConfig)
    sensor: SensorConfig = msgspec.field(default_factory=SensorConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data)

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"


_LEVELS = {"debug", "info", "warning", "error"}


def _one_line(path: Path, err: Exception) -> str:
    text = str(err).replace("\n", " ")
    # msgspec says "... - at `$.agent.spool_mb`"; say "agent.spool_mb: ..." instead.
    m = re.match(r"(.*) - at `\$\.?(.*)`$", text)
    if m:
        where = m.group(2) or "top level"
        text = f"{where}: {m.group(1)[0].lower()}{m.group(1)[1:]}"
    return f"config {path}: {text}"


def load_config(path: str | os.PathLike | None = None, **overrides: object) -> Config:
    """Read ``path`` (or the default file if it exists), then apply
    ``overrides`` given as ``section_key=value`` (``None`` values ignored)."""
    raw: dict = {}
    src = Path(path) if path else DEFAULT_CONFIG
    if path or src.exists():
        try:
            with open(src, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config {src}: no such file") from None
        except OSError as e:
            raise ConfigError(f"config {src}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(_one_line(src, e)) from None
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition("_")
        raw.setdefault(section, {})[name] = value
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(_one_line(src, e)) from None
    if cfg.node.log_level.lower() not in _LEVELS:
        raise ConfigError(f"config {src}: node.log_level: {cfg.node.log_level!r} is not one of {sorted(_LEVELS)}")
    if not cfg.hive.enroll_listen:
        head, _, port = cfg.hive.listen.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"config {src}: hive.enroll_listen: set it, since hive.listen {cfg.hive.listen!r} has no port")
        cfg.hive.enroll_listen = f"{head}:{int(port) + 1}"
    if cfg.node.shutdown_timeout <= 0:
        raise ConfigError(f"config {src}: node.shutdown_timeout: must be positive")
    return cfg
