"""The zip format of the upload, as far as xnatdrop writes it (PKWARE APPNOTE 6.3).

Stored entries only, whose size and CRC-32 are known before their data is emitted; ZIP64 extra
fields and end records where a size, an offset or the entry count needs them (as `zipfile`
decides, at ZIP64_LIMIT); UTF-8 names flagged (general purpose bit 11). `pack` plans the zip
with this writer (a zero CRC gives the same lengths) and streams it with the real CRCs.

Why not `zipfile`: on a non-seekable stream it writes data descriptors after each entry, which
Java's ZipInputStream (XNAT's DICOM-zip importer) refuses for stored entries.

Why `crc32` is ISA-L's (the `isal` package) when it is installed: zlib 1.2's CRC-32 runs at about
0.3 ns a byte, a fifth of the MD5 the upload computes anyway, on the same 2 cores; ISA-L's, with
carry-less multiply, at 0.02-0.05. Same polynomial, same values (a test compares them); zlib's
is the fallback on a platform without an isal wheel.
"""

from __future__ import annotations

import array
import functools
import itertools
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator

try:
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - a platform without an isal wheel
    _fast_crc32 = None

#: CRC-32 of a buffer (continuing from a previous value), as zlib.crc32 computes it.
crc32: Callable[..., int] = _fast_crc32 or zlib.crc32

ZIP64_LIMIT = (1 << 31) - 1  # above this a size or offset goes in a ZIP64 field, as zipfile does


def _name(name: str) -> tuple[bytes, int]:
    """The entry name's bytes and its general purpose flags (bit 11: UTF-8, APPNOTE 4.4.4)."""
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), 0x800


def _name_length(name: str) -> int:
    """len(_name(name)[0]), without encoding an ASCII name."""
    return len(name) if name.isascii() else len(name.encode("utf-8"))


def local_length(name: str, size: int) -> int:
    """The length of the local header `local_header` makes for this entry (no CRC needed)."""
    return 30 + _name_length(name) + (20 if size > ZIP64_LIMIT else 0)


def central_length(name: str, size: int, offset: int) -> int:
    """The length of the central directory header `Writer.finish` makes for this entry, written
    at `offset` (as `_central`, without building it)."""
    fields = (2 if size > ZIP64_LIMIT else 0) + (1 if offset > ZIP64_LIMIT else 0)
    return 46 + _name_length(name) + (4 + 8 * fields if fields else 0)


def end_length(count: int, start: int, size: int) -> int:
    """The length of the end records `Writer.finish` writes after `count` central headers of
    `size` bytes in all, starting at `start`."""
    return 22 + (76 if _needs_zip64_end(count, start, size) else 0)


def _needs_zip64_end(count: int, start: int, size: int) -> bool:
    return count >= 0xFFFF or start > ZIP64_LIMIT or size > ZIP64_LIMIT


def local_header(name: str, size: int, crc: int, mtime: float) -> bytes:
    """One stored entry's local header (APPNOTE 4.3.7), with its CRC-32 and sizes."""
    encoded, flags = _name(name)
    dos_time, dos_date = _dos_stamp(mtime)
    big = size > ZIP64_LIMIT
    stored = 0xFFFFFFFF if big else size
    extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
    return (
        _LOCAL.pack(
            0x04034B50, 45 if big else 20, flags, 0, dos_time, dos_date, crc, stored, stored,
            len(encoded), len(extra),
        )
        + encoded
        + extra
    )  # fmt: skip


def put_local_header(
    buffer: memoryview | bytearray, at: int, name: str, size: int, crc: int, mtime: float
) -> None:
    """Write `local_header(name, size, crc, mtime)` into `buffer` at `at` (which has room
    for `local_length(name, size)` bytes there), packed in place: `pack` writes one per small
    file into the run it sends, and building the header as bytes first was a third of it."""
    if size > ZIP64_LIMIT:
        header = local_header(name, size, crc, mtime)
        buffer[at : at + len(header)] = header
        return
    encoded, flags = _name(name)
    dos_time, dos_date = _dos_stamp(mtime)
    _LOCAL.pack_into(
        buffer, at, 0x04034B50, 20, flags, 0, dos_time, dos_date, crc, size, size, len(encoded), 0
    )
    buffer[at + 30 : at + 30 + len(encoded)] = encoded


_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")


class Writer:
    """The offsets and CRC-32s of the entries written so far, and the zip's tail from them.

    The caller emits each entry (its `local_header`, then its data), and records it with
    `entry(crc, length)`; `finish(entries)` yields the central directory and the end records,
    given each entry's name, size and mtime again, in the same order. Only the offset and the
    CRC are kept per entry (12 bytes): the central directory of 50,000 files, built as it is
    sent, is never held whole. The lengths do not depend on the CRC, so `plan()` uses the same
    code with a zero CRC.
    """

    def __init__(self) -> None:
        self.offset = 0
        self._offsets = array.array("Q")
        self._crcs = array.array("L")

    def entry(self, crc: int, length: int) -> None:
        """Record an entry written at `offset`: `length` bytes, header and data."""
        self._offsets.append(self.offset)
        self._crcs.append(crc)
        self.offset += length

    def entries(self, crcs: list[int], lengths: list[int]) -> None:
        """Record consecutive entries at once (a run of small files): `entry` for each."""
        self._offsets.extend(itertools.accumulate(lengths[:-1], initial=self.offset))
        self._crcs.extend(crcs)
        self.offset += sum(lengths)

    def finish(
        self, entries: Iterable[tuple[str, int, float]], piece: int = 1 << 18
    ) -> Iterator[bytes]:
        """The central directory (4.3.12) in pieces of about `piece` bytes, then the end
        records (4.3.14-4.3.16). `entries` are the recorded entries' (name, size, mtime)."""
        start = self.offset
        size = count = 0
        pending: list[bytes] = []
        held = 0
        for (name, length, mtime), offset, crc in zip(
            entries, self._offsets, self._crcs, strict=True
        ):
            record = _central(name, length, mtime, offset, crc)
            pending.append(record)
            held += len(record)
            size += len(record)
            count += 1
            if held >= piece:
                yield b"".join(pending)
                pending, held = [], 0
        tail = [b"".join(pending)]
        if _needs_zip64_end(count, start, size):
            end64 = start + size
            tail.append(
                struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, start)
                + struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
            )
        tail.append(
            struct.pack(
                "<IHHHHIIH",
                0x06054B50,
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(size, 0xFFFFFFFF),
                min(start, 0xFFFFFFFF),
                0,
            )
        )
        yield b"".join(tail)


def _central(name: str, size: int, mtime: float, offset: int, crc: int) -> bytes:
    """One central directory header (4.3.12); its ZIP64 field holds what overflowed, in order."""
    encoded, flags = _name(name)
    dos_time, dos_date = _dos_stamp(mtime)
    big = size > ZIP64_LIMIT
    stored = 0xFFFFFFFF if big else size
    fields = [size, size] if big else []
    if offset > ZIP64_LIMIT:
        fields.append(offset)
    extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
    version = 45 if fields else 20
    return (
        _CENTRAL.pack(
            0x02014B50, (3 << 8) | version, version, flags, 0, dos_time, dos_date, crc, stored,
            stored, len(encoded), len(extra), 0, 0, 0, 0o600 << 16,
            0xFFFFFFFF if offset > ZIP64_LIMIT else offset,
        )
        + encoded
        + extra
    )  # fmt: skip


def _dos_stamp(mtime: float) -> tuple[int, int]:
    """MS-DOS time and date fields of a zip header (APPNOTE 4.4.6)."""
    # Zip timestamps cannot predate 1980 or pass 2107; clamp rather than fail on odd clocks.
    return _dos_second(int(min(max(mtime, 315532800), 4354819199)))


@functools.lru_cache(maxsize=1024)
def _dos_second(second: int) -> tuple[int, int]:
    """`_dos_stamp` of a whole second, cached: the files of a session were written within a
    few seconds of each other, and `time.localtime` was a tenth of the header's cost."""
    stamp = time.localtime(second)
    year, month, day = stamp.tm_year, stamp.tm_mon, stamp.tm_mday
    hour, minute, second = stamp.tm_hour, stamp.tm_min, stamp.tm_sec
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day
