"""Many agents' batches in one JetStream message: the plain packing rules."""

import pytest

import wire
from actors import DecodeError
from hive._actors import internal_codec
from hive._messages import Ingest, Packed, Stored
from hive.cluster._pack import ITEM_OVERHEAD, PAYLOAD_MARGIN, batch_id, chunks, pack_id, packs, unpack

CODEC = internal_codec()


def batch(agent, seq, n=3, stream="s"):
    return Ingest(agent=agent, stream=stream, seq=seq,
                  events=[wire.Exec(time=10**12 + seq * 100 + i, pid=i, filename="/bin/true") for i in range(n)])


def item(subject, b):
    return subject, CODEC.encode(b), batch_id(b.agent, b.stream, b.seq)


def test_one_pack_per_subject_holds_its_batches_in_order():
    bs = [batch("a", 1), batch("b", 1), batch("a", 2), batch("c", 1)]
    items = [item("p0", bs[0]), item("p1", bs[1]), item("p0", bs[2]), item("p1", bs[3])]
    made, too_large = packs(CODEC, items, limit=1 << 20)
    assert not too_large
    assert [(p.subject, p.members) for p in made] == [("p0", [0, 2]), ("p1", [1, 3])]
    got = unpack(CODEC, made[0].payload)
    assert got.packed and got.bad == 0
    assert [b for b, _ in got.batches] == [bs[0], bs[2]]
    assert [raw for _, raw in got.batches] == [items[0][1], items[2][1]]  # passed on without encoding again


def test_packs_stay_under_their_size_and_the_bus_limit():
    items = [item("p0", batch("a", seq, n=40)) for seq in range(1, 41)]
    one = len(items[0][1]) + ITEM_OVERHEAD
    made, too_large = packs(CODEC, items, limit=1 << 20, most=5 * one)
    assert not too_large and [len(p.members) for p in made] == [5] * 8
    assert [i for p in made for i in p.members] == list(range(40))
    assert all(len(p.payload) <= 5 * one + 64 for p in made)
    # A batch larger than a pack goes alone; one larger than the bus takes is refused, the rest packed.
    big = item("p0", batch("big", 1, n=400))
    made, too_large = packs(CODEC, [items[0], big, items[1]], limit=len(big[1]) + PAYLOAD_MARGIN + ITEM_OVERHEAD,
                            most=one * 2)
    assert not too_large and [p.members for p in made] == [[0], [1], [2]]
    made, too_large = packs(CODEC, [items[0], big, items[1]], limit=len(big[1]) + PAYLOAD_MARGIN, most=one * 2)
    assert too_large == [1] and [p.members for p in made] == [[0, 2]]


def test_a_packs_id_is_its_batches_and_none_for_the_hives_own():
    assert pack_id(["a/s/1", "b/s/1"]) == pack_id(["a/s/1", "b/s/1"]) != pack_id(["a/s/1", "b/s/2"])
    assert len(pack_id(["a/s/1"])) == 32
    assert pack_id(["a/s/1", ""]) == "" and pack_id([]) == ""


def test_a_single_batch_from_a_node_without_packing_is_read_too():
    b = batch("a", 7)
    got = unpack(CODEC, CODEC.encode(b))
    assert not got.packed and [x for x, _ in got.batches] == [b] and got.bad == 0
    notice = Ingest(agent="hive", events=[])
    assert unpack(CODEC, CODEC.encode(notice)).batches[0][0] == notice
    # A writer takes only agents' batches (a seq to check): the hive's own cannot come from a router.
    assert unpack(CODEC, CODEC.encode(notice), agents_only=True).bad == 1


def test_one_malformed_batch_leaves_the_rest_of_its_pack():
    good = [batch("a", 1), batch("b", 1)]
    stored = CODEC.encode(Stored(agent="a", stream="s", seq=1, outcome="stored"))
    zero = CODEC.encode(Ingest(agent="a", stream="s", seq=0))
    data = CODEC.encode(Packed(batches=[CODEC.encode(good[0]), b"\x93junk", stored, zero, CODEC.encode(good[1])]))
    got = unpack(CODEC, data, agents_only=True)
    assert [b for b, _ in got.batches] == good and got.bad == 3


@pytest.mark.parametrize("data", [b"", b"\x93junk", CODEC.encode(Stored(agent="a", stream="s", seq=1, outcome="x")),
                                  CODEC.encode(Packed(batches=[]))[:-1]])
def test_a_message_that_is_no_batches_is_refused_whole(data):
    with pytest.raises(DecodeError):
        unpack(CODEC, data)


def test_chunks_are_bounded_by_bytes():
    items = [(i, b"x" * 100) for i in range(10)]
    runs = list(chunks(items, most=3 * (100 + ITEM_OVERHEAD)))
    assert [[i for i, _ in r] for r in runs] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert list(chunks([(0, b"x" * 1000)], most=10)) == [[(0, b"x" * 1000)]]
