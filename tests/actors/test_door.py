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


def test_how_a_connection_ended_is_read_from_a_duplicate_of_its_fd():
    import os
    import socket
    import time

    from actors._door import _how_it_ended

    listener = socket.create_server(("127.0.0.1", 0))

    def pair():
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        return client, server

    def ended(server):
        dup = os.dup(server.fileno())
        server.close()  # as ZeroMQ closes its fd: the duplicate keeps the socket
        return _how_it_ended(dup)

    client, server = pair()
    client.close()
    time.sleep(0.05)
    assert ended(server) == PEER
    client, server = pair()
    client.sendall(b"x" * 1000)  # the rest of a refused frame
    time.sleep(0.05)
    assert ended(server) == UNREAD
    client, server = pair()
    client.sendall(b"header")  # read by the door, which then refused it; the rest not sent yet
    time.sleep(0.05)
    server.recv(100)
    assert ended(server) == UNREAD
    client, server = pair()
    time.sleep(1.1)  # silent: a heartbeat timeout
    assert ended(server) == QUIET
    client.close()
    listener.close()
