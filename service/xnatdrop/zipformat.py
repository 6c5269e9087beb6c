"""The zip format of the upload, as far as xnatdrop writes it (PKWARE APPNOTE 6.3).

Stored entries only, whose size and CRC-32 are known before their data is emitted; ZIP64 extra
fields and end records where a size, an offset or the entry count needs them (as `zipfile`
decides, at ZIP64_LIMIT); UTF-8 names flagged (general purpose bit 11). `pack` plans the zip
with this writer (a zero CRC gives the same lengths) and streams it with the real CRCs.

Why not `zipfile`: on a non-seekable stream it writes data descriptors after each entry, which
Java's ZipInputStream (XNAT's DICOM-zip importer) refuses for stored entries.
"""

from __future__ import annotations

import struct
import time

ZIP64_LIMIT = (1 << 31) - 1  # above this a size or offset goes in a ZIP64 field, as zipfile does


class Writer:
    """Headers of stored entries whose size and CRC-32 are known before their data.

    The caller emits each local header, then the entry's data, and adds the data's size to
    `offset`; `finish()` returns the central directory and end records. The lengths of the
    headers do not depend on the CRC, so `plan()` uses the same code with a zero CRC.
    """

    def __init__(self) -> None:
        self.offset = 0
        self._central: list[bytes] = []

    def local(self, name: str, size: int, crc: int, mtime: float) -> bytes:
        """One entry's local header (APPNOTE 4.3.7); its central header is kept for later."""
        offset = self.offset
        try:
            encoded, flags = name.encode("ascii"), 0
        except UnicodeEncodeError:
            encoded, flags = name.encode("utf-8"), 0x800  # general purpose bit 11: UTF-8 name
        dos_time, dos_date = _dos_stamp(mtime)
        big = size > ZIP64_LIMIT
        version = 45 if big else 20
        stored = 0xFFFFFFFF if big else size
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        header = (
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                version,
                flags,
                0,
                dos_time,
                dos_date,
                crc,
                stored,
                stored,
                len(encoded),
                len(extra),
            )
            + encoded
            + extra
        )
        # Central directory header (4.3.12); its ZIP64 field holds what overflowed, in order.
        fields = [size, size] if big else []
        if offset > ZIP64_LIMIT:
            fields.append(offset)
        extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
        version = 45 if fields else 20
        self._central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                (3 << 8) | version,
                version,
                flags,
                0,
                dos_time,
                dos_date,
                crc,
                stored,
                stored,
                len(encoded),
                len(extra),
                0,
                0,
                0,
                0o600 << 16,
                0xFFFFFFFF if offset > ZIP64_LIMIT else offset,
            )
            + encoded
            + extra
        )
        self.offset += len(header)
        return header

    def finish(self) -> bytes:
        """The central directory and the end records (4.3.14-4.3.16)."""
        start = self.offset
        central = b"".join(self._central)
        size = len(central)
        count = len(self._central)
        tail = [central]
        if count >= 0xFFFF or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
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
        return b"".join(tail)


def _dos_stamp(mtime: float) -> tuple[int, int]:
    """MS-DOS time and date fields of a zip header (APPNOTE 4.4.6)."""
    year, month, day, hour, minute, second = _zip_time(mtime)
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # Zip timestamps cannot predate 1980 or pass 2107; clamp rather than fail on odd clocks.
    stamp = time.localtime(min(max(mtime, 315532800), 4354819199))
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec)
