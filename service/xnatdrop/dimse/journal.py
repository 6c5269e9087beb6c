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
import threading
import time
from pathlib import Path
from typing import Any

from xnatdrop.dimse.failures import JOURNAL_UNWRITABLE, TransientSendError
from xnatdrop.dimse.instances import Instance


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

    The fsync is not on the C-STORE's path: a thread of the journal's own makes what was
    written durable, at most every `SYNC_SECONDS` while lines come, and once more after
    `close` (which does not wait for it). A power cut or an OS crash can then lose the answers
    of the last half second or so, whose instances a resume sends again (the same harmless
    re-send). An fsync per line, before the next instance went out, took 1-4 ms on average
    and up to a second when other processes had dirty pages to write (ext4 commits them with
    it), every instance waiting. A failed fsync is raised by the next `record` or `close`.
    """

    #: The least time between two fsyncs while lines keep coming.
    SYNC_SECONDS = 0.5

    def __init__(self, path: Path, destination: str) -> None:
        self.path = path
        self.destination = destination
        self.stored: set[str] = set()
        self._fd: int | None = None
        self._changed = threading.Condition()
        self._unsynced = False
        self._closing = False
        self._failure: OSError | None = None
        self._syncer: threading.Thread | None = None
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
        with self._changed:
            self._unsynced = True
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, args=(self._fd,), name="journal-fsync", daemon=True
                )
                self._syncer.start()
            self._changed.notify()

    def _sync_loop(self, fd: int) -> None:
        """The syncer thread: fsync what was written, then rest `SYNC_SECONDS` (or until the
        close); after the close, a last fsync, and the descriptor is closed here."""
        while True:
            with self._changed:
                while not (self._unsynced or self._closing):
                    self._changed.wait()
                self._unsynced = False
                closing = self._closing
            try:
                os.fsync(fd)
            except OSError as error:
                with self._changed:
                    self._failure = error
                    self._changed.notify_all()
            if closing:
                os.close(fd)
                return
            with self._changed:
                self._changed.wait_for(lambda: self._closing, self.SYNC_SECONDS)

    def _raise_failure(self) -> None:
        with self._changed:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise self._unwritable(failure)

    def _unwritable(self, error: OSError) -> TransientSendError:
        reason = error.strerror or errno.errorcode.get(error.errno or 0, "I/O error")
        return TransientSendError(
            JOURNAL_UNWRITABLE,
            f"cannot write the DICOM send journal {self.path} ({reason})",
            "free space in xnatdrop's state folder or fix its permissions; nothing was lost",
        )

    def close(self) -> None:
        """Close without waiting for the last fsync (the syncer thread does it, then closes the
        descriptor); raise TransientSendError if an fsync had failed."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with self._changed:
            self._closing = True
            self._changed.notify()
            if self._syncer is None:
                os.close(fd)  # nothing was written: nothing to sync
        self._raise_failure()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
