"""A correlation partition's owner drops a packed item it already took
(its batch evaluated again by another sentinel, so in another pack that
JetStream does not see as a copy), within the duplicate window, in bounded
memory; a pack whose ids do not match its items is refused, not fatal."""

import wire
from hive._actors import internal_codec
from hive._messages import Ingest, Packed, SigmaHit
from hive.cluster._correlate import Seen, correlate_id, take_correlated
from hive.cluster._pack import encode, packs

CODEC = internal_codec()


def hit(key, user="bob"):
    return SigmaHit(correlation="c", group=[user], value="r", time=1.0, key=key)


def items(*msgs):
    return [("immune.correlate.3", CODEC.encode(m), correlate_id(m)) for m in msgs]


def packed(*msgs):
    (p,), too_large = packs(CODEC, items(*msgs), limit=1 << 20, with_ids=True)
    assert not too_large
    return p.payload


def test_an_item_again_in_another_pack_is_dropped_within_the_window_and_taken_after_it():
    seen = Seen(window=120.0)
    first = packed(hit("k1"), hit("k2"))
    again = packed(hit("k9"), hit("k2"), hit("k1"))  # another sentinel's pack: another JetStream id
    assert CODEC.decode(again).ids == ["hit/k9", "hit/k2", "hit/k1"]
    got = take_correlated(CODEC, [first], seen, now=0.0)
    assert [m.key for m in got.msgs] == ["k1", "k2"] and got.copies == 0
    got = take_correlated(CODEC, [again], seen, now=60.0)
    assert [m.key for m in got.msgs] == ["k9"] and got.copies == 2
    # Past the window it is not a copy JetStream would have dropped either.
    got = take_correlated(CODEC, [packed(hit("k1"))], seen, now=181.0)
    assert [m.key for m in got.msgs] == ["k1"] and got.copies == 0


def test_a_message_alone_and_a_packed_copy_of_it_meet_once():
    seen = Seen(window=120.0)
    b = Ingest(agent="a", stream="s", seq=4, events=[wire.Exec(pid=1, filename="/bin/true")])
    got = take_correlated(CODEC, [CODEC.encode(b), packed(b, hit("k1"))], seen, now=0.0)
    assert got.msgs == [b, hit("k1")] and got.copies == 1
    # Without an id (the hive's own events) nothing is a copy.
    own = Ingest(agent="hive", events=[wire.Exec(pid=2, filename="/bin/true")])
    got = take_correlated(CODEC, [packed(own), packed(own)], seen, now=1.0)
    assert got.msgs == [own, own] and got.copies == 0


def test_memory_is_bounded_in_number_and_in_time():
    seen = Seen(window=10.0, most=100)
    for i in range(1000):
        assert seen.first(f"id{i}", now=0.0)
    assert len(seen) == 100
    assert not seen.first("id999", now=1.0) and seen.first("id0", now=1.0)  # the oldest forgotten first
    seen.first("late", now=20.0)
    assert len(seen) == 1


def test_a_pack_whose_ids_do_not_match_its_items_is_refused_and_the_rest_read():
    seen = Seen(window=120.0)
    bad = CODEC.encode(Packed(batches=[CODEC.encode(hit("k1")), CODEC.encode(hit("k2"))], ids=["hit/k1"]))
    garbage_item = encode(CODEC, [b"\x93nope", CODEC.encode(hit("k3"))], ["x", "hit/k3"])
    got = take_correlated(CODEC, [bad, b"\x93not a message", garbage_item, packed(hit("k2"))], seen, now=0.0)
    assert got.refused == 1 and got.undecodable == 2
    assert [m.key for m in got.msgs] == ["k3", "k2"]  # k2 was not taken from the refused pack


def test_packs_of_batches_carry_no_ids_and_read_as_before():
    b = Ingest(agent="a", stream="s", seq=1)
    (p,), _ = packs(CODEC, [("s", CODEC.encode(b), "a/s/1")], limit=1 << 20)
    assert CODEC.decode(p.payload) == Packed(batches=[CODEC.encode(b)])
    assert p.payload == encode(CODEC, [CODEC.encode(b)])  # the same bytes as before ids existed
