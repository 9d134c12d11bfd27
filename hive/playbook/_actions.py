"""The actions a playbook step may ask for, their parameters, and the checks
the hive makes before anything leaves it.

The parameters of an agent's action are the fields of its ``wire`` command
(``wire.KillProcess``, ...): typed, ranged and checked once, there, by the
same decoding the agent does.  ``notify`` is the hive's own (``Notify``,
never on the wire).  What types cannot say is checked here: the guardrails
(never kill init or the agent, never block the hive's own address).

The agent's executor checks again (it alone knows its own pids and the
real files); these checks catch a broken playbook or a hostile alert at
the hive, where the refusal is recorded with its reason."""

from __future__ import annotations

import functools
import ipaddress
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

import wire

_NOT_PARAMS = frozenset({"id", "expires", "ttl", "alert"})
"""Fields the engine fills in, never a playbook's params."""


class Notify(msgspec.Struct, kw_only=True, omit_defaults=True, tag="notify", tag_field="type"):
    """POST the alert to ``url`` (run by the hive itself, see ``_notify``)."""

    id: str
    url: Annotated[str, msgspec.Meta(max_length=2048, description="an http:// or https:// URL")]
    timeout: Annotated[float, msgspec.Meta(gt=0, le=30, description="a number of seconds in (0, 30]")] = 5.0
    alert: dict[str, Any] = {}
    """The alert, as plain data (what the webhook receives)."""
    one_of: typing.ClassVar[tuple[str, ...]] = ()

    @property
    def action(self) -> str:
        return "notify"

    def __post_init__(self) -> None:
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"url must be an http:// or https:// URL, not {self.url!r}")


@dataclass(frozen=True)
class ActionSpec:
    type: type
    """The command's Struct: ``wire.KillProcess``, ..., or ``Notify``."""
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    one_of: frozenset[str] = frozenset()
    """At least one of these must be given."""
    revert: str = ""
    """The action that undoes this one when its ttl runs out."""
    local: bool = False
    """Run by the hive itself, not an agent."""

    @property
    def params(self) -> frozenset[str]:
        return self.required | self.optional | self.one_of


def _spec(cls: type, revert: str = "", local: bool = False) -> ActionSpec:
    fields = [f for f in msgspec.structs.fields(cls) if f.name not in _NOT_PARAMS]
    assert bool(revert) == any(f.name == "ttl" for f in msgspec.structs.fields(cls)), cls
    return ActionSpec(cls, frozenset(f.name for f in fields if f.required),
                      frozenset(f.name for f in fields if not f.required), frozenset(cls.one_of), revert, local)


_REVERTS = {"block_connect": "unblock", "block_exec": "unblock", "isolate_host": "unisolate",
            "isolate_container": "unisolate_container"}
ACTIONS: dict[str, ActionSpec] = {
    **{name: _spec(cls, _REVERTS.get(name, "")) for name, cls in wire.COMMANDS.items()},
    "notify": _spec(Notify, local=True),
}


@functools.cache
def _descriptions(cls: type) -> dict[str, str]:
    """What each field must be, in words (its ``msgspec.Meta(description=)``)."""
    out = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        metas = list(getattr(hint, "__metadata__", ()))
        for arg in typing.get_args(hint):  # an Optional or a union of annotated types
            metas += getattr(arg, "__metadata__", ())
        out.update((name, m.description) for m in metas if isinstance(m, msgspec.Meta) and m.description)
    return out


_AT = re.compile(r"(?P<why>.*) - at `\$\.(?P<field>\w+)(?P<rest>[^`]*)`\Z", re.DOTALL)


def _reason(e: msgspec.ValidationError, cls: type, params: Mapping[str, Any]) -> str:
    """msgspec's ``Expected `int` >= 1 - at `$.pid``` as ``pid must be a
    positive integer (...), not 0``."""
    m = _AT.match(str(e))
    if m is None:
        return str(e)
    name = m["field"]
    what = _descriptions(cls).get(name)
    if what is None:
        return f"{name}{m['rest']}: {m['why']}"
    return f"{name} must be {what}, not {params.get(name)!r}"


def command(action: str, params: Mapping[str, Any], *, id: str, ttl: float = 0.0,
            expires: int = 0) -> wire.AnyCommand | Notify:
    """The typed command for ``action`` with ``params``; ValueError (with the
    reason in words) if they are not what the action takes."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise ValueError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
    unknown = set(params) - spec.params - ({"alert"} if spec.local else set())
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))} for {action}")
    doc = {**params, "id": id}
    if expires:
        doc["expires"] = expires
    if ttl:
        doc["ttl"] = ttl
    try:
        return msgspec.convert(doc, spec.type)
    except msgspec.ValidationError as e:
        raise ValueError(_reason(e, spec.type, doc)) from None


def check_params(action: str, params: Mapping[str, Any], ttl: float = 0.0) -> str | None:
    """Why ``params`` (and ``ttl``) cannot be sent for ``action``, or None if they can."""
    try:
        command(action, params, id="check", ttl=ttl)
    except ValueError as e:
        return str(e)
    return None


def plain_params(cmd: wire.AnyCommand | Notify) -> dict[str, Any]:
    """A command's parameters as plain data, the defaults left out: what the
    ``commands`` table keeps (readable JSON) and what the audit trail shows."""
    return {k: v for k, v in msgspec.to_builtins(cmd).items() if k not in _NOT_PARAMS and k != "type"}


def check_guardrails(action: str, params: Mapping[str, Any], *, agent_pids: frozenset[int] = frozenset(),
                     protected: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> str | None:
    """Why this action must never run even if a playbook asks, or None."""
    pid = params.get("pid")
    if action == "kill_process":
        if pid == 1:
            return "refused: pid 1 is init; killing it would bring the host down"
        if pid in agent_pids:
            return f"refused: pid {pid} is the agent itself; killing it would blind the host and cut the hive off"
    if action == "block_connect" and params.get("address"):
        net = ipaddress.ip_network(str(params["address"]), strict=False)
        for p in protected:
            if p.version == net.version and net.overlaps(p):
                return f"refused: {params['address']} covers the hive's address {p}; the agent must keep reaching it"
    return None


MANUAL: dict[str, tuple[str, ...]] = {
    "kill_process": ("pid", "tree"),
    "block_connect": ("address",),
    "isolate_host": (),
    "collect_evidence": ("pid",),
    "update_profile": ("workload", "accept", "state"),
}
"""The actions an operator may run by hand, and the parameters each takes."""
HERD: dict[str, tuple[str, ...]] = {
    "block_exec": ("sha256",),
    "block_connect": ("address",),
    "unblock": ("rule",),
}
"""The actions the herd asks for (mode ``herd``): the blocks a peer's
enforced indicator calls for, and lifting them when it is revoked."""


def check_manual(action: str, agent: str, params: Mapping[str, Any], ttl: float = 0.0, *,
                 agents: Mapping[str, frozenset[int]],
                 protected: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                 allowed: Mapping[str, tuple[str, ...]] = MANUAL) -> dict[str, Any]:
    """The parameters of an operator's ``action`` on ``agent`` as the
    commands table keeps them; ValueError with the reason in one line if it
    must not be sent.  ``agents``: the agents that may be acted on, with
    their own pids (which are never killed); ``protected``: the hive's own
    addresses; ``allowed``: the actions and their parameters (``HERD`` for
    the herd's).  The same checks as a playbook's step, the same guardrails."""
    if action not in allowed:
        raise ValueError(f"action {action[:40]!r} cannot be run by hand: one of {', '.join(allowed)}")
    if not agent:
        raise ValueError("agent: name the agent to act on")
    if agent not in agents:
        raise ValueError(f"agent {agent[:80]!r} is unknown or revoked")
    taken = allowed[action]
    for name in params:
        if name not in taken:
            raise ValueError(f"{name[:40]}: {action} takes " + (", ".join(taken) if taken else "no parameters"))
    if ttl and not ACTIONS[action].revert:
        raise ValueError(f"ttl: {action} cannot be undone, so it takes no ttl")
    if "pid" in taken and params.get("pid") is None:
        raise ValueError(f"pid: {action} needs the pid of a process")
    if action == "block_connect" and not params.get("address"):
        raise ValueError("address: block_connect needs an address or network to block")
    try:
        plain = plain_params(command(action, params, id="check", ttl=ttl))
    except ValueError as e:
        raise ValueError(f"invalid parameters: {e}") from None
    networks = [p if not isinstance(p, str) else ipaddress.ip_network(p, strict=False) for p in protected]
    refusal = check_guardrails(action, plain, agent_pids=agents[agent], protected=networks)
    if refusal is not None:
        raise ValueError(refusal)
    return plain
