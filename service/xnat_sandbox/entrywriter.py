"""Writing imported files beside the receiving: worker threads fed through bounded queues.

The importer's request thread reads the body and each entry's header; the bytes of each file
then go through a bounded queue to a worker that opens the file, writes it, computes the CRC-32
of a zip entry (which `ZipInputStream` checks) and closes it: one open/write/close per file.
The CRC-32 (ISA-L's, or zlib's), file creation and writes release the GIL, so this work
overlaps with receiving the next bytes.

No MD5 here: XNAT computes none when it imports a file (`GradualDicomImporter` writes the
stream to its file and hashes nothing); the catalog's digest is computed at archive, in
`MergePrearcToArchiveSession.postSave` → `PrearcUtils.cleanupScans` →
`CatalogUtils.writeCatalogToFile(catalogData, checksums)` → `calculateResourceChecksums`, and
only while the `checksums` preference is on. The sandbox's archive does the same (`archive.py`).

A file's bytes are handed over in batches of about `BATCH` bytes (a typical DICOM file is one
batch: one hand-over per file), and each queue holds at most `QUEUE_BATCHES` batches, so memory
stays flat whatever the upload size.

A file's size lands in the `result` list given with it once it is closed; `drain()` waits for
every queued file and re-raises the first error a worker met (a full disk, a CRC that does not
match); after an error the workers discard what is queued and remove the file they were writing.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import zlib
from collections.abc import Callable

try:  # ISA-L's CRC-32: the same values as zlib's at a tenth of its cost (0.04 vs 0.5 ns/B)
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - a platform without an isal wheel
    _fast_crc32 = None

#: CRC-32 of a buffer (continuing from a previous value), as zlib.crc32 computes it.
crc32: Callable[..., int] = _fast_crc32 or zlib.crc32

BATCH = 1 << 20
QUEUE_BATCHES = 8
#: worker threads: creating a file costs the kernel tens of microseconds (more on ext4 after
#: many deletions, `recently_deleted`), so two let two files' creation and CRC overlap
LANES = 2


class CrcMismatch(Exception):
    """A zip entry's bytes do not match its CRC-32 (`ZipException: invalid entry CRC`)."""


class _File:
    """One file on its way: the request thread's unsent pieces, the worker's open file."""

    def __init__(self, path: str, result: list[object], crc: int | None, lane: int) -> None:
        self.path = path
        self.result = result
        self.crc = crc
        self.expected: int | None = None
        self.lane = lane
        self.pieces: list[tuple[bytes, bool]] = []  # (bytes, received: covered by the CRC)
        self.held = 0
        # the worker's side: the open file's descriptor (os.open: no file object, no fstat)
        self.out: int | None = None
        self.size = 0


#: one hand-over: the file, its next pieces, and whether they are its last
_Batch = tuple[_File, list[tuple[bytes, bool]], bool]


class EntryWriter:
    """`lanes` worker threads writing files from bounded queues of batches; each file goes
    whole to one worker, files taking turns between them."""

    def __init__(self, lanes: int = LANES) -> None:
        self._queues: list[queue.Queue[_Batch | None]] = [
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

    # -- request thread ------------------------------------------------------------------

    def begin(self, path: str, result: list[object], crc: int | None = None) -> _File:
        """Start a file; `result` gets [size] appended when it is closed. With `crc` (the
        CRC-32 of the bytes received before, 0 for none) the CRC-32 of what `write` gives is
        computed on from it and checked at `end`."""
        self._raise()
        handle = _File(path, result, crc, self._turn)
        self._turn = (self._turn + 1) % len(self._queues)
        return handle

    def write(self, handle: _File, data: bytes, received: bool = True) -> None:
        """Write `data`; `received=False` for bytes that are not the ones received (a rewritten
        header), which the CRC does not cover."""
        if not data:
            return
        handle.pieces.append((data, received))
        handle.held += len(data)
        if handle.held >= BATCH:
            self._send(handle, last=False)

    def end(self, handle: _File, expected_crc: int | None = None) -> None:
        handle.expected = expected_crc
        self._send(handle, last=True)

    def drain(self) -> None:
        """Wait until every queued file is written; re-raise the workers' first error."""
        for lane in self._queues:
            lane.join()
        self._raise()

    def close(self) -> None:
        """Stop the workers once what is queued is done (errors are dropped: drain first)."""
        for lane in self._queues:
            lane.put(None)
        for thread in self._threads:
            thread.join()

    def _send(self, handle: _File, last: bool) -> None:
        self._raise()
        pieces, handle.pieces, handle.held = handle.pieces, [], 0
        self._queues[handle.lane].put((handle, pieces, last))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # -- workers -------------------------------------------------------------------------

    def _run(self, lane: queue.Queue[_Batch | None]) -> None:
        while True:
            batch = lane.get()
            try:
                if batch is None:
                    return
                if self._error is None:
                    self._take(*batch)
                else:
                    _discard(batch[0])  # after a failure nothing more is written
            except BaseException as error:  # handed to the request thread by drain()
                self._error = error
                if batch is not None:
                    _discard(batch[0])
            finally:
                lane.task_done()

    def _take(self, handle: _File, pieces: list[tuple[bytes, bool]], last: bool) -> None:
        if handle.out is None:
            handle.out = os.open(handle.path, _CREATE, 0o666)
        out = handle.out
        for data, received in pieces:
            if handle.crc is not None and received:
                handle.crc = crc32(data, handle.crc)
            written = os.write(out, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(out, view) :]
            handle.size += len(data)
        if not last:
            return
        handle.out = None
        os.close(out)
        if handle.expected is not None and handle.crc != handle.expected:
            raise CrcMismatch(f"{handle.path}: invalid entry CRC")
        handle.result.append(handle.size)


#: open(path, "wb"): created or truncated, write only, not inherited by children
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _discard(handle: _File) -> None:
    """Close and remove a file left half written."""
    if handle.out is not None:
        os.close(handle.out)
        handle.out = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.path)
