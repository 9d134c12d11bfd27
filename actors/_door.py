"""What becomes of every connection to a CURVE server socket (a door).

ZeroMQ refuses some peers before the actor sees a byte from them, and tells
nobody: a peer that does not complete the CURVE handshake (plain TCP, the
NULL mechanism, a key the ZAP handler refuses) is dropped, and a frame
above the socket's MAXMSGSIZE drops its connection.  The socket monitor
reports connections (``ACCEPTED``/``DISCONNECTED``, with their fd) and
handshakes (``HANDSHAKE_SUCCEEDED``/``FAILED_*``, without one), and only
some failures at all (a peer sending an HTTP request is just disconnected).
Every message carries the fd it came on (``SRCFD``).  :class:`Door` puts
these together:

* a connection that sent a message is authenticated; when it ends, it ends
  by its peer or by the door on a silent connection (``disconnects``), or
  by the door while the peer was sending (``oversized``: a frame above the
  size limit, or a broken CURVE box);
* a connection that ends without a message counts as a reported handshake
  failure if one is unclaimed (already counted ``unauthenticated``), else
  as an authenticated one that never spoke if a handshake success is
  unclaimed (an oversized first frame), else as a silent refusal
  (``unauthenticated``).

Which report belongs to which connection is not known when connections
overlap; a connection that speaks after its success was lent to another
moves that other's count to ``unauthenticated``.  So the counts are exact
once the connections involved have settled (and the race of a closed fd
number reused by a new connection before the monitor reports the close
aside).

How a connection ended (by its peer or by the door) is read from a
duplicate of its fd, taken when it is accepted (at the latest when the ZAP
handler is asked about it) and closed as soon as its end is reported: the
duplicate keeps the socket open just long enough to peek at it.
:func:`watch_door` is the actor side.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import struct
from collections.abc import Callable, MutableMapping
from typing import Any

import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

from ._stats import Statistics
from ._zmq import Socket

PEER, UNREAD, QUIET = "peer", "unread", "quiet"
"""How a connection ended: closed by its peer, dropped by the door while the
peer was sending (bytes unread, or received within the last second),
dropped by the door on a silent connection (a heartbeat timeout)."""

_MONITORED = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

_LENT = 1024
"""Lent successes remembered for correction: far more than the handshakes
that can be in flight at once."""

Refused = Callable[[str, str], None]
"""``refused(kind, detail)``: called for each refusal as it is counted."""


class Door:
    """Counts into ``counters`` (an actor's ``stats.extra``): ``connections``,
    ``unauthenticated``, ``oversized``, ``disconnects``."""

    def __init__(self, counters: MutableMapping[str, Any], refused: Refused = lambda kind, detail: None) -> None:
        self.counters = counters
        for key in ("connections", "unauthenticated", "oversized", "disconnects"):
            counters.setdefault(key, 0)
        self.refused = refused
        self.open: dict[int, bool] = {}
        """fd -> has it sent a message."""
        self.idents: dict[bytes, int] = {}
        """Routing id -> fd, of the connections that spoke."""
        self._ident_of: dict[int, bytes] = {}
        self._failures = 0
        """Reported handshake failures whose connection has not ended yet."""
        self._credit = 0
        """Handshake successes not yet claimed by a connection that spoke."""
        self._lent: collections.deque[str] = collections.deque(maxlen=_LENT)
        """What connections that never spoke were counted as, on a lent success."""

    def _count(self, kind: str, n: int = 1) -> None:
        self.counters[kind] = int(self.counters[kind]) + n

    def accepted(self, fd: int) -> None:
        self.open[fd] = False
        self._count("connections")

    def handshake(self, ok: bool, detail: str = "") -> None:
        if ok:
            self._credit += 1
            return
        self._failures += 1
        self._count("unauthenticated")
        self.refused("unauthenticated", detail)

    def spoke(self, fd: int, ident: bytes) -> None:
        """A message came on ``fd`` from routing id ``ident`` (call it until
        ``ident`` is in :attr:`idents`).  A message of a connection whose
        end was already reported (it was read before the end), or whose
        start is not yet (rare: the handshake takes round trips), is not
        counted here: the connection is then counted by how it ends, on its
        handshake success."""
        if self.open.get(fd) is not False:
            return
        self.idents[ident] = fd
        self._ident_of[fd] = ident
        self.open[fd] = True
        self._credit -= 1
        if self._credit < 0 and self._lent:
            # The success was lent to a connection that never spoke: that
            # one was a refusal after all.
            self._count(self._lent.pop(), -1)
            self._count("unauthenticated")
            self._credit += 1

    def closed(self, fd: int, how: str) -> None:
        spoke = self.open.pop(fd, None)
        if spoke is None:
            return
        self.idents.pop(self._ident_of.pop(fd, b""), None)
        kind = "oversized" if how == UNREAD else "disconnects"
        if not spoke:
            if self._failures:
                self._failures -= 1
                return
            if self._credit <= 0:
                self._count("unauthenticated")
                self.refused("unauthenticated", "closed before a CURVE handshake (not a ZeroMQ CURVE client)")
                return
            self._credit -= 1
            self._lent.append(kind)
        self._count(kind)
        if kind == "oversized":
            self.refused("oversized", "connection dropped by the size limit or a broken frame")


_LAST_DATA_RECV = struct.Struct("=52xI")
"""``tcpi_last_data_recv`` (ms since the peer's last data) in Linux's struct tcp_info."""
_RECENT_MS = 1000


def _how_it_ended(dup: int) -> str:
    try:
        with socket.socket(fileno=dup) as s:
            try:
                return UNREAD if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) else PEER
            except BlockingIOError:
                pass
            except OSError:  # reset by the peer
                return PEER
            # Nothing pending: the rest of a refused frame may be on its way
            # still; a connection dropped for a heartbeat timeout has been
            # silent for seconds.
            try:
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _LAST_DATA_RECV.size)
                return UNREAD if _LAST_DATA_RECV.unpack(info)[0] < _RECENT_MS else QUIET
            except (OSError, struct.error):  # not TCP
                return QUIET
    except OSError:  # not a socket any more
        os.close(dup)
        return PEER


_FAILURES = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "not a CURVE client (security mechanism mismatch)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "CURVE handshake failed (wrong server key?)",
}


def _failure(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"key refused by the authenticator (status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _FAILURES.get(value, f"ZMTP protocol error {value:#x}")
    return f"handshake failed: {os.strerror(value) if 0 < value < 200 else value}"


async def watch_door(z: zmq.Socket, door: Door, *, syncs: list[Callable[[], None]] | None = None,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Feed ``door`` from the monitor of server socket ``z`` until
    cancelled.  Start it (``nursery.start``) before ``z`` binds.

    ``syncs``: where to register a function that takes in the monitor's
    reports at once (the runtime's ``zap_syncs``, which the ZAP handler
    calls before each answer): a connection's acceptance is then noted, and
    its fd duplicated, before the connection can authenticate and send a
    frame that gets it dropped."""
    monitor = Socket(z.get_monitor_socket(_MONITORED), stats=Statistics("monitor"))
    dups: dict[int, int] = {}

    def handle(frames: list[bytes]) -> None:
        ev = parse_monitor_message(frames)
        event, value = ev["event"], ev["value"]
        if event == zmq.EVENT_ACCEPTED:
            try:
                dups[value] = os.dup(value)
            except OSError as e:
                if e.errno not in (errno.EBADF, errno.EMFILE, errno.ENFILE):
                    raise
            door.accepted(value)
        elif event == zmq.EVENT_DISCONNECTED:
            dup = dups.pop(value, None)
            door.closed(value, PEER if dup is None else _how_it_ended(dup))
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            door.handshake(True)
        else:
            door.handshake(False, _failure(event, value))

    def sync() -> None:
        while True:
            try:
                frames = monitor.zmq.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:  # Again, or closed
                return
            handle(frames)

    if syncs is not None:
        syncs.append(sync)
    task_status.started()
    try:
        while True:
            for frames in await monitor.recv_frames():
                handle(frames)
    finally:
        if syncs is not None:
            syncs.remove(sync)
        for dup in dups.values():
            os.close(dup)
        try:
            z.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close()
