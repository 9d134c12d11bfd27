"""Blocks and isolation as a layer over the sensor's own policy.

``ResponsePolicy`` keeps the blocks the hive asked for (each a kmod rule
named ``resp-<command id>``) and the isolation state, and composes them with
the base policy into the ``kmod.Policy`` the sensor runs.  Every rule goes
through kmod's own parser, so a bad address or digest is refused with
kmod's precise message.

Composition, and why:

* response rules come first: within a hook the first matching rule wins;
* connect/bind verdicts are an LPM lookup in which a rule naming a port or
  protocol is found before one that does not, whatever its address.  A
  base ``audit`` rule for port 443 would let a connect to a blocked address
  on 443 through; so an address block gets a *shadow* for each port and
  protocol a base audit rule names;
* isolation: an ``audit`` rule for the allowed addresses (the hive,
  loopback, the allow list) beside a ``block`` of every connect and bind
  (the longest prefix wins, so the allowed ones pass); base audit rules on
  connect/bind are left out while isolated, since a port-specific one would
  punch a hole.  Base and response blocks stay: isolation only adds refusals.

The agent's own process is excluded from the sensor, so its connection to
the hive never depends on any of this; the hive's addresses are allowed for
the host's other processes too (an operator's CLI, a browser on the API).

``SensorSlot`` is how the executor reaches the sensor that the kmod reader
actor runs in the same process: pass ``slot.attach`` as the reader's
``on_sensor``.  A restarted reader starts from its base policy; ``attach``
puts the response layer back on at once."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from kmod import KmodError, Policy, PolicyError

from ._errors import ResponseError

LOOPBACK = ("127.0.0.0/8", "::1/128")
ISOLATION = "isolation"


@dataclass
class Block:
    name: str
    hook: str
    """``exec`` or ``connect``."""
    match: dict[str, Any]
    """kmod match keys: path/sha256 for exec, address/port/protocol for connect."""
    expires: float = 0.0
    """Wall-clock seconds at which the agent lifts it itself, 0 = never."""
    command: str = ""


@dataclass
class Isolation:
    allow: list[str] = field(default_factory=list)
    """Destinations still reachable: the hive's addresses, loopback, the allow list."""
    expires: float = 0.0
    command: str = ""


_TOML_ESCAPES = {c: f"\\u{c:04X}" for c in (*range(0x20), 0x7F)} | {
    ord('"'): '\\"', ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
"""What a TOML basic string cannot hold as is: the quote, the backslash and
control characters.  Every other character is written as itself (JSON's
surrogate pairs for characters beyond the BMP are not valid TOML)."""


def _toml(value: Any) -> str:
    """``value`` (a str, an int, or a list of them) as a TOML value."""
    if isinstance(value, str):
        return '"' + value.translate(_TOML_ESCAPES) + '"'
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml, value)) + "]"
    raise TypeError(f"no TOML for {type(value).__name__} in a response rule")


_GLOB_LITERALS = str.maketrans({"*": "[*]", "?": "[?]", "[": "[\0[]"})
"""A glob's wildcards as classes of one character.  ``[`` is the class of
``[`` and NUL (which no path holds): ``[[]`` would be the usual spelling,
but Python's re warns it may one day read it as a nested set."""


def literal_glob(path: str) -> str:
    """The glob that matches ``path`` and nothing else."""
    return path.translate(_GLOB_LITERALS)


def rule_text(name: str, hook: str, action: str, match: dict[str, Any]) -> str:
    """A kmod rule as policy text (kmod's parser is the one way to a Rule,
    and it checks every value)."""
    lines = ["[[rule]]", f"name = {_toml(name)}", f"hook = {_toml(hook)}", f"action = {_toml(action)}"]
    lines += [f"match.{k} = {_toml(v)}" for k, v in match.items()]
    return "\n".join(lines) + "\n"


def parse_rules(texts: Iterable[str]) -> tuple:
    try:
        return Policy.parse("\n".join(texts), "response").rules
    except PolicyError as e:
        raise ResponseError(str(e).removeprefix("response: ")) from None


class ResponsePolicy:
    def __init__(self, base: Policy | None = None) -> None:
        self.base = base or Policy()
        self.blocks: dict[str, Block] = {}
        self.isolation: Isolation | None = None

    @property
    def active(self) -> bool:
        return bool(self.blocks) or self.isolation is not None

    def compose(self) -> Policy:
        """The policy the sensor should run: raises ResponseError if a rule
        cannot be expressed (the caller then leaves the sensor as it is)."""
        base = self.base.rules
        texts = []
        for b in self.blocks.values():
            texts.append(rule_text(b.name, b.hook, "block", b.match))
            texts += self._shadows(b)
        if self.isolation is not None:
            texts.append(rule_text("isolation-allow", "connect", "audit", {"address": self.isolation.allow}))
            texts.append(rule_text("isolation-allow-bind", "bind", "audit", {"address": list(LOOPBACK)}))
            texts.append(rule_text("isolation-connect", "connect", "block", {}))
            texts.append(rule_text("isolation-bind", "bind", "block", {}))
            base = tuple(r for r in base if not (r.hook in ("connect", "bind") and r.action == "audit"))
        try:
            return Policy([*parse_rules(texts), *base], origin=f"{self.base.origin} + response",
                          guard=self.base.guard)
        except PolicyError as e:
            raise ResponseError(str(e)) from None

    def _shadows(self, b: Block) -> list[str]:
        if b.hook != "connect" or "address" not in b.match:
            return []
        seen, out = set(), []
        for r in self.base.rules:
            if r.hook != "connect" or r.action != "audit":
                continue
            ports = b.match.get("port") or list(r.ports)
            protocol = b.match.get("protocol") or r.protocol
            key = (tuple(ports) if isinstance(ports, list) else (ports,), protocol)
            if (not r.ports or "port" in b.match) and (not r.protocol or "protocol" in b.match):
                continue  # the block is at least as specific as this rule already
            if key in seen:
                continue
            seen.add(key)
            match = {"address": b.match["address"], **({"port": ports} if ports else {}),
                     **({"protocol": protocol} if protocol else {})}
            out.append(rule_text(f"{b.name}.{len(out) + 1}", "connect", "block", match))
        return out

    # ---- persistence ---------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {"blocks": [asdict(b) for b in self.blocks.values()],
                "isolation": asdict(self.isolation) if self.isolation else None}

    def load(self, doc: dict[str, Any]) -> None:
        self.blocks = {b["name"]: Block(**b) for b in doc.get("blocks", [])}
        iso = doc.get("isolation")
        self.isolation = Isolation(**iso) if iso else None


class _Reloadable(Protocol):
    @property
    def policy(self) -> Policy: ...

    def reload(self, policy: Policy) -> None: ...

    def wake_at_once(self, kinds: frozenset[str]) -> None: ...


class SensorSlot:
    """Holds the sensor the reader actor runs, the response layer, and the
    event kinds the agent's edge rules want at once."""

    def __init__(self) -> None:
        self.sensor: _Reloadable | None = None
        self.policy = ResponsePolicy()
        self.wake: frozenset[str] = frozenset()

    def attach(self, sensor: _Reloadable) -> None:
        """The reader's ``on_sensor``: a (re)started sensor gets the layer
        and the fast path back."""
        self.sensor = sensor
        self.policy.base = sensor.policy
        if self.wake:
            sensor.wake_at_once(self.wake)
        if self.policy.active:
            sensor.reload(self.policy.compose())

    def wake_at_once(self, kinds: frozenset[str]) -> None:
        """The edge rules' kinds, delivered by the sensor as they happen."""
        self.wake = frozenset(kinds)
        if self.sensor is not None:
            self.sensor.wake_at_once(self.wake)

    def rebase(self, base: Policy) -> None:
        """The reader's ``on_policy``: a reloaded policy file becomes the
        base, the layer staying on top.  If the sensor refuses the result,
        the old base stays (ResponseError)."""
        old, self.policy.base = self.policy.base, base
        try:
            if self.sensor is not None:
                self.sensor.reload(self.policy.compose() if self.policy.active else base)
        except (KmodError, OSError, ResponseError) as e:
            self.policy.base = old
            raise ResponseError(f"the sensor refused the policy: {e}") from None

    def apply(self) -> None:
        """Put the current layer into the running sensor."""
        if self.sensor is None:
            raise ResponseError("no kernel sensor is running on this agent; nothing can be blocked")
        try:
            self.sensor.reload(self.policy.compose())
        except (KmodError, OSError) as e:
            raise ResponseError(f"the sensor refused the policy: {e}") from None


def endpoint_addresses(endpoint: str | Sequence[str]) -> list[str]:
    """The IP addresses of a ZeroMQ endpoint such as ``tcp://hive.example:7001``,
    or of several (the hive nodes the agent must keep reaching: an isolated
    host may have to fail over to any of them)."""
    out: set[str] = set()
    for one in [endpoint] if isinstance(endpoint, str) else endpoint:
        host = urlsplit(one).hostname or ""
        if not host or host == "*":
            continue
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            raise ResponseError(f"cannot resolve the hive's address {host!r}: {e.strerror}") from None
        out.update(info[4][0] for info in infos)
    return sorted(out)


def write_json(path: Path, doc: Any) -> None:
    """Atomically: a crash leaves the old file or the new one, never half."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
