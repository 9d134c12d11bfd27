"""isolate_container: cut one container's network namespace, keep the host's.

The mechanism, and why: in the container's network namespace (entered by
``nsenter`` on a descriptor of /proc/PID/ns/net, so a pid that exits in
between cannot send it elsewhere) every link but loopback that is up is
set down, and then every connected TCP/UDP socket not on loopback is
destroyed (``ss -K``): nothing leaves or enters the namespace, its
established connections die at once instead of after their timeouts, and
the host's own links, routes and connections are never touched.  A link
down also drops its routes (and, for IPv6, its addresses), so what was up
is recorded first: addresses, and routes that are not the kernel's own;
``restore_network`` brings those links up and puts back what is missing, and says
what it could not.

A packet filter in the namespace would keep routes but needs nftables,
which the agent does not install; the sensor's connect hooks cannot stop
packets of open connections.  Moving the links out of the namespace is
stronger against a container that holds CAP_NET_ADMIN in its own
namespace (it could set its links up again; runtimes do not grant that by
default), but would lose them with the holding namespace if the agent
died: not done."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from actors import log_event

from ._errors import Refused, ResponseError
from ._policy import write_json

_TIMEOUT = 10.0
_KERNEL_TYPES = ("local", "broadcast", "multicast", "anycast")
_ROUTE_KEY = ("type", "dst", "gateway", "dev", "table", "metric", "prefsrc", "scope")


def net_ns(pid: int) -> int:
    """The inode of ``pid``'s network namespace; 0 if gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def _run(ns: int, *argv: str) -> str:
    """``argv`` run in the network namespace the descriptor ``ns`` holds."""
    try:
        out = subprocess.run(["nsenter", f"--net=/proc/self/fd/{ns}", "--", *argv], pass_fds=(ns,),
                             capture_output=True, text=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ResponseError(f"cannot run {argv[0]} in the container's network namespace: {e}") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise ResponseError(f"{' '.join(argv)}: {why}")
    return out.stdout


def _ip_json(ns: int, *args: str) -> list[dict[str, Any]]:
    return json.loads(_run(ns, "ip", "-j", *args) or "[]")


def _routes(ns: int) -> list[dict[str, Any]]:
    out = []
    for family in (4, 6):
        for r in _ip_json(ns, f"-{family}", "route", "show", "table", "all"):
            r["family"] = family
            out.append(r)
    return out


def _route_key(r: dict[str, Any]) -> tuple:
    return (r["family"], *(str(r.get(k, "")) for k in _ROUTE_KEY))


def _devices(r: dict[str, Any]) -> set[str]:
    return {r.get("dev", "")} | {nh.get("dev", "") for nh in r.get("nexthops", [])}


def _restorable(r: dict[str, Any], links: set[str]) -> bool:
    """A route over a link that goes down, that the kernel would not put back by itself."""
    return (bool(_devices(r) & links) and r.get("protocol") != "kernel" and r.get("table") != "local"
            and r.get("type", "unicast") not in _KERNEL_TYPES)


def _via(gateway: str | None, via: dict | None) -> list[str]:
    if gateway:
        return ["via", gateway]
    if via:
        return ["via", via.get("family", ""), via.get("host", "")]
    return []


def _route_args(r: dict[str, Any]) -> list[str]:
    args = [f"-{r['family']}", "route", "add"]
    if r.get("type", "unicast") != "unicast":
        args.append(r["type"])
    args += [r["dst"], *_via(r.get("gateway"), r.get("via"))]
    if r.get("dev"):
        args += ["dev", r["dev"]]
    if r.get("table", "main") != "main":
        args += ["table", str(r["table"])]
    for key, word in (("protocol", "proto"), ("scope", "scope"), ("prefsrc", "src"), ("metric", "metric"),
                      ("pref", "pref")):
        if key in r:
            args += [word, str(r[key])]
    for metric in r.get("metrics", []):
        for k, v in (metric.items() if isinstance(metric, dict) else ()):
            args += [k, str(v)]
    if "onlink" in r.get("flags", []):
        args.append("onlink")
    for nh in r.get("nexthops", []):
        args += ["nexthop", *_via(nh.get("gateway"), nh.get("via"))]
        if nh.get("dev"):
            args += ["dev", nh["dev"]]
        if "weight" in nh:
            args += ["weight", str(nh["weight"])]
    return args


def _addresses(links: list[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    """The addresses of ``names`` to put back: not the link-local or the
    dynamic ones (their link or their DHCP/SLAAC client makes them again)."""
    out = []
    for link in links:
        if link.get("ifname") in names:
            for a in link.get("addr_info", []):
                if not a.get("dynamic") and not (a.get("family") == "inet6" and a.get("scope") == "link"):
                    out.append({"dev": link["ifname"], **a})
    return out


def _address_args(a: dict[str, Any]) -> list[str]:
    args = ["addr", "add", f"{a['local']}/{a['prefixlen']}", "dev", a["dev"]]
    if a.get("address") and a["address"] != a["local"]:
        args += ["peer", f"{a['address']}/{a['prefixlen']}"]
    if a.get("broadcast"):
        args += ["broadcast", a["broadcast"]]
    if a.get("scope") and a["scope"] != "global":
        args += ["scope", a["scope"]]
    if a.get("label") and a["label"] != a["dev"]:
        args += ["label", a["label"]]
    if a.get("noprefixroute"):
        args.append("noprefixroute")
    if a.get("family") == "inet6":
        args.append("nodad")  # it passed duplicate detection before; usable at once
    return args


def cut_network(ns: int) -> dict[str, Any]:
    """Set every link but loopback of the namespace down and reset its
    connections; returns what ``restore_network`` needs.  If a link cannot
    be set down, those already down are set up again and the error raised."""
    links = _ip_json(ns, "addr", "show")
    up = [link["ifname"] for link in links
          if "UP" in link.get("flags", []) and "LOOPBACK" not in link.get("flags", [])]
    names = set(up)
    saved = {"links": up, "addresses": _addresses(links, names),
             "routes": [r for r in _routes(ns) if _restorable(r, names)]}
    for i, name in enumerate(up):
        try:
            _run(ns, "ip", "link", "set", "dev", name, "down")
        except ResponseError as e:
            left = restore_network(ns, {**saved, "links": up[:i]})
            raise ResponseError(f"cannot cut link {name}: {e}; the others were set up again"
                                + (f", but not restored: {'; '.join(left)}" if left else "")) from None
    try:
        _run(ns, "ss", "-K", "-n", "-t", "-u", "state", "connected", "( not dst 127.0.0.0/8 and not dst [::1] )")
        saved["connections"] = "reset"
    except ResponseError as e:  # a kernel without SOCK_DESTROY: they die at their timeouts
        saved["connections"] = f"not reset: {e}"
    return saved


def restore_network(ns: int, saved: dict[str, Any]) -> list[str]:
    """Bring back what ``cut_network`` recorded; returns what could not be."""
    failed = []
    present = {link["ifname"] for link in _ip_json(ns, "link", "show")}
    for name in saved["links"]:
        if name not in present:
            failed.append(f"link {name}: gone")
            continue
        try:
            _run(ns, "ip", "link", "set", "dev", name, "up")
        except ResponseError as e:
            failed.append(f"link {name}: {e}")
    now = {(a["dev"], a.get("local"), a.get("prefixlen")) for a in _addresses(_ip_json(ns, "addr", "show"), present)}
    for a in saved["addresses"]:
        if (a["dev"], a.get("local"), a.get("prefixlen")) not in now and a["dev"] in present:
            try:
                _run(ns, "ip", *_address_args(a))
            except ResponseError as e:
                failed.append(f"address {a.get('local')}/{a.get('prefixlen')} on {a['dev']}: {e}")
    routes = {_route_key(r) for r in _routes(ns)}
    for r in saved["routes"]:
        if _route_key(r) not in routes:
            try:
                _run(ns, "ip", *_route_args(r))
            except ResponseError as e:
                failed.append(f"route {r.get('dst')}: {e}")
    return failed


def open_net(pid: int) -> int:
    """A descriptor of ``pid``'s network namespace (it stays valid if the pid exits)."""
    try:
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ResponseError(f"cannot open the network namespace of pid {pid}: {e.strerror}") from None


def host_net_namespaces() -> set[int]:
    """The host's network namespace (init's) and the agent's own, which isolate_container never cuts."""
    return {ino for ino in (net_ns(1), net_ns(os.getpid())) if ino}


class ContainerIsolations:
    """The containers cut off, kept in ``path`` (what restore needs survives
    an agent restart; the links stay down meanwhile).  Thread-safe: the
    executor runs commands and lifts expired ones on worker threads."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = Path(path)
        self._log = log
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read the file; OSError or ValueError if it is unreadable."""
        if self.path.exists():
            doc = json.loads(self.path.read_text())
            if not isinstance(doc, dict):
                raise ValueError(f"{self.path}: not a mapping of containers")
            self._records = doc

    def __len__(self) -> int:
        return len(self._records)

    def get(self, container: str) -> tuple[str, dict[str, Any]] | None:
        """The record of ``container`` (as isolated: by id or name), with its key."""
        with self._lock:
            for key, rec in self._records.items():
                if container in (key, rec.get("id"), rec.get("name")):
                    return key, rec
        return None

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._records[key] = record
            self._save()

    def pop(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)
            self._save()

    def due(self, now: float) -> list[str]:
        with self._lock:
            return [k for k, r in self._records.items() if r.get("expires") and r["expires"] <= now]

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self._records)
        except OSError as e:
            # In force in the namespaces, just not kept across a restart: say so, do not undo it.
            log_event(self._log, "response.state_not_saved", logging.ERROR, path=str(self.path),
                      reason=e.strerror or str(e))


def refuse_shared(ns: int, container: str) -> None:
    if ns in host_net_namespaces():
        raise Refused(f"refused: container {container} shares the host's network namespace; "
                      "cutting it would cut the host: isolate_host instead")
