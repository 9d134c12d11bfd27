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
    # immune-node status shows the cluster: nodes, roles, partitions, queues.
    import subprocess
    import sys

    def status():
        r = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                            str(c.folder / "node1" / "immune.toml")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r

    # A snapshot: on a loaded machine a lease (10 s here) can lapse under a burst
    # and is taken again within a round, so the leases are waited for.
    started, r = time.monotonic(), status()
    while "without an owner" in r.stdout and time.monotonic() - started < 60:
        time.sleep(1.0)
        r = status()
    print(f"status showed every partition owned after {time.monotonic() - started:.1f} s")
    assert "cluster: 3 live node(s)" in r.stdout
    for n in c.names:
        assert any(line.split()[:2] == [n, "all"] for line in r.stdout.splitlines()), r.stdout
    assert "without an owner" not in r.stdout
    # [cluster] correlate_partitions (8 by default), each held by a node.
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  correlate partitions: "))
    assert line.startswith("  correlate partitions: 8 (") and all(n in line for n in c.names), line
    assert "  detect                  0 / 0" in r.stdout


def test_a_node_killed_under_load_loses_nothing_and_stores_nothing_twice(hive_cluster):
    c = hive_cluster
    everyone = [c.endpoint(n) for n in c.names]
    # Each agent starts on its node (three a node: their batches travel in
    # the same packs) and moves on when that one stops answering.
    agents = [c.agent(f"k{i}", everyone[i % 3:] + everyone[:i % 3], batches=300, rate=100) for i in range(9)]
    for a in agents:
        a.start()
    wait_until(lambda: all(a.acked >= 50 for a in agents))
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
    # The batches went packed, several to a JetStream message.
    routers = [x for n in ("node1", "node3") for x in actor_stats(c.nodes[n], "router").values()]
    assert sum(int(r.get("published", 0)) for r in routers) > sum(int(r.get("packs", 0)) for r in routers) > 0
    assert all(int(w.get("packs", 0)) for n in ("node1", "node3") for w in actor_stats(c.nodes[n], "writer").values())
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


def _store_rows(c, sql, *args):
    return c.rows(sql, *args)


def _lateral_alerts(c):
    from hive.correlate import LATERAL_MOVEMENT_RULE

    return _store_rows(c, "SELECT id, agent FROM alerts WHERE rule_id=?", LATERAL_MOVEMENT_RULE)


def _two_hosts(c, a_node, b_node, port=22):
    from .cluster import ScriptedAgent

    a = ScriptedAgent("host-a", c.enroll("host-a"), c.hive_keys.public, c.endpoint(a_node), ["10.9.0.1"])
    b = ScriptedAgent("host-b", c.enroll("host-b"), c.hive_keys.public, c.endpoint(b_node), ["10.9.0.2"])
    wait_until(lambda: len(_store_rows(c, "SELECT id FROM agents WHERE addresses LIKE '%10.9.0.%'")) == 2,
               timeout=60)
    time.sleep(2)  # the correlator reads the agents' addresses once a second
    return a, b


def _listener_and_connect(a, b, port=22):
    import wire

    b.send(wire.Exec(pid=500, ppid=1, filename="/usr/sbin/sshd"), wire.Bind(pid=500, port=port,
                                                                           image="/usr/sbin/sshd"))
    time.sleep(1)
    a.send(wire.Exec(pid=201, ppid=200, filename="/usr/bin/ssh"),
           wire.Connect(pid=201, image="/usr/bin/ssh", address="10.9.0.2", port=port))
    time.sleep(1)


def _session(b):
    import wire

    b.send(wire.Fork(pid=500, child_pid=501, image="/usr/sbin/sshd"),
           wire.Exec(pid=501, ppid=500, filename="/bin/bash", argv=["/bin/bash"]))


def _owner(c):
    """The node that holds the host correlator's partition's lease."""
    for n, node in c.nodes.items():
        if node.proc.poll() is None:
            for extra in actor_stats(node, "correlate").values():
                if "0" in str(extra.get("partitions", "")).split():
                    return n
    return None


def _evidence_commands(agent):
    return [m for m in agent.received if getattr(m, "action", "") == "collect_evidence"]


def test_a_correlation_across_two_hosts_whose_events_reach_different_nodes_fires(hive_cluster):
    """And one node's playbook acts on it once, through the router that holds
    the target's connection; the answer comes back to that playbook."""
    import wire

    c = hive_cluster
    wait_until(lambda: _owner(c) is not None, timeout=60)
    correlating = _owner(c)
    others = [n for n in c.names if n != correlating]
    # The target's connection is on a node that does not correlate: its command is routed.
    a, b = _two_hosts(c, correlating, others[0])
    try:
        _listener_and_connect(a, b)
        _session(b)
        wait_until(lambda: len(_lateral_alerts(c)) >= 1, timeout=60)
        deadline = time.monotonic() + 30
        while not _evidence_commands(b) and time.monotonic() < deadline:
            b.poll(0.2)
        b.poll(3)  # a second copy would come within this
        assert len(_lateral_alerts(c)) == 1
        (cmd,) = _evidence_commands(b)
        b.answer(wire.CommandResult(command=cmd.id, ok=True, detail="collected"))
        wait_until(lambda: _store_rows(c, "SELECT state FROM commands WHERE id=?", cmd.id) == [("done",)],
                   timeout=30)
        assert actor_stats(c.nodes[others[0]], "router")["hive.router"]["commands_carried"] == 1
    finally:
        a.close()
        b.close()


def test_a_new_correlation_owner_rebuilds_the_state_from_the_stream(hive_cluster):
    """The listener and the connection reach the first owner of the
    correlation partition, which is then killed -9; the shell that completes
    the lateral movement reaches its successor, which only knows the rest
    from the stream."""
    c = hive_cluster

    def owner():
        return _owner(c)

    wait_until(lambda: owner() is not None, timeout=60)
    first = owner()
    others = [n for n in c.names if n != first]
    a, b = _two_hosts(c, others[0], others[1])
    try:
        _listener_and_connect(a, b)
        time.sleep(1)
        c.nodes[first].stop(signal.SIGKILL)
        wait_until(lambda: owner() not in (None, first), timeout=60)
        _session(b)
        wait_until(lambda: len(_lateral_alerts(c)) >= 1, timeout=60)
        b.poll(3)
        assert len(_lateral_alerts(c)) == 1
        assert len(_evidence_commands(b)) == 1
    finally:
        a.close()
        b.close()


def test_the_hive_goes_on_when_a_nats_server_is_killed(hive_cluster, nats_cluster):
    c = hive_cluster
    agents = [c.agent(f"n{i}", [c.endpoint(n)], batches=400, rate=100) for i, n in enumerate(c.names)]
    for a in agents:
        a.start()
    wait_until(lambda: all(a.acked >= 50 for a in agents))
    nats_cluster.servers[0].kill()
    for a in agents:
        a.join(240)
        assert a.acked == a.batches, (a.agent, a.acked)
    total = sum(a.batches * a.per_batch for a in agents)
    wait_until(lambda: sum(v[0] for v in c.counts().values()) >= total)
    time.sleep(2)
    exactly_once(c, agents)
    stored = c.stored()
    live = [s.url for s in nats_cluster.servers if s.alive()]
    wait_until(lambda: queues(live)["sentinels"] == (0, 0), timeout=90)
    wait_until(lambda: evaluated(c) >= stored, timeout=90)


def test_each_stage_on_its_own_node(tmp_path, start_node, nats_cluster):
    """--role router, detect, correlate, respond: one node each; a lateral
    movement still goes from the agents' door through detection and
    correlation to one command at the target."""
    c = HiveCluster(tmp_path, start_node, nats_cluster.urls, size=4, roles=["router", "detect", "correlate", "respond"])
    c.start_all()
    names = {n: [a.name for a in c.nodes[n].status().actors if a.name.startswith("hive.")] for n in c.names}
    assert "hive.router" in names["node1"] and "hive.writer" in names["node1"]
    assert not any(a.endswith(("sentinel", "correlate", "playbook")) for a in names["node1"])
    assert names["node2"] == ["hive.sentinel"] and names["node3"] == ["hive.correlate"]
    assert names["node4"] == ["hive.playbook"]
    a, b = _two_hosts(c, "node1", "node1")
    try:
        _listener_and_connect(a, b)
        _session(b)
        wait_until(lambda: len(_lateral_alerts(c)) >= 1, timeout=60)
        deadline = time.monotonic() + 30
        while not _evidence_commands(b) and time.monotonic() < deadline:
            b.poll(0.2)
        b.poll(3)
        assert len(_lateral_alerts(c)) == 1 and len(_evidence_commands(b)) == 1
    finally:
        a.close()
        b.close()
