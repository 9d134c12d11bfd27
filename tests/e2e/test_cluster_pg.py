"""The cluster the issue asks for, all real processes on loopback: three NATS
servers in a JetStream cluster, one PostgreSQL server as the shared store,
three hive nodes.  A node killed -9 under load: agents move to the others,
nothing is lost, nothing is stored twice, no playbook acts twice.  The
PostgreSQL server restarted under load: nothing acknowledged is lost, and the
nodes say in their log and status that the database was away.

The agents are load agents (tests/e2e/cluster.py) without a kernel sensor: no
kernel lock is needed."""

import signal
import subprocess
import sys
import time

import pytest

from .cluster import HiveCluster
from .test_cluster import actor_stats, exactly_once, queues, wait_until

TEMP_RULE = "f0e573d2-6313-4ebf-acd3-66449483759d"
"""Execution from a world-writable directory: the load agents' alarms raise
it, and the built-in exec-from-temp playbook acts on it."""
ALARM = 20


@pytest.fixture
def pg_cluster(tmp_path, start_node, nats_cluster, pg_url):
    c = HiveCluster(tmp_path, start_node, nats_cluster.urls, pg_url=pg_url)
    c.start_all()
    return c


def all_stored(c, agents, timeout=120.0):
    total = sum(a.batches * a.per_batch for a in agents)
    wait_until(lambda: sum(v[0] for v in c.counts().values()) >= total, timeout=timeout)
    time.sleep(2)  # a copy would land within this
    exactly_once(c, agents)


def alarms(agents) -> int:
    return sum(a.batches // a.alarm for a in agents)


def test_a_node_killed_under_load_on_postgresql_loses_nothing_and_acts_once(pg_cluster):
    c = pg_cluster
    everyone = [c.endpoint(n) for n in c.names]
    agents = [c.agent(f"k{i}", everyone[i:] + everyone[:i], batches=400, rate=100, alarm=ALARM) for i in range(3)]
    for a in agents:
        a.start()
    wait_until(lambda: all(a.acked >= 80 for a in agents), timeout=60)
    c.nodes["node2"].stop(signal.SIGKILL)
    for a in agents:
        a.join(120)
        assert a.acked == a.batches, (a.agent, a.acked)
    assert agents[1].moves >= 1
    all_stored(c, agents)
    # Every alarm is one alert (a batch a dead sentinel had evaluated and
    # that another evaluated again raises the same alert, not a second one).
    wait_until(lambda: len(c.rows("SELECT id FROM alerts WHERE rule_id=?", TEMP_RULE)) >= alarms(agents),
               timeout=60)
    per_event = c.rows("SELECT agent, time, count(*) FROM alerts WHERE rule_id=? GROUP BY agent, time", TEMP_RULE)
    assert len(per_event) == alarms(agents) and {n for _, _, n in per_event} == {1}, per_event
    # Each alert's playbook ran on one node only: one command per step.
    wait_until(lambda: c.rows("SELECT count(DISTINCT alert) FROM commands WHERE playbook='exec-from-temp'")[0][0]
               >= 1, timeout=60)
    time.sleep(3)
    steps = c.rows("SELECT alert, action, count(*) FROM commands WHERE playbook='exec-from-temp' "
                   "GROUP BY alert, action")
    assert steps and {n for _, _, n in steps} == {1}, steps
    claims = c.rows("SELECT count(*), count(DISTINCT alert) FROM alert_claims")[0]
    assert claims[0] == claims[1] >= len({a for a, _, _ in steps})
    wait_until(lambda: queues(c.nats) == {"writers": (0, 0), "sentinels": (0, 0)}, timeout=60)


def test_a_postgresql_restart_under_load_loses_nothing_and_the_nodes_say_so(tmp_path, start_node, nats_cluster):
    """A server of its own: the session's is shared with other tests."""
    from tests import pgserver

    if why := pgserver.missing():
        pytest.skip(why)
    pg = pgserver.start()  # its folder must be readable by the postgres user: not under tmp_path
    try:
        c = HiveCluster(tmp_path, start_node, nats_cluster.urls, pg_url=pg.url)
        c.start_all()
        agents = [c.agent(f"r{i}", [c.endpoint(n)], batches=500, rate=50) for i, n in enumerate(c.names)]
        for a in agents:
            a.start()
        wait_until(lambda: all(a.acked >= 60 for a in agents), timeout=60)
        pg.stop()
        # Routers acknowledge what JetStream holds: the agents go on while the
        # database is away, and the writers say they cannot store.
        before = [a.acked for a in agents]
        wait_until(lambda: all(a.acked > b + 20 for a, b in zip(agents, before, strict=True)), timeout=30)

        def writer(n):
            return actor_stats(c.nodes[n], "writer")["hive.writer"]["store"]

        # Each writer with batches to store (the agents' partitions) says so.
        wait_until(lambda: any(writer(n).startswith("unavailable since") for n in c.names), timeout=30)
        time.sleep(2)
        failing = [n for n in c.names if writer(n).startswith("unavailable since")]
        # immune-node status says it too, beside the writer.
        r = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                            str(c.folder / failing[0] / "immune.toml")], capture_output=True, text=True, timeout=60)
        assert "hive.writer: store unavailable since" in r.stdout, r.stdout + r.stderr
        pg.start()
        for a in agents:
            a.join(90)
            assert a.acked == a.batches, (a.agent, a.acked)
        all_stored(c, agents, timeout=90)
        wait_until(lambda: all(writer(n) == "ok" for n in c.names), timeout=30)
        # Its log says once when the store went away and once when it came back.
        for n in failing:
            log = c.nodes[n].log()
            assert log.count("store.unavailable") == 1 and log.count("store.back") == 1, (n, log[-3000:])
        wait_until(lambda: queues(c.nats) == {"writers": (0, 0), "sentinels": (0, 0)}, timeout=60)
    finally:
        pgserver.stop(pg)
