"""A durable, bounded disk spool of event batches.

A batch counts as accepted only once :meth:`Spool.sync` has returned after
it was appended: its bytes are then written and ``fdatasync``-ed, so they
survive SIGKILL and power loss.  ``append`` only buffers, so one ``sync``
covers everything appended since the last one (group commit).  A caller
that must not wait for the disk (the relay, on the trio thread that also
drains the sensor) syncs in three steps: :meth:`Spool.begin_sync` takes what
was appended, :meth:`SyncJob.run` writes and syncs it on another thread, and
:meth:`Spool.end_sync` makes it durable, or gives it back after a failure.

The folder holds:

``state.json``
    the stream id, the sequence base and the count of dropped events;
    replaced atomically (write, fsync, rename, fsync the folder).
``acked``
    the last acknowledged batch and a CRC, overwritten in place and never
    synced: losing it only makes the agent send again what the hive already
    has, which the hive acknowledges without storing it twice.
``<first seq>.seg``
    segment files.  A record is a header ``crc32, length, seq, events``
    (little-endian ``IIQI``) and a payload, the msgpack array of the batch's
    events.  The CRC covers the rest of the header and the payload.

A record is one batch as the hive receives it: :meth:`Spool.pack` encodes
events into batches of at most ``agent.batch`` events whose frames are at
most ``wire.MAX_BATCH_BYTES`` (an event larger than that goes alone), so no
hive configured within its bounds refuses one for its size.

A batch read again (it was sent and not acknowledged: the hive may have
refused it) is first checked with the contract's own decoder, once: an
earlier version may have spooled it beyond the bounds of today's contract,
or larger, and a batch refused for ever would stall its stream.  One
refused is sent with its events fitted (``wire.fit``); one that cannot be
made acceptable is skipped, its events counted dropped, and the gap it
leaves is handled like a drop.

Records carry a *disk* sequence number that only grows in this folder.  The
wire sequence number is ``disk seq - base``: when the hive needs a batch the
spool no longer has (it was dropped because the spool was full, or damaged),
:meth:`Spool.new_stream` starts a new stream whose seq 1 is the oldest batch
still held, without rewriting a byte.  Frames are built on the way out, so
the same record can be sent under any stream.
"""

from __future__ import annotations

import collections
import errno as _errno
import json
import logging
import mmap
import os
import secrets
import struct
import zlib
from array import array
from bisect import bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgspec

import wire
from actors import Codec, DecodeError, get_logger, log_event

from ._errors import SpoolError

DEFAULT_MAX_BYTES = 1 << 30

_CRC = struct.Struct("<I")
_REST = struct.Struct("<IQI")  # length, seq, events: the part the CRC covers with the payload
_HEADER = _CRC.size + _REST.size
_ACK = struct.Struct("<QI")  # acked disk seq, crc32 of it
_MAX_SEGMENT = 64 << 20
_MIN_SEGMENT = 64 << 10
_MAX_OFFSET = (1 << 32) - 1
"""Record offsets in a segment are kept as 32-bit numbers."""
_READ_BYTES = 8 << 20
"""Bytes :meth:`Spool.pending` reads at once (at least one record)."""
_LIMBO = 4096
"""Dropped batches remembered in case the hive stored them before the drop.
The uplink never has more than its window unacknowledged, so a bound above
any window covers every batch the hive can have stored unbeknown to us."""


class _Frame(msgspec.Struct, tag="events", tag_field="type", kw_only=True, omit_defaults=True):
    """``wire.EventBatch`` with its events already encoded: what the hive
    decodes as an EventBatch, built without decoding the stored payload."""

    seq: int
    stream: str = ""
    events: msgspec.Raw


_ENVELOPE = len(Codec(wire.AgentMessage).encode(
    _Frame(seq=wire.INT64_MAX, stream="\U0010ffff" * wire.MAX_NAME, events=msgspec.Raw(b""))))
"""Bytes of a frame besides its events, at most (the largest seq, the longest stream)."""
_KINDS: dict[str, type[wire.Event]] = {c.__struct_config__.tag: c for c in wire.AnyEvent.__args__}  # type: ignore[attr-defined,misc]


class Packed(NamedTuple):
    """Events encoded as one batch (:meth:`Spool.pack`), as a record holds them."""

    payload: bytes
    """The msgpack array of the events."""
    events: int


@dataclass(frozen=True)
class SpoolStatistics:
    stream: str
    batches: int
    """Batches held and not yet acknowledged."""
    events: int
    """Events in those batches."""
    bytes: int
    """Bytes of all segment files (acknowledged records are deleted per segment)."""
    segments: int
    acked: int
    """Last acknowledged seq of the current stream."""
    last: int
    """Last durable (synced) seq of the current stream."""
    dropped_events: int
    """Events dropped unacknowledged because the spool was full, since it was
    created (less those the hive turned out to have stored)."""
    dropped_batches: int
    corrupt: int
    """Damaged records found (at open or when read) and skipped."""
    repaired: int
    """Batches the contract's decoder refused, sent with their events fitted."""
    unsendable: int
    """Batches that could not be made acceptable to the hive: skipped, their
    events counted in ``dropped_events``."""


class _Segment:
    __slots__ = ("first", "path", "fd", "offsets", "cum", "size", "synced", "buf")

    def __init__(self, first: int, path: Path, fd: int) -> None:
        self.first = first
        self.path = path
        self.fd = fd
        self.offsets = array("I")
        """Byte offset of each record."""
        self.cum = array("Q")
        """Events in records 0..i, for counting what a drop loses."""
        self.size = 0
        """Bytes of the file once ``buf`` is written."""
        self.synced = 0
        """Bytes known to be on disk."""
        self.buf = bytearray()

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    def events_after(self, i: int) -> int:
        """Events in records i.. of this segment."""
        if i >= len(self.cum):
            return 0
        return self.cum[-1] - (self.cum[i - 1] if i > 0 else 0)


def _error(what: str, path: Path | str, e: OSError) -> SpoolError:
    return SpoolError(f"spool: cannot {what} {path}: {e.strerror or e}", e.errno or 0)


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class SyncJob:
    """The writes and syncs of one :meth:`Spool.begin_sync`.  :meth:`run`
    touches only its own copies of the descriptors and bytes, so it may run
    on any thread while the spool goes on being used."""

    def __init__(self, last: int) -> None:
        self.writes: list[tuple[_Segment, int, bytearray, int]] = []
        """(segment, its descriptor duplicated, bytes, offset)."""
        self.dir_fd = -1
        """The folder's descriptor duplicated if a segment was created."""
        self.syncs_folder = False
        self.last = last
        """The disk seq durable once this job has run."""
        self.done = False
        self.error: SpoolError | None = None

    def run(self) -> None:
        """Write and sync; never raises (:meth:`Spool.end_sync` does)."""
        try:
            for seg, fd, data, offset in self.writes:
                try:
                    if data:
                        _pwrite_all(fd, data, offset)
                    os.fdatasync(fd)
                except OSError as e:
                    self.error = _error("write", seg.path, e)
                    return
            if self.dir_fd >= 0:
                try:
                    os.fsync(self.dir_fd)
                except OSError as e:
                    self.error = SpoolError(f"spool: cannot sync the folder: {e.strerror or e}", e.errno or 0)
                    return
            self.done = True
        finally:
            self.close()

    def close(self) -> None:
        for _, fd, _, _ in self.writes:
            if fd >= 0:
                os.close(fd)
        self.writes = [(seg, -1, data, offset) for seg, _, data, offset in self.writes]
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    @property
    def empty(self) -> bool:
        """Nothing to write or sync: it can end without running."""
        return not self.writes and not self.syncs_folder


class Spool:
    """Event batches on disk, numbered 1, 2, 3... within :attr:`stream`.

    Not thread-safe; one owner calls everything (but :meth:`SyncJob.run`).
    Every OS error becomes a :class:`SpoolError`; after one, the spool is
    still consistent and the call can be retried.
    """

    def __init__(self, folder: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = 0, batch_bytes: int = wire.MAX_BATCH_BYTES,
                 log: logging.Logger | None = None) -> None:
        if max_bytes < 4 * _HEADER:
            raise ValueError(f"spool bound of {max_bytes} bytes is too small")
        if not 0 <= segment_bytes <= _MAX_OFFSET:
            raise ValueError(f"segment size of {segment_bytes} bytes is out of range")
        if batch_bytes <= _ENVELOPE + 16:
            raise ValueError(f"batch bound of {batch_bytes} bytes is too small")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.batch_bytes = batch_bytes
        """Bytes of a batch's frame, at most (but a batch of one event)."""
        self._room = batch_bytes - _ENVELOPE
        """Bytes of a batch's encoded events, at most."""
        self._per_event = 1.0
        """Bytes per event of the last batch packed."""
        # Dropping works a segment at a time, so a segment is a small part of the bound.
        self.segment_bytes = segment_bytes or min(_MAX_SEGMENT, max(max_bytes // 16, _MIN_SEGMENT))
        self.log = log or get_logger("agent.spool")
        self._encoder = msgspec.msgpack.Encoder()
        self._codec = Codec(wire.AgentMessage)
        self._segments: list[_Segment] = []
        self._dirty: list[_Segment] = []
        self._dir_dirty = False
        self._syncing: SyncJob | None = None
        self._bad: set[int] = set()
        self._total = 0
        self._next = 1
        self._synced = 0
        self._acked = 0
        self._base = 0
        self._stream = ""
        self._dropped_events = 0
        self._dropped_batches = 0
        self._unreported = 0
        self._limbo: collections.deque[tuple[int, int]] = collections.deque()
        """(disk seq, events) of dropped batches that may have reached the
        hive: an ack over them takes them back off the dropped count."""
        self._corrupt = 0
        self._sent = 0
        """Highest disk seq :meth:`pending` returned: one read again was sent before."""
        self._checked = 0
        """Every disk seq up to this one (and :attr:`acked`) passed the contract's decoder."""
        self._repaired_upto = 0
        self._repaired = 0
        self._unsendable = 0
        self._skipped: set[int] = set()
        """Disk seqs of unsendable batches, already counted dropped (and in ``_bad``)."""
        self._ack_fd = -1
        self._dir_fd = -1
        try:
            self._open()
        except OSError as e:
            self.close()
            raise _error("open the spool in", self.folder, e) from None
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        names = []
        for name in os.listdir(self.folder):
            stem, _, ext = name.partition(".")
            if ext == "seg" and stem.isdigit():
                names.append((int(stem), name))
        names.sort()
        for k, (first, name) in enumerate(names):
            self._load_segment(first, self.folder / name, last=k == len(names) - 1)
        if self._segments:
            self._next = self._segments[-1].last + 1
        state = self._read_state()
        acked = self._read_ack()
        if state is None:
            if self._segments:
                log_event(self.log, "spool.state_lost", logging.WARNING, folder=str(self.folder),
                          reason="state.json missing or unreadable; continuing in a new stream")
            first = self._segments[0].first if self._segments else self._next
            self._base = max(acked, first - 1)
            self._stream = secrets.token_hex(8)
            self._write_state()
        else:
            self._stream, self._base, self._dropped_events, self._dropped_batches = state
        # Never hand out a seq the hive may already hold: an ack or a new
        # stream's base is a floor even if the records behind it are gone.
        self._acked = max(acked, self._base)
        self._next = max(self._next, self._acked + 1)
        self._synced = self._next - 1
        self._ack_fd = os.open(self.folder / "acked", os.O_RDWR | os.O_CREAT, 0o600)
        self._write_ack()
        self._delete_acked()
        os.fsync(self._dir_fd)

    def _load_segment(self, first: int, path: Path, *, last: bool) -> None:
        fd = os.open(path, os.O_RDWR if last else os.O_RDONLY)
        seg = _Segment(first, path, fd)
        size = os.fstat(fd).st_size
        prev = self._segments[-1].last if self._segments else None
        problem = "its first seq overlaps the previous segment" if prev is not None and first <= prev else ""
        pos = 0
        events = 0
        if size and not problem:
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
                view = memoryview(m)
                try:
                    seq = first
                    while pos < size:
                        if size - pos < _HEADER:
                            problem = "a partial record header"
                            break
                        (crc,) = _CRC.unpack_from(view, pos)
                        length, rseq, n = _REST.unpack_from(view, pos + _CRC.size)
                        end = pos + _HEADER + length
                        if end > size:
                            problem = "a partial record"
                            break
                        if rseq != seq:
                            problem = f"seq {rseq} where {seq} was expected"
                            break
                        if zlib.crc32(view[pos + _CRC.size:end]) != crc:
                            problem = "a checksum mismatch"
                            break
                        events += n
                        seg.offsets.append(pos)
                        seg.cum.append(events)
                        seq += 1
                        pos = end
                finally:
                    view.release()
        if problem:
            if last:
                # What follows the last good record was being written when the
                # agent stopped; it was never synced, so never accepted.
                os.ftruncate(fd, pos)
                log_event(self.log, "spool.torn_tail", logging.WARNING, segment=path.name,
                          discarded=size - pos, reason=problem)
            else:
                self._corrupt += 1
                log_event(self.log, "spool.corrupt", logging.ERROR, segment=path.name,
                          offset=pos, discarded=size - pos, reason=problem)
        if last:
            # Records written but not synced before a crash are indexed now:
            # make them durable before they can be sent.
            os.fsync(fd)
        if not seg.offsets and not last:
            os.close(fd)
            os.unlink(path)
            return
        seg.size = seg.synced = pos
        self._segments.append(seg)
        self._total += seg.size

    def _read_state(self) -> tuple[str, int, int, int] | None:
        try:
            raw = json.loads((self.folder / "state.json").read_bytes())
            return (str(raw["stream"]), int(raw["base"]), int(raw.get("dropped_events", 0)),
                    int(raw.get("dropped_batches", 0)))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None

    def _read_ack(self) -> int:
        try:
            raw = (self.folder / "acked").read_bytes()
        except FileNotFoundError:
            return 0
        if len(raw) < _ACK.size:
            return 0
        seq, crc = _ACK.unpack_from(raw)
        return seq if zlib.crc32(raw[:8]) == crc else 0

    def _write_state(self, *, stream: str | None = None, base: int | None = None,
                     dropped: tuple[int, int] | None = None) -> None:
        """Persist the state with the given changes; memory is only updated
        by the caller once this returned, so a failure changes nothing."""
        events, batches = dropped if dropped is not None else (self._dropped_events, self._dropped_batches)
        data = json.dumps({
            "stream": stream if stream is not None else self._stream,
            "base": base if base is not None else self._base,
            "dropped_events": events, "dropped_batches": batches,
        }).encode()
        tmp = self.folder / "state.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.folder / "state.json")
        os.fsync(self._dir_fd)

    def _write_ack(self) -> None:
        seq = self._acked.to_bytes(8, "little")
        os.pwrite(self._ack_fd, _ACK.pack(self._acked, zlib.crc32(seq)), 0)

    # -- the sequence ----------------------------------------------------------

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def acked(self) -> int:
        """Last acknowledged seq of the current stream."""
        return self._acked - self._base

    @property
    def last_seq(self) -> int:
        """Last durable seq: batches up to it may be sent."""
        return max(self._synced - self._base, 0)

    @property
    def next_seq(self) -> int:
        """The seq the next append gets."""
        return self._next - self._base

    def first_unacked(self) -> int:
        """Seq of the oldest batch held after :attr:`acked`, or :attr:`next_seq`
        if none.  If it is not ``acked + 1``, batches in between were lost
        (dropped when full, or damaged)."""
        want = self._acked + 1
        for seg in self._segments:
            if seg.last < want:
                continue
            seq = max(seg.first, want)
            while seq in self._bad and seq <= seg.last:
                seq += 1
            if seq <= seg.last:
                return seq - self._base
        return self._next - self._base

    # -- writing ---------------------------------------------------------------

    def pack(self, events: Sequence[wire.Event], most: int = wire.MAX_BATCH) -> list[Packed]:
        """``events``, in order, encoded as batches of at most ``most`` events
        whose frames are at most :attr:`batch_bytes` (an event larger than
        that goes alone): what :meth:`append` takes.  Each batch is as many
        events as the last one's bytes per event say will fit (``most`` of
        usual events), so events are encoded once; a batch found too large
        all the same is cut by its size and encoded again."""
        out: list[Packed] = []
        i = 0
        while i < len(events):
            end = i + min(most, max(1, int(self._room / self._per_event)))
            # An edge's report stays in the batch of the event it came from: the
            # hive files them as one alert only when it sees them together.
            while i + 1 < end < len(events) and type(events[end]) is wire.Edge:
                end -= 1
            chunk = events[i:end]
            self._packed(chunk, self._encoder.encode(chunk), out)
            i += len(chunk)
        return out

    def _packed(self, chunk: Sequence[wire.Event], payload: bytes, out: list[Packed]) -> None:
        if len(payload) <= self._room or len(chunk) == 1:
            out.append(Packed(payload, len(chunk)))
            self._per_event = len(payload) / len(chunk)
            return
        # Slices expected to fit (at least two); one that does not is cut again.
        step = -(-len(chunk) // -(-len(payload) // self._room))
        for i in range(0, len(chunk), step):
            part = chunk[i:i + step]
            self._packed(part, self._encoder.encode(part), out)

    def append(self, batch: Packed | Sequence[wire.Event]) -> int:
        """Buffer one batch, events :meth:`pack` encoded or a few events,
        which must make one batch (else ValueError); return its seq (accepted
        once :meth:`sync` returns).  Makes room by dropping the oldest
        segment when the spool is full.  A batch larger than the whole bound
        is dropped and counted and 0 is returned."""
        if isinstance(batch, Packed):
            payload, n = batch
        else:
            payload, n = self._encoder.encode(batch), len(batch)
            if n > 1 and (len(payload) > self._room or n > wire.MAX_BATCH):
                raise ValueError(f"{n} events in {len(payload)} bytes are more than one batch: pack() them")
        size = _HEADER + len(payload)
        try:
            if size > self.max_bytes:
                self._count_dropped(n, 1)
                self._unreported += n
                log_event(self.log, "spool.batch_too_large", logging.ERROR, size=size,
                          bound=self.max_bytes, events=n)
                return 0
            tail = self._segments[-1] if self._segments else None
            if tail is None or (tail.size and tail.size + size > self.segment_bytes):
                tail = self._roll()
            while self._total + size > self.max_bytes:
                if len(self._segments) == 1:
                    self._roll()
                self._drop(self._segments[0])
        except OSError as e:
            raise _error("make room in", self.folder, e) from None
        tail = self._segments[-1]
        seq = self._next
        rest = _REST.pack(len(payload), seq, n)
        buf = tail.buf
        if not buf:
            self._dirty.append(tail)
        buf += _CRC.pack(zlib.crc32(payload, zlib.crc32(rest)))
        buf += rest
        buf += payload
        tail.offsets.append(tail.size)
        tail.cum.append((tail.cum[-1] if tail.cum else 0) + n)
        tail.size += size
        self._total += size
        self._next = seq + 1
        return seq - self._base

    def sync(self) -> int:
        """Write and fsync everything appended; return :attr:`last_seq`.
        On failure nothing appended is forgotten: the next call writes it again."""
        job = self.begin_sync()
        job.run()
        return self.end_sync(job)

    def begin_sync(self) -> SyncJob:
        """Take what was appended since the last sync into a job to run;
        appends go on meanwhile, for the next one.  One job at a time:
        :meth:`end_sync` it before the next."""
        if self._syncing is not None:
            raise RuntimeError("spool: a sync is already under way")
        # Its own descriptors: a segment dropped meanwhile closes the spool's.
        job = SyncJob(self._next - 1)
        try:
            for seg in self._dirty:
                job.writes.append((seg, os.dup(seg.fd), seg.buf, seg.synced))
            if self._dir_dirty:
                job.dir_fd = os.dup(self._dir_fd)
        except OSError as e:
            job.close()
            raise _error("sync", self.folder, e) from None
        job.syncs_folder = self._dir_dirty
        for seg in self._dirty:
            seg.buf = bytearray()
        self._dirty.clear()
        self._dir_dirty = False
        self._syncing = job
        return job

    def end_sync(self, job: SyncJob) -> int:
        """After :meth:`SyncJob.run`: the batches it covered are durable;
        return :attr:`last_seq`.  If it failed (SpoolError raised) or never
        ran, its bytes go back in front of what was appended since, to be
        written by the next sync."""
        if job is not self._syncing:
            raise RuntimeError("spool: not the sync under way")
        self._syncing = None
        job.close()
        if job.done:
            for seg, _, data, offset in job.writes:
                seg.synced = offset + len(data)
            self._synced = max(self._synced, job.last)
            return self.last_seq
        for seg, _, data, _ in reversed(job.writes):
            if seg not in self._segments:
                continue  # dropped meanwhile
            seg.buf = data + seg.buf
            if seg not in self._dirty:
                self._dirty.insert(0, seg)
        self._dir_dirty = self._dir_dirty or job.syncs_folder
        if job.error is not None:
            raise job.error
        return self.last_seq

    def _roll(self) -> _Segment:
        path = self.folder / f"{self._next:020d}.seg"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        seg = _Segment(self._next, path, fd)
        self._segments.append(seg)
        self._dir_dirty = True
        return seg

    def _drop(self, seg: _Segment) -> None:
        start = max(self._acked + 1 - seg.first, 0)
        batches = max(len(seg.offsets) - start, 0)
        if batches:
            events = seg.events_after(start)
            limbo = []
            certain = 0
            for i in range(start, len(seg.offsets)):
                n = seg.cum[i] - (seg.cum[i - 1] if i else 0)
                seq = seg.first + i
                if seq in self._skipped:  # counted when it was skipped
                    events -= n
                    batches -= 1
                elif seq <= self._synced and len(self._limbo) + len(limbo) < _LIMBO:
                    limbo.append((seq, n))
                else:  # never durable, or beyond any window: never sent
                    certain += n
            # Counted on disk before the data goes, so a crash cannot hide a loss.
            self._count_dropped(events, batches)
            for item in limbo:
                insort(self._limbo, item)
            self._unreported += certain
            log_event(self.log, "spool.dropped", logging.WARNING, segment=seg.path.name,
                      batches=batches, events=events, bound=self.max_bytes)
        self._remove(seg)

    def _count_dropped(self, events: int, batches: int) -> None:
        total = (self._dropped_events + events, self._dropped_batches + batches)
        self._write_state(dropped=total)
        self._dropped_events, self._dropped_batches = total

    def _remove(self, seg: _Segment) -> None:
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        os.close(seg.fd)
        self._segments.remove(seg)
        if seg in self._dirty:
            self._dirty.remove(seg)
        self._total -= seg.size
        held = range(seg.first, seg.last + 1)
        self._bad.difference_update(held)
        self._skipped.difference_update(held)

    # -- reading and acknowledging --------------------------------------------

    def pending(self, from_seq: int, max_batches: int = 64) -> list[tuple[int, bytes]]:
        """Up to ``max_batches`` durable, unacknowledged batches from
        ``from_seq`` on, as (seq, encoded ``wire.EventBatch`` frame).  Batches
        no longer held are skipped, so seqs may jump."""
        out: list[tuple[int, bytes]] = []
        start = max(from_seq + self._base, self._acked + 1)
        for seg in self._segments:
            if len(out) >= max_batches or seg.first > self._synced:
                break
            if seg.last < start:
                continue
            i = max(start - seg.first, 0)
            j = min(len(seg.offsets), self._synced - seg.first + 1, i + max_batches - len(out))
            if i >= j:
                continue
            lo = seg.offsets[i]
            j = bisect_right(seg.offsets, lo + _READ_BYTES, i + 1, j)
            hi = seg.offsets[j] if j < len(seg.offsets) else seg.synced
            try:
                data = os.pread(seg.fd, hi - lo, lo)
            except OSError as e:
                raise _error("read", seg.path, e) from None
            if len(data) != hi - lo:
                raise SpoolError(f"spool: {seg.path} is shorter than its index ({lo + len(data)} < {hi} bytes)",
                                 _errno.EIO)
            self._frames(seg, i, j, memoryview(data), lo, out)
        return out

    def _frames(self, seg: _Segment, i: int, j: int, data: memoryview, lo: int,
                out: list[tuple[int, bytes]]) -> None:
        for k in range(i, j):
            pos = seg.offsets[k] - lo
            seq = seg.first + k
            (crc,) = _CRC.unpack_from(data, pos)
            length, rseq, _n = _REST.unpack_from(data, pos + _CRC.size)
            body = data[pos + _CRC.size:pos + _HEADER + length]
            if rseq != seq or len(body) != _REST.size + length or zlib.crc32(body) != crc:
                # Damaged since it was written: never send it (the hive would
                # refuse it forever); the gap it leaves is handled like a drop.
                if seq not in self._bad:
                    self._bad.add(seq)
                    self._corrupt += 1
                    log_event(self.log, "spool.corrupt", logging.ERROR, segment=seg.path.name,
                              seq=seq - self._base, reason="record damaged on disk")
                continue
            if seq in self._bad:
                continue
            frame: bytes | None = self._frame(seq, body[_REST.size:])
            if max(self._checked, self._acked) < seq <= self._sent:
                frame = self._sendable(seg, seq, _n, body[_REST.size:], frame)
                if frame is None:
                    continue
            self._sent = max(self._sent, seq)
            out.append((seq - self._base, frame))

    def _frame(self, seq: int, payload: bytes | memoryview) -> bytes:
        return self._codec.encode(_Frame(seq=seq - self._base, stream=self._stream, events=msgspec.Raw(payload)))

    def _refusal(self, frame: bytes, events: int) -> str | None:
        """Why the hive would refuse ``frame``, if it would."""
        if events > 1 and len(frame) > self.batch_bytes:
            return f"a frame of {len(frame)} bytes, above the batch bound of {self.batch_bytes}"
        try:
            self._codec.decode(frame)
        except DecodeError as e:
            return str(e)
        return None

    def _sendable(self, seg: _Segment, seq: int, events: int, payload: memoryview, frame: bytes) -> bytes | None:
        """``frame``, of a batch sent before and not acknowledged, as the hive
        takes it: as it is, or with its events fitted; None if neither, and
        then the batch is skipped and its events counted dropped."""
        problem = self._refusal(frame, events)
        if problem is None:
            if seq == max(self._checked, self._acked) + 1:
                self._checked = seq
            return frame
        fitted = _refit(payload)
        if fitted is not None:
            frame = self._frame(seq, fitted)
            if self._refusal(frame, events) is None:
                if seq > self._repaired_upto:  # once, however often it is sent again
                    self._repaired_upto = seq
                    self._repaired += 1
                    log_event(self.log, "spool.repaired", logging.WARNING, segment=seg.path.name,
                              seq=seq - self._base, events=events, reason=problem)
                return frame
        # As a drop: counted on disk first; the hive may still have it (it
        # took a frame above our bound), until it says otherwise.
        try:
            self._count_dropped(events, 1)
        except OSError as e:
            raise _error("write the state of", self.folder, e) from None
        if len(self._limbo) < _LIMBO:
            insort(self._limbo, (seq, events))
        else:
            self._unreported += events
        self._bad.add(seq)
        self._skipped.add(seq)
        self._unsendable += 1
        log_event(self.log, "spool.unsendable", logging.ERROR, segment=seg.path.name, seq=seq - self._base,
                  events=events, reason=problem)
        return None

    def ack(self, seq: int) -> None:
        """Every batch up to ``seq`` is stored by the hive: forget it.
        Deletes the segments that hold only acknowledged batches."""
        disk = seq + self._base
        if disk <= self._acked:
            return
        if disk > self._synced:
            raise ValueError(f"ack of seq {seq} beyond the last durable batch {self.last_seq}")
        self._acked = disk
        try:
            self._write_ack()
        except OSError as e:  # only costs a redelivery after a restart
            log_event(self.log, "spool.ack_not_saved", logging.WARNING, reason=e.strerror or str(e))
        self._delete_acked()
        events = batches = 0
        while self._limbo and self._limbo[0][0] <= disk:
            events += self._limbo.popleft()[1]
            batches += 1
        if batches:
            # The hive had stored them before they were dropped: not a loss.
            self._dropped_events -= events
            self._dropped_batches -= batches
            try:
                self._write_state()
            except OSError as e:
                log_event(self.log, "spool.state_not_saved", logging.WARNING, reason=e.strerror or str(e))
            log_event(self.log, "spool.drop_undone", logging.INFO, batches=batches, events=events)

    def _delete_acked(self) -> None:
        for seg in self._segments[:-1]:
            if seg.last > self._acked:
                break
            try:
                self._remove(seg)
            except OSError as e:
                log_event(self.log, "spool.delete_failed", logging.WARNING, segment=seg.path.name,
                          reason=e.strerror or str(e))
                break

    def new_stream(self) -> str:
        """Start a new stream whose seq 1 is the oldest unacknowledged batch
        held (or the next one appended).  For when the hive asks for a batch
        this spool no longer has."""
        first = self.first_unacked() + self._base
        stream = secrets.token_hex(8)
        try:
            self._write_state(stream=stream, base=first - 1)
        except OSError as e:
            raise _error("write the state of", self.folder, e) from None
        old = self._stream
        self._stream, self._base = stream, first - 1
        # The hive has stored nothing after the seq it asked for: whatever
        # was dropped beyond it is lost for certain.
        self._unreported += sum(n for _, n in self._limbo)
        self._limbo.clear()
        self._acked = max(self._acked, self._base)
        try:
            self._write_ack()
        except OSError as e:
            log_event(self.log, "spool.ack_not_saved", logging.WARNING, reason=e.strerror or str(e))
        log_event(self.log, "spool.new_stream", logging.WARNING, old=old, stream=stream,
                  pending=self.next_seq - 1)
        return stream

    # -- accounting ------------------------------------------------------------

    def take_dropped(self) -> int:
        """Events known lost since the last call (to report them once).  A
        dropped batch that may have reached the hive just before is only
        known lost once the hive says it has not (it asks for an earlier
        one): see :meth:`new_stream`."""
        n, self._unreported = self._unreported, 0
        return n

    def statistics(self) -> SpoolStatistics:
        batches = events = 0
        for seg in self._segments:
            i = max(self._acked + 1 - seg.first, 0)
            batches += max(len(seg.offsets) - i, 0)
            events += seg.events_after(i)
        return SpoolStatistics(
            stream=self._stream, batches=batches, events=events, bytes=self._total,
            segments=len(self._segments), acked=self.acked, last=self.last_seq,
            dropped_events=self._dropped_events, dropped_batches=self._dropped_batches,
            corrupt=self._corrupt, repaired=self._repaired, unsendable=self._unsendable,
        )

    def close(self) -> None:
        """Close the files.  Batches appended since the last :meth:`sync` are
        not kept (they were never accepted)."""
        for seg in self._segments:
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1
        self._segments.clear()
        self._dirty.clear()
        for name in ("_ack_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refit(payload: bytes | memoryview) -> bytes | None:
    """The events of ``payload`` read without the contract's bounds, fitted
    into them and encoded again; None if they are not events at all."""
    try:
        events = []
        for fields in msgspec.msgpack.decode(payload):
            cls = _KINDS[fields.pop("kind")]
            events.append(cls(**fields))
        wire.fit_all(events)
        return msgspec.msgpack.encode(events)
    except Exception:  # noqa: BLE001  (whatever was written, never a crash: the caller skips it)
        return None
