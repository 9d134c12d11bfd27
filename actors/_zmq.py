"""trio-native ZeroMQ sockets.

pyzmq has no trio backend, so we drive the socket's ``FD`` ourselves.  That fd
is edge-triggered and only ever signals readability, whatever the socket is
waiting for.  The rules this module keeps:

* Try the operation with ``NOBLOCK`` first.  Only when it raises ``Again``
  read ``EVENTS`` (which also re-arms the edge) and wait on the fd if nothing
  is pending.  Reading ``EVENTS`` before every operation costs a syscall each.
* A blocked send waits with ``wait_readable`` too (the fd is always writable).
* Receive in bursts: drain up to ``limit`` messages, then one scheduling
  point, so a flood costs one checkpoint per burst, not per message.
* Cancellation-safe: cancellation is only taken before anything is consumed
  or sent; after that the scheduling point is shielded.
* One task owns each socket.  A two-way socket (ROUTER/DEALER) that both sends
  and receives gets a :class:`Duplex` whose single pump task is the owner.
"""

from __future__ import annotations

import collections
import functools
import logging
from typing import Any, Generic, TypeVar

import trio
import zmq

from ._codec import Codec
from ._errors import DecodeError, SocketClosed
from ._log import LogThrottle
from ._stats import Statistics

T = TypeVar("T")

_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable

DEFAULT_BURST = 1024
_RCVMORE = int(zmq.RCVMORE)


class Socket(Generic[T]):
    """A ZeroMQ socket driven from trio, with an optional typed codec.

    ``stats`` is the owning actor's :class:`Statistics`; ``taps`` and
    ``topic`` make every message sent on this socket visible to watchers of
    ``topic`` (at the cost of one dict lookup when nobody watches).
    """

    def __init__(
        self,
        zsock: zmq.Socket,
        *,
        codec: Codec[T] | None = None,
        stats: Statistics | None = None,
        taps: Any = None,
        topic: str = "",
        log: logging.Logger | None = None,
        throttle: LogThrottle | None = None,
    ) -> None:
        self.zmq = zsock
        self.codec = codec
        self.stats = stats if stats is not None else Statistics("socket")
        self._taps = taps
        self.topic = topic
        self._log = log or logging.getLogger("immune.socket")
        self._throttle = throttle or LogThrottle(self._log)
        self._fd: int = zsock.getsockopt(zmq.FD)
        self._closed = False
        self.copy = True
        """False: receive ``zmq.Frame`` objects, which carry the connection's
        properties such as the ``User-Id`` that ZAP authentication set."""

    # -- plumbing ---------------------------------------------------------

    def bind(self, endpoint: str) -> "Socket[T]":
        self.zmq.bind(endpoint)
        return self

    def connect(self, endpoint: str) -> "Socket[T]":
        self.zmq.connect(endpoint)
        return self

    def fileno(self) -> int:
        return self._fd

    def close(self, linger: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        self.zmq.close(linger=linger)

    def __enter__(self) -> "Socket[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pending(self, flag: int) -> bool:
        try:
            return bool(self.zmq.getsockopt(zmq.EVENTS) & flag)
        except zmq.ZMQError as e:
            raise SocketClosed(f"socket closed: {e}") from None

    async def _wait(self) -> None:
        try:
            await _wait_readable(self._fd)
        except trio.ClosedResourceError:
            raise SocketClosed("socket closed while waiting") from None

    # -- receive ----------------------------------------------------------

    async def recv_frames(self, limit: int = DEFAULT_BURST, max_bytes: int | None = None) -> list[list[bytes]]:
        """Wait for at least one message; return up to ``limit`` of them, each
        as its list of frames, and stop after the message that brings the
        bytes taken to ``max_bytes`` (so a burst of large messages is not
        all decoded at once)."""
        await _checkpoint_if_cancelled()
        z = self.zmq
        more = z.get
        recv = z.recv if self.copy else functools.partial(z.recv, copy=False)
        out: list[list[bytes]] = []
        nbytes = 0
        budget = max_bytes if max_bytes is not None else float("inf")
        while True:
            try:
                while len(out) < limit and nbytes < budget:
                    frame = recv(zmq.NOBLOCK)
                    nbytes += len(frame)
                    msg = [frame]
                    # Frames of one message arrive together, so these never block.
                    while more(_RCVMORE):
                        frame = recv(zmq.NOBLOCK)
                        nbytes += len(frame)
                        msg.append(frame)
                    out.append(msg)
            except zmq.Again:
                pass
            except zmq.ZMQError as e:
                if out:
                    break
                raise SocketClosed(f"receive failed: {e}") from None
            if out:
                break
            if self._pending(zmq.POLLIN):
                continue
            await self._wait()
        await _shielded_checkpoint()
        st = self.stats
        st.msgs_in += len(out)
        st.bytes_in += nbytes
        return out

    def decode(self, frame: bytes) -> T | None:
        """Decode one frame with the socket's codec.  A bad frame is counted,
        logged (a few per interval) and returned as ``None``; it never raises
        into the actor."""
        assert self.codec is not None, "socket has no codec"
        try:
            return self.codec.decode(frame)
        except DecodeError as e:
            self.stats.malformed += 1
            self.stats.last_error = str(e)
            self._throttle.event("malformed", "frame.malformed", reason=str(e), size=len(frame))
            return None

    async def recv(self, limit: int = DEFAULT_BURST, max_bytes: int | None = None) -> list[T]:
        """Wait for messages; return up to ``limit`` decoded ones (and no
        more once ``max_bytes`` were taken).  Malformed frames are dropped
        and counted, so the result may be empty."""
        decode = self.decode
        out = []
        for frames in await self.recv_frames(limit, max_bytes):
            msg = decode(frames[-1])
            if msg is not None:
                out.append(msg)
        return out

    # -- send -------------------------------------------------------------

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send one multipart message, waiting while the peer's queue is full."""
        await _checkpoint_if_cancelled()
        self._send_blocking_ok(frames)
        await _shielded_checkpoint()

    def _send_blocking_ok(self, frames: list[bytes]) -> bool:
        try:
            if len(frames) == 1:
                self.zmq.send(frames[0], zmq.NOBLOCK)
                size = len(frames[0])
            else:
                self.zmq.send_multipart(frames, zmq.NOBLOCK)
                size = sum(map(len, frames))
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            raise SocketClosed(f"send failed: {e}") from None
        st = self.stats
        st.msgs_out += 1
        st.bytes_out += size
        return True

    async def _send_wait(self, frames: list[bytes]) -> None:
        while not self._send_blocking_ok(frames):
            if self._pending(zmq.POLLOUT):
                continue
            await self._wait()

    async def send_many(self, batch: list[list[bytes]]) -> None:
        """Send several multipart messages with one scheduling point when
        nothing blocks.  If cancelled while blocked, the messages not yet sent
        are not sent; those before were."""
        await _checkpoint_if_cancelled()
        for frames in batch:
            if not self._send_blocking_ok(frames):
                await self._send_wait(frames)
        self._tap_frames(batch)
        await _shielded_checkpoint()

    async def send(self, msg: T, *prefix: bytes) -> None:
        """Encode ``msg`` with the socket's codec and send it, after any
        routing ``prefix`` frames (a ROUTER's peer identity)."""
        assert self.codec is not None, "socket has no codec"
        data = self.codec.encode(msg)
        frames = [*prefix, data]
        await _checkpoint_if_cancelled()
        if not self._send_blocking_ok(frames):
            await self._send_wait(frames)
        taps = self._taps
        if taps is not None and taps.watched(self.topic):
            taps.offer(self.topic, data)
        await _shielded_checkpoint()

    def try_send(self, msg: T) -> bool:
        """Encode and send ``msg`` only if the peer has room; False (nothing
        sent) if it has not.  For a stream that must never block its sender,
        whose caller counts what it skipped."""
        assert self.codec is not None, "socket has no codec"
        data = self.codec.encode(msg)
        if not self._send_blocking_ok([data]):
            return False
        taps = self._taps
        if taps is not None and taps.watched(self.topic):
            taps.offer(self.topic, data)
        return True

    def _tap_frames(self, batch: list[list[bytes]]) -> None:
        taps = self._taps
        if taps is not None and taps.watched(self.topic):
            for frames in batch:
                taps.offer(self.topic, frames[-1])


class Duplex(Generic[T]):
    """A two-way socket (ROUTER or DEALER) whose one pump task owns it.

    Other tasks call :meth:`recv` and :meth:`send`; the pump moves messages
    between the socket and two bounded queues.  A full inbound queue stops the
    pump reading, so backpressure reaches the peer through ZeroMQ's own
    high-water marks, while outbound messages keep flowing.
    """

    def __init__(self, sock: Socket[T], *, max_in: int = 8192, max_out: int = 8192,
                 max_in_bytes: int | None = None) -> None:
        self.sock = sock
        self._in: collections.deque[tuple[list[bytes], int]] = collections.deque()
        self._out: collections.deque[list[bytes]] = collections.deque()
        self._max_in = max_in
        self._max_out = max_out
        self._max_in_bytes = max_in_bytes if max_in_bytes is not None else float("inf")
        """Bytes the inbound queue may hold (it always takes one message)."""
        self._in_bytes = 0
        self._in_lot = trio.lowlevel.ParkingLot()
        self._out_lot = trio.lowlevel.ParkingLot()
        self._wait_scope: trio.CancelScope | None = None
        self._closed = False
        sock.stats.add_depth(lambda: len(self._in) + len(self._out))

    def _kick(self) -> None:
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def recv(self, limit: int = DEFAULT_BURST) -> list[list[bytes]]:
        """Wait for inbound messages; return up to ``limit`` of them (frames)."""
        while not self._in:
            if self._closed:
                raise SocketClosed("duplex closed")
            await self._in_lot.park()
        await _checkpoint_if_cancelled()
        was_full = self._in_full()
        n = min(limit, len(self._in))
        out = []
        for _ in range(n):
            frames, size = self._in.popleft()
            self._in_bytes -= size
            out.append(frames)
        if was_full:
            self._kick()
        await _shielded_checkpoint()
        return out

    def decode(self, frame: bytes) -> T | None:
        return self.sock.decode(frame)

    def _in_full(self) -> bool:
        return len(self._in) >= self._max_in or self._in_bytes >= self._max_in_bytes

    async def send(self, frames: list[bytes]) -> None:
        """Queue one multipart message for the pump, waiting while the
        outbound queue is full."""
        await self.send_many([frames])

    async def send_many(self, batch: list[list[bytes]]) -> None:
        """Queue several messages with one wake-up of the pump, waiting while
        the outbound queue is full."""
        for start in range(0, len(batch), self._max_out):
            while len(self._out) >= self._max_out:
                if self._closed:
                    raise SocketClosed("duplex closed")
                await self._out_lot.park()
            if self._closed:
                raise SocketClosed("duplex closed")
            await _checkpoint_if_cancelled()
            self._out.extend(batch[start:start + self._max_out])
            self._kick()
            await _shielded_checkpoint()

    def send_nowait(self, frames: list[bytes]) -> bool:
        """Queue a message if there is room; False if the queue is full."""
        if self._closed or len(self._out) >= self._max_out:
            return False
        self._out.append(frames)
        self._kick()
        return True

    def switch(self, old: str, new: str) -> None:
        """Disconnect from ``old`` (what ZeroMQ still queued for it is
        dropped) and connect to ``new``.  The pump is woken: these calls may
        have taken in the socket's pending commands, and with them the fd's
        edge it waits for."""
        z = self.sock.zmq
        try:
            z.disconnect(old)
        except zmq.ZMQError:  # not connected to it
            pass
        z.connect(new)
        self._kick()

    async def pump(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or the socket closes; the socket's only user."""
        sock = self.sock
        z = sock.zmq
        task_status.started()
        try:
            while True:
                progressed = False
                # Outbound first: a reply should not wait behind a flood.
                while self._out:
                    if not sock._send_blocking_ok(self._out[0]):
                        break
                    self._out.popleft()
                    progressed = True
                if progressed:
                    self._out_lot.unpark_all()
                # Inbound, up to the queue's room.
                got = 0
                try:
                    while not self._in_full():
                        frames = z.recv_multipart(zmq.NOBLOCK, copy=sock.copy)
                        size = sum(map(len, frames))
                        self._in.append((frames, size))
                        self._in_bytes += size
                        got += 1
                        sock.stats.bytes_in += size
                except zmq.Again:
                    pass
                except zmq.ZMQError as e:
                    raise SocketClosed(f"receive failed: {e}") from None
                if got:
                    sock.stats.msgs_in += got
                    self._in_lot.unpark_all()
                    progressed = True
                if progressed:
                    await trio.lowlevel.checkpoint()
                    continue
                events = z.getsockopt(zmq.EVENTS)
                if (events & zmq.POLLIN and not self._in_full()) or (
                    self._out and events & zmq.POLLOUT
                ):
                    continue
                with trio.CancelScope() as self._wait_scope:
                    await sock._wait()
                self._wait_scope = None
        finally:
            self._wait_scope = None
            self._closed = True
            self._in_lot.unpark_all()
            self._out_lot.unpark_all()
