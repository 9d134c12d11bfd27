"""A hive of three nodes over a three-server JetStream cluster, as real
processes on loopback, sharing one SQLite store: every batch stored once and
evaluated once, also when a hive node or a NATS server is killed -9 under load."""

import signal
import time

import pytest

from .cluster import PARTITIONS, HiveCluster


def wait_until(what, timeout=120.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s: {what.__doc__ or what}")


def actor_stats(node, suffix):
    return {a.name: a.extra for a in node.status().actors if a.name.endswith(suffix)}


def evaluated(cluster, names=None):
    total = 0
    for n in names or cluster.names:
        for extra in actor_stats(cluster.nodes[n], "sentinel").values():
            total += int(extra.get("events", 0))
    return total


@pytest.fixture
def hive_cluster(tmp_path, start_node, nats_cluster):
    c = HiveCluster(tmp_path, start_node, nats_cluster.urls)
    c.start_all()
    return c


def exactly_once(cluster, agents):
    counts = cluster.counts()
    for a in agents:
        n = a.batches * a.per_batch
        assert counts.get(a.agent) == (n, n, a.batches), (a.agent, counts.get(a.agent), n)


def test_every_batch_is_stored_once_and_evaluated_once(hive_cluster):
    c = hive_cluster
    agents = [c.agent(f"a{i}", [c.endpoint(n)], batches=200) for i, n in enumerate(c.names)]
    for a in agents:
        a.start()
    for a in agents:
        a.join(120)
        assert a.acked == a.batches
    total = sum(a.batches * a.per_batch for a in agents)
    wait_until(lambda: sum(v[0] for v in c.counts().values()) >= total)
    exactly_once(c, agents)
    # Each stored batch (and the hive's own notices) went to one sentinel; the work is shared.
    stored = c.stored()
    wait_until(lambda: evaluated(c) >= stored)
    time.sleep(1.5)
    assert evaluated(c) == stored
    per_node = [evaluated(c, [n]) for n in c.names]
    assert sum(1 for x in per_node if x) >= 2, per_node


def test_a_node_killed_under_load_loses_nothing_and_stores_nothing_twice(hive_cluster):
    c = hive_cluster
    everyone = [c.endpoint(n) for n in c.names]
    # Each agent starts on its own node and moves on when that one stops answering.
    agents = [c.agent(f"k{i}", everyone[i:] + everyone[:i], batches=600, rate=150) for i in range(3)]
    for a in agents:
        a.start()
    wait_until(lambda: all(a.acked >= 100 for a in agents))
    victim = c.nodes["node2"]
    victim.stop(signal.SIGKILL)
    for a in agents:
        a.join(240)
        assert a.acked == a.batches, (a.agent, a.acked)
    assert agents[1].moves >= 1
    total = sum(a.batches * a.per_batch for a in agents)
    try:
        wait_until(lambda: sum(v[0] for v in c.counts().values()) >= total)
    finally:
        print("counts", c.counts(), "queues", queues(c.nats))
        for n in ("node1", "node3"):
            print(n, actor_stats(c.nodes[n], "writer"), actor_stats(c.nodes[n], "router"))
    time.sleep(2)
    exactly_once(c, agents)
    # What the dead node's writer and sentinel had taken and not acknowledged
    # was given to the survivors: both work queues drain to nothing.
    wait_until(lambda: queues(c.nats) == {"writers": (0, 0), "sentinels": (0, 0)}, timeout=90)


def queues(urls):
    """(waiting, taken and unacknowledged) of each work queue."""
    import trio

    from hive.cluster import Bridge, Bus
    from hive.cluster._bus import DETECT_STREAM, INGEST_STREAM, SENTINELS, WRITERS

    async def go():
        async with Bridge() as bridge:
            bus = await Bus.connect(bridge, urls, "test")
            try:
                writers = [await bus.pending(INGEST_STREAM, f"{WRITERS}-{p}") for p in range(PARTITIONS)]
                return {WRITERS: (sum(w[0] for w in writers), sum(w[1] for w in writers)),
                        SENTINELS: await bus.pending(DETECT_STREAM, SENTINELS)}
            finally:
                await bus.close()

    return trio.run(go)


def test_a_correlation_across_two_hosts_whose_events_reach_different_nodes_fires(hive_cluster):
    import sqlite3

    import wire
    from hive.correlate import LATERAL_MOVEMENT_RULE

    from .cluster import ScriptedAgent

    c = hive_cluster
    a = ScriptedAgent("host-a", c.enroll("host-a"), c.hive_keys.public, c.endpoint("node1"), ["10.9.0.1"])
    b = ScriptedAgent("host-b", c.enroll("host-b"), c.hive_keys.public, c.endpoint("node3"), ["10.9.0.2"])
    try:
        def addresses_known():
            db = sqlite3.connect(f"file:{c.store}?mode=ro", uri=True, timeout=30)
            try:
                return len(db.execute("SELECT id FROM agents WHERE addresses LIKE '%10.9.0.%'").fetchall()) == 2
            finally:
                db.close()

        wait_until(addresses_known, timeout=60)
        time.sleep(2)  # the correlator reads the agents' addresses once a second
        b.send(wire.Exec(pid=500, ppid=1, filename="/usr/sbin/sshd"), wire.Bind(pid=500, port=22,
                                                                               image="/usr/sbin/sshd"))
        time.sleep(1)
        a.send(wire.Exec(pid=201, ppid=200, filename="/usr/bin/ssh"),
               wire.Connect(pid=201, image="/usr/bin/ssh", address="10.9.0.2", port=22))
        time.sleep(1)
        b.send(wire.Fork(pid=500, child_pid=501, image="/usr/sbin/sshd"),
               wire.Exec(pid=501, ppid=500, filename="/bin/bash", argv=["/bin/bash"]))

        def lateral():
            db = sqlite3.connect(f"file:{c.store}?mode=ro", uri=True, timeout=30)
            try:
                return db.execute("SELECT count(*) FROM alerts WHERE rule_id=?",
                                  (LATERAL_MOVEMENT_RULE,)).fetchone()[0]
            finally:
                db.close()

        wait_until(lambda: lateral() >= 1, timeout=60)
        time.sleep(2)
        assert lateral() == 1
    finally:
        a.close()
        b.close()
