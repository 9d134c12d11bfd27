"""The store writer's and the routers' plain decisions."""

from hive._messages import Ingest
from hive.cluster import _routing as routing
from hive.cluster._bus import Delivery
from hive.cluster._writer import GAP_TRIES, batch_id, settle, sort_key

import wire


def _d(redelivered=0):
    return Delivery(b"", redelivered, None)


def test_after_a_commit_stored_batches_go_to_detection_and_gaps_come_again():
    ds = [_d(), _d(), _d(2), _d(1), _d(GAP_TRIES)]
    bs = [Ingest(agent="a", stream="s", seq=i) for i in range(1, 6)]
    ack, later, drop, detect = settle(ds, bs, ["stored", "duplicate", "gap", "duplicate", "gap"])
    assert ack == [ds[0], ds[1], ds[3]] and later == [ds[2]] and drop == [ds[4]]
    # A duplicate given out before may have been stored by a writer that died
    # before passing it on: it goes to detection again (JetStream drops a copy).
    assert detect == [bs[0], bs[3]]


def test_a_refused_batch_is_acknowledged_not_retried():
    ack, later, drop, detect = settle([_d()], [Ingest(agent="a", stream="s", seq=1)], ["refused"])
    assert len(ack) == 1 and not later and not drop and not detect


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
