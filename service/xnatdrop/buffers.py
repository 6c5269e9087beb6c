"""Reused buffers for the upload's pieces (`pack`), handed out only once nobody holds them."""

from __future__ import annotations

import sys
import threading


class Buffers:
    """Buffers for runs of small files, each reused once nothing refers to it any more.

    Why: a fresh 1 MiB buffer is mapped from the kernel and faulted in page by page (about
    1 ms, 1 ns a byte: as much as half the MD5), while a run is in flight for a moment only.
    A buffer goes back into use only when its reference count says that no one holds it (the
    sender, the HTTP client, a caller who kept the piece, a memoryview of it): a piece handed
    out is never overwritten while someone can still see it. At most `count` buffers of
    `size` bytes are kept; a larger piece, one under half that size (CPython would shrink the
    buffer's memory to fit it, and grow it again later), or one when all are held, gets a
    buffer of its own.
    """

    def __init__(self, count: int, size: int) -> None:
        self._count = count
        self._size = size
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """The size of the buffers kept: a larger piece gets a buffer of its own."""
        return self._size

    def take(self, size: int) -> bytearray:
        """A buffer of exactly `size` bytes (its content is whatever it held before)."""
        if size > self._size or 2 * size <= self._size + 1:
            return bytearray(size)
        with self._lock:
            for buffer in self._buffers:
                # References: the list, `buffer`, getrefcount's argument: nobody else's (a
                # memoryview of it would hold one too).
                if sys.getrefcount(buffer) <= _UNUSED:
                    resize(buffer, size)
                    return buffer
            buffer = bytearray(self._size)
            if len(self._buffers) < self._count:
                self._buffers.append(buffer)
            resize(buffer, size)
            return buffer


def resize(buffer: bytearray, size: int) -> None:
    """Make `buffer` `size` bytes long. CPython keeps its memory if it shrinks to no less than
    half, or grows within what it holds; zeros are appended from a shared view, not a new
    bytes object of that size."""
    if len(buffer) > size:
        del buffer[size:]
    elif len(buffer) < size:
        grow = size - len(buffer)
        buffer.extend(_ZEROS[:grow] if grow <= len(_ZEROS) else bytes(grow))


_ZEROS = memoryview(bytes(2 << 20))  # never written: the zero page, mapped once


def _unused() -> int:
    """The reference count `Buffers.take` sees for a buffer nobody else holds."""
    buffers = [bytearray(1)]
    for buffer in buffers:
        return sys.getrefcount(buffer)
    raise AssertionError


_UNUSED = _unused()
