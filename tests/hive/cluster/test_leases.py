"""Partition leases: the plain decisions, then keepers against a real cluster."""

import logging

import trio

from hive.cluster import Bridge, Bus
from hive.cluster._keeper import LeaseKeeper
from hive.cluster._leases import Lease, LeaseTable, partition_of


def test_partition_of_is_stable_and_spread():
    assert partition_of("web-1", 16) == partition_of(b"web-1", 16)
    spread = {partition_of(f"host-{i}", 16) for i in range(200)}
    assert spread == set(range(16))


def test_a_lone_node_claims_every_free_partition():
    t = LeaseTable("a", 4)
    plan = t.plan({}, {"a"})
    assert sorted(plan.claim) == [0, 1, 2, 3] and not plan.renew and not plan.release
    gained, lost = t.applied(plan, {}, {0: 5, 1: 6, 2: None, 3: 8})
    assert gained == {0, 1, 3} and lost == set() and t.holds(1, 6) and not t.holds(2)


def test_a_node_takes_only_its_share_and_never_a_held_one():
    t = LeaseTable("b", 4)
    leases = {0: Lease("a", 1), 1: Lease("a", 2)}
    plan = t.plan(leases, {"a", "b"})
    assert sorted(plan.claim) == [2, 3]
    t.applied(plan, {}, {2: 3, 3: 4})
    # Next round: renew both, claim nothing (the share is two).
    plan = t.plan({**leases, 2: Lease("b", 3), 3: Lease("b", 4)}, {"a", "b"})
    assert plan.renew == {2: 3, 3: 4} and plan.claim == []


def test_a_node_over_its_share_releases_the_rest_when_another_joins():
    t = LeaseTable("a", 4)
    t.applied(t.plan({}, {"a"}), {}, {p: p + 1 for p in range(4)})
    plan = t.plan({p: Lease("a", p + 1) for p in range(4)}, {"a", "b"})
    assert len(plan.renew) == 2 and len(plan.release) == 2
    assert set(plan.renew) | set(plan.release) == {0, 1, 2, 3}
    gained, lost = t.applied(plan, {p: r + 10 for p, r in plan.renew.items()}, {})
    assert lost == set(plan.release) and not gained


def test_a_joining_node_is_short_only_while_another_holds_more_than_its_share():
    """Short, its keeper looks again sooner: the partitions the other
    releases have no owner until someone claims them."""
    b = LeaseTable("b", 4)
    held_by_a = {p: Lease("a", p + 1) for p in range(4)}
    plan = b.plan(held_by_a, {"a", "b"})
    assert plan.claim == [] and plan.short == 2
    # 3 nodes, 4 partitions: shares of 2, held 2/1/1; nobody will release, so nobody is short.
    c = LeaseTable("c", 4)
    plan = c.plan({0: Lease("a", 1), 1: Lease("a", 2), 2: Lease("b", 3), 3: Lease("c", 4)}, {"a", "b", "c"})
    assert plan.short == 0


def test_a_lease_that_changed_hands_is_lost_not_renewed():
    """The fence: our lease lapsed and another node took the partition; the
    revision we hold is no longer the latest, so we stop acting on it."""
    t = LeaseTable("a", 2)
    t.applied(t.plan({}, {"a"}), {}, {0: 1, 1: 2})
    plan = t.plan({0: Lease("b", 9), 1: Lease("a", 2)}, {"a", "b"})
    assert plan.renew == {1: 2} and 0 not in plan.claim
    gained, lost = t.applied(plan, {1: 3}, {})
    assert lost == {0} and t.holds(1, 3) and not t.holds(1, 2)


def test_a_failed_renewal_loses_the_partition():
    t = LeaseTable("a", 1)
    t.applied(t.plan({}, {"a"}), {}, {0: 1})
    plan = t.plan({0: Lease("a", 1)}, {"a"})
    assert t.applied(plan, {0: None}, {}) == (set(), {0})


def test_a_lapsed_lease_is_lost_and_claimed_again():
    t = LeaseTable("a", 1)
    t.applied(t.plan({}, {"a"}), {}, {0: 1})
    plan = t.plan({}, {"a"})
    assert plan.gone == {0} and plan.claim == [0]
    assert t.applied(plan, {}, {0: 7}) == (set(), set()) and t.holds(0, 7)


def test_nodes_prefer_different_partitions():
    first = {n: LeaseTable(n, 16).plan({}, {"a", "b", "c", "d"}).claim for n in "abcd"}
    # Each wants its share (4); rendezvous hashing spreads their first choices.
    assert all(len(c) == 4 for c in first.values())
    assert len(set().union(*map(set, first.values()))) >= 10


async def _keeper(bridge, urls, node, changes):
    bus = await Bus.connect(bridge, urls, node)

    async def on_change(gained, lost):
        changes.append((node, set(gained), set(lost)))

    return LeaseKeeper(bus, "t", node, 8, 1.5, on_change, logging.getLogger("t"))


async def test_keepers_split_the_partitions_and_a_survivor_takes_a_dead_ones(nats_cluster):
    changes = []
    async with Bridge() as bridge:
        a = await _keeper(bridge, nats_cluster.urls, "a", changes)
        b = await _keeper(bridge, nats_cluster.urls, "b", changes)
        async with trio.open_nursery() as n:
            a_scope = trio.CancelScope()

            async def run_a():
                with a_scope:
                    await a.run()

            n.start_soon(run_a)
            await trio.sleep(0.3)
            n.start_soon(b.run)
            with trio.fail_after(30):
                while not (len(a.table.owned) == 4 and len(b.table.owned) == 4):
                    await trio.sleep(0.1)
            assert set(a.table.owned).isdisjoint(b.table.owned)
            a_scope.cancel()  # a dies without releasing anything
            with trio.fail_after(30):
                while len(b.table.owned) < 8:
                    await trio.sleep(0.1)
            n.cancel_scope.cancel()
    assert any(node == "b" and gained and not lost for node, gained, lost in changes[2:])
