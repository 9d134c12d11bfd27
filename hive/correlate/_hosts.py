"""Correlation across hosts: lateral movement, one binary spreading, incidents.

Lateral movement.  The correlator is told each agent's addresses (from its
Hello).  A ``Connect`` on agent A to an address of agent B is an *edge* A -> B,
pending for ``lateral_window`` seconds.  It becomes a *link* when, on B:

* a process is executed whose ancestry (from B's Exec/Fork events) includes
  the process that bound the edge's port on B (from B's Bind events): the
  service that accepted the connection started something.  This is the strong
  form, and raises a lateral-movement alert itself;
* or an alert is raised on B while no process of B is known to listen on that
  port (the service started before the agent, so ancestry cannot be checked):
  the weak form, which attaches that alert and says so in the timeline.

Events from two hosts reach the hive in either order (each agent batches), so
a process or alert on B seen up to ``slack`` seconds before the edge arrived
still counts.  The pid/port approximation is ours: we see binds and connects,
not accepts, so a busy listener's child may be credited to the wrong client.

Spread.  An executable (by SHA-256) run for the first time on a host is noted;
when ``spread_hosts`` hosts first ran it within ``spread_window`` seconds, an
alert names them all.

Incidents.  A link or a spread opens an incident, or joins the one its source
already belongs to (a chain A -> B -> C is one incident).  Processes that
descend from a linked process are *tainted* with the incident; their alerts
join it, as do recent alerts on A from the connecting process or its ancestors.
An incident keeps a timeline, the agents involved in order, and the highest
level of its alerts; it is dropped from memory ``incident_window`` seconds after
its last update (the store keeps it).

Every table is bounded (see the ``max_*`` parameters); evictions are counted in
``statistics()``.  Time for windows is the injected clock; timelines also carry
each event's own time.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from wire import Alert, Bind, Connect, Exec, Fork

LEVELS = ("informational", "low", "medium", "high", "critical")

LATERAL_MOVEMENT_RULE = "5b0f8f0e-3c47-4c39-9d52-7b1f0d6a2e11"
SPREAD_RULE = "a4e2c6d1-8f3b-4e57-b1c9-2d7e5f8a9c03"
_OWN_RULES = (LATERAL_MOVEMENT_RULE, SPREAD_RULE)

_LOOK_BACK = 32
"""How many recent processes and alerts on a target a late edge is checked against."""

_ANCESTRY_DEPTH = 64
"""How far up a process tree to look; deeper trees are cut there (and loops stop)."""


class TimelineEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    time: float
    """Hive clock when it was correlated."""
    event_time: int = 0
    """The event's own time (ns since the epoch, the agent's clock), if any."""
    agent: str
    what: str
    """``connect``, ``process``, ``alert`` or ``execute``."""
    summary: str
    alert: str = ""
    """Id of the alert this entry is about, if any."""


class Incident(msgspec.Struct, kw_only=True):
    """Alerts and activity on several hosts tied together by lateral-movement or
    spread edges."""

    id: str
    title: str
    opened: float
    updated: float
    level: str = "medium"
    agents: list[str] = []
    """In the order they became involved."""
    edges: list[tuple[str, str, int]] = []
    """(from agent, to agent, port) for each link."""
    alerts: list[str] = []
    timeline: list[TimelineEntry] = []
    dropped: int = 0
    """Timeline entries not kept because the incident reached ``max_timeline``."""


@dataclass(slots=True)
class HostStatistics:
    hosts: int = 0
    processes: int = 0
    pending_edges: int = 0
    incidents: int = 0
    links: int = 0
    spreads: int = 0
    evicted: dict | None = None
    """Table name -> entries dropped because the table was full."""


@dataclass(slots=True)
class _Edge:
    time: float
    source: str
    pid: int
    image: str
    target: str
    port: int
    event: Connect
    consumed: bool = False


@dataclass(slots=True)
class _Recent:
    """A process executed, or an alert raised, on a host, kept for late edges."""

    time: float
    pid: int
    alert: Alert | None
    event: object


class _Spread:
    """First runs of one executable within the spread window."""

    __slots__ = ("firsts", "incident")

    def __init__(self) -> None:
        self.firsts: OrderedDict[str, tuple] = OrderedDict()
        """agent -> (time, pid, Exec)"""
        self.incident = ""


class _Bounded(OrderedDict):
    """An LRU mapping: past ``cap`` entries the least recently set goes, counted."""

    def __init__(self, cap: int, name: str, evicted: dict) -> None:
        super().__init__()
        self.cap, self.name, self.evicted = cap, name, evicted

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.cap:
            self.popitem(last=False)
            self.evicted[self.name] = self.evicted.get(self.name, 0) + 1


class _Host:
    __slots__ = ("procs", "listeners", "listening", "taint", "inbound", "pending", "recent")

    def __init__(self, c: HostCorrelator) -> None:
        ev = c._evicted
        self.procs = _Bounded(c.max_processes, "processes", ev)
        """pid -> (ppid, image)"""
        self.listeners = _Bounded(c.max_listeners, "listeners", ev)
        """port -> pid that bound it last"""
        self.listening = _Bounded(c.max_listeners, "listening processes", ev)
        """pid -> ports it bound"""
        self.taint = _Bounded(c.max_tainted, "tainted", ev)
        """pid -> incident id"""
        self.inbound: deque[_Edge] = deque()
        """Edges to this host, oldest first."""
        self.pending: dict[int, int] = {}
        """port -> how many of ``inbound`` to it are not linked yet"""
        self.recent: deque[_Recent] = deque()

    def bind(self, port: int, pid: int) -> None:
        previous = self.listeners.get(port)
        if previous is not None and previous != pid:
            self.listening.get(previous, set()).discard(port)
        self.listeners.put(port, pid)
        ports = self.listening.get(pid)
        if ports is None:
            ports = set()
            self.listening.put(pid, ports)
        ports.add(port)

    def consume(self, edge: _Edge) -> None:
        """An edge stops being pending (linked or gone)."""
        if not edge.consumed:
            edge.consumed = True
            left = self.pending[edge.port] - 1
            if left:
                self.pending[edge.port] = left
            else:
                del self.pending[edge.port]

    def latest(self, port: int, now: float, window: float) -> _Edge | None:
        """The most recent pending edge to ``port`` within the window."""
        if not self.pending.get(port):
            return None
        for edge in reversed(self.inbound):
            if now - edge.time > window:
                return None
            if edge.port == port and not edge.consumed:
                return edge
        return None


def _level_max(a: str, b: str) -> str:
    rank = {level: i for i, level in enumerate(LEVELS)}
    return a if rank.get(a, 2) >= rank.get(b, 2) else b


class HostCorrelator:
    """Cross-host correlation: feed it every event and every alert."""

    def __init__(self, *, clock: Callable[[], float], lateral_window: float = 120.0,
                 slack: float = 5.0, spread_window: float = 600.0, spread_hosts: int = 3,
                 incident_window: float = 3600.0, max_hosts: int = 10_000,
                 max_processes: int = 65_536, max_listeners: int = 4096,
                 max_tainted: int = 4096, max_pending: int = 256, max_incidents: int = 1000,
                 max_timeline: int = 256, max_hashes: int = 100_000,
                 max_known: int = 200_000,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        if spread_hosts < 2:
            raise ValueError("spread_hosts must be at least 2")
        self._clock = clock
        self._new_id = new_id
        self.lateral_window = lateral_window
        self.slack = slack
        self.spread_window = spread_window
        self.spread_hosts = spread_hosts
        self.incident_window = incident_window
        self.max_processes = max_processes
        self.max_listeners = max_listeners
        self.max_tainted = max_tainted
        self.max_pending = max_pending
        self.max_timeline = max_timeline
        self._evicted: dict[str, int] = {}
        self._hosts = _Bounded(max_hosts, "hosts", self._evicted)
        self._owner: dict[str, set[str]] = {}
        """address -> agents claiming it"""
        self._addresses: dict[str, set[str]] = {}
        self._incidents = _Bounded(max_incidents, "incidents", self._evicted)
        self._changed: dict[str, Incident] = {}
        self._known = _Bounded(max_known, "known executables", self._evicted)
        """(agent, sha256) pairs already executed"""
        self._spread = _Bounded(max_hashes, "spreading executables", self._evicted)
        """sha256 -> _Spread, least recently first-run first"""
        self._links = self._spreads = 0

    # -- inputs -------------------------------------------------------------

    def set_addresses(self, agent: str, addresses: Iterable[str]) -> None:
        """The addresses an agent has (its Hello); replaces what it had.

        Loopback and unspecified addresses are every host's own, and an address
        several agents claim (a docker0 bridge, the same private range behind two
        NATs) cannot tell them apart: neither makes an edge.
        """
        for address in self._addresses.pop(agent, ()):
            owners = self._owner.get(address)
            if owners is not None:
                owners.discard(agent)
                if not owners:
                    del self._owner[address]
        owned = {a for a in addresses if _routable(a)}
        self._addresses[agent] = owned
        for address in owned:
            self._owner.setdefault(address, set()).add(agent)

    def forget_agent(self, agent: str) -> None:
        """An agent left: its addresses and state go."""
        self.set_addresses(agent, ())
        del self._addresses[agent]
        self._hosts.pop(agent, None)

    def observe(self, event) -> list[Alert]:
        """One event (Exec, Fork, Bind and Connect matter); new alerts, if any."""
        agent = event.agent
        if not agent:
            return []
        kind = type(event)
        if kind is Fork:
            self._host(agent).procs.put(event.child_pid, (event.pid, event.image))
            return []
        if kind is Bind:
            self._host(agent).bind(event.port, event.pid)
            return []
        if kind is Connect:
            return self._connect(agent, event)
        if kind is Exec and (event.result == 0 or event.verdict == "block"):
            alerts = self._exec(agent, event)
            if event.sha256 and event.result == 0:
                alerts.extend(self._executed(agent, event))
            return alerts
        return []

    def observe_alert(self, alert: Alert) -> str:
        """An alert from the rule engine; the id of the incident it joined, or ''."""
        if alert.rule_id in _OWN_RULES:
            return alert.incident
        agent = alert.agent
        pid = alert.events[0].pid if alert.events else 0
        if not agent or not pid:
            return ""
        now = self._clock()
        host = self._host(agent)
        incident = self._tainted(host, pid)
        if incident is None:
            incident = self._link_alert(agent, host, alert, pid, now)
        if incident is None:
            host.recent.append(_Recent(now, pid, alert, alert.events[0]))
            self._trim(host.recent, now)
            return ""
        host.taint.put(pid, incident.id)
        self._attach_alert(incident, alert, now)
        return incident.id

    def expire(self) -> None:
        """Drop pending edges, recent activity and incidents past their windows.

        Call about once a second.
        """
        now = self._clock()
        for host in self._hosts.values():
            while host.inbound and now - host.inbound[0].time > self.lateral_window:
                host.consume(host.inbound.popleft())
            self._trim(host.recent, now)
        for key in [k for k, i in self._incidents.items()
                    if now - i.updated > self.incident_window]:
            del self._incidents[key]
        spreads = self._spread
        while spreads:
            sha, spread = next(iter(spreads.items()))
            if any(now - t <= self.spread_window for t, _, _ in spread.firsts.values()):
                break
            del spreads[sha]

    # -- outputs ------------------------------------------------------------

    def incident(self, incident_id: str) -> Incident | None:
        return self._incidents.get(incident_id)

    def incidents(self) -> list[Incident]:
        return list(self._incidents.values())

    def changed(self) -> list[Incident]:
        """Incidents opened or updated since the last call (for the store); read-only."""
        changed = list(self._changed.values())
        self._changed.clear()
        return changed

    def statistics(self) -> HostStatistics:
        return HostStatistics(
            hosts=len(self._hosts),
            processes=sum(len(h.procs) for h in self._hosts.values()),
            pending_edges=sum(len(h.inbound) for h in self._hosts.values()),
            incidents=len(self._incidents), links=self._links, spreads=self._spreads,
            evicted=dict(self._evicted))

    # -- lateral movement ---------------------------------------------------

    def _host(self, agent: str) -> _Host:
        host = self._hosts.get(agent)
        if host is None:
            host = _Host(self)
            self._hosts.put(agent, host)
        return host

    def _ancestry(self, host: _Host, pid: int) -> list[int]:
        """pid, its parent, grandparent, ... as far as the host's table knows."""
        chain = [pid]
        procs = host.procs
        while len(chain) < _ANCESTRY_DEPTH:
            entry = procs.get(chain[-1])
            if entry is None or entry[0] <= 0 or entry[0] == chain[-1]:
                break  # a longer loop just stops at the depth limit
            chain.append(entry[0])
        return chain

    def _tainted(self, host: _Host, pid: int) -> Incident | None:
        for ancestor in self._ancestry(host, pid):
            incident_id = host.taint.get(ancestor)
            if incident_id is not None:
                incident = self._incidents.get(incident_id)
                if incident is not None:
                    return incident
        return None

    def _connect(self, agent: str, event: Connect) -> list[Alert]:
        owners = self._owner.get(event.address)
        if owners is None or len(owners) != 1 or agent in owners:
            return []
        (target,) = owners
        now = self._clock()
        self._host(agent)
        host = self._host(target)
        edge = _Edge(now, agent, event.pid, event.image, target, event.port, event)
        host.inbound.append(edge)
        host.pending[edge.port] = host.pending.get(edge.port, 0) + 1
        while len(host.inbound) > self.max_pending:
            host.consume(host.inbound.popleft())
            self._evicted["pending edges"] = self._evicted.get("pending edges", 0) + 1
        # The target's side may have reached us first: look back ``slack`` seconds (a few
        # dozen entries at most, however many arrived).
        self._trim(host.recent, now)
        heard = edge.port in host.listeners
        for recent in list(itertools.islice(reversed(host.recent), _LOOK_BACK)):
            if now - recent.time > self.slack:
                break
            if recent.alert is None:
                if not heard:
                    continue  # no listener known: a process cannot be tied to the edge
                alerts = self._link_process(target, host, recent.pid, recent.event, now, edge)
                if alerts:
                    host.recent.remove(recent)
                    return alerts
            else:
                incident = self._link_alert(target, host, recent.alert, recent.pid, now, edge)
                if incident is not None:
                    host.recent.remove(recent)
                    self._attach_alert(incident, recent.alert, now, seen=recent.time)
                    return []
        return []

    def _exec(self, agent: str, event: Exec) -> list[Alert]:
        host = self._host(agent)
        host.procs.put(event.pid, (event.ppid, event.filename or event.image or event.exe))
        now = self._clock()
        incident = self._tainted(host, event.pid)
        if incident is not None:
            host.taint.put(event.pid, incident.id)
            self._note(incident, TimelineEntry(
                time=now, event_time=event.time, agent=agent, what="process",
                summary=_process_summary(event)), now)
            return []
        alerts = self._link_process(agent, host, event.pid, event, now)
        if not alerts:
            host.recent.append(_Recent(now, event.pid, None, event))
            self._trim(host.recent, now)
        return alerts

    def _heard(self, host: _Host, processes: list[int], now: float,
               only: _Edge | None) -> tuple[_Edge, int] | None:
        """A pending edge (``only``, or any) to a port one of the processes listens on,
        and that process.  Costs one lookup per process, not one per edge."""
        for pid in processes:
            for port in host.listening.get(pid, ()):
                if only is not None:
                    if only.port == port and not only.consumed:
                        return only, pid
                    continue
                edge = host.latest(port, now, self.lateral_window)
                if edge is not None:
                    return edge, pid
        return None

    def _unheard(self, host: _Host, now: float, only: _Edge | None) -> _Edge | None:
        """A pending edge (``only``, or any) to a port nobody is known to listen on."""
        ports = [only.port] if only is not None else list(host.pending)
        for port in ports:
            if port not in host.listeners:
                edge = host.latest(port, now, self.lateral_window)
                if edge is not None and (only is None or edge is only):
                    return edge
        return None

    def _link_process(self, agent: str, host: _Host, pid: int, event, now: float,
                      only: _Edge | None = None) -> list[Alert]:
        """Strong link: the process descends from the listener of a pending edge's port
        (a new process: the listener itself does not count)."""
        found = self._heard(host, self._ancestry(host, pid)[1:], now, only)
        if found is not None:
            edge, listener = found
            incident = self._open_link(edge, now)
            host.taint.put(pid, incident.id)
            image = event.filename or event.image or event.exe
            alert = Alert(
                id=self._new_id(), rule_id=LATERAL_MOVEMENT_RULE,
                title=f"Lateral movement: {edge.source} -> {agent}:{edge.port} started {image}",
                level="medium", tags=["attack.lateral-movement", "attack.t1021"],
                agent=agent, time=event.time, events=[edge.event, event],
                incident=incident.id,
                detail=f"{edge.image or 'pid ' + str(edge.pid)} on {edge.source} connected to "
                       f"port {edge.port} of {agent}; the process listening there "
                       f"(pid {listener}) is an ancestor of {image} (pid {pid})")
            self._note(incident, TimelineEntry(
                time=now, event_time=event.time, agent=agent, what="process",
                summary=_process_summary(event), alert=alert.id), now)
            self._attach_alert(incident, alert, now)
            return [alert]
        return []

    def _link_alert(self, agent: str, host: _Host, alert: Alert, pid: int, now: float,
                    only: _Edge | None = None) -> Incident | None:
        """Link an alert on the target of a pending edge: strong if it comes from the
        listener or a descendant (a service that alerts right after a connection may be
        the one exploited), weak if nobody is known to listen on the edge's port."""
        found = self._heard(host, self._ancestry(host, pid), now, only)
        if found is not None:
            incident = self._open_link(found[0], now)
        else:
            edge = self._unheard(host, now, only)
            if edge is None:
                return None
            incident = self._open_link(edge, now)
            self._note(incident, TimelineEntry(
                time=now, event_time=alert.time, agent=agent, what="alert",
                summary=f"no process of {agent} is known to listen on port {edge.port}; "
                        f"linked by time alone: {alert.title}"), now)
        host.taint.put(pid, incident.id)
        return incident

    def _open_link(self, edge: _Edge, now: float) -> Incident:
        """The incident for a confirmed edge: its source's, or a new one."""
        self._links += 1
        self._host(edge.target).consume(edge)
        source = self._host(edge.source)
        incident = self._tainted(source, edge.pid)
        if incident is None:
            incident = self._open(f"Lateral movement from {edge.source}", now)
            # Recent alerts on the source from the connecting process or its ancestors.
            ancestry = set(self._ancestry(source, edge.pid))
            for recent in [r for r in source.recent if r.alert is not None and r.pid in ancestry]:
                source.recent.remove(recent)
                source.taint.put(recent.pid, incident.id)
                self._attach_alert(incident, recent.alert, now, seen=recent.time)
        source.taint.put(edge.pid, incident.id)
        self._involve(incident, edge.source)
        self._involve(incident, edge.target)
        incident.edges.append((edge.source, edge.target, edge.port))
        self._note(incident, TimelineEntry(
            time=edge.time, event_time=edge.event.time, agent=edge.source, what="connect",
            summary=f"{edge.image or 'pid ' + str(edge.pid)} connected to "
                    f"{edge.event.address}:{edge.port} ({edge.target})"), now)
        return incident

    # -- spread -------------------------------------------------------------

    def _executed(self, agent: str, event: Exec) -> list[Alert]:
        key = (agent, event.sha256)
        if key in self._known:
            self._known.move_to_end(key)
            return []
        self._known.put(key, None)
        now = self._clock()
        spread = self._spread.get(event.sha256)
        if spread is None:
            spread = _Spread()
        self._spread.put(event.sha256, spread)  # most recently first-run last
        firsts = spread.firsts
        for host in [h for h, (t, _, _) in firsts.items() if now - t > self.spread_window]:
            del firsts[host]
        firsts[agent] = (now, event.pid, event)
        if len(firsts) > self.spread_hosts:
            firsts.popitem(last=False)
        incident = self._incidents.get(spread.incident)
        if incident is not None:
            self._spread_note(incident, agent, event, now)
            return []
        if len(firsts) < self.spread_hosts:
            return []
        self._spreads += 1
        image = event.filename or event.image or event.exe
        hosts = list(firsts)
        # Join an incident one of the hosts' processes already belongs to, if any.
        incident = next((i for h, (_, pid, _) in firsts.items()
                         if (i := self._tainted(self._host(h), pid)) is not None), None)
        if incident is None:
            incident = self._open(f"{image} spreading across {len(hosts)} hosts", now)
        spread.incident = incident.id
        for host_name, (_, pid, first) in firsts.items():
            self._spread_note(incident, host_name, first, now)
        alert = Alert(
            id=self._new_id(), rule_id=SPREAD_RULE,
            title=f"Same executable first run on {len(hosts)} hosts within "
                  f"{self.spread_window:g}s: {image}",
            level="high", tags=["attack.lateral-movement", "attack.t1570", "attack.execution"],
            agent="", time=event.time, events=[e for _, _, e in firsts.values()],
            incident=incident.id,
            detail=f"sha256 {event.sha256} on {', '.join(hosts)}")
        self._attach_alert(incident, alert, now)
        return [alert]

    def _spread_note(self, incident: Incident, agent: str, event: Exec, now: float) -> None:
        self._host(agent).taint.put(event.pid, incident.id)
        self._involve(incident, agent)
        self._note(incident, TimelineEntry(
            time=now, event_time=event.time, agent=agent, what="execute",
            summary=f"first run of {event.filename or event.exe} (sha256 {event.sha256[:16]})"),
            now)

    # -- incidents ----------------------------------------------------------

    def _open(self, title: str, now: float) -> Incident:
        incident = Incident(id=self._new_id(), title=title, opened=now, updated=now)
        self._incidents.put(incident.id, incident)
        self._changed[incident.id] = incident
        return incident

    def _involve(self, incident: Incident, agent: str) -> None:
        if agent not in incident.agents:
            incident.agents.append(agent)

    def _note(self, incident: Incident, entry: TimelineEntry, now: float) -> None:
        if len(incident.timeline) < self.max_timeline:
            # In the order things happened on the hive's clock, not the order correlated.
            bisect.insort(incident.timeline, entry, key=_when)
        else:
            incident.dropped += 1
        incident.updated = now
        self._incidents.move_to_end(incident.id)
        self._changed[incident.id] = incident

    def _attach_alert(self, incident: Incident, alert: Alert, now: float,
                      seen: float | None = None) -> None:
        """Add an alert, seen ``seen`` on the hive's clock (now, if not given)."""
        if alert.id in incident.alerts:
            return
        incident.alerts.append(alert.id)
        incident.level = _level_max(incident.level, alert.level)
        if alert.agent:
            self._involve(incident, alert.agent)
        self._note(incident, TimelineEntry(
            time=now if seen is None else seen, event_time=alert.time, agent=alert.agent,
            what="alert", summary=f"[{alert.level}] {alert.title}", alert=alert.id), now)

    def _trim(self, recent: deque, now: float) -> None:
        while recent and now - recent[0].time > self.lateral_window:
            recent.popleft()
        while len(recent) > self.max_pending:
            recent.popleft()
            self._evicted["recent activity"] = self._evicted.get("recent activity", 0) + 1


def _when(entry: TimelineEntry) -> float:
    return entry.time


def _routable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


def _process_summary(event: Exec) -> str:
    command = event.cmdline or " ".join(event.argv) or event.filename
    return f"pid {event.pid} (parent {event.ppid}) ran {command}"
