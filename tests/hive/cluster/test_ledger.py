"""The router's acks in a cluster: cumulative, only over what JetStream holds."""

from hypothesis import given, settings, strategies as st

from hive.cluster._ledger import AckLedger, Offer

K = ("web-1", "s1")


def test_a_stream_is_learned_from_the_store_before_anything_is_published():
    led = AckLedger()
    assert led.offer(K, 1) is Offer.UNKNOWN
    assert led.learn(K, 4) is None
    assert led.offer(K, 3) is Offer.ACK and led.acked(K) == 4
    assert led.offer(K, 5) is Offer.PUBLISH
    assert led.offer(K, 5) is Offer.WAIT  # a resend while it is on its way
    assert led.published(K, 5, True) == 5


def test_acks_wait_for_the_batches_before_them():
    led = AckLedger()
    led.learn(K, 0)
    assert [led.offer(K, s) for s in (1, 2, 3)] == [Offer.PUBLISH] * 3
    assert led.published(K, 3, True) is None
    assert led.published(K, 2, True) is None
    assert led.published(K, 1, True) == 3


def test_a_failed_publish_holds_the_ack_until_the_agent_sends_it_again():
    led = AckLedger()
    led.learn(K, 0)
    for s in (1, 2, 3):
        led.offer(K, s)
    assert led.published(K, 1, True) == 1
    assert led.published(K, 2, False) is None
    assert led.published(K, 3, True) is None
    assert led.blocked() == [K]
    assert led.offer(K, 3) is Offer.WAIT  # held already
    assert led.offer(K, 2) is Offer.PUBLISH
    assert led.published(K, 2, True) == 3
    assert led.blocked() == []


def test_a_batch_after_a_hole_nobody_knows_is_a_gap_until_the_store_fills_it():
    led = AckLedger()
    led.learn(K, 2)
    assert led.offer(K, 5) is Offer.GAP
    # Another router published 3 and 4 and the store has them now.
    assert led.learn(K, 4) == 4
    assert led.offer(K, 5) is Offer.PUBLISH


def test_the_store_moving_past_held_batches_acks_them():
    led = AckLedger()
    led.learn(K, 0)
    for s in (1, 2, 3):
        led.offer(K, s)
    led.published(K, 1, False)
    led.published(K, 3, True)
    assert led.learn(K, 2) == 3  # 1 and 2 reached the store through another router
    assert led.published(K, 2, True) is None


def test_streams_are_apart_and_forgotten_on_request():
    led = AckLedger()
    led.learn(K, 0)
    led.learn(("web-2", "s1"), 7)
    assert led.offer(("web-2", "s1"), 8) is Offer.PUBLISH and led.acked(K) == 0
    led.forget(K)
    assert led.offer(K, 1) is Offer.UNKNOWN and len(led) == 1


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["offer", "done", "fail"]), st.integers(1, 12)), max_size=80))
def test_an_ack_never_covers_a_batch_jetstream_does_not_hold(steps):
    led, held = AckLedger(), set()
    led.learn(K, 0)
    last = 0
    for what, seq in steps:
        if what == "offer":
            led.offer(K, seq)
            continue
        ok = what == "done"
        if seq in led._streams[K].publishing and ok:
            held.add(seq)
        new = led.published(K, seq, ok)
        if new is not None:
            assert new > last and set(range(1, new + 1)) <= held
            last = new
