"""The upload zip, streamed, and its manifest.

The upload is one stored zip of the DICOM files a drop uploads (the rules decide which; excluded
files are simply not passed in). It is never written to disk: the pack step only *plans* it, and
the import step generates its bytes while sending them, reading and hashing each file on the way.

- `plan()` stats every file (a `rules.FileEntry`) and fixes the zip's layout: entry order,
  names, sizes and, from those, its exact length, before any data is read (ZIP64 decisions
  depend on sizes and offsets only). The pipeline keeps the `Plan` in its spool.
- `Body` is the request body: a file-like object with `__len__` (so the request has a
  Content-Length, not chunked encoding) whose `read()` produces the zip lazily. When every file
  has been hashed it hands the `Manifest` to its caller: for each file a manifest line
  (`Entry`), which is the file's `rules.FileEntry` with the size and MD5 of the bytes sent. The
  verify and archive steps compare what XNAT holds against this manifest.
- `digest()` builds the same manifest without sending anything, for a run that needs it but has
  none (a crash before the body was complete, with something already on the server).
- `write_zip()` drains a `Body` into a file: the same bytes, for tests and the benchmark.

Why the zip is stored, not deflated: DICOM pixel data barely compresses (a few percent for
typical MR) and deflate would cost more CPU time than it saves on the wire, on a 2-core host.

Why stream: building a 2 GB zip on disk (read, hash, write, fsync) sat on the critical path
before the first byte was sent. Streaming overlaps reading and hashing with the upload.

Why our own zip writer (`zipformat`): each local header must hold the entry's CRC-32, and it
precedes the data; so each file is hashed before its header is emitted.

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
not read, a full state folder when the caller saves the manifest) becomes `FileError`, for the
same reason; the pipeline sorts it by its path.

Entry names are the files' paths relative to the subject folder, or the names the caller gives
(the pipeline shortens those too long for XNAT to store, `upload_name`). The same streamed zip
carries sidecar folders to XNAT's resources, with their names as they are.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xnatdrop import names, rules, zipformat
from xnatdrop.errors import TransientError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WHOLE_FILE = 8 << 20  # files up to this size are read whole by a reader thread
WINDOW = 32 << 20  # bytes read ahead of the sender, at most
READERS = 2  # the host has 2 cores; hashing is the bottleneck


class Changed(TransientError):
    """A file of the frozen folder changed size or vanished after the plan was made."""


class FileError(TransientError):
    """Reading a file of the upload or saving the manifest failed while the body was being
    sent: `error` is the OSError. Raised as a TransientError, never as an OSError, because
    urllib3 would take an OSError from a body for a broken connection ("cannot connect")."""

    def __init__(self, error: OSError) -> None:
        super().__init__(f"{error.filename}: {error.strerror or error}")
        self.error = error


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
    """One zip entry of the plan: the file, its size and modification time when planned, and
    its name in the zip."""

    entry: rules.FileEntry
    size: int
    mtime: float
    zip_name: str


@dataclasses.dataclass(frozen=True)
class Plan:
    zip_size: int
    files: tuple[Planned, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.files)

    def study_uids(self) -> set[str]:
        return {p.entry.study_instance_uid for p in self.files if p.entry.study_instance_uid}

    def zip_names(self) -> dict[str, str]:
        """Path (relative, POSIX) -> name in the zip, of every file."""
        return {p.entry.path.as_posix(): p.zip_name for p in self.files}

    def to_json(self) -> dict[str, Any]:
        return {
            "zip_size": self.zip_size,
            "file_count": len(self.files),
            "bytes": self.total_bytes,
            "files": [
                {"entry": p.entry.to_json(), "size": p.size, "mtime": p.mtime, "name": p.zip_name}
                for p in self.files
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        files = tuple(
            Planned(rules.FileEntry.from_json(row["entry"]), int(row["size"]), float(row["mtime"]),
                    str(row["name"]))
            for row in data["files"]
        )  # fmt: skip
        return cls(int(data["zip_size"]), files)


@dataclasses.dataclass(frozen=True)
class Entry(rules.FileEntry):
    """One manifest line: a file of the upload with the MD5 of the bytes that went into the
    zip; `size` is the size of those bytes."""

    md5: str = dataclasses.field(kw_only=True)

    @classmethod
    def of(cls, file: rules.FileEntry, size: int, md5: str) -> Entry:
        """`file` as it was sent: `size` bytes with this MD5."""
        identity = {f.name: getattr(file, f.name) for f in dataclasses.fields(rules.FileEntry)}
        return cls(**{**identity, "size": size}, md5=md5)


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

    def to_json(self) -> dict[str, Any]:
        return {
            "zip_size": self.zip_size,
            "file_count": len(self.files),
            "bytes": self.total_bytes,
            "files": [e.to_json() for e in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(int(data["zip_size"]), tuple(Entry.from_json(e) for e in data["files"]))


# -- the plan --------------------------------------------------------------------------------


def plan(
    folder: Path, entries: Iterable[rules.FileEntry], zip_names: Mapping[str, str] | None = None
) -> Plan:
    """Stat each file under `folder` and lay out the zip; no file data is read.

    Each file's name in the zip is its path (relative, POSIX), or `zip_names[path]`. Raise
    Changed if a file is missing.
    """
    zip_names = zip_names or {}
    files = []
    for entry in entries:
        try:
            stat = os.stat(folder / entry.path)
        except FileNotFoundError:
            raise Changed(f"{folder / entry.path} is gone since the folder was checked") from None
        name = entry.path.as_posix()
        files.append(Planned(entry, stat.st_size, stat.st_mtime, zip_names.get(name, name)))
    layout = zipformat.Writer()
    for planned in files:
        layout.local(planned.zip_name, planned.size, 0, planned.mtime)
        layout.offset += planned.size
    size = layout.offset + len(layout.finish())
    return Plan(size, tuple(files))


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
                path = folder / entry.entry.path
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


def digest(folder: Path, planned: Plan) -> Manifest:
    """The manifest of the planned files, hashing them without sending."""
    with concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="hash") as readers:
        entries = [Entry.of(p.entry, r.size, r.md5) for p, r in _hashed(folder, planned, readers)]
    return Manifest(planned.zip_size, tuple(entries))


# -- the streamed zip ------------------------------------------------------------------------


class Body:
    """The zip of `planned` as a request body: `len()` is its size, `read()` its next bytes.

    `read(amount)` returns the next piece (a header, a small file, or one CHUNK of a large
    one), whatever `amount`; b"" at the end. When every file has been hashed, the manifest is
    passed to `on_manifest` (which may save it, or check it: an OSError it raises becomes
    FileError). Raise Changed if a file no longer matches the plan. `close()` stops the reader
    threads; a new Body sends again from the start.
    """

    def __init__(
        self,
        folder: Path,
        planned: Plan,
        on_manifest: Callable[[Manifest], None] | None = None,
    ) -> None:
        self._folder = folder
        self._plan = planned
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
        writer = zipformat.Writer()
        entries = []
        for planned, read in _hashed(self._folder, self._plan, self._readers):
            path = self._folder / planned.entry.path
            yield writer.local(planned.zip_name, planned.size, read.crc, planned.mtime)
            if read.data is None:
                yield from _copy(path, read)
            elif read.data:  # never b"" (an empty file): a body's readers take b"" for its end
                yield read.data
            writer.offset += planned.size
            entries.append(Entry.of(planned.entry, read.size, read.md5))
        manifest = Manifest(self._plan.zip_size, tuple(entries))
        if self._on_manifest is not None:
            try:
                self._on_manifest(manifest)
            except OSError as error:
                raise FileError(error) from error
        tail = writer.finish()
        if writer.offset + len(tail) != self._plan.zip_size:
            raise AssertionError("the zip's length differs from its plan")  # a bug, not data
        yield tail


def write_zip(
    folder: Path,
    entries: Iterable[rules.FileEntry],
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write the zip a `Body` would send to `path` (for tests and the benchmark)."""
    planned = plan(folder, entries)
    manifests: list[Manifest] = []
    done = 0
    with Body(folder, planned, on_manifest=manifests.append) as body, open(path, "wb") as out:
        while piece := body.read(CHUNK):
            out.write(piece)
            done += len(piece)
            if progress is not None:
                progress(done)
    return manifests[0]
