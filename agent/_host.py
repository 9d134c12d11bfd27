"""What the agent tells the hive about its host in ``Hello``."""

from __future__ import annotations

import importlib.metadata
import ipaddress
import os
import platform
import socket

import wire

_SCOPE_HOST, _SCOPE_LINK = 0x10, 0x20


def addresses(proc: str = "/proc") -> list[str]:
    """The host's own IPv4 and IPv6 addresses, without loopback and link-local
    ones, as seen in the calling process's network namespace."""
    found: list[str] = []
    try:
        with open(f"{proc}/net/fib_trie") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|-- "):
                    last = text[4:]
                elif text.endswith("host LOCAL") and text.startswith("/32") and last:
                    if not ipaddress.IPv4Address(last).is_loopback and last not in found:
                        found.append(last)
    except (OSError, ValueError):
        pass
    try:
        with open(f"{proc}/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6 or int(fields[3], 16) in (_SCOPE_HOST, _SCOPE_LINK):
                    continue
                addr = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
                if addr not in found:
                    found.append(addr)
    except (OSError, ValueError):
        pass
    return found


def os_name() -> str:
    try:
        with open("/etc/os-release", errors="replace") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "PRETTY_NAME":
                    return value.strip('"')
    except OSError:
        pass
    return platform.system()


def agent_version() -> str:
    try:
        return importlib.metadata.version("sentinel-immune")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def hello(agent_id: str, policy_version: str = "", bundle_version: int = 0) -> wire.Hello:
    """What the agent says of its host, within the wire's bounds (a host
    name or an os-release that is not UTF-8, a host with thousands of
    addresses)."""
    return wire.fit(wire.Hello(
        agent=agent_id, hostname=socket.gethostname(), addresses=addresses(), os=os_name(),
        kernel=os.uname().release, agent_version=agent_version(), policy_version=policy_version,
        pid=os.getpid(), bundle_version=bundle_version,
    ))
