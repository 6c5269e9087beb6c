"""The upload zip, streamed, and its manifest.

The upload is one stored zip of the DICOM files a drop uploads (the rules decide which; excluded
files are simply not passed in). It is never written to disk: the pack step only *plans* it, and
the import step generates its bytes while sending them, reading and hashing each file on the way.

- `plan()` stats every file and fixes the zip's layout: entry order, names, sizes and, from
  those, its exact length, before any data is read (ZIP64 decisions depend on sizes and offsets
  only). `save_plan()` writes it atomically to the spool as `plan.json`.
- `Body` is the request body: a file-like object with `__len__` (so the request has a
  Content-Length, not chunked encoding) whose `read()` produces the zip lazily. When every file
  has been hashed it writes the manifest (`manifest.json`, atomically): for each file its path
  relative to the subject folder, size, MD5, SOPInstanceUID, SeriesInstanceUID and SeriesNumber.
  The verify and archive steps compare what XNAT holds against this manifest.
- `digest()` builds the same manifest without sending anything, for a run that needs it but has
  none (a crash before the body was complete, with something already on the server).
- `write_zip()` drains a `Body` into a file: the same bytes, for tests and the benchmark.

Why the zip is stored, not deflated: DICOM pixel data barely compresses (a few percent for
typical MR) and deflate would cost more CPU time than it saves on the wire, on a 2-core host.

Why stream: building a 2 GB zip on disk (read, hash, write, fsync) sat on the critical path
before the first byte was sent. Streaming overlaps reading and hashing with the upload.

Why our own zip writer: each local header must hold the entry's CRC-32, and it precedes the data.
`zipfile` on a non-seekable stream writes data descriptors instead, which Java's ZipInputStream
(XNAT's DICOM-zip importer) refuses for stored entries. So each file is hashed before its header
is emitted. The format is PKWARE APPNOTE 6.3: stored entries, ZIP64 extra fields and end records
where a size, an offset or the entry count needs them, UTF-8 names flagged (bit 11).

Why threads: MD5 is the slowest part (about 700 MB/s on one core, against 2 GB/s for CRC-32), and
hashlib and zlib release the GIL. Files up to `WHOLE_FILE` bytes (a classic slice or a
multi-frame volume) are read and hashed whole by `READERS` worker threads ahead of the sender, in
order; at most `WINDOW` bytes are read ahead, so memory stays flat whatever the session size.
Larger files are hashed in a first pass (also by a reader) and sent in CHUNK pieces in a second
one, which checks that the bytes did not change.

A file whose size differs from the plan, or that vanished, aborts the body with `Changed` (a
TransientError, not an OSError, so that urllib3 and requests let it through unchanged): the
frozen folder should never change. The import step then drops the plan, and the next attempt
plans again from the folder as it is. Any other OSError on the way (a file the service user may
not read, a full state folder when the manifest is saved) becomes `FileError`, for the same
reason; the pipeline sorts it by its path.

Entry names are the files' paths relative to the subject folder, except where too long for
XNAT to store (`upload_name`). The same streamed zip carries sidecar folders to XNAT's
resources, with their names as they are.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from xnatdrop import names
from xnatdrop.errors import TransientError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WHOLE_FILE = 8 << 20  # files up to this size are read whole by a reader thread
WINDOW = 32 << 20  # bytes read ahead of the sender, at most
READERS = 2  # the host has 2 cores; hashing is the bottleneck
ZIP64_LIMIT = (1 << 31) - 1  # above this a size or offset goes in a ZIP64 field, as zipfile does
PLAN_NAME = "plan.json"
MANIFEST_NAME = "manifest.json"


class Changed(TransientError):
    """A file of the frozen folder changed size or vanished after the plan was made."""


class FileError(TransientError):
    """Reading a file of the upload or saving the manifest failed while the body was being
    sent: `error` is the OSError. Raised as a TransientError, never as an OSError, because
    urllib3 would take an OSError from a body for a broken connection ("cannot connect")."""

    def __init__(self, error: OSError) -> None:
        super().__init__(f"{error.filename}: {error.strerror or error}")
        self.error = error


@dataclasses.dataclass(frozen=True)
class Item:
    """A file to pack: its path relative to the subject folder and its DICOM identity.

    `zip_name` is its entry name in the zip when that is not `path` (see `upload_name`).
    """

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    series_number: str = ""
    study_instance_uid: str = ""
    zip_name: str = ""

    @property
    def entry(self) -> str:
        return self.zip_name or self.path


# XNAT stores each uploaded file under its whole zip entry name made file-name-safe
# (GradualDicomImporter.getSafeFile, stock row 12), and adds to it: a lock file named by scan
# and file (PrearcUtils.lockFile), `<name>.part` in the sandbox. An entry name near NAME_MAX
# made every import fail with a 500, forever. 200 bytes leaves room for what XNAT adds.
ZIP_NAME_MAX = 200


def upload_name(path: str) -> str:
    """The zip entry name of a DICOM file at `path` (relative to the subject folder): the path
    itself, or, if longer than ZIP_NAME_MAX bytes, its start, `~`, a hash of the whole path and
    its extension. XNAT verifies instances by UID, never by name, so nothing else changes."""
    name = path.rpartition("/")[2]
    stem, dot, extension = name.rpartition(".")
    suffix = f".{extension}" if dot and stem and len(extension) <= 8 else ""
    return names.fit(path[: len(path) - len(suffix)], suffix, limit=ZIP_NAME_MAX)


@dataclasses.dataclass(frozen=True)
class Planned:
    """One zip entry of the plan: the item, its size and modification time when planned."""

    item: Item
    size: int
    mtime: float


@dataclasses.dataclass(frozen=True)
class Plan:
    zip_size: int
    files: tuple[Planned, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.files)

    def study_uids(self) -> set[str]:
        return {p.item.study_instance_uid for p in self.files if p.item.study_instance_uid}

    def to_json(self) -> dict[str, object]:
        return {
            "zip_size": self.zip_size,
            "file_count": len(self.files),
            "bytes": self.total_bytes,
            "files": [
                {**dataclasses.asdict(p.item), "size": p.size, "mtime": p.mtime} for p in self.files
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Plan:
        files = []
        for row in data["files"]:  # type: ignore[attr-defined]
            fields = dict(row)
            size, mtime = int(fields.pop("size")), float(fields.pop("mtime"))
            files.append(Planned(Item(**fields), size, mtime))
        return cls(int(data["zip_size"]), tuple(files))  # type: ignore[call-overload]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One manifest line: what was sent, with the MD5 of the bytes that went into the zip."""

    path: str
    size: int
    md5: str
    sop_instance_uid: str
    series_instance_uid: str
    series_number: str = ""
    study_instance_uid: str = ""


@dataclasses.dataclass(frozen=True)
class Manifest:
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
            "zip_size": self.zip_size,
            "file_count": len(self.files),
            "bytes": self.total_bytes,
            "files": [dataclasses.asdict(e) for e in self.files],
        }


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via `<name>.part` and a rename. An error names the file: a write to a full disk
    raises an OSError without one, and the pipeline sorts file-system errors by path."""
    part = path.with_name(path.name + ".part")
    descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # spool: private
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(part)) from error
    os.replace(part, path)


# -- the plan --------------------------------------------------------------------------------


def plan(folder: Path, items: Iterable[Item]) -> Plan:
    """Stat each item under `folder` and lay out the zip; no file data is read.

    Raise Changed if a file is missing.
    """
    files = []
    for item in items:
        try:
            stat = os.stat(folder / item.path)
        except FileNotFoundError:
            raise Changed(f"{folder / item.path} is gone since the folder was checked") from None
        files.append(Planned(item, stat.st_size, stat.st_mtime))
    layout = _ZipWriter()
    for planned in files:
        layout.local(planned.item.entry, planned.size, 0, planned.mtime)
        layout.offset += planned.size
    size = layout.offset + len(layout.finish())
    return Plan(size, tuple(files))


def save_plan(spool: Path, planned: Plan) -> None:
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(spool / PLAN_NAME, json.dumps(planned.to_json(), indent=1).encode())


def load_plan(spool: Path) -> Plan | None:
    """The plan in `spool`, or None if there is none or it is unreadable."""
    try:
        return Plan.from_json(json.loads((spool / PLAN_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- reading and hashing ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Read:
    size: int
    md5: str
    crc: int
    data: bytes | None = None  # the whole file, for small ones


def _read_whole(path: Path, size: int) -> _Read:
    """Read and hash one small file (in a reader thread; hashlib and zlib release the GIL)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(size + 1)
    except FileNotFoundError:
        raise Changed(f"{path} vanished after the upload was planned") from None
    except OSError as error:
        raise FileError(error) from error
    if len(data) != size:
        raise Changed(f"{path} is {len(data)} bytes, planned {size}; it changed after planning")
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return _Read(size, digest, zlib.crc32(data), data)


def _digest(path: Path, size: int) -> _Read:
    """The first pass over a large file: its MD5 and CRC-32, in CHUNK pieces."""
    digest = hashlib.md5(usedforsecurity=False)
    crc = done = 0
    try:
        with open(path, "rb") as handle:
            while data := handle.read(CHUNK):
                digest.update(data)
                crc = zlib.crc32(data, crc)
                done += len(data)
    except FileNotFoundError:
        raise Changed(f"{path} vanished after the upload was planned") from None
    except OSError as error:
        raise FileError(error) from error
    if done != size:
        raise Changed(f"{path} is {done} bytes, planned {size}; it changed after planning")
    return _Read(size, digest.hexdigest(), crc)


def _copy(path: Path, first: _Read) -> Iterator[bytes]:
    """The second pass over a large file; Changed if it differs from the first one."""
    crc = done = 0
    try:
        with open(path, "rb") as handle:
            while data := handle.read(CHUNK):
                crc = zlib.crc32(data, crc)
                done += len(data)
                if done > first.size:
                    break
                yield data
    except FileNotFoundError:
        raise Changed(f"{path} vanished while it was sent") from None
    except OSError as error:
        raise FileError(error) from error
    if (done, crc) != (first.size, first.crc):
        raise Changed(f"{path} changed while it was sent")


def _hashed(
    folder: Path, planned: Plan, readers: concurrent.futures.Executor
) -> Iterator[tuple[Planned, _Read]]:
    """Each planned file with its hashes (and data, if small), in order, read ahead by `readers`.

    At most WINDOW bytes of small files are held ahead; a large file counts as one CHUNK.
    """
    queue: collections.deque[tuple[Planned, concurrent.futures.Future[_Read], int]]
    queue = collections.deque()
    ahead = 0
    pending = iter(planned.files)
    try:
        while True:
            while ahead < WINDOW:
                entry = next(pending, None)
                if entry is None:
                    break
                path = folder / entry.item.path
                if entry.size <= WHOLE_FILE:
                    future = readers.submit(_read_whole, path, entry.size)
                    cost = entry.size
                else:
                    future = readers.submit(_digest, path, entry.size)
                    cost = CHUNK
                queue.append((entry, future, cost))
                ahead += cost
            if not queue:
                return
            entry, future, cost = queue.popleft()
            ahead -= cost
            yield entry, future.result()
    finally:
        for _, future, _ in queue:
            future.cancel()


def _entry(planned: Planned, read: _Read) -> Entry:
    item = planned.item
    return Entry(
        path=item.path,
        size=read.size,
        md5=read.md5,
        sop_instance_uid=item.sop_instance_uid,
        series_instance_uid=item.series_instance_uid,
        series_number=item.series_number,
        study_instance_uid=item.study_instance_uid,
    )


def digest(folder: Path, planned: Plan, spool: Path | None = None) -> Manifest:
    """The manifest of the planned files, hashing them without sending; saved if `spool`."""
    with concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="hash") as readers:
        entries = [_entry(p, r) for p, r in _hashed(folder, planned, readers)]
    manifest = Manifest(planned.zip_size, tuple(entries))
    if spool is not None:
        save(spool, manifest)
    return manifest


# -- the streamed zip ------------------------------------------------------------------------


class Body:
    """The zip of `planned` as a request body: `len()` is its size, `read()` its next bytes.

    `read(amount)` returns the next piece (a header, a small file, or one CHUNK of a large
    one), whatever `amount`; b"" at the end. When every file has been hashed, the manifest is
    saved to `spool` (if given) and passed to `on_manifest`. Raise Changed if a file no longer
    matches the plan. `close()` stops the reader threads; a new Body sends again from the start.
    """

    def __init__(
        self,
        folder: Path,
        planned: Plan,
        spool: Path | None = None,
        on_manifest: Callable[[Manifest], None] | None = None,
    ) -> None:
        self._folder = folder
        self._plan = planned
        self._spool = spool
        self._on_manifest = on_manifest
        self._readers = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="upload")
        self._pieces = self._generate()
        self._done = False
        self._failed: BaseException | None = None

    def __len__(self) -> int:
        return self._plan.zip_size

    def read(self, amount: int = -1) -> bytes:
        if self._failed is not None:
            # Never let a reader that goes on after an error take the short body as complete.
            raise self._failed
        if self._done:
            return b""
        try:
            piece = next(self._pieces, None)
        except BaseException as error:
            self._failed = error
            raise
        if piece is None:
            self._done = True
            self.close()
            return b""
        return piece

    def close(self) -> None:
        self._pieces.close()
        self._readers.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _generate(self) -> Iterator[bytes]:
        writer = _ZipWriter()
        entries = []
        for planned, read in _hashed(self._folder, self._plan, self._readers):
            path = self._folder / planned.item.path
            yield writer.local(planned.item.entry, planned.size, read.crc, planned.mtime)
            if read.data is not None:
                yield read.data
            else:
                yield from _copy(path, read)
            writer.offset += planned.size
            entries.append(_entry(planned, read))
        manifest = Manifest(self._plan.zip_size, tuple(entries))
        if self._spool is not None:
            try:
                save(self._spool, manifest)
            except OSError as error:
                raise FileError(error) from error
        if self._on_manifest is not None:
            self._on_manifest(manifest)
        tail = writer.finish()
        if writer.offset + len(tail) != self._plan.zip_size:
            raise AssertionError("the zip's length differs from its plan")  # a bug, not data
        yield tail


def write_zip(
    folder: Path,
    items: Iterable[Item],
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write the zip a `Body` would send to `path` (for tests and the benchmark)."""
    planned = plan(folder, items)
    manifests: list[Manifest] = []
    done = 0
    with Body(folder, planned, on_manifest=manifests.append) as body, open(path, "wb") as out:
        while piece := body.read(CHUNK):
            out.write(piece)
            done += len(piece)
            if progress is not None:
                progress(done)
    return manifests[0]


class _ZipWriter:
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


# -- the manifest ----------------------------------------------------------------------------


def save(spool: Path, manifest: Manifest) -> None:
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(spool / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1).encode())


def load(spool: Path) -> Manifest | None:
    """The manifest saved in `spool`, or None if there is none or it is unreadable."""
    try:
        data = json.loads((spool / MANIFEST_NAME).read_text(encoding="utf-8"))
        return Manifest(int(data["zip_size"]), tuple(Entry(**e) for e in data["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(spool: Path) -> None:
    """Delete the plan and manifest (xnatdrop's own files) once a drop is finished."""
    for name in (PLAN_NAME, MANIFEST_NAME):
        for leftover in (name, name + ".part"):
            (spool / leftover).unlink(missing_ok=True)
    # Zips of versions that wrote the upload to disk.
    for leftover in ("upload.zip", "upload.zip.part"):
        (spool / leftover).unlink(missing_ok=True)
