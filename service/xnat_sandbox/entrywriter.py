"""Writing imported files beside the receiving: worker threads fed through bounded queues.

The importer's request thread reads the body and each entry's header; the bytes of each file
then go through a bounded queue to a worker that computes the CRC-32 of each zip entry (which
`ZipInputStream` checks), then opens, writes and closes the hand-over's files in one call that
gives the GIL up once (`write_files`: `_entrywriter_c`, or its Python twin where it is not
built), so this work overlaps with receiving the next bytes. With one system call at a time,
each giving the GIL up and taking it back from the request thread, a 500 MB import took
0.475-0.506 s; with one call a hand-over, 0.427-0.451 s (three of each, interleaved).

No MD5 here: XNAT computes none when it imports a file (`GradualDicomImporter` writes the
stream to its file and hashes nothing); the catalog's digest is computed at archive, in
`MergePrearcToArchiveSession.postSave` → `PrearcUtils.cleanupScans` →
`CatalogUtils.writeCatalogToFile(catalogData, checksums)` → `calculateResourceChecksums`, and
only while the `checksums` preference is on. The sandbox's archive does the same (`archive.py`).

A file's bytes are handed over in batches of about `BATCH` bytes, and each queue holds at most
`QUEUE_BATCHES` hand-overs, so memory stays flat whatever the upload size. Files smaller than a
batch (most DICOM files) go over together, up to `GROUP_FILES` or `BATCH` bytes a hand-over:
one queue put and one worker wake-up per file cost the request thread more than the file's
bytes did (2 GB, 13,945 files: 182,468 futex calls, 13 a file, before grouping). A group must
not wait on the client: whoever reads a streamed body calls `hand_over()` before a read that
would wait for more bytes (`bodies.Body.ready`), so a file whose bytes have all arrived is on
disk while the client pauses, as with XNAT, which writes each entry as it reads it.

A file's size lands in the `result` list given with it once it is closed; `drain()` waits for
every queued file and re-raises the first error a worker met (a full disk, a CRC that does not
match); after an error the workers discard what is queued and remove the file they were writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from xnat_sandbox import bodies, zipstream

if TYPE_CHECKING:
    from xnat_sandbox.anonymize import Spliced
    from xnat_sandbox.dicomheader import HeaderTap

try:  # ISA-L's CRC-32: the same values as zlib's at a tenth of its cost (0.04 vs 0.5 ns/B)
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - a platform without an isal wheel
    _fast_crc32 = None

#: CRC-32 of a buffer (continuing from a previous value), as zlib.crc32 computes it.
crc32: Callable[..., int] = _fast_crc32 or zlib.crc32

BATCH = 1 << 20
QUEUE_BATCHES = 8
GROUP_FILES = 32
#: worker threads: creating a file costs the kernel tens of microseconds (more on ext4 after
#: many deletions, `recently_deleted`), so two let two files' creation and CRC overlap
LANES = 2


class CrcMismatch(Exception):
    """A zip entry's bytes do not match its CRC-32 (`ZipException: invalid entry CRC`)."""


class _File:
    """One file on its way: the request thread's unsent pieces, the worker's open file."""

    def __init__(self, path: str, result: list[object], crc: int | None) -> None:
        self.path = path
        self.result = result
        self.crc = crc
        self.expected: int | None = None
        self.lane = -1  # the worker's queue, once a first batch is sent (before: none)
        self.pieces: list[_Piece] = []
        self.held = 0
        # the worker's side: the open file's descriptor (os.open: no file object, no fstat)
        self.out: int | None = None
        self.size = 0


#: what a piece of a file is for: written to the file, covered by the entry's CRC-32, or both
WRITTEN, CHECKED = 1, 2
#: (bytes, WRITTEN | CHECKED bits)
_Piece = tuple[bytes | bytearray | memoryview, int]
#: a file's next pieces, and whether they are its last; a hand-over is a list of them
_Batch = tuple[_File, list[_Piece], bool]
#: what `write_files` takes for each file: its open descriptor or its path, buffers, close it
_Item = tuple[int | str, list[bytes | bytearray | memoryview], bool]


class EntryWriter:
    """`lanes` worker threads writing files from bounded queues of batches; each file goes
    whole to one worker, files taking turns between them."""

    def __init__(self, lanes: int = LANES) -> None:
        self._queues: list[queue.Queue[list[_Batch] | None]] = [
            queue.Queue(QUEUE_BATCHES) for _ in range(lanes)
        ]
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name="sandbox-entry-writer", daemon=True)
            for q in self._queues
        ]
        for thread in self._threads:
            thread.start()
        self._turn = 0
        self._group: list[_Batch] = []  # whole small files, not yet handed over
        self._group_bytes = 0
        self.hand_overs = 0  # queue puts made (a counter for tests and profiles)

    # -- request thread ------------------------------------------------------------------

    def begin(self, path: str, result: list[object], crc: int | None = None) -> _File:
        """Start a file; `result` gets [size] appended when it is closed. With `crc` (the
        CRC-32 of the bytes received before, 0 for none) the CRC-32 of what `write` gives is
        computed on from it and checked at `end`."""
        self._raise()
        return _File(path, result, crc)

    def write(self, handle: _File, data: bytes, received: bool = True) -> None:
        """Write `data`; `received=False` for bytes that are not the ones received (a rewritten
        header), which the CRC does not cover."""
        if not data:
            return
        handle.pieces.append((data, WRITTEN | CHECKED if received else WRITTEN))
        handle.held += len(data)
        if handle.held >= BATCH:
            self._send(handle, last=False)

    def check(self, handle: _File, data: bytes | bytearray) -> None:
        """Bytes received but not written as they are (a header the site script rewrites):
        the worker computes their CRC-32, not the request thread. `data` is the buffer a
        written piece already holds a view of, so it is not counted as held again."""
        if data:
            handle.pieces.append((data, CHECKED))

    def end(self, handle: _File, expected_crc: int | None = None) -> None:
        handle.expected = expected_crc
        if handle.lane >= 0:  # its first batches went to a worker: the rest follows them
            self._send(handle, last=True)
            return
        self._group.append((handle, handle.pieces, True))
        self._group_bytes += handle.held
        handle.pieces, handle.held = [], 0
        if self._group_bytes >= BATCH or len(self._group) >= GROUP_FILES:
            self._send_group()

    @property
    def holding(self) -> bool:
        """Whether whole files wait in a group not yet handed to a worker."""
        return bool(self._group)

    def hand_over(self) -> None:
        """Hand the files waiting in a group to a worker now (the body is about to wait)."""
        self._send_group()

    def drain(self) -> None:
        """Wait until every queued file is written; re-raise the workers' first error."""
        self._send_group()
        for lane in self._queues:
            lane.join()
        self._raise()

    def close(self) -> None:
        """Stop the workers once what is queued is done (errors are dropped: drain first)."""
        with contextlib.suppress(BaseException):
            self._send_group()
        for lane in self._queues:
            lane.put(None)
        for thread in self._threads:
            thread.join()

    def _lane(self) -> int:
        """The next worker's queue: hand-overs take turns."""
        lane = self._turn
        self._turn = (lane + 1) % len(self._queues)
        return lane

    def _send(self, handle: _File, last: bool) -> None:
        self._raise()
        if handle.lane < 0:
            handle.lane = self._lane()
        pieces, handle.pieces, handle.held = handle.pieces, [], 0
        self._queues[handle.lane].put([(handle, pieces, last)])
        self.hand_overs += 1

    def _send_group(self) -> None:
        if self._group:
            self._raise()
            group, self._group, self._group_bytes = self._group, [], 0
            self._queues[self._lane()].put(group)
            self.hand_overs += 1

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # -- workers -------------------------------------------------------------------------

    def _run(self, lane: queue.Queue[list[_Batch] | None]) -> None:
        while True:
            batches = lane.get()
            try:
                if batches is None:
                    return
                if self._error is None:
                    try:
                        self._take(batches)
                    except BaseException as error:  # handed to the request thread by drain()
                        self._error = error
                if self._error is not None:  # after a failure nothing more is written
                    for handle, _, _ in batches:
                        _discard(handle)
            finally:
                lane.task_done()

    def _take(self, batches: list[_Batch]) -> None:
        """Write a hand-over's files with one `write_files` call. Their CRC-32s are computed
        first (ISA-L's holds the GIL: 5 µs for a 136 KB file); a file whose CRC does not match
        is written, as `ZipInputStream` reads an entry to its end before it checks, and the
        files after it are not."""
        items: list[_Item] = []
        mismatch = None
        for handle, pieces, last in batches:
            buffers = []
            for data, use in pieces:
                if handle.crc is not None and use & CHECKED:
                    handle.crc = crc32(data, handle.crc)
                if use & WRITTEN:
                    buffers.append(data)
            items.append((handle.path if handle.out is None else handle.out, buffers, last))
            if last and handle.expected is not None and handle.crc != handle.expected:
                mismatch = handle
                break
        for (handle, _, last), (out, written, error) in zip(
            batches, write_files(items), strict=False
        ):
            handle.out = out if out >= 0 else None
            handle.size += written
            if error:
                raise OSError(error, os.strerror(error), handle.path)
            if handle is mismatch:
                raise CrcMismatch(f"{handle.path}: invalid entry CRC")
            if last:
                handle.result.append(handle.size)


def write_files_python(items: list[_Item]) -> list[tuple[int, int, int]]:
    """`_entrywriter_c.write_files` in Python, for where it is not built: each item (a file's
    open descriptor or its path to create, its buffers, whether to close it) opened, written
    with `writev`s and closed, in order; one (descriptor or -1, bytes written, errno or 0) an
    item, stopping after the first that fails. Each call here gives the GIL up and takes it
    back, which the C one does once a hand-over."""
    answers = []
    for target, buffers, close in items:
        out, written = target if isinstance(target, int) else -1, 0
        try:
            if out < 0:
                out = os.open(target, _CREATE, 0o666)
            written = _write_all(out, list(buffers))
            if close:
                out, closing = -1, out
                os.close(closing)
        except OSError as error:
            answers.append((out, written, error.errno or errno.EIO))
            break
        answers.append((out, written, 0))
    return answers


def _write_all(out: int, buffers: list[bytes | bytearray | memoryview]) -> int:
    """Write `buffers` in order with `writev`s (one, unless it writes short, which a regular
    file does not); a short write goes on from where it stopped. Return the bytes written."""
    total = sum(len(b) for b in buffers)
    done = 0
    while buffers:
        written = os.writev(out, buffers[:_IOV_MAX])
        if written == 0 and any(buffers):  # pragma: no cover - a regular file never does
            raise OSError(f"wrote nothing of {total - done} bytes")
        done += written
        while buffers and written >= len(buffers[0]):
            written -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and written:
            buffers[0] = memoryview(buffers[0])[written:]
    if done != total:  # pragma: no cover - writev never writes more than it is given
        raise OSError(f"wrote {done} of {total} bytes")
    return total


def write_entry(
    writer: EntryWriter,
    target: str,
    tap: HeaderTap,
    spliced: Spliced | None,
    result: list[object],
) -> None:
    """Hand the writer the kept header bytes (with the anonymised header spliced in, if given)
    and the rest of the stream as it is read; `result` gets [size] once it is written.

    A zip entry's CRC-32 is checked by the writer against the bytes as received (the kept
    header's before any splice), as `ZipInputStream` checks it.
    """
    source = tap.source
    check = isinstance(source, zipstream.Entry)
    if spliced is None:
        handle = writer.begin(target, result, 0 if check else None)
        writer.write(handle, tap.kept)  # not copied: nothing adds to it after this
    else:
        handle = writer.begin(target, result, 0 if check else None)
        if check:  # the bytes as received: the writer's CRC-32 starts with them
            writer.check(handle, tap.kept)
        writer.write(handle, spliced.head, received=False)
        writer.write(handle, memoryview(tap.kept)[spliced.resume :], received=False)
    while chunk := source.read(bodies.CHUNK):
        writer.write(handle, chunk)
    writer.end(handle, source.crc if isinstance(source, zipstream.Entry) else None)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

#: open(path, "wb"): created or truncated, write only, not inherited by children
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _discard(handle: _File) -> None:
    """Close and remove a file left half written."""
    if handle.out is not None:
        os.close(handle.out)
        handle.out = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.path)


try:  # a hand-over's files written with the GIL given up once (see _entrywriter_c.c)
    from xnat_sandbox._entrywriter_c import write_files
except ImportError:  # pragma: no cover - not built (no compiler where it was installed)
    write_files = write_files_python
