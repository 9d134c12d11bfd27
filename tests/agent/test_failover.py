"""Which hive node the uplink uses: order, fail-over, backoff and going
back to the preferred node, without sockets."""

import logging

import pytest

from agent import Failover

A, B, C = "tcp://10.0.0.1:7400", "tcp://10.0.0.2:7400", "tcp://10.0.0.3:7400"


def test_one_endpoint_never_moves():
    f = Failover([A], now=0.0)
    assert f.current == A and f.deadline() is None
    assert f.check(1000.0) is None
    f.on_connected(1000.0)
    assert f.probe(2000.0) is None and f.deadline() is None


def test_the_first_is_tried_first_and_kept_while_it_reconnects_in_time():
    f = Failover([A, B], now=0.0, fail_after=3.0)
    assert f.current == A
    f.on_connected(0.5)
    f.on_disconnected(10.0)
    assert f.deadline() == 13.0
    assert f.check(12.9) is None
    f.on_connected(12.0)  # ZeroMQ reconnected within fail_after
    assert f.check(100.0) is None and f.current == A and f.moves == 0


def test_an_unreachable_endpoint_moves_on_in_order_and_says_so(caplog):
    f = Failover([A, B, C], now=0.0, fail_after=3.0)
    f.on_connected(0.0)
    f.on_disconnected(1.0)
    with caplog.at_level(logging.WARNING, logger="immune.agent.failover"):
        assert f.check(4.0) == B
    assert f"hive {A} unreachable for 3.0 s, moving to {B}" in caplog.text
    assert f.current == B and not f.connected
    # B never answers: its time runs from the move.
    assert f.check(6.9) is None
    assert f.check(7.0) == C


def test_a_node_that_never_answered_at_start_is_left_after_fail_after():
    f = Failover([A, B], now=100.0, fail_after=2.0)
    assert f.check(101.9) is None
    assert f.check(102.0) == B


def test_a_handshake_failure_is_no_connection():
    # A node presenting another key: ZeroMQ reports failed handshakes, never a
    # connection, so the clock that started at the move keeps running.
    f = Failover([A, B], now=0.0, fail_after=3.0)
    f.on_disconnected(1.0)
    f.on_disconnected(2.0)
    assert f.check(3.0) == B


def test_whole_rounds_without_a_connection_back_off_and_a_connection_resets():
    f = Failover([A, B], now=0.0, fail_after=1.0, probe_every=1.0, max_wait=4.0)
    t, waits = 0.0, []
    for _ in range(8):
        d = f.deadline()
        waits.append(d - t)
        t = d
        assert f.check(t) is not None
    # 1 s each in the first round, then 2, then 4, and no more than max_wait.
    assert waits == [1, 1, 2, 2, 4, 4, 4, 4]
    assert f.current == A
    f.on_connected(t)
    f.on_disconnected(t + 1)
    assert f.deadline() == t + 2  # fail_after again


def test_the_preferred_is_probed_while_connected_elsewhere_and_taken_back(caplog):
    f = Failover([A, B], now=0.0, fail_after=3.0, probe_every=5.0, max_wait=20.0)
    f.on_disconnected(0.0)
    assert f.check(3.0) == B
    assert f.probe(3.5) is None  # not connected to B yet: nothing to keep working
    f.on_connected(4.0)
    assert f.deadline() == 9.0
    assert f.probe(8.9) is None
    assert f.probe(9.0) == A
    assert f.probe(9.1) is None and f.deadline() is None  # one probe at a time
    assert f.probed(False, 10.0) is None
    assert f.current == B and f.deadline() == 20.0  # waits double after a failed probe
    assert f.probe(20.0) == A
    assert f.probed(False, 21.0) is None and f.deadline() == 41.0  # 20 s: max_wait
    assert f.probe(41.0) == A
    with caplog.at_level(logging.WARNING, logger="immune.agent.failover"):
        assert f.probed(True, 41.5) == A
    assert f"back on {A}" in caplog.text
    assert f.current == A and not f.connected and f.moves == 2
    f.on_connected(41.6)
    assert f.probe(1000.0) is None and f.deadline() is None  # on the preferred: no probes


def test_probe_waits_start_over_after_a_move():
    f = Failover([A, B, C], now=0.0, fail_after=1.0, probe_every=5.0)
    assert f.check(1.0) == B
    f.on_connected(1.0)
    assert f.probe(6.0) == A
    f.probed(False, 6.0)  # next in 10 s
    f.on_disconnected(7.0)
    assert f.check(8.0) == C
    f.on_connected(8.0)
    assert f.deadline() == 13.0


def test_a_probe_answered_after_the_uplink_wrapped_to_the_preferred_changes_nothing():
    f = Failover([A, B], now=0.0, fail_after=1.0, probe_every=1.0)
    assert f.check(1.0) == B
    f.on_connected(1.0)
    assert f.probe(2.0) == A
    f.on_disconnected(2.1)
    assert f.check(3.1) == A  # B failed while the probe was out
    assert f.probed(True, 3.2) is None
    assert f.current == A and f.moves == 2


@pytest.mark.parametrize("kw", [dict(fail_after=0), dict(probe_every=-1), dict(fail_after=10, max_wait=5)])
def test_bad_timings_are_refused(kw):
    with pytest.raises(ValueError):
        Failover([A, B], now=0.0, **kw)


def test_no_endpoint_is_refused():
    with pytest.raises(ValueError):
        Failover([], now=0.0)
