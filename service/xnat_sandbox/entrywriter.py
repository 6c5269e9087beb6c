"""Writing imported files beside the receiving: one worker thread, a bounded queue.

The importer's request thread reads the body and each entry's header; the bytes of each file
then go through a bounded queue to a worker that opens the file, writes it, computes its MD5
(and, for a zip entry, its CRC-32, which `ZipInputStream` checks) and closes it: one
open/write/close per file, no re-read to hash. `hashlib`, `zlib.crc32` and file writes release
the GIL, so this work overlaps with receiving the next bytes. The queue holds at most
`QUEUE_PIECES` pieces of at most 1 MiB each, so memory stays flat whatever the upload size.

A file's size and MD5 land in the `result` list given with it once it is closed; `drain()`
waits for every queued file, and re-raises the first error the worker met (a full disk, a CRC
that does not match); after an error the worker discards what is queued and removes the file
it was writing.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from pathlib import Path

QUEUE_PIECES = 8
#: worker threads: MD5 runs at about one core's 0.6 GB/s, so one worker alone is the
#: bottleneck; two let the hashing of two files overlap on a 2-core machine
LANES = 2


class CrcMismatch(Exception):
    """A zip entry's bytes do not match its CRC-32 (`ZipException: invalid entry CRC`)."""


class _File:
    def __init__(self, path: Path, result: list[object], crc: int | None, lane: int) -> None:
        self.path = path
        self.result = result
        self.crc = crc
        self.expected: int | None = None
        self.lane = lane


class EntryWriter:
    """`lanes` worker threads writing files from bounded queues of (kind, item) pieces; each
    file goes whole to one worker, files taking turns between them."""

    def __init__(self, lanes: int = LANES) -> None:
        self._queues: list[queue.Queue[tuple[str, object]]] = [
            queue.Queue(QUEUE_PIECES) for _ in range(lanes)
        ]
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name="sandbox-entry-writer", daemon=True)
            for q in self._queues
        ]
        for thread in self._threads:
            thread.start()
        self._turn = 0
        self.busy_high = 0  # the most pieces ever queued in one lane (tests: the bound holds)

    # -- request thread ------------------------------------------------------------------

    def begin(self, path: Path, result: list[object], crc: int | None = None) -> _File:
        """Start a file; `result` gets [size, md5] appended when it is closed. With `crc` (the
        CRC-32 of the bytes received before, 0 for none) the CRC-32 of what `write` gives is
        computed on from it and checked at `end`."""
        self._raise()
        handle = _File(path, result, crc, self._turn)
        self._turn = (self._turn + 1) % len(self._queues)
        self._put(handle, "open", handle)
        return handle

    def write(self, handle: _File, data: bytes, received: bool = True) -> None:
        """Write `data`; `received=False` for bytes that are not the ones received (a rewritten
        header), which the CRC does not cover."""
        if data:
            self._put(handle, "data" if received else "made", data)

    def end(self, handle: _File, expected_crc: int | None = None) -> None:
        handle.expected = expected_crc
        self._put(handle, "close", handle)

    def drain(self) -> None:
        """Wait until every queued file is written; re-raise the workers' first error."""
        for lane in self._queues:
            lane.join()
        self._raise()

    def close(self) -> None:
        """Stop the workers once what is queued is done (errors are dropped: drain first)."""
        for lane in self._queues:
            lane.put(("stop", None))
        for thread in self._threads:
            thread.join()

    def _put(self, handle: _File, kind: str, item: object) -> None:
        self._raise()
        lane = self._queues[handle.lane]
        lane.put((kind, item))
        self.busy_high = max(self.busy_high, lane.qsize())

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # -- workers -------------------------------------------------------------------------

    def _run(self, lane: queue.Queue[tuple[str, object]]) -> None:
        out = None
        current: _File | None = None
        digest = hashlib.md5()
        size = 0
        while True:
            kind, item = lane.get()
            try:
                if kind == "stop":
                    return
                if self._error is not None:
                    continue  # discard what was queued after a failure
                if kind == "open":
                    assert isinstance(item, _File)
                    current, digest, size = item, hashlib.md5(), 0
                    out = open(item.path, "wb", buffering=0)  # noqa: SIM115 (closed below)
                elif kind in ("data", "made"):
                    assert isinstance(item, bytes) and out is not None and current is not None
                    digest.update(item)
                    if current.crc is not None and kind == "data":
                        current.crc = zlib.crc32(item, current.crc)
                    view = memoryview(item)
                    while view:
                        view = view[out.write(view) :]
                    size += len(item)
                else:  # close
                    assert isinstance(item, _File) and out is not None
                    out.close()
                    out = None
                    if item.expected is not None and item.crc != item.expected:
                        raise CrcMismatch(f"{item.path.name}: invalid entry CRC")
                    item.result.extend((size, digest.hexdigest()))
                    current = None
            except BaseException as error:  # handed to the request thread by drain()
                self._error = error
                if out is not None:
                    out.close()
                    out = None
                if current is not None:
                    current.path.unlink(missing_ok=True)
                    current = None
            finally:
                lane.task_done()
