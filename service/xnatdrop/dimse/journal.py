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

    It is fsync'd when `SYNC_SECONDS` have passed since the last fsync, and on close, not after
    every line: a power cut or an OS crash can then lose the answers of the last half second,
    whose instances a resume sends again (the same harmless re-send). An fsync per line cost
    1-3 ms on the C-STORE's critical path, each instance's, while the receiver waited
    (bench/harness/cstore.py: 423 fsyncs, 0.55 s of a 13 s run on a loaded machine).
    """

    #: The most time between a line's write and its fsync while lines keep coming.
    SYNC_SECONDS = 0.5

    def __init__(self, path: Path, destination: str) -> None:
        self.path = path
        self.destination = destination
        self.stored: set[str] = set()
        self._fd: int | None = None
        self._synced = time.monotonic()
        self._unsynced = False
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
        """Append one answer and make it durable before the next instance goes out."""
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
        try:
            os.write(self._fd, data)
            self._unsynced = True
            if time.monotonic() - self._synced >= self.SYNC_SECONDS:
                self._sync()
        except OSError as error:
            raise self._unwritable(error) from None

    def _sync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self._synced = time.monotonic()
        self._unsynced = False

    def _unwritable(self, error: OSError) -> TransientSendError:
        reason = error.strerror or errno.errorcode.get(error.errno or 0, "I/O error")
        return TransientSendError(
            JOURNAL_UNWRITABLE,
            f"cannot write the DICOM send journal {self.path} ({reason})",
            "free space in xnatdrop's state folder or fix its permissions; nothing was lost",
        )

    def close(self) -> None:
        """Fsync what is not yet on disk, then close; raise TransientSendError if that fails."""
        if self._fd is None:
            return
        try:
            if self._unsynced:
                self._sync()
        except OSError as error:
            raise self._unwritable(error) from None
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
