"""Sigma correlation in a hive of three nodes over a three-server JetStream
cluster, as real processes on loopback: the hits of one group (a user) from
hosts on different nodes meet on the owner of its partition and fire once;
when that owner is killed -9 in the middle of a window, the next owner
rebuilds the window from the stream and fires once; garbage on a
partition's subject is counted and skipped."""

import signal
import textwrap
import time

import pytest

from .cluster import HiveCluster, ScriptedAgent
from .test_cluster import actor_stats, wait_until

CORRELATION = "c0ffee00-cccc-4ccc-8ccc-cccccccccccc"
RULES = f"""\
title: Failed login probe
id: c0ffee00-aaaa-4aaa-8aaa-aaaaaaaaaaaa
name: failed_login_probe
logsource: {{product: linux, category: process_creation}}
detection:
    selection:
        Image|endswith: /login-failed
    condition: selection
level: low
---
title: Failed logins for one user on several hosts
id: {CORRELATION}
correlation:
    type: event_count
    rules: [failed_login_probe]
    group-by: [User]
    timespan: 120s
    condition: {{gte: 4}}
level: high
"""
PARTITIONS = 8  # the default [cluster] correlate_partitions


@pytest.fixture(params=[True], ids=["packed"])
def cluster(request, tmp_path, start_node, nats_cluster):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "logins.yml").write_text(textwrap.dedent(RULES))
    c = HiveCluster(tmp_path, start_node, nats_cluster.urls, rules=rules, pack=request.param)
    c.start_all()
    return c


def failed_login(pid: int, user: str):
    import wire

    return wire.Exec(pid=pid, ppid=1, filename="/usr/sbin/login-failed", argv=["login-failed"], user=user)


def alerts_for(c, user):
    """(id, detail) of the correlation's alerts on ``user``."""
    from hive import Store

    s = Store(c.store, readonly=True)
    try:
        return [(a.id, a.detail) for a in s.alerts(limit=10_000)
                if a.rule_id == CORRELATION and f"User={user}" in a.detail]
    finally:
        s.close()


def owners(c):
    """Correlate partition -> the live node that holds it."""
    out = {}
    for n, node in c.nodes.items():
        if node.proc.poll() is None:
            for extra in actor_stats(node, "correlate").values():
                for p in str(extra.get("partitions", "")).split():
                    out[int(p)] = n
    return out


def balanced(c):
    """Every partition held, none by a node holding more than its share (leases settled)."""
    held = owners(c)
    counts = [list(held.values()).count(n) for n in c.names]
    return len(held) == PARTITIONS and max(counts) <= -(-PARTITIONS // len(c.names))


def owner_stat(c, node, key):
    return sum(int(e.get(key, 0)) for e in actor_stats(c.nodes[node], "correlate").values())


def sentinel_hits(c):
    """Node -> hits its sentinel sent to correlation partitions."""
    return {n: sum(int(e.get("sigma_hits", 0)) for e in actor_stats(c.nodes[n], "sentinel").values())
            for n in c.names}


def publish_raw(urls, items):
    import trio

    from hive.cluster import Bridge, Bus

    async def go():
        async with Bridge() as bridge:
            bus = await Bus.connect(bridge, urls, "test")
            try:
                return await bus.publish_to(items)
            finally:
                await bus.close()

    return trio.run(go)


def sentinel_packs(c):
    return sum(int(e.get("correlate_packs", 0)) for n in c.names if c.nodes[n].proc.poll() is None
               for e in actor_stats(c.nodes[n], "sentinel").values())


# pack = false (a rolling upgrade from nodes before packing): one message per hit, as before.
@pytest.mark.parametrize("cluster", [True, False], ids=["packed", "unpacked"], indirect=True)
def test_a_correlation_whose_hits_reach_different_nodes_fires_once_also_across_its_owners_death(cluster,
                                                                                              nats_cluster):
    from hive._actors import internal_codec
    from hive._messages import SigmaHit
    from hive.cluster._bus import CORRELATE_SUBJECT
    from hive.cluster._correlate import sigma_partition

    c = cluster
    wait_until(lambda: balanced(c), timeout=120)
    p = sigma_partition(CORRELATION, ["bob"], PARTITIONS)
    doomed = owners(c)[p]
    left, right = [n for n in c.names if n != doomed]
    a = ScriptedAgent("host-a", c.enroll("host-a"), c.hive_keys.public, c.endpoint(left), ["10.9.1.1"])
    b = ScriptedAgent("host-b", c.enroll("host-b"), c.hive_keys.public, c.endpoint(right), ["10.9.1.2"])
    try:
        # alice: two hosts, two routers, four hits, one alert.
        a.send(failed_login(10, "alice"))
        b.send(failed_login(20, "alice"))
        a.send(failed_login(11, "alice"))
        assert alerts_for(c, "alice") == []
        b.send(failed_login(21, "alice"))
        wait_until(lambda: len(alerts_for(c, "alice")) >= 1, timeout=60)
        # Which sentinel takes a batch is JetStream's choice; none kept a window.
        wait_until(lambda: sum(sentinel_hits(c).values()) >= 4, timeout=30)
        print("alice's hits routed by the sentinels of", sentinel_hits(c))
        # Sent to correlation packed, or one message each as configured.
        assert (sentinel_packs(c) > 0) == c.pack, sentinel_packs(c)
        # Garbage and a hit of a correlation nobody loaded, on bob's partition: counted, skipped.
        codec = internal_codec()
        assert all(publish_raw(c.nats, [
            (f"{CORRELATE_SUBJECT}.{p}", b"\x93not a message", ""),
            (f"{CORRELATE_SUBJECT}.{p}", codec.encode(SigmaHit(correlation="no-such-rule", group=["bob"])), ""),
        ]))
        wait_until(lambda: owner_stat(c, doomed, "undecodable") >= 1
                   and owner_stat(c, doomed, "unknown_correlation") >= 1, timeout=60)
        # bob: two hits reach the owner of his partition, which then dies.
        assert owners(c)[p] == doomed
        before = owner_stat(c, doomed, "sigma_hits")
        a.send(failed_login(30, "bob"))
        b.send(failed_login(40, "bob"))
        wait_until(lambda: owner_stat(c, doomed, "sigma_hits") >= before + 2, timeout=60)
        time.sleep(1.5)  # acknowledged: the next owner has them from the stream's replay
        assert alerts_for(c, "bob") == []
        c.nodes[doomed].stop(signal.SIGKILL)
        wait_until(lambda: owners(c).get(p) in (left, right), timeout=90)
        a.send(failed_login(31, "bob"))
        assert alerts_for(c, "bob") == []
        b.send(failed_login(41, "bob"))
        wait_until(lambda: len(alerts_for(c, "bob")) >= 1, timeout=60)
        time.sleep(5)  # a copy would come within this
        ((_, detail),) = alerts_for(c, "bob")
        assert "event_count 4" in detail and "host-a" in detail and "host-b" in detail, detail
        ((_, detail),) = alerts_for(c, "alice")
        assert "event_count 4" in detail and "host-a" in detail and "host-b" in detail, detail
    finally:
        a.close()
        b.close()


def test_hits_evaluated_twice_travel_in_two_packs_and_count_once(cluster, nats_cluster):
    """A batch evaluated again by another sentinel sends its hits in another
    pack, which JetStream keeps: the owner drops them by their ids, so the
    correlation fires at its fourth hit, not at the second one's copy."""
    from hive._actors import internal_codec
    from hive._messages import Packed, SigmaHit
    from hive.cluster._bus import CORRELATE_SUBJECT
    from hive.cluster._correlate import correlate_id, sigma_partition
    from hive.cluster._pack import packs

    c = cluster
    wait_until(lambda: balanced(c), timeout=120)
    codec = internal_codec()
    p = sigma_partition(CORRELATION, ["carol"], PARTITIONS)
    subject = f"{CORRELATE_SUBJECT}.{p}"
    owner = owners(c)[p]

    def hit(key, user="carol"):
        return SigmaHit(correlation=CORRELATION, group=[user], value="c0ffee00-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
                        time=time.time(), key=key)

    def pack(*hits):
        (made,), _ = packs(codec, [(subject, codec.encode(h), correlate_id(h)) for h in hits],
                           limit=1 << 20, with_ids=True)
        return subject, made.payload, made.id

    first = [hit("carol/1"), hit("carol/2")]
    assert all(publish_raw(c.nats, [pack(*first)]))
    # The same two again with a third (another sentinel's fetch): a pack of another id.
    assert all(publish_raw(c.nats, [pack(hit("carol/0", "nobody"), *first)]))
    # And a pack whose ids do not say which item is whose: refused, counted.
    bad = Packed(batches=[codec.encode(hit("carol/3")), codec.encode(hit("carol/4"))], ids=["hit/carol/3"])
    assert all(publish_raw(c.nats, [(subject, codec.encode(bad), "")]))
    wait_until(lambda: owner_stat(c, owner, "copies") >= 2 and owner_stat(c, owner, "bad_packs") >= 1, timeout=60)
    time.sleep(2)
    assert alerts_for(c, "carol") == []  # two hits counted, not four
    assert all(publish_raw(c.nats, [pack(hit("carol/5"))]))
    time.sleep(3)
    assert alerts_for(c, "carol") == []
    assert all(publish_raw(c.nats, [pack(hit("carol/6"))]))
    wait_until(lambda: len(alerts_for(c, "carol")) >= 1, timeout=60)
    time.sleep(3)
    ((_, detail),) = alerts_for(c, "carol")
    assert "event_count 4" in detail, detail
