"""The journal of one series' send: what the receiver answered for each instance.

One JSON line per answer, written to the file before the next instance goes out, so a push that
was killed resumes with the instances not yet stored. The instance in flight when the process
died is sent again: XNAT writes a re-sent instance over its earlier copy in the prearchive (same
SOP Instance and Class UID: "ok to overwrite", `GradualDicomImporter.getSafeFile`).
"""

from __future__ import annotations

import errno
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from xnatdrop.dimse.failures import JOURNAL_UNWRITABLE, TransientSendError
from xnatdrop.dimse.instances import Instance

#: The one thread that fsyncs and closes journals, in order, off the sender's path. Starting a
#: thread per journal cost tens of milliseconds per series on a loaded machine (`start` waits
#: until the new thread runs); at the process's exit, concurrent.futures finishes its queue.
_SYNCER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-fsync")


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The append-only record of what the receiver answered, one JSON object per line.

    Each line names the instance (SOP Instance UID), the destination (`XNAT@host:port`), the
    status code and what it meant (`stored`, `warning`, `failed`). Only lines for the same
    destination count when a push resumes, so pointing xnatdrop at another receiver sends
    everything again. A line torn by a kill is ignored, and the next line starts on its own.

    A line is written only after the receiver's answer, so the journal never claims an instance
    the receiver did not confirm (that would lose it). It is written unbuffered before the next
    instance goes out, so after a kill it lacks at most the instance in flight, which a resume
    sends again (harmless: see the module docstring).

    The fsync is not on the C-STORE's path: one thread per process (`_SYNCER`, started with the
    first journal's first line) makes what was written durable, at most every `SYNC_SECONDS`
    while lines come, and once more after `close` (which does not wait for it; the process's
    exit does). A power cut or an OS crash can then lose the answers written since the last
    fsync (half a second's while the send runs), whose instances a resume sends again (the
    same harmless re-send). An fsync per line, before the next instance went out, took 1-4 ms
    on average and up to a second when other processes had dirty pages to write (ext4 commits
    them with it), every instance waiting. A failed fsync is raised by a later `record` or
    `close`; the last one, after the close, leaves its lines to the kernel's own writeback.
    """

    #: The least time between two fsyncs while lines keep coming.
    SYNC_SECONDS = 0.5

    def __init__(self, path: Path, destination: str) -> None:
        self.path = path
        self.destination = destination
        self.stored: set[str] = set()
        self._fd: int | None = None
        self._sync: Future[None] | None = None
        self._synced = 0.0  # time.monotonic() of the last fsync handed to _SYNCER
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            text = path.read_bytes()
        except OSError as error:
            self.close()
            raise self._unwritable(error) from None
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # torn by a kill mid-write: that instance was not confirmed
            if (
                isinstance(entry, dict)
                and entry.get("to") == destination
                and entry.get("outcome") in ("stored", "warning")
            ):
                self.stored.add(str(entry.get("sop")))
        if text and not text.endswith(b"\n"):
            self._write(b"\n")

    def record(self, instance: Instance, code: int | None, outcome: str, comment: str = "") -> None:
        """Append one answer: in the file before the next instance goes out, on disk within
        about `SYNC_SECONDS` (the syncer thread)."""
        entry: dict[str, Any] = {
            "sop": instance.sop_instance_uid,
            "to": self.destination,
            "status": code,
            "outcome": outcome,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if comment:
            entry["comment"] = comment[:200]
        self._write((json.dumps(entry) + "\n").encode())
        if outcome in ("stored", "warning"):
            self.stored.add(instance.sop_instance_uid)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        self._raise_failure()
        try:
            os.write(self._fd, data)
        except OSError as error:
            raise self._unwritable(error) from None
        idle = self._sync is None or self._sync.done()
        if idle and time.monotonic() - self._synced >= self.SYNC_SECONDS:
            self._synced = time.monotonic()
            self._sync = _SYNCER.submit(os.fsync, self._fd)

    def _raise_failure(self) -> None:
        """Raise what the last fsync raised, once."""
        sync = self._sync
        if sync is not None and sync.done() and sync.exception() is not None:
            self._sync = None
            raise self._unwritable(sync.exception())  # type: ignore[arg-type]

    def _unwritable(self, error: OSError) -> TransientSendError:
        reason = error.strerror or errno.errorcode.get(error.errno or 0, "I/O error")
        return TransientSendError(
            JOURNAL_UNWRITABLE,
            f"cannot write the DICOM send journal {self.path} ({reason})",
            "free space in xnatdrop's state folder or fix its permissions; nothing was lost",
        )

    def close(self) -> None:
        """Hand the last fsync and the close of the file to `_SYNCER`, without waiting;
        raise TransientSendError if an earlier fsync had failed."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _SYNCER.submit(_sync_and_close, fd)
        self._raise_failure()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
