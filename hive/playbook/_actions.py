"""The actions a playbook step may ask for, their parameters, and the checks
the hive makes before anything leaves it.

The agent's executor checks again (it alone knows its own pids and the
real files); these checks catch a broken playbook or a hostile alert at
the hive, where the refusal is recorded with its reason."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ActionSpec:
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


def _spec(required: Iterable[str] = (), optional: Iterable[str] = (), one_of: Iterable[str] = (),
          revert: str = "", local: bool = False) -> ActionSpec:
    return ActionSpec(frozenset(required), frozenset(optional), frozenset(one_of), revert, local)


ACTIONS: dict[str, ActionSpec] = {
    "kill_process": _spec(["pid"], ["tree", "signal", "exe"]),
    "block_connect": _spec(optional=["protocol"], one_of=["address", "port"], revert="unblock"),
    "block_exec": _spec(one_of=["path", "sha256"], revert="unblock"),
    "isolate_host": _spec(optional=["allow"], revert="unisolate"),
    "unisolate": _spec(),
    "unblock": _spec(["rule"]),
    "quarantine_file": _spec(["path"]),
    "collect_evidence": _spec(["pid"], ["exe"]),
    "notify": _spec(["url"], ["timeout"], local=True),
}

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_SIGNALS = ("KILL", "TERM")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ports(v: Any) -> bool:
    items = v if isinstance(v, list) else [v]
    return bool(items) and all(_is_int(p) and 1 <= p <= 65535 for p in items)


def _network(v: Any) -> str | None:
    try:
        ipaddress.ip_network(str(v), strict=False)
    except ValueError as e:
        return str(e)
    return None


def check_params(action: str, params: dict[str, Any]) -> str | None:
    """Why ``params`` cannot be sent for ``action``, or None if they can."""
    spec = ACTIONS[action]
    unknown = set(params) - spec.params
    if unknown:
        return f"unknown parameter(s) {', '.join(sorted(unknown))} for {action}"
    missing = spec.required - set(params)
    if missing:
        return f"{action} needs {', '.join(sorted(missing))}"
    if spec.one_of and not spec.one_of & set(params):
        return f"{action} needs one of {', '.join(sorted(spec.one_of))}"
    for key in ("pid",):
        if key in params and not (_is_int(params[key]) and params[key] > 0):
            return f"pid must be a positive integer, not {params[key]!r}"
    if "tree" in params and not isinstance(params["tree"], bool):
        return f"tree must be true or false, not {params['tree']!r}"
    if "exe" in params and action == "collect_evidence" and not isinstance(params["exe"], bool):
        return f"exe must be true or false, not {params['exe']!r}"
    if "exe" in params and action == "kill_process" and not str(params["exe"]).startswith("/"):
        return f"exe must be an absolute path, not {params['exe']!r}"
    if "signal" in params and params["signal"] not in _SIGNALS:
        return f"signal must be one of {', '.join(_SIGNALS)}, not {params['signal']!r}"
    if "address" in params and (why := _network(params["address"])):
        return f"address: {why}"
    if "port" in params and not _ports(params["port"]):
        return f"port must be a port number (1-65535) or a list of them, not {params['port']!r}"
    if "protocol" in params and params["protocol"] not in ("tcp", "udp"):
        return f"protocol must be tcp or udp, not {params['protocol']!r}"
    if "allow" in params:
        allow = params["allow"]
        if not isinstance(allow, list):
            return "allow must be a list of addresses or CIDRs"
        for a in allow:
            if why := _network(a):
                return f"allow: {why}"
    if "path" in params and not (isinstance(params["path"], str) and params["path"].startswith("/")):
        return f"path must be an absolute path, not {params['path']!r}"
    if "sha256" in params and not (isinstance(params["sha256"], str) and _SHA256.match(params["sha256"].lower())):
        return f"sha256 must be 64 hex digits, not {params['sha256']!r}"
    if "rule" in params and not (isinstance(params["rule"], str) and params["rule"]):
        return "rule must be a rule name"
    if "url" in params:
        url = urlsplit(str(params["url"]))
        if url.scheme not in ("http", "https") or not url.netloc:
            return f"url must be an http:// or https:// URL, not {params['url']!r}"
    if "timeout" in params and not (isinstance(params["timeout"], (int, float)) and 0 < params["timeout"] <= 30):
        return "timeout must be a number of seconds in (0, 30]"
    return None


def check_guardrails(action: str, params: dict[str, Any], *, agent_pids: frozenset[int] = frozenset(),
                     protected: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> str | None:
    """Why this action must never run even if a playbook asks, or None."""
    pid = params.get("pid")
    if action == "kill_process":
        if pid == 1:
            return "refused: pid 1 is init; killing it would bring the host down"
        if pid in agent_pids:
            return f"refused: pid {pid} is the agent itself; killing it would blind the host and cut the hive off"
    if action == "block_connect" and "address" in params:
        net = ipaddress.ip_network(str(params["address"]), strict=False)
        for p in protected:
            if p.version == net.version and net.overlaps(p):
                return f"refused: {params['address']} covers the hive's address {p}; the agent must keep reaching it"
    return None
