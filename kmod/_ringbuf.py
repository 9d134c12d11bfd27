"""A BPF ring buffer read straight from its memory mapping, in batches.

libbpf's ring_buffer__poll() calls back once per record, which from Python
is a foreign call per event.  The layout is simple enough to walk here: a
consumer page we write, then a read-only producer page followed by the data
area mapped twice in a row, so a record that wraps reads as one slice.
Each record starts with an 8-byte header: length with BUSY and DISCARD
bits, then the page offset the kernel uses.

Ordering: the kernel publishes a record by clearing BUSY with a release
store; on x86-64 (our target) plain loads are not reordered with each other,
so reading the header before the body is enough.  Positions must be read
and written whole: the little-endian ``struct`` codes ("<Q") go byte by
byte, and a consumer position the kernel sees half-written looks up to the
whole ring behind, so it refuses records as if the ring were full.  Native
codes and ctypes copy the 8 bytes in one access."""

from __future__ import annotations

import ctypes
import mmap
import struct

from ._errors import KernelError

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("=Q")  # native: one 8-byte load, see above
_U32 = struct.Struct("=I")


class RingBuffer:
    def __init__(self, map_fd: int, size: int):
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError(f"ring buffer size {size} must be a power of 2 and of the page size")
        page = mmap.PAGESIZE
        try:
            self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        except OSError as e:
            raise KernelError(f"cannot map the ring buffer: {e.strerror}") from e
        self._data = memoryview(self._prod)
        self._page = page
        self._mask = size - 1
        self.size = size
        self._consumer = ctypes.c_uint64.from_buffer(self._cons)  # one 8-byte store
        self._pos = self._next = self._consumer.value

    def pending(self) -> int:
        """Bytes written by the kernel and not yet consumed."""
        return _U64.unpack_from(self._prod, 0)[0] - self._pos

    @property
    def buffer(self) -> memoryview:
        return self._data

    def read(self, max_records: int) -> list[int]:
        """Offsets in ``buffer`` of up to ``max_records`` committed records,
        read in place: valid until ``release()``, which hands their space
        back to the kernel.  (Offsets, not slices: a slice per record costs
        as much as decoding it.)"""
        out: list[int] = []
        pos = self._pos
        prod = _U64.unpack_from(self._prod, 0)[0]
        data, page, mask = self._data, self._page, self._mask
        unpack = _U32.unpack_from
        while pos < prod and len(out) < max_records:
            at = page + (pos & mask)
            length = unpack(data, at)[0]
            if length & _BUSY:
                break  # reserved, not yet submitted: later records wait for it
            n = length & ~_DISCARD
            if not length & _DISCARD:
                out.append(at + _HDR)
            pos += (n + _HDR + 7) & ~7
        self._next = pos
        return out

    def release(self) -> None:
        if self._next != self._pos:
            self._pos = self._next
            self._consumer.value = self._pos

    def close(self) -> None:
        del self._consumer  # it pins the mapping
        self._data.release()
        self._prod.close()
        self._cons.close()
