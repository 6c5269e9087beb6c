"""The byte ranges a header walk reads (`_Window`), the state it keeps (`_Walk`) and the two
errors it raises (`_Short`, `_Bad`).

Why a module of its own: the general walk (`walk.py`), its fast paths (`skim.py`), the value
decoding (`decode.py`) and the Pixel Data finder (`pixels.py`) all read through one window and
share one walk's state; keeping them here lets each of those modules import them without
importing the others.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

from xnatdrop.dicomfiles.tags import HEAD_BYTES


class _Short(Exception):
    """The file ends before the element being read."""


class _Bad(Exception):
    """The bytes are not a valid DICOM encoding."""


class _Window:
    """Byte ranges of an open file (or of a bytes object), read ahead in 64 KiB chunks.

    A class because it has a lifetime: the open file and the current chunk. The walkers read
    `buf`/`base` directly in their inner loop and call `refill` only on a miss.
    """

    def __init__(self, handle, size: int, first: bytes) -> None:
        self.handle = handle
        self.size = size
        self.buf = first
        self.base = 0

    def refill(self, pos: int, count: int = HEAD_BYTES) -> None:
        """Make the chunk start at `pos` (it is shorter than `count` only at the end of file)."""
        if self.handle is None or pos < 0 or pos >= self.size:
            raise _Short
        self.handle.seek(pos)
        self.buf = self.handle.read(max(count, HEAD_BYTES))
        self.base = pos

    def get(self, pos: int, count: int) -> bytes:
        if pos < 0 or count < 0 or pos + count > self.size:
            raise _Short
        start = pos - self.base
        if start >= 0 and start + count <= len(self.buf):
            return self.buf[start : start + count]
        self.refill(pos, count)
        if len(self.buf) < count:
            raise _Short
        return self.buf[:count]

    def peek(self, pos: int, count: int) -> bytes:
        """`count` bytes from `pos`, as `get` gives them, but read exactly (not a chunk) when
        the chunk lacks them, and leaving the chunk as it is.

        Why: the jumps to the end of the header (`_tail_confirms`: 12 bytes just before the
        pixel data; the per-frame groups up to it) read 64 KiB chunks with `get`, most of them
        pixel data the check never looks at. On a cold disk that chunk often ran past what the
        kernel had read ahead after the first 64 KiB, and the parser waited for a disk read
        (~0.7 ms) for bytes it did not need.
        """
        if pos < 0 or count < 0 or pos + count > self.size:
            raise _Short
        start = pos - self.base
        if start >= 0 and start + count <= len(self.buf):
            return self.buf[start : start + count]
        if self.handle is None:
            raise _Short
        kept = self.buf[start:] if 0 <= start < len(self.buf) else b""  # the part it holds
        self.handle.seek(pos + len(kept))
        data = kept + self.handle.read(count - len(kept))
        if len(data) < count:
            raise _Short
        return data


@dataclasses.dataclass(slots=True)
class _Walk:
    """Mutable state of one header walk: byte order, VR mode and what has been collected."""

    little: bool
    explicit: bool
    top: dict[int, bytes] = dataclasses.field(default_factory=dict)
    nested: dict[int, list[bytes]] = dataclasses.field(default_factory=dict)
    pixel_tag: int = 0
    pixel_offset: int = -1  # file offset of the Pixel Data value
    pixel_length: int = -1  # UNDEFINED for encapsulated data
    stop_after_0028: bool = False
    stop_after_tag: int = 0x0028FFFF  # early stopping is considered only past this tag
    stopped_early: bool = False
    early_resume: int = 0
    end: int = -1  # where the top-level walk stopped (the file's size: it read to the end)


_PARSE_ERRORS = (_Bad, _Short, struct.error, ValueError, IndexError, OverflowError, zlib.error)
