"""What becomes of each connection to a CURVE server socket, from the
monitor's reports and the fds messages come on (a plain object)."""

import pytest

from actors import Door
from actors._door import PEER, QUIET, UNREAD


def door():
    refused = []
    d = Door({}, lambda kind, detail: refused.append(kind))
    return d, refused


def counts(d):
    return {k: v for k, v in d.counters.items() if v}


@pytest.mark.parametrize("steps,expected", [
    # Plain TCP or any non-ZMTP bytes: ZeroMQ drops it and reports no failure.
    ([("accepted", 5), ("closed", 5, UNREAD)], {"unauthenticated": 1}),
    # NULL mechanism, a refused key: the failure is reported, then the close.
    ([("accepted", 5), ("handshake", False), ("closed", 5, PEER)], {"unauthenticated": 1}),
    # An agent that speaks and leaves.
    ([("accepted", 5), ("handshake", True), ("spoke", 5), ("closed", 5, PEER)], {"disconnects": 1}),
    # An agent's frame above the limit: dropped by the door with bytes unread.
    ([("accepted", 5), ("handshake", True), ("spoke", 5), ("closed", 5, UNREAD)], {"oversized": 1}),
    # ... or as its very first frame.
    ([("accepted", 5), ("handshake", True), ("closed", 5, UNREAD)], {"oversized": 1}),
    # Heartbeat timeout: dropped by the door with nothing pending.
    ([("accepted", 5), ("handshake", True), ("spoke", 5), ("closed", 5, QUIET)], {"disconnects": 1}),
    # A silent refusal while an agent's handshake is done but it has not
    # spoken yet: the refusal borrows the agent's success, and gives it back
    # when the agent speaks.
    ([("accepted", 5), ("accepted", 6), ("handshake", True), ("closed", 5, UNREAD), ("spoke", 6),
      ("closed", 6, PEER)], {"unauthenticated": 1, "disconnects": 1}),
    # A message read before the end of its connection, handled after it was
    # reported (an agent's Hello, then a frame above the limit).
    ([("accepted", 7), ("handshake", True), ("closed", 7, UNREAD), ("spoke", 7)], {"oversized": 1}),
    # ... or before its start was (rare): counted by how it ends.
    ([("handshake", True), ("spoke", 7), ("accepted", 7), ("closed", 7, PEER)], {"disconnects": 1}),
])
def test_each_connection_is_counted_once_by_how_it_ended(steps, expected):
    d, _ = door()
    for step in steps:
        if step[0] == "spoke":
            d.spoke(step[1], b"id%d" % step[1])
        else:
            getattr(d, step[0])(*step[1:])
    got = counts(d)
    assert got.pop("connections") == len({s[1] for s in steps if s[0] == "accepted"})
    assert got == expected
    assert d.open == {} and d.idents == {}


def test_refusals_are_reported_as_they_are_counted():
    d, refused = door()
    for fd in range(10):
        d.accepted(fd)
    d.handshake(False, "not a CURVE client")
    for fd in range(10):
        d.closed(fd, PEER)
    assert d.counters["unauthenticated"] == 10 and refused == ["unauthenticated"] * 10
