"""The store writer's and the routers' plain decisions."""

from hive._messages import Ingest
from hive.cluster import _routing as routing
from hive.cluster._bus import Delivery
from hive.cluster._pack import batch_id
from hive.cluster._writer import GAP_TRIES, settle, sort_key

import wire


def _d(redelivered=0):
    return Delivery(b"", redelivered, None)


def _b(seq, agent="a"):
    return Ingest(agent=agent, stream="s", seq=seq), f"{agent}{seq}".encode()


def test_after_a_commit_stored_batches_go_to_detection_and_gaps_come_again():
    ds = [_d(), _d(), _d(2), _d(1), _d(GAP_TRIES)]
    bs = [_b(i) for i in range(1, 6)]
    out = settle([(d, [(*b, o)]) for d, b, o in zip(ds, bs, ["stored", "duplicate", "gap", "duplicate", "gap"])])
    assert out.ack == [ds[0], ds[1], ds[3]] and out.later == [ds[2]] and out.drop == [ds[4]] and not out.split
    # A duplicate given out before may have been stored by a writer that died
    # before passing it on: it goes to detection again.
    assert out.detect == [bs[0], bs[3]]


def test_a_pack_partly_stored_sends_only_its_waiting_batches_round_again():
    d = _d(3)
    out = settle([(d, [(*_b(1), "stored"), (*_b(7, "b"), "gap"), (*_b(2), "duplicate"), (*_b(8, "b"), "gap")])])
    # Retried whole, its stored batches would go to detection at every retry.
    assert out.split == [(d, [_b(7, "b"), _b(8, "b")])] and not out.ack and not out.later and not out.drop
    assert out.detect == [_b(1), _b(2)]  # (the duplicate: the pack was given out before)
    waiting = _d(GAP_TRIES)
    out = settle([(waiting, [(*_b(7, "b"), "gap"), (*_b(8, "b"), "gap")]), (_d(), [])])
    assert out.drop == [waiting] and len(out.ack) == 1 and not out.detect  # an empty pack (all of it bad) is done


def test_a_refused_batch_is_acknowledged_not_retried():
    out = settle([(_d(), [(*_b(1), "refused")])])
    assert len(out.ack) == 1 and not out.later and not out.drop and not out.detect


def test_batches_are_stored_in_stream_order_and_named_alike_everywhere():
    bs = [Ingest(agent="b", stream="s", seq=2), Ingest(agent="a", stream="s", seq=9),
          Ingest(agent="b", stream="s", seq=1)]
    assert [(b.agent, b.seq) for b in sorted(bs, key=sort_key)] == [("a", 9), ("b", 1), ("b", 2)]
    assert batch_id("web-1", "s1", 7) == "web-1/s1/7"


def test_commands_between_routers_round_trip_and_foreign_bytes_are_refused():
    cmd = wire.KillProcess(id="a-1", pid=4242)
    m = routing.decode(routing.encode(routing.Routed(origin="node2", agent="web-1", command=cmd)))
    assert m == routing.Routed(origin="node2", agent="web-1", command=cmd)
    assert routing.decode(b"\x93junk") is None


def test_a_router_remembers_whose_command_it_carried_once_and_within_bounds():
    o = routing.Origins(limit=2)
    o.sent("c1", "node1")
    o.sent("c2", "node2")
    o.sent("c3", "node3")  # c1 forgotten: the oldest
    assert o.answered("c1") is None
    assert o.answered("c2") == "node2" and o.answered("c2") is None
