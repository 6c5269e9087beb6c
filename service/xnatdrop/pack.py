"""The upload zip and its manifest.

`pack()` writes one zip of the DICOM files a drop uploads (the rules decide which; excluded files
are simply not passed in) and a manifest with, for each file, its path relative to the subject
folder, size, MD5, SOPInstanceUID, SeriesInstanceUID and SeriesNumber. The verify and archive
steps compare what XNAT holds against this manifest.

Why the zip is stored, not deflated: DICOM pixel data barely compresses (a few percent for
typical MR) and deflate would cost more CPU time than it saves on the wire, on a 2-core host.

Why one pass: each file is read once (files over `WHOLE_FILE` twice: see below); its MD5 and
CRC-32 are computed from the same bytes that are written into the zip, so the disk reads each byte
once.

Why threads: MD5 is the slowest part (about 700 MB/s on one core, against 2 GB/s for CRC-32), and
hashlib and zlib release the GIL. Files up to `WHOLE_FILE` bytes (a classic slice or a multi-frame
volume) are read and hashed by `READERS` worker threads while the main thread writes the previous
ones into the zip, in order; at most `WINDOW` bytes are read ahead, so memory stays bounded
whatever the session size. Larger files are hashed in a first pass and copied in 1 MiB chunks in a
second one (their CRC-32 must be in the entry's header, which comes before the data).

Why our own zip writer: `zipfile` writes each header with a zero CRC and seeks back to patch it,
so it needs a seekable file; a non-seekable one gets data descriptors, which Java's
ZipInputStream (XNAT's DICOM-zip importer) refuses for stored entries. Knowing the CRC first, we
write each header once, in order, which lets the zip bypass the page cache (below). The format is
PKWARE APPNOTE 6.3: stored entries, ZIP64 extra fields and end records where a size, an offset or
the entry count needs them, UTF-8 names flagged (bit 11).

Why O_DIRECT: filling the page cache with a zip that is read once costs more than writing it (on
the 2-core benchmark VM, 2 GB take 3.9 s to copy into the page cache plus 1 s of fsync, against
0.8 s straight to the disk). `_DirectFile` gathers the stream into an aligned buffer and writes
whole blocks with O_DIRECT; where the file system refuses it (tmpfs, some network mounts), it
falls back to ordinary writes. The upload then reads the zip from the disk once.

Crash safety: the zip is written to `upload.zip.part`, fsynced and renamed, then the manifest is
written the same way. The fsync stays with O_DIRECT: O_DIRECT skips the page cache but not the
disk's write cache, and the file's size is metadata; without it a power cut after the rename
could leave a zip of the right size holding zeros, which the next run would upload. A manifest
on disk therefore always describes a complete zip; `load()` returns None when either is missing
or the zip's size differs, and the pack step simply runs again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WHOLE_FILE = 8 << 20  # files up to this size are read whole by a reader thread
WINDOW = 32 << 20  # bytes read ahead of the zip writer, at most
READERS = 2  # the host has 2 cores; hashing is the bottleneck
BUFFER = 8 << 20  # the zip writer's aligned buffer: one O_DIRECT write per BUFFER bytes
BLOCK = 4096  # O_DIRECT alignment of offsets and lengths (a multiple of any logical block size)
ZIP64_LIMIT = (1 << 31) - 1  # above this a size or offset goes in a ZIP64 field, as zipfile does
ZIP_NAME = "upload.zip"
MANIFEST_NAME = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Item:
    """A file to pack: its path relative to the subject folder and its DICOM identity."""

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    series_number: str = ""
    study_instance_uid: str = ""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One manifest line: what was packed, with the MD5 of the bytes that went into the zip."""

    path: str
    size: int
    md5: str
    sop_instance_uid: str
    series_instance_uid: str
    series_number: str = ""
    study_instance_uid: str = ""


@dataclasses.dataclass(frozen=True)
class Manifest:
    zip_path: Path
    zip_size: int
    files: tuple[Entry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)

    def series(self) -> dict[str, list[Entry]]:
        """Entries grouped by SeriesInstanceUID, in first-seen order."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.files:
            groups.setdefault(entry.series_instance_uid, []).append(entry)
        return groups

    def study_uids(self) -> set[str]:
        return {e.study_instance_uid for e in self.files if e.study_instance_uid}

    def to_json(self) -> dict[str, object]:
        return {
            "zip": self.zip_path.name,
            "zip_size": self.zip_size,
            "file_count": len(self.files),
            "bytes": self.total_bytes,
            "files": [dataclasses.asdict(e) for e in self.files],
        }


def _write_atomic(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, path)


def pack(
    folder: Path,
    items: Iterable[Item],
    spool: Path,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write `spool/upload.zip` (stored) and `spool/manifest.json` for `items` under `folder`.

    Entries are named by their relative path, so XNAT sees the technologist's file names.
    `progress(bytes_done)` is called after each file. Raise OSError if a file cannot be read.
    """
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    zip_path = spool / ZIP_NAME
    part = zip_path.with_name(ZIP_NAME + ".part")
    entries: list[Entry] = []
    started = time.monotonic()
    done = 0
    queue: collections.deque[tuple[Item, concurrent.futures.Future[_Read] | None, int]]
    queue = collections.deque()
    ahead = 0
    pending = iter(items)
    with (
        concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="pack") as readers,
        _DirectFile(part) as target,
    ):
        archive = _ZipWriter(target)
        while True:
            # Read ahead: small files go to the readers until WINDOW bytes are in flight.
            while ahead < WINDOW:
                item = next(pending, None)
                if item is None:
                    break
                size = os.stat(folder / item.path).st_size
                if size <= WHOLE_FILE:
                    queue.append((item, readers.submit(_read_whole, folder / item.path), size))
                    ahead += size
                else:
                    queue.append((item, None, size))
            if not queue:
                break
            item, future, size = queue.popleft()
            if future is not None:
                ahead -= size
                read = future.result()
                archive.add(item.path, read.size, read.crc, read.mtime, [read.data])
            else:
                read = _digest(folder / item.path)
                archive.add(
                    item.path, read.size, read.crc, read.mtime, _copy(folder / item.path, read)
                )
            entries.append(
                Entry(
                    path=item.path,
                    size=read.size,
                    md5=read.md5,
                    sop_instance_uid=item.sop_instance_uid,
                    series_instance_uid=item.series_instance_uid,
                    series_number=item.series_number,
                    study_instance_uid=item.study_instance_uid,
                )
            )
            done += read.size
            if progress is not None:
                progress(done)
        archive.finish()
    os.replace(part, zip_path)
    manifest = Manifest(zip_path, zip_path.stat().st_size, tuple(entries))
    _write_atomic(spool / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1).encode())
    log.debug("packed %d files, %d bytes in %.1f s", len(entries), done, time.monotonic() - started)
    return manifest


@dataclasses.dataclass(frozen=True)
class _Read:
    size: int
    md5: str
    crc: int
    mtime: float
    data: bytes = b""


def _read_whole(path: Path) -> _Read:
    """Read and hash one small file (in a reader thread; hashlib and zlib release the GIL)."""
    with open(path, "rb") as handle:
        mtime = os.fstat(handle.fileno()).st_mtime
        data = handle.read()
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return _Read(len(data), digest, zlib.crc32(data), mtime, data)


def _digest(path: Path) -> _Read:
    """The first pass over a large file: its size, MD5 and CRC-32, in CHUNK pieces."""
    digest = hashlib.md5(usedforsecurity=False)
    crc = size = 0
    with open(path, "rb") as handle:
        mtime = os.fstat(handle.fileno()).st_mtime
        while data := handle.read(CHUNK):
            digest.update(data)
            crc = zlib.crc32(data, crc)
            size += len(data)
    return _Read(size, digest.hexdigest(), crc, mtime)


def _copy(path: Path, first: _Read) -> Iterator[bytes]:
    """The second pass over a large file; OSError if it changed since the first one."""
    crc = size = 0
    with open(path, "rb") as handle:
        while size < first.size and (data := handle.read(min(CHUNK, first.size - size))):
            crc = zlib.crc32(data, crc)
            size += len(data)
            yield data
    if (size, crc) != (first.size, first.crc):
        raise OSError(errno.EIO, f"{path} changed while it was packed")


class _DirectFile:
    """A write-only file that takes a byte stream and writes it in whole aligned blocks.

    `write()` copies into a page-aligned buffer of BUFFER bytes; each full buffer is one
    O_DIRECT write. `close()` writes the last block padded with zeros, truncates the padding
    off, fsyncs and closes. Where O_DIRECT is refused (at open or at the first write), it is
    switched off and the same writes go through the page cache.
    """

    def __init__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        direct = getattr(os, "O_DIRECT", 0)
        try:
            self._fd = os.open(path, flags | direct, 0o600)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self._fd = os.open(path, flags, 0o600)
        self._buffer = mmap.mmap(-1, BUFFER)
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._written = 0

    def __enter__(self) -> _DirectFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            if kind is None:
                self._finish()
        finally:
            self._view.release()
            self._buffer.close()
            os.close(self._fd)

    def tell(self) -> int:
        return self._written + self._fill

    def write(self, data: bytes | memoryview) -> None:
        source = memoryview(data)
        while len(source):
            count = min(len(source), BUFFER - self._fill)
            self._view[self._fill : self._fill + count] = source[:count]
            self._fill += count
            source = source[count:]
            if self._fill == BUFFER:
                self._flush(BUFFER)

    def _flush(self, length: int) -> None:
        try:
            written = os.write(self._fd, self._view[:length])
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            # The file system took O_DIRECT at open but not for I/O: go through the page cache.
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~getattr(os, "O_DIRECT", 0))
            written = os.write(self._fd, self._view[:length])
        if written != length:
            raise OSError(errno.EIO, f"short write ({written} of {length} bytes)")
        self._written += length
        self._fill = 0

    def _finish(self) -> None:
        size = self.tell()
        if self._fill:
            padded = -(-self._fill // BLOCK) * BLOCK
            self._view[self._fill : padded] = bytes(padded - self._fill)
            self._flush(padded)
            os.ftruncate(self._fd, size)
        os.fsync(self._fd)


class _ZipWriter:
    """Stored zip entries whose size and CRC-32 are known before their data (APPNOTE 6.3)."""

    def __init__(self, target: _DirectFile) -> None:
        self._target = target
        self._central: list[bytes] = []

    def add(self, name: str, size: int, crc: int, mtime: float, chunks: Iterable[bytes]) -> None:
        """One entry: local header (4.3.7), then the data, which must be exactly `size` bytes."""
        offset = self._target.tell()
        try:
            encoded, flags = name.encode("ascii"), 0
        except UnicodeEncodeError:
            encoded, flags = name.encode("utf-8"), 0x800  # general purpose bit 11: UTF-8 name
        dos_time, dos_date = _dos_stamp(mtime)
        big = size > ZIP64_LIMIT
        version = 45 if big else 20
        stored = 0xFFFFFFFF if big else size
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        self._target.write(
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
        for chunk in chunks:
            self._target.write(chunk)
        if self._target.tell() != offset + 30 + len(encoded) + len(extra) + size:
            raise OSError(errno.EIO, f"{name}: size changed while it was packed")
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

    def finish(self) -> None:
        """The central directory and the end records (4.3.14-4.3.16)."""
        start = self._target.tell()
        for header in self._central:
            self._target.write(header)
        size = self._target.tell() - start
        count = len(self._central)
        if count >= 0xFFFF or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
            end64 = self._target.tell()
            self._target.write(
                struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, start)
                + struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
            )
        self._target.write(
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


def _dos_stamp(mtime: float) -> tuple[int, int]:
    """MS-DOS time and date fields of a zip header (APPNOTE 4.4.6)."""
    year, month, day, hour, minute, second = _zip_time(mtime)
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # Zip timestamps cannot predate 1980; clamp rather than fail on odd scanner clocks.
    stamp = time.localtime(max(mtime, 315532800))
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec)


def load(spool: Path) -> Manifest | None:
    """The manifest of a finished pack in `spool`, or None if there is none or it is stale."""
    zip_path = spool / ZIP_NAME
    try:
        data = json.loads((spool / MANIFEST_NAME).read_text(encoding="utf-8"))
        size = zip_path.stat().st_size
    except (OSError, ValueError):
        return None
    if size != data.get("zip_size"):
        return None
    return Manifest(zip_path, size, tuple(Entry(**e) for e in data["files"]))


def remove(spool: Path) -> None:
    """Delete the zip and manifest (xnatdrop's own files) once a drop is finished."""
    for name in (ZIP_NAME, ZIP_NAME + ".part", MANIFEST_NAME, MANIFEST_NAME + ".part"):
        (spool / name).unlink(missing_ok=True)
