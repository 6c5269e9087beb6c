"""The upload zip and its manifest.

`pack()` writes one zip of the DICOM files a drop uploads (the rules decide which; excluded files
are simply not passed in) and a manifest with, for each file, its path relative to the subject
folder, size, MD5, SOPInstanceUID, SeriesInstanceUID and SeriesNumber. The verify and archive
steps compare what XNAT holds against this manifest.

Why the zip is stored, not deflated: DICOM pixel data barely compresses (a few percent for
typical MR) and deflate would cost more CPU time than it saves on the wire, on a 2-core host.

Why one pass: each file is read once; the MD5 is computed from the same bytes that are written
into the zip (zipfile computes the CRC on the way), so the disk reads each byte once.

Why threads: MD5 is the slowest part (about 700 MB/s on one core, against 5 GB/s for CRC32 and
for writing), and hashlib releases the GIL. Files up to `WHOLE_FILE` bytes (a classic slice or a
multi-frame volume) are read and hashed by `READERS` worker threads while the main thread writes
the previous ones into the zip, in order; at most `WINDOW` bytes are read ahead, so memory stays
bounded whatever the session size. Larger files are streamed in 1 MiB chunks by the main thread.

Crash safety: the zip is written to `upload.zip.part` and renamed, then the manifest is written
the same way. A manifest on disk therefore always describes a complete zip; `load()` returns
None when either is missing or the zip's size differs, and the pack step simply runs again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WHOLE_FILE = 8 << 20  # files up to this size are read whole by a reader thread
WINDOW = 32 << 20  # bytes read ahead of the zip writer, at most
READERS = 2  # the host has 2 cores; hashing is the bottleneck
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
        zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
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
                _add(archive, item.path, read.size, read.mtime, [read.data])
            else:
                read = _stream(archive, folder / item.path, item.path)
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
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, zip_path)
    manifest = Manifest(zip_path, zip_path.stat().st_size, tuple(entries))
    _write_atomic(spool / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1).encode())
    log.debug("packed %d files, %d bytes in %.1f s", len(entries), done, time.monotonic() - started)
    return manifest


@dataclasses.dataclass(frozen=True)
class _Read:
    size: int
    md5: str
    mtime: float
    data: bytes = b""


def _read_whole(path: Path) -> _Read:
    """Read and hash one small file (in a reader thread; hashlib releases the GIL)."""
    with open(path, "rb") as handle:
        mtime = os.fstat(handle.fileno()).st_mtime
        data = handle.read()
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return _Read(len(data), digest, mtime, data)


def _add(
    archive: zipfile.ZipFile, name: str, size: int, mtime: float, chunks: Iterable[bytes]
) -> None:
    """One stored entry of `size` bytes; zip64 headers only where a size needs them."""
    info = zipfile.ZipInfo(name, date_time=_zip_time(mtime))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    with archive.open(info, "w", force_zip64=size >= 1 << 31) as target:
        for chunk in chunks:
            target.write(chunk)


def _stream(archive: zipfile.ZipFile, path: Path, name: str) -> _Read:
    """Copy one large file into the zip in CHUNK pieces, hashing on the way."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        size = 0

        def chunks() -> Iterable[bytes]:
            nonlocal size
            while data := handle.read(CHUNK):
                digest.update(data)
                size += len(data)
                yield data

        _add(archive, name, stat.st_size, stat.st_mtime, chunks())
    return _Read(size, digest.hexdigest(), stat.st_mtime)


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
