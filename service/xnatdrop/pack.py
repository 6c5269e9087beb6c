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
precedes the data; so each file is hashed before its header is emitted. (A data descriptor
after the data would spare that, but XNAT reads the upload with java.util.zip.ZipInputStream,
DicomZipImporter l.161, whose readLOC throws "only DEFLATED entries can have EXT descriptor"
for a stored entry.)

Why threads: MD5 is the slowest part (about 700 MB/s on one core, against 3 GB/s for zlib's
CRC-32 and 20 GB/s or more for ISA-L's, `zipformat.crc32`), and hashlib releases the GIL.
`READERS` worker threads read and hash ahead of the sender, in order, at most `WINDOW` bytes
ahead, so memory stays flat whatever the session size:
- consecutive files of up to RUN bytes in all (JOB while fewer than LANES) are one *run*: read
  straight into a buffer behind room for their headers, headers filled in, then handed to the
  MD5 lanes (`md5lanes.Lanes`), which hash sixteen or eight files at a time and keep their
  lanes full across runs: a file's digest may come after a later run's, so the manifest's
  rows follow the runs sent as their files are hashed (`packread.Digests`); one job, one
  piece, one send per run, not per file (a future, a header write and a socket send per
  44 KB file cost about as much as hashing it). Each run's files are opened soon after the
  run is handed out, by whichever reader starts its next job first (`packread.Prefetches`),
  and the kernel asked to read them in the background (`packread.prefetch`): a cold small
  file no longer waits for its own disk read while the disk has nothing else to do
  (OPEN_AHEAD files at most; the plan asks for the first window already);
- a file larger than a run, up to `WHOLE_FILE`, is read once into CHUNK pieces (`packread`
  reads, in the reader threads) and handed to the MD5 lanes as one file in pieces, while they
  hold less than `packread.LANES_HELD` bytes (else its reader hashes it);
- a larger file is hashed in a first pass (also by a reader) and sent in CHUNK pieces in a
  second one, which checks that the bytes did not change (its CRC must precede its data).
Pieces are reused buffers (`buffers.Buffers`): a fresh 1 MiB buffer costs as much in page
faults as hashing it. What the body keeps per file is 28 bytes (its MD5 and, for the central
directory, its offset and CRC); the manifest's `Entry` objects are made only when read.

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
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xnatdrop import buffers, md5lanes, names, packread, packrecords, rules, zipformat
from xnatdrop.packread import CHUNK, Changed, FileError
from xnatdrop.packrecords import Manifest, ManifestFile, Plan
from xnatdrop.packrecords import Planned as Planned  # re-exported: pack.Planned
from xnatdrop.planstream import Sendable

log = logging.getLogger(__name__)

WHOLE_FILE = 8 << 20  # files up to this size are read whole by a reader thread
WINDOW = 8 << 20  # bytes read ahead of the sender, at most
READERS = 2  # the host has 2 cores; hashing is the bottleneck
RUN = 1 << 20  # small files are read, hashed and sent in runs of about this many bytes
LANES, JOB = md5lanes.LANES, 4 << 20  # a run of fewer files goes on up to JOB bytes (`_runs`)
OPEN_AHEAD = 128  # small files of the runs handed out, opened and read by the kernel, at most
HEADER = 256  # room counted in a run for each local header (ZIP_NAME_MAX + fixed fields)


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
    fitted = names.fit(path[: len(path) - len(suffix)], suffix, limit=ZIP_NAME_MAX)
    # The path itself, not an equal copy: the plan holds both per file (~75 bytes a file).
    return path if fitted == path else fitted


# -- the plan --------------------------------------------------------------------------------


def plan(
    folder: Path, entries: Iterable[rules.FileEntry], zip_names: Mapping[str, str] | None = None
) -> Plan:
    """Stat each file under `folder` and lay out the zip; no file data is read here.

    Each file's name in the zip is its path (relative, POSIX), or `zip_names[path]`. Raise
    Changed if a file is missing.

    The kernel is asked to start reading the first WINDOW bytes (OPEN_AHEAD files at most) as
    they are stat'ed (`_ask_ahead`): the body's readers ask for the window only once the
    request starts, so the disk idled while the plan stat'ed the rest (3.6 µs a file: 37 ms
    at 10,000 files, 0.2 s at 50,000), and the first runs then waited for their reads.
    """
    zip_names = zip_names or {}
    planned, paths = Plan.planning(entries)  # in columns (`packplan`): no `Planned` per file
    # The zip's length from its entries' (local_length, central_length, end_length), never by
    # building its central directory: the same sums `Body` checks its bytes against.
    offset = central = asked = 0
    # Each file is stat'ed relative to the folder, opened once: a third less than by its whole
    # path, which the kernel walks again each time.
    directory: int | None = None
    try:
        for name in paths:
            try:
                if directory is None:
                    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                stat = os.stat(name, dir_fd=directory)
            except FileNotFoundError:
                raise Changed(f"{folder / name} is gone since the folder was checked") from None
            zip_name = zip_names.get(name, name)
            size = stat.st_size
            planned.place(name, size, stat.st_mtime, zip_name)
            if asked < WINDOW and len(planned.sizes) <= OPEN_AHEAD:
                _ask_ahead(directory, name, min(size, WINDOW - asked))
                asked += size
            central += zipformat.central_length(zip_name, size, offset)
            offset += zipformat.local_length(zip_name, size) + size
    finally:
        if directory is not None:
            os.close(directory)
    planned.zip_size = offset + central + zipformat.end_length(len(planned.sizes), offset, central)
    return planned


def _ask_ahead(directory: int, name: str, length: int) -> None:
    """Ask the kernel to read the first `length` bytes of a file of the plan's first window in
    the background (POSIX_FADV_WILLNEED, as `packread.prefetch`); advice only: a file that
    cannot be opened now is reported by its reader, in order."""
    try:
        descriptor = os.open(name, os.O_RDONLY, dir_fd=directory)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # a file system may not take the advice
            os.posix_fadvise(descriptor, 0, length, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(descriptor)


# -- reading and hashing ---------------------------------------------------------------------


def _pool() -> buffers.Buffers:
    """Enough buffers for every run the window holds, those in the readers' hands, the pieces
    the sender holds and those whose files wait in the MD5 lanes (a run's buffer or a large
    file's pieces a lane); each fits a run or a CHUNK with a header."""
    count = WINDOW // CHUNK + READERS * WHOLE_FILE // CHUNK + 4 + LANES
    count += packread.LANES_HELD // CHUNK
    return buffers.Buffers(count, RUN + 4096)


def _runs(sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of the plan's files (their `sizes`) read as one job:
    consecutive files of up to RUN bytes, headers included, or up to JOB bytes while it holds
    fewer than LANES, or one larger file alone.

    JOB was there to give the MD5 lanes several files of a run at once. Since the lanes keep
    their files across runs (`md5lanes.Lanes`) it only makes fewer, larger jobs of mid-size
    files; runs of RUN bytes at most measured the same (the push's 500 MB upload 0.57-0.64 s
    against 0.57-0.59 s), and the run shapes the tests and the benchmark know were kept."""
    start = 0
    while start < len(sizes):
        stop, held = start + 1, sizes[start] + HEADER
        while stop < len(sizes) and sizes[start] <= RUN and sizes[stop] <= RUN:
            held += sizes[stop] + HEADER
            if held > (JOB if stop - start < LANES else RUN):
                break
            stop += 1
        yield start, stop
        start = stop


_Job = concurrent.futures.Future  # of packread's read_run, read_one or digest_file


def _read_ahead(
    base: str,
    planned: Sendable,
    readers: concurrent.futures.Executor,
    pool: buffers.Buffers,
    lanes: md5lanes.Lanes,
) -> Iterator[tuple[int, int, Any]]:
    """Each run of the plan (`_runs`) with its read result, in order, read ahead by `readers`.

    At most WINDOW bytes of small files are held ahead, and OPEN_AHEAD small files; a large
    file counts as one CHUNK. Each small file is opened and handed to the kernel to read
    (`packread.prefetch`) soon after its run is handed out, not when its reader starts it: the
    disk has the whole window's files to read, not one run's at a time. Not by this thread:
    asking the kernel to read a cold file can block, and this thread is the sender's. By the
    readers, before each job (`packread.Prefetches`), not by a thread of its own: see there.
    """
    files, sizes = planned.files, planned.sizes  # a `Planned` made only for a large file
    queue: collections.deque[tuple[int, int, _Job[Any], int, _Job[list[int | None]] | None]]
    queue = collections.deque()
    ahead = opened = 0
    pending = _runs(sizes)
    prefetches = packread.Prefetches(base)
    try:
        while True:
            while ahead < WINDOW and opened < OPEN_AHEAD:
                run = next(pending, None)
                if run is None:
                    break
                start, stop = run
                descriptors: _Job[list[int | None]] | None = None
                if sizes[start] > WHOLE_FILE:
                    path = os.path.join(base, planned.path(start))
                    future = readers.submit(
                        prefetches.then, packread.digest_file, path, sizes[start]
                    )
                    cost = CHUNK
                elif sizes[start] > RUN:
                    future = readers.submit(
                        prefetches.then, packread.read_one, base, files[start], pool, lanes, start
                    )
                    cost = sizes[start] + HEADER
                else:
                    run_files = planned.columns(start, stop)
                    descriptors = prefetches.add(run_files)
                    future = readers.submit(
                        prefetches.then,
                        packread.read_run,
                        *(base, run_files, pool, descriptors, lanes, start),
                    )
                    cost = sum(sizes[start:stop]) + HEADER * (stop - start)
                    opened += stop - start
                queue.append((start, stop, future, cost, descriptors))
                ahead += cost
            if not queue:
                return
            start, stop, future, cost, descriptors = queue.popleft()
            ahead -= cost
            if descriptors is not None:
                opened -= stop - start
            yield start, stop, future.result()
    finally:
        for _, _, future, _, descriptors in queue:
            # A run that never started: its descriptors, once opened, are still ours to close.
            if future.cancel() and descriptors is not None and not descriptors.cancel():
                packread.close(descriptors.result())


def digest(folder: Path, planned: Plan) -> Manifest:
    """The manifest of the planned files, hashing them without sending."""
    base = os.fspath(folder)
    digests = bytearray()
    found = packread.Digests()
    with concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="hash") as readers:
        for start, stop, read in _read_ahead(base, planned, readers, _pool(), found.lanes):
            found.read(start, stop, _digest(planned.sizes[start], read))
            for _, _, md5 in found.ready():
                digests += md5
    for _, _, md5 in found.rest():
        digests += md5
    return Manifest.sent(planned.zip_size, planned, bytes(digests))


def _digest(size: int, read: Any) -> bytes | None:
    """The MD5 in a reader's result for a run whose first file is `size` bytes: a large
    file's (digest_file's, or read_one's where its reader hashed it); None for the files the
    lanes hash."""
    md5: bytes | None = read[0] if size > WHOLE_FILE else read[1] if size > RUN else None
    return md5


# -- the streamed zip ------------------------------------------------------------------------


class Body:
    """The zip of `planned` as a request body: `len()` is its size, `read()` its next bytes.

    `read(amount)` returns the next piece (a run of small files with their headers, a large
    file's header, one CHUNK of a large file, or part of the central directory), whatever
    `amount`; b"" at the end. When every file has been hashed, the manifest is passed to
    `on_manifest` (which may save it, or check it: an OSError it raises becomes FileError).
    With `manifest_file`, the manifest's text is written there as the zip is sent, each run's
    rows once the run is read and hashed, and committed (made durable) once every file is
    hashed, before the central directory is sent: the rows cost the sender nothing at the end
    while its readers work, and XNAT never has a complete zip whose manifest is not saved.
    Raise Changed if a file no longer matches the plan. `close()` stops the reader threads; a
    new Body sends again from the start.
    """

    def __init__(
        self,
        folder: Path,
        planned: Sendable,
        on_manifest: Callable[[Manifest], None] | None = None,
        manifest_file: ManifestFile | None = None,
    ) -> None:
        self._folder = folder
        self._plan = planned
        self._on_manifest = on_manifest
        self._manifest_file = manifest_file
        self._readers = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="upload")
        self._buffers = _pool()
        self._digests = packread.Digests()
        self._pieces = self._generate()
        self._done = False
        self._failed: BaseException | None = None

    def __len__(self) -> int:
        return self._plan.zip_size

    def read(self, amount: int = -1) -> bytes | bytearray:
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

    def _hashed(self, start: int, stop: int, md5: bytes, digests: bytearray) -> None:
        """Files `start`-`stop`, sent and hashed: their manifest rows, and their digests kept
        for the manifest passed at the end when it is wanted."""
        if self._manifest_file is not None:
            rows = packrecords.manifest_rows(self._plan, start, stop, md5)
            _saving(self._manifest_file.write, rows)
        if self._on_manifest is not None:
            digests += md5

    def _generate(self) -> Iterator[bytes | bytearray]:
        writer = zipformat.Writer()
        plan = self._plan  # read by position: a `Planned` made only for a large file
        sizes = plan.sizes
        base = os.fspath(self._folder)
        digests = bytearray()  # the whole manifest's, when it is wanted at the end
        text = self._manifest_file
        committing: concurrent.futures.Future[None] | None = None
        try:
            if text is not None:
                _saving(text.open, packrecords.manifest_head(self._plan))
            found = self._digests
            for start, stop, read in _read_ahead(
                base, self._plan, self._readers, self._buffers, found.lanes
            ):
                found.read(start, stop, _digest(sizes[start], read))
                if sizes[start] > WHOLE_FILE:
                    planned = plan.planned(start)
                    _, crc = read
                    header = zipformat.local_header(
                        planned.zip_name, planned.size, crc, planned.mtime
                    )
                    path = os.path.join(base, planned.entry.path)
                    yield from packread.copy(path, planned.size, crc, header, self._buffers)
                    writer.entry(crc, len(header) + planned.size)
                else:
                    pieces, *_, crcs, lengths = read  # read_one's has its MD5 between
                    if len(crcs) != stop - start:
                        raise AssertionError("a run read other files than planned")  # a bug
                    yield from pieces
                    writer.entries(crcs, lengths)
                # Rows written once their run is sent and its files hashed, while the readers
                # read the next ones: the sender would otherwise wait for them.
                for hashed in found.ready():
                    self._hashed(*hashed, digests)
            for hashed in found.rest():
                self._hashed(*hashed, digests)
            if text is not None:
                # Made durable by a reader, idle now, while this thread builds the central
                # directory's first pieces (`_built_while`); none is sent before it is saved.
                committing = self._readers.submit(_saving, text.commit, packrecords.MANIFEST_TAIL)
        finally:
            if text is not None and committing is None:
                text.abort()
        central = writer.finish(plan.central_rows())
        built: list[bytes] = []
        if text is not None and committing is not None:
            built = _built_while(committing, central)
            try:
                committing.result()
            except BaseException:
                if committing.done():  # the commit failed (not a Ctrl-C while it ran)
                    text.abort()
                raise
        if self._on_manifest is not None:
            manifest = Manifest.sent(plan.zip_size, plan, bytes(digests))
            del digests
            _saving(self._on_manifest, manifest)
            del manifest
        end = writer.offset
        for piece in itertools.chain(built, central):
            end += len(piece)
            if end >= self._plan.zip_size and end != self._plan.zip_size:
                raise AssertionError("the zip's length differs from its plan")  # a bug, not data
            yield piece
        if end != self._plan.zip_size:
            raise AssertionError("the zip's length differs from its plan")  # a bug, not data


BUILT_AHEAD = 8  # central directory pieces (256 KiB each) built while the manifest syncs, at most


def _built_while(saving: concurrent.futures.Future[None], central: Iterator[bytes]) -> list[bytes]:
    """The central directory's first pieces, built while `saving` (the manifest's commit, in
    a reader) runs, until it is done or BUILT_AHEAD are held.

    Why: the commit's fsync waits for the disk (3-7 ms for 1,000 files, ~40 ms for 50,000 on
    the benchmark's VM) and building the directory takes the CPU (2.5-5 µs a file); both sat
    one after the other at the end of every upload, the readers idle, and at 1,000 files
    (0.1 s in all) that tail was a tenth of the upload. The pieces are still sent only once
    the manifest is saved."""
    built: list[bytes] = []
    while not saving.done() and len(built) < BUILT_AHEAD:
        piece = next(central, None)
        if piece is None:
            break
        built.append(piece)
    return built


def _saving(save: Callable[[Any], None], what: Any) -> None:
    """Save (part of) the manifest while the body is sent: an OSError becomes FileError."""
    try:
        save(what)
    except OSError as error:
        raise FileError(error) from error


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
