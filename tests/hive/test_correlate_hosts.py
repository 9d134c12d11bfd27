"""Cross-host correlation: lateral movement, a binary spreading, incidents,
windows, and bounded memory under a flood."""

import itertools

import pytest

from hive.correlate import LATERAL_MOVEMENT_RULE, SPREAD_RULE, HostCorrelator
from wire import Alert, Bind, Connect, Exec, Fork

A, B, C = "agent-a", "agent-b", "agent-c"
ADDRESS = {A: "10.0.0.1", B: "10.0.0.2", C: "10.0.0.3"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def hosts(clock):
    ids = itertools.count(1)
    correlator = HostCorrelator(clock=clock, lateral_window=60, slack=5, spread_window=300,
                                spread_hosts=3, incident_window=600,
                                new_id=lambda: f"id{next(ids)}")
    for agent, address in ADDRESS.items():
        correlator.set_addresses(agent, [address, "127.0.0.1"])
    return correlator


def alert(agent, pid, title="Reverse shell", level="high"):
    return Alert(id=f"alert-{agent}-{pid}-{title}", rule_id="r-" + title, title=title,
                 level=level, agent=agent, events=[Exec(agent=agent, pid=pid)])


def sshd_on(hosts, agent, pid=500, port=22):
    hosts.observe(Exec(agent=agent, pid=pid, ppid=1, filename="/usr/sbin/sshd"))
    hosts.observe(Bind(agent=agent, pid=pid, port=port, image="/usr/sbin/sshd"))


def ssh(hosts, source, target, pid=201, ppid=200, port=22):
    hosts.observe(Exec(agent=source, pid=pid, ppid=ppid, filename="/usr/bin/ssh"))
    return hosts.observe(Connect(agent=source, pid=pid, image="/usr/bin/ssh",
                                 address=ADDRESS[target], port=port))


def session(hosts, agent, child=501, listener=500, image="/bin/bash"):
    hosts.observe(Fork(agent=agent, pid=listener, child_pid=child, image="/usr/sbin/sshd"))
    return hosts.observe(Exec(agent=agent, pid=child, ppid=listener, filename=image,
                              argv=[image]))


def test_connect_then_shell_under_the_listener_is_one_incident_naming_both_hosts(hosts, clock):
    sshd_on(hosts, B)
    hosts.observe(Exec(agent=A, pid=200, ppid=1, filename="/bin/bash"))
    assert hosts.observe_alert(alert(A, 200)) == ""  # nothing to link yet
    clock.now = 1
    assert ssh(hosts, A, B) == []
    clock.now = 2
    (lateral,) = session(hosts, B)
    assert lateral.rule_id == LATERAL_MOVEMENT_RULE and lateral.agent == B
    assert f"{A} -> {B}:22 started /bin/bash" in lateral.title
    assert [type(e).__name__ for e in lateral.events] == ["Connect", "Exec"]
    incident = hosts.incident(lateral.incident)
    assert incident.agents == [A, B]
    assert incident.edges == [(A, B, 22)]
    # the earlier alert on A from the connecting process's parent joined
    assert "alert-agent-a-200-Reverse shell" in incident.alerts
    assert incident.level == "high"
    # activity under the session joins the same incident
    clock.now = 3
    hosts.observe(Exec(agent=B, pid=502, ppid=501, filename="/usr/bin/id", argv=["id"]))
    assert hosts.observe_alert(alert(B, 502, "Discovery", "low")) == incident.id
    whats = [(e.agent, e.what) for e in incident.timeline]
    assert (A, "connect") in whats and (B, "process") in whats
    assert whats.count((B, "alert")) == 2 and (A, "alert") in whats
    assert [e.summary for e in incident.timeline if e.what == "process"][-1] \
        == "pid 502 (parent 501) ran id"
    # chronological: the alert on A (t=0), the connect (t=1), the session (t=2), then t=3
    assert [(e.time, e.agent, e.what) for e in incident.timeline][:3] == \
        [(0, A, "alert"), (1, A, "connect"), (2, B, "process")]
    assert all(a.time <= b.time for a, b in zip(incident.timeline, incident.timeline[1:]))
    assert hosts.incidents() == [incident]
    assert hosts.changed() == [incident] and hosts.changed() == []


def test_a_process_not_under_the_listener_is_no_link(hosts, clock):
    sshd_on(hosts, B)
    ssh(hosts, A, B)
    assert hosts.observe(Exec(agent=B, pid=700, ppid=1, filename="/usr/sbin/cron")) == []
    # the listener itself re-executing is not a new process under it
    assert hosts.observe(Exec(agent=B, pid=500, ppid=1, filename="/usr/sbin/sshd")) == []
    assert hosts.incidents() == []


def test_the_lateral_window_expires(hosts, clock):
    sshd_on(hosts, B)
    ssh(hosts, A, B)
    clock.now = 61
    assert session(hosts, B) == []
    hosts.expire()
    assert hosts.statistics().pending_edges == 0


def test_unknown_listener_links_an_alert_by_time_alone(hosts, clock):
    ssh(hosts, A, B, port=8080)
    clock.now = 10
    hosts.observe(Exec(agent=B, pid=900, ppid=1, filename="/bin/sh"))  # no ancestry to check
    assert hosts.incidents() == []
    incident_id = hosts.observe_alert(alert(B, 900, "Web shell"))
    incident = hosts.incident(incident_id)
    assert incident.agents == [A, B]
    assert any("linked by time alone" in e.summary for e in incident.timeline)
    # without a pending edge an alert links nothing
    clock.now = 100
    assert hosts.observe_alert(alert(C, 5)) == ""


def test_target_events_may_arrive_before_the_connect(hosts, clock):
    sshd_on(hosts, B)
    assert session(hosts, B) == []
    clock.now = 3
    (lateral,) = ssh(hosts, A, B)
    assert lateral.agent == B and hosts.incident(lateral.incident).agents == [A, B]
    # but not if the process came long before
    sshd_on(hosts, C, pid=600)
    session(hosts, C, child=601, listener=600)
    clock.now = 20
    assert ssh(hosts, B, C, pid=777, ppid=501) == []


def test_a_chain_of_hops_is_one_incident(hosts, clock):
    sshd_on(hosts, B)
    sshd_on(hosts, C, pid=600)
    ssh(hosts, A, B)
    (first,) = session(hosts, B)
    clock.now = 5
    # the tainted shell on B runs ssh to C
    ssh(hosts, B, C, pid=510, ppid=501)
    (second,) = session(hosts, C, child=601, listener=600)
    assert second.incident == first.incident
    incident = hosts.incident(first.incident)
    assert incident.agents == [A, B, C]
    assert incident.edges == [(A, B, 22), (B, C, 22)]


def test_own_and_foreign_addresses_are_no_edges(hosts, clock):
    sshd_on(hosts, A)
    hosts.observe(Connect(agent=A, pid=3, address="127.0.0.1", port=22))
    hosts.observe(Connect(agent=A, pid=3, address=ADDRESS[A], port=22))
    hosts.observe(Connect(agent=A, pid=3, address="8.8.8.8", port=22))
    assert hosts.statistics().pending_edges == 0


def test_addresses_follow_the_latest_hello(hosts, clock):
    sshd_on(hosts, B)
    hosts.set_addresses(B, ["10.9.9.9"])
    ssh(hosts, A, B)  # to B's old address
    assert session(hosts, B) == []
    clock.now = 10  # past the slack: the session above does not count for the next edge
    assert hosts.observe(Connect(agent=A, pid=201, address="10.9.9.9", port=22)) == []
    assert len(session(hosts, B, child=503)) == 1
    hosts.forget_agent(B)
    hosts.observe(Connect(agent=A, pid=201, address="10.9.9.9", port=22))
    assert hosts.statistics().pending_edges == 0


def run(agent, sha, pid=1000):
    return Exec(agent=agent, pid=pid, ppid=1, filename="/tmp/kworker", sha256=sha)


def test_one_binary_first_run_on_three_hosts_within_the_window(hosts, clock):
    sha = "f" * 64
    hosts.observe(run(A, "e" * 64))  # another binary
    assert hosts.observe(run(A, sha)) == []
    clock.now = 10
    assert hosts.observe(run(A, sha)) == []  # not a first run
    assert hosts.observe(run(B, sha)) == []
    clock.now = 20
    (spread,) = hosts.observe(run(C, sha))
    assert spread.rule_id == SPREAD_RULE and spread.level == "high"
    assert {e.agent for e in spread.events} == {A, B, C}
    incident = hosts.incident(spread.incident)
    assert incident.agents == [A, B, C]
    # alerts from those processes join it; a fourth host is added, not re-alerted
    assert hosts.observe_alert(alert(B, 1000, "Miner")) == incident.id
    assert hosts.observe(run("agent-d", sha)) == []
    assert "agent-d" in incident.agents


def test_first_runs_spread_out_in_time_are_no_spread(hosts, clock):
    sha = "d" * 64
    hosts.observe(run(A, sha))
    clock.now = 200
    hosts.observe(run(B, sha))
    clock.now = 400
    assert hosts.observe(run(C, sha)) == []  # A's run is outside the window
    clock.now = 701
    hosts.expire()
    assert len(hosts._spread) == 0


def test_incidents_expire(hosts, clock):
    sshd_on(hosts, B)
    ssh(hosts, A, B)
    session(hosts, B)
    assert len(hosts.incidents()) == 1
    clock.now = 599
    hosts.expire()
    assert len(hosts.incidents()) == 1
    clock.now = 700
    hosts.expire()
    assert hosts.incidents() == []


def test_memory_is_bounded_under_a_flood(clock):
    hosts = HostCorrelator(clock=clock, max_processes=1000, max_pending=50, max_hashes=500,
                           max_known=2000, max_incidents=20, max_timeline=30, max_hosts=5)
    hosts.set_addresses(A, [ADDRESS[A]])
    hosts.set_addresses(B, [ADDRESS[B]])
    hosts.observe(Bind(agent=B, pid=500, port=22))
    for pid in range(2, 20_000):
        hosts.observe(Exec(agent=B, pid=pid, ppid=pid - 1, filename="/bin/true",
                           sha256=f"{pid:064x}"))
        hosts.observe(Connect(agent=A, pid=pid, address=ADDRESS[B], port=22))
    for n in range(100):
        hosts.observe(Exec(agent=f"flood-{n}", pid=1, filename="/bin/true"))
    stats = hosts.statistics()
    assert stats.processes <= 1000 + 5 * 1000
    assert stats.pending_edges <= 50
    assert stats.hosts == 5
    assert len(hosts._spread) <= 500 and len(hosts._known) <= 2000
    assert stats.evicted["processes"] > 0 and stats.evicted["pending edges"] > 0
    assert stats.evicted["hosts"] > 0 and stats.evicted["spreading executables"] > 0
    # incidents and their timelines are capped too
    for n in range(100):
        hosts.set_addresses(f"t{n}", [f"10.1.0.{n}"])
        hosts.observe(Bind(agent=f"t{n}", pid=9, port=22))
        hosts.observe(Connect(agent=A, pid=1, address=f"10.1.0.{n}", port=22))
        hosts.observe(Exec(agent=f"t{n}", pid=10, ppid=9, filename="/bin/sh"))
    assert len(hosts.incidents()) <= 20
    incident = hosts.incidents()[-1]
    for pid in range(11, 200):
        hosts.observe(Exec(agent="t99", pid=pid, ppid=pid - 1, filename="/bin/sh"))
    assert len(incident.timeline) == 30 and incident.dropped > 0
