"""Sending one series: C-STORE over one association, resumed from the journal, each status
sorted into stored, retry or refuse.

`send_series(files, settings, journal, stopping, progress)` stores one series and returns a
`SendReport`; it raises `TransientSendError` (retry later) or `errors.PermanentError`
(quarantine) with a code, a message and a fix. pynetdicom sends the bytes that follow the file
meta straight from the file (`association.configure_pynetdicom`), without decoding them.

References: DICOM PS3.4 Annex B, PS3.7 9.1.1 and Annex C (C-STORE and its statuses).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pynetdicom.association import Association

from xnatdrop import errors
from xnatdrop.config import DicomSettings
from xnatdrop.dimse.association import (
    Lost,
    Target,
    close_association,
    configure_pynetdicom,
    open_association,
)
from xnatdrop.dimse.failures import (
    FILE_UNSENDABLE,
    RECEIVER_BUSY,
    STORE_REFUSED,
    TransientSendError,
)
from xnatdrop.dimse.instances import Instance, bare_dataset, contexts_for, read_instance, unreadable
from xnatdrop.dimse.journal import Journal
from xnatdrop.dimse.statuses import Next, status_meaning, status_rule

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8 9.3.2.2: odd IDs 1-255)
MAX_RETRY_WAIT = 60.0  # the longest wait between two tries inside one push, in seconds


@dataclasses.dataclass
class SendReport:
    """What one `send_series` call did. `already` were recorded as stored by an earlier call
    (the journal); `stored` were stored now; `warnings` counts stored-with-warning statuses."""

    target: str
    total: int
    already: int = 0
    stored: int = 0
    warnings: dict[int, int] = dataclasses.field(default_factory=dict)
    retries: int = 0
    associations: int = 0
    lost: int = 0
    bytes: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def complete(self) -> bool:
        return self.already + self.stored == self.total

    @property
    def rate(self) -> float:
        """Instances stored per second in this call."""
        return self.stored / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int], None]


def send_series(
    files: Sequence[Path],
    settings: DicomSettings,
    journal: Path,
    stopping: threading.Event | None = None,
    progress: Progress | None = None,
    *,
    label: str | None = None,
) -> SendReport:
    """Store one series on the receiver, over one association, skipping what `journal` says is
    already stored there; return the report.

    The association proposes exactly the (SOP class, transfer syntax) pairs of the files. A
    failure status is retried (up to `settings.attempts` tries per instance, waiting
    `retry_wait_seconds`, doubling); a lost association is re-opened the same way. `stopping`
    is looked at between instances and during waits: when set, the association is released and
    the report comes back with `stopped` True, the journal holding what was stored.
    `progress(done, total)` is called after each instance the receiver confirmed. `label`
    names the series in the log line (default: the folder of the first file).

    Raise errors.PermanentError when retrying cannot help (a file that cannot be sent as
    stored, AE titles or contexts refused, a permanent status) and TransientSendError when a
    later push may succeed (unreachable, busy, association lost too often, journal unwritable).
    """
    configure_pynetdicom()
    stopping = stopping if stopping is not None else threading.Event()
    started = time.monotonic()
    paths = [Path(f) for f in files]
    label = label or (paths[0].parent.name if paths else "series")
    target = Target.of(settings)
    instances = [_read(path) for path in paths]
    with Journal(Path(journal), target.name) as book:
        pending = collections.deque(i for i in instances if i.sop_instance_uid not in book.stored)
        report = SendReport(target.name, len(instances), already=len(instances) - len(pending))
        contexts = contexts_for(pending)
        if len(contexts) > MAX_CONTEXTS:
            raise errors.PermanentError(
                FILE_UNSENDABLE,
                f"{label}: {len(contexts)} SOP class and transfer syntax pairs in one series; "
                f"one association carries at most {MAX_CONTEXTS}",
                "split the folder into one folder per series",
            )
        losses = 0
        while pending and not stopping.is_set():
            try:
                assoc = open_association(settings, target, contexts)
                report.associations += 1
                try:
                    while pending and not stopping.is_set():
                        if not _store(assoc, pending[0], settings, book, report, stopping):
                            break
                        pending.popleft()
                        losses = 0
                        if progress is not None:
                            progress(report.already + report.stored, report.total)
                finally:
                    close_association(assoc)
            except Lost as lost:
                losses += 1
                report.lost += 1
                if losses >= settings.attempts:
                    raise TransientSendError(
                        lost.code, f"{label}: {lost.reason} ({losses} tries)", lost.fix
                    ) from None
                wait = _backoff(settings, losses)
                log.warning(
                    "%s: %s; trying again in %.0f s (%d of %d)",
                    label,
                    lost.reason,
                    wait,
                    losses + 1,
                    settings.attempts,
                )
                stopping.wait(wait)
        report.stopped = bool(pending)
        report.seconds = time.monotonic() - started
    _log_report(label, report)
    return report


def _read(path: Path) -> Instance:
    try:
        return read_instance(path)
    except OSError as error:
        raise unreadable(path, error) from None


def _backoff(settings: DicomSettings, tries: int) -> float:
    return min(settings.retry_wait_seconds * 2 ** (tries - 1), MAX_RETRY_WAIT)


def _store(
    assoc: Association,
    instance: Instance,
    settings: DicomSettings,
    book: Journal,
    report: SendReport,
    stopping: threading.Event,
) -> bool:
    """Send one instance until the receiver stores it; False if a stop came first.

    Raise Lost when the association goes away (the caller re-opens it and sends the instance
    again), PermanentError or TransientSendError per `STATUS_RULES` when tries run out.
    """
    for attempt in range(1, settings.attempts + 1):
        began = time.monotonic()
        status = _c_store(assoc, instance)
        if status is None or "Status" not in status:
            waited = time.monotonic() - began
            if waited >= settings.dimse_timeout_seconds * 0.9:
                raise Lost(f"no answer to a C-STORE within {settings.dimse_timeout_seconds:g} s")
            raise Lost("the receiver aborted the association or closed the connection")
        code = int(status.Status)
        comment = str(status.get("ErrorComment", "") or "")
        rule = status_rule(code)
        if rule.next is Next.STORED:
            warning = code != 0x0000
            book.record(instance, code, "warning" if warning else "stored", comment)
            report.stored += 1
            report.bytes += instance.size
            if warning:
                report.warnings[code] = report.warnings.get(code, 0) + 1
            return True
        book.record(instance, code, "failed", comment)
        said = f"; the receiver said: {comment.strip()[:200]}" if comment.strip() else ""
        message = (
            f"{instance.path.name}: the receiver answered 0x{code:04X} "
            f"({status_meaning(code)}){said}"
        )
        if rule.next is Next.REFUSE or (
            attempt == settings.attempts and rule.next is Next.RETRY_THEN_REFUSE
        ):
            refused = errors.PermanentError(STORE_REFUSED, message, rule.fix)
            # For the caller: the status, and whether XNAT itself may be at fault (its 0xC000
            # also wraps a full disk or a database error, `statuses`), as for the REST 400.
            refused.status = code  # type: ignore[attr-defined]
            refused.suspect = rule.next is Next.RETRY_THEN_REFUSE  # type: ignore[attr-defined]
            raise refused
        if attempt == settings.attempts:
            raise TransientSendError(RECEIVER_BUSY, f"{message} ({attempt} tries)", rule.fix)
        report.retries += 1
        if stopping.wait(_backoff(settings, attempt)):
            return False
    return False  # not reached: the last attempt returns or raises


def _c_store(assoc: Association, instance: Instance) -> pydicom.Dataset | None:
    """One C-STORE-RQ; the response's status dataset, or None if the association is gone."""
    if not assoc.is_established:
        return None
    try:
        if instance.as_stored:
            return assoc.send_c_store(instance.path)
        dataset, _ = bare_dataset(instance.path)
        return assoc.send_c_store(dataset)
    except RuntimeError:  # pynetdicom: "the association … must be established"
        return None
    except OSError as error:
        assoc.abort()
        raise unreadable(instance.path, error) from None


def _log_report(label: str, report: SendReport) -> None:
    warned = ", ".join(
        f"{count} × 0x{code:04X} {status_meaning(code)}" for code, count in report.warnings.items()
    )
    log.info(
        "%s: %d of %d instances stored on %s (%d already) in %.1f s, %.1f MB, "
        "%d association(s)%s%s%s",
        label,
        report.already + report.stored,
        report.total,
        report.target,
        report.already,
        report.seconds,
        report.bytes / 1e6,
        report.associations,
        f", {report.retries} retried" if report.retries else "",
        f", warnings: {warned}" if warned else "",
        ", stopped on request" if report.stopped else "",
    )
