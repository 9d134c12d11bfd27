"""Exactly-once delivery logic against a scripted hive, without sockets."""

import collections
import random

import pytest

import wire
from actors import Codec
from agent import Delivery, Spool

CODEC = Codec(wire.AgentMessage)


class Hive:
    """The hive's rule: store seq == last + 1 per stream, acknowledge lower
    ones again, answer a gap with a resend request."""

    def __init__(self):
        self.last: dict[str, int] = {}
        self.stored: list[int] = []  # event origins, in the order stored

    def receive(self, frame: bytes) -> wire.Ack:
        b = CODEC.decode(frame)
        last = self.last.get(b.stream, 0)
        if b.seq == last + 1:
            self.stored.extend(e.pid for e in b.events)
            self.last[b.stream] = b.seq
            return wire.Ack(seq=b.seq, stream=b.stream)
        if b.seq <= last:
            return wire.Ack(seq=last, stream=b.stream)
        return wire.Ack(seq=last, stream=b.stream, resend=True)


def events(origin: int, n: int = 2) -> list:
    return [wire.Open(pid=origin + i, path="/etc/x") for i in range(n)]


def fill(spool: Spool, count: int) -> None:
    for i in range(count):
        spool.append(events(1000 * (spool.next_seq + 1)))
    spool.sync()


def test_the_window_bounds_what_is_in_flight(tmp_path):
    with Spool(tmp_path) as s:
        fill(s, 10)
        d = Delivery(s, window=4)
        assert [q for q, _ in d.take(0.0)] == [1, 2, 3, 4]
        assert d.take(0.0) == []
        d.on_ack(wire.Ack(seq=2, stream=s.stream), 0.1)
        assert [q for q, _ in d.take(0.1)] == [5, 6]
        assert d.in_flight == 4


def test_a_resend_request_rewinds_once_and_a_stall_rewinds_again(tmp_path):
    with Spool(tmp_path) as s:
        fill(s, 6)
        d = Delivery(s, window=10, ack_timeout=5.0)
        d.take(0.0)
        d.on_ack(wire.Ack(seq=2, stream=s.stream), 0.1)
        d.on_ack(wire.Ack(seq=2, stream=s.stream, resend=True), 0.2)
        assert d.next_seq == 3 and d.resends == 1
        assert [q for q, _ in d.take(0.2)] == [3, 4, 5, 6]
        # The rest of the old window asks for the same thing: not again.
        d.on_ack(wire.Ack(seq=2, stream=s.stream, resend=True), 0.3)
        assert d.next_seq == 7 and d.resends == 1
        assert d.deadline() == pytest.approx(5.2)
        assert not d.check(5.0)
        assert d.check(5.3)
        assert d.next_seq == 3 and d.resends == 2
        assert s.acked == 2


def test_acks_of_another_stream_are_ignored(tmp_path):
    with Spool(tmp_path) as s:
        fill(s, 3)
        d = Delivery(s)
        d.take(0.0)
        d.on_ack(wire.Ack(seq=3, stream="not-this-one"), 0.1)
        d.on_ack(wire.Ack(seq=3), 0.1)
        assert s.acked == 0 and d.stale_acks == 2


def test_a_hive_missing_a_dropped_batch_gets_a_new_stream_once_it_is_quiet(tmp_path):
    with Spool(tmp_path, max_bytes=4096, segment_bytes=512) as s:
        d = Delivery(s, window=1000, ack_timeout=2.0)
        fill(s, 200)  # overflows: the oldest are dropped
        assert s.statistics().dropped_batches > 0
        old = s.stream
        held = s.first_unacked()
        # Only a probe goes out: the oldest batch still held.
        assert [q for q, _ in d.take(0.0, 1000)] == [held]
        assert d.take(0.0, 1000) == []
        d.on_ack(wire.Ack(seq=0, stream=old, resend=True), 0.1)
        assert d.waiting_on_gap and d.deadline() == pytest.approx(2.1)
        assert not d.check(2.0)
        assert d.check(2.2)
        assert s.stream != old and d.restreams == 1 and not d.waiting_on_gap
        frames = d.take(2.2, 1000)
        assert [q for q, _ in frames] == list(range(1, len(frames) + 1))
        assert all(CODEC.decode(f).stream == s.stream for _, f in frames)
        # Late answers to the old stream change nothing.
        d.on_ack(wire.Ack(seq=0, stream=old, resend=True), 2.3)
        assert d.restreams == 1 and d.next_seq == len(frames) + 1


def test_a_gap_the_hive_had_already_filled_needs_no_new_stream(tmp_path):
    with Spool(tmp_path, max_bytes=4096, segment_bytes=512) as s:
        d = Delivery(s, window=1000, ack_timeout=2.0)
        fill(s, 10)
        d.take(0.0, 1000)  # 1..10 on their way
        fill(s, 190)  # the spool overflows: 1.. dropped before any ack came
        held = s.first_unacked()
        assert held > 2
        old = s.stream
        # The copies sent before the drop were stored: the hive says so.
        d.on_ack(wire.Ack(seq=1, stream=old), 0.1)
        assert d.waiting_on_gap and d.take(0.1) != []  # the probe
        d.on_ack(wire.Ack(seq=held - 1, stream=old, resend=True), 0.2)
        assert not d.waiting_on_gap and s.stream == old
        assert [q for q, _ in d.take(0.2, 5)] == list(range(held, held + 5))
        assert d.check(10.0) and d.restreams == 0


def test_a_hive_claiming_more_than_the_spool_wrote_gets_a_new_stream(tmp_path):
    with Spool(tmp_path) as s:
        fill(s, 3)
        d = Delivery(s)
        d.take(0.0)
        old = s.stream
        d.on_ack(wire.Ack(seq=50, stream=old), 0.1)
        assert s.stream != old and d.next_seq == 1
        assert [q for q, _ in d.take(0.1)] == [1, 2, 3]


@pytest.mark.parametrize("seed", range(12))
def test_random_outages_losses_and_overflow_deliver_everything_once(tmp_path, seed):
    rng = random.Random(seed)
    spool = Spool(tmp_path, max_bytes=24 << 10, segment_bytes=1024)
    d = Delivery(spool, window=rng.choice([1, 4, 32]), ack_timeout=1.0)
    hive = Hive()
    to_hive: collections.deque[bytes] = collections.deque()
    to_agent: collections.deque[wire.Ack] = collections.deque()
    now, up, appended, origin, noticed = 0.0, True, 0, 0, 0

    def step(lossy: bool) -> None:
        nonlocal now, up
        now += 0.05
        if lossy and rng.random() < 0.03:
            # The connection drops (with whatever it carried), or the hive
            # goes down or comes back.  A live connection loses nothing.
            to_hive.clear()
            to_agent.clear()
            d.on_disconnect(now)
            up = not up if rng.random() < 0.5 else up
            if up:
                d.on_connect(now)
        for seq, frame in d.take(now, rng.randint(1, 8)):
            if up:
                to_hive.append(frame)
        for _ in range(rng.randint(0, 6)):
            if to_hive:
                to_agent.append(hive.receive(to_hive.popleft()))
        for _ in range(rng.randint(0, 6)):
            if to_agent:
                d.on_ack(to_agent.popleft(), now)
        d.check(now)

    for _ in range(1500):
        for _ in range(rng.randint(0, 3)):
            n = rng.randint(1, 5)
            spool.append([wire.Open(pid=origin + i, path="/x") for i in range(n)])
            origin += n
            appended += n
        spool.sync()
        step(lossy=True)
        noticed += spool.take_dropped()
    up = True
    d.on_connect(now)
    for _ in range(20000):
        step(lossy=False)
        if spool.statistics().batches == 0 and not to_hive and not to_agent:
            break
    st = spool.statistics()
    assert st.batches == 0, "everything held was delivered"
    assert len(hive.stored) == len(set(hive.stored)), "nothing stored twice"
    assert hive.stored == sorted(hive.stored), "stored in the order accepted"
    assert len(hive.stored) + st.dropped_events == appended, "every event stored or counted as dropped"
    assert noticed + spool.take_dropped() == st.dropped_events, "every loss reported once"
    spool.close()
