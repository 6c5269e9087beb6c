"""The DICOM transport: C-STORE of one series to XNAT's receiver, and C-ECHO for `doctor`.

The only DICOM networking in xnatdrop (pynetdicom as the service user, SCU). Two public calls:

- `send_series(files, settings, journal, stopping, progress)` stores one series over one
  association and returns a `SendReport`; it raises `TransientSendError` (retry later) or
  `errors.PermanentError` (quarantine) with a code, a message and a fix.
- `echo(settings)` returns an `EchoResult` whose `sentence` is the one line `doctor` prints.

Each instance goes out **as stored**: the presentation contexts proposed are exactly the (SOP
class, transfer syntax) pairs read from the files' meta information, one transfer syntax each, so
the receiver cannot pick another one, and pynetdicom sends the bytes that follow the file meta
straight from the file (`_config.STORE_SEND_CHUNKED_DATASET`), without decoding or re-encoding
them. A file without file meta is sent from its decoded dataset only when that re-encodes to
exactly the stored bytes.

What the receiver answered for each instance is appended to a **journal** (one JSON line per
answer, flushed and fsync'd before the next instance goes out), so a push that was killed resumes
with the instances not yet stored. The instance in flight when the process died is sent again:
XNAT writes a re-sent instance over its earlier copy in the prearchive (same SOP Instance and
Class UID: "ok to overwrite", `GradualDicomImporter.getSafeFile`).

References: DICOM PS3.4 Annex B (Storage Service Class, statuses in B.2.3), PS3.7 9.1.1 and
Annex C (C-STORE and general statuses), PS3.8 9.3.4 (A-ASSOCIATE-RJ result, source and reason);
XNAT's receiver: reference xnat-rest.md §9 and XNAT `web/src/main/java/org/nrg/dcm/scp/
CStoreService.java`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.sop_class import Verification
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from xnatdrop import errors
from xnatdrop.config import DicomSettings

log = logging.getLogger(__name__)

# Stable codes a person sees in QUARANTINE.json or `status` (see each raise for its fix).
REFUSED_AE = "DICOM_AE_REFUSED"  # A-ASSOCIATE-RJ, permanent: AE titles, application context
CONTEXT_REFUSED = "DICOM_CONTEXT_REFUSED"  # the receiver does not take this SOP class/syntax
STORE_REFUSED = "DICOM_STORE_REFUSED"  # a C-STORE failure status retrying cannot fix
FILE_UNSENDABLE = "DICOM_FILE_UNSENDABLE"  # a file that cannot be sent as stored
UNREACHABLE = "DICOM_UNREACHABLE"  # no connection, no answer, association lost (transient)
RECEIVER_BUSY = "DICOM_RECEIVER_BUSY"  # A-ASSOCIATE-RJ transient, out of resources (transient)
JOURNAL_UNWRITABLE = "DICOM_JOURNAL_UNWRITABLE"  # the journal cannot be written (transient)

MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8 9.3.2.2: odd IDs 1-255)
MAX_RETRY_WAIT = 60.0  # the longest wait between two tries inside one push, in seconds


class TransientSendError(errors.TransientError):
    """Retry later: the receiver is unreachable, busy, or lost the association.

    `code` and `fix` are for `status` and the operator, like `PermanentError`'s.
    """

    def __init__(self, code: str, message: str, fix: str) -> None:
        self.code = code
        self.fix = fix
        super().__init__(message)


# --- what each C-STORE status means for us ------------------------------------------------


class Next(enum.Enum):
    """What the sender does after a C-STORE response."""

    STORED = "stored"  # success or warning: record it and go on
    RETRY = "retry"  # try the instance again; still failing: stop, retry the push later
    RETRY_THEN_REFUSE = "retry, then refuse"  # try again; still failing: quarantine
    REFUSE = "refuse"  # retrying cannot help: quarantine at once


@dataclasses.dataclass(frozen=True)
class StatusRule:
    """The status codes in `codes`, what the sender does next, and what a person can do."""

    codes: range
    next: Next
    fix: str


_ASK_ADMIN = "ask the XNAT admin what the receiver's log says about it"
# The receiver's C-STORE statuses and what xnatdrop does next, pynetdicom `status.py` style. The
# meaning of each code comes from pynetdicom's STORAGE_SERVICE_CLASS_STATUS (PS3.4 B.2.3, PS3.7
# C). XNAT answers 0xC000 for a ClientException (an unreadable object, missing UIDs, or "Concurrent
# file sends of the same data" while the same file is being written) and 0xA700 for anything else
# that went wrong (disk full, database, anonymisation script): CStoreService.doCStore. So 0xA7xx
# is retried and then left for a later push, and 0xCxxx is retried and then quarantined.
# Warnings (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match SOP
# class, 0x0107, 0x0116) mean the instance was stored: they are recorded and counted.
STATUS_RULES: tuple[StatusRule, ...] = (
    StatusRule(range(0x0000, 0x0001), Next.STORED, ""),
    StatusRule(range(0x0001, 0x0002), Next.STORED, ""),
    StatusRule(range(0x0107, 0x0108), Next.STORED, ""),
    StatusRule(range(0x0116, 0x0117), Next.STORED, ""),
    StatusRule(range(0xB000, 0xC000), Next.STORED, ""),
    StatusRule(
        range(0xA700, 0xA800),
        Next.RETRY,
        "XNAT could not file the instance (disk full, database or anonymisation script); "
        f"xnatdrop tries again later; if it keeps failing, {_ASK_ADMIN}",
    ),
    StatusRule(range(0x0110, 0x0111), Next.RETRY, f"xnatdrop tries again later; {_ASK_ADMIN}"),
    StatusRule(range(0x0210, 0x0211), Next.RETRY, "xnatdrop tries again later"),
    StatusRule(range(0x0213, 0x0214), Next.RETRY, "xnatdrop tries again later"),
    StatusRule(range(0xFE00, 0xFE01), Next.RETRY, "xnatdrop tries again later"),
    StatusRule(
        range(0xA900, 0xAA00),
        Next.REFUSE,
        "the file's content does not match its SOP class: re-export the series from the "
        "scanner, or leave it out of the drop",
    ),
    StatusRule(
        range(0xC000, 0xD000),
        Next.RETRY_THEN_REFUSE,
        "XNAT could not read or file the instance: re-export the series from the scanner; "
        f"if it is intact, {_ASK_ADMIN}",
    ),
    StatusRule(
        range(0x0122, 0x0123),
        Next.REFUSE,
        "the receiver does not store this kind of object: ask the XNAT admin to accept its "
        'SOP class, or use transport = "rest" for this drop',
    ),
    StatusRule(
        range(0x0124, 0x0125),
        Next.REFUSE,
        "the receiver does not let our AE title store here: ask the XNAT admin to allow "
        "dicom.calling_aet",
    ),
)
_UNKNOWN_FAILURE = StatusRule(
    range(0), Next.RETRY_THEN_REFUSE, f"an unexpected failure status; {_ASK_ADMIN}"
)


def status_rule(code: int) -> StatusRule:
    """The rule for one C-STORE status code; any failure code not listed is retried, then
    refused (a code we do not know is not one retrying will fix)."""
    for rule in STATUS_RULES:
        if code in rule.codes:
            return rule
    return _UNKNOWN_FAILURE


def status_meaning(code: int) -> str:
    """The standard's name for a C-STORE status, e.g. "Refused: Out of Resources"."""
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Unknown", "unknown status"))
    return text or category


# --- the files ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instance:
    """One file to send, as its file meta describes it.

    `as_stored` is True when the bytes after the file meta go on the wire unchanged (the normal
    case). False for a file without file meta: it is sent from its decoded dataset, which was
    checked to re-encode to exactly the stored bytes.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int
    as_stored: bool = True


# What a Part 10 file's meta must hold for pynetdicom to send it without decoding it.
META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def read_instance(path: Path) -> Instance:
    """Read the file meta of one file (and nothing else, for a normal Part 10 file).

    Raise PermanentError(FILE_UNSENDABLE) for a file that is not DICOM, lacks its UIDs, or has
    no file meta and could not be sent byte for byte; OSError if it cannot be read.
    """
    size = path.stat().st_size
    try:
        meta, _ = split_dataset(path)
    except InvalidDicomError:
        meta = None
    except (ValueError, EOFError) as error:
        raise _unsendable(path, f"its file meta cannot be read ({type(error).__name__})") from None
    if meta is not None and all(
        keyword in meta
        for keyword in (
            "MediaStorageSOPClassUID",
            "MediaStorageSOPInstanceUID",
            "TransferSyntaxUID",
        )
    ):
        return Instance(
            path=path,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax=str(meta.TransferSyntaxUID),
            size=size,
        )
    return _bare_instance(path, size)


def _bare_instance(path: Path, size: int) -> Instance:
    """A file without (complete) file meta, usable only as `_bare_dataset` allows."""
    dataset, syntax = _bare_dataset(path)
    return Instance(
        path=path,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        transfer_syntax=str(syntax),
        size=size,
        as_stored=False,
    )


def _bare_dataset(path: Path) -> tuple[pydicom.Dataset, UID]:
    """Decode a file without file meta, for sending it from the dataset.

    Allowed only when its encoding is an uncompressed one pydicom can tell from the bytes
    (implicit or explicit VR) and re-encoding it gives back exactly the stored bytes, so that
    what goes on the wire is still the file as stored.
    """
    raw = path.read_bytes()
    try:
        dataset = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, ValueError, EOFError, AttributeError) as error:
        raise _unsendable(path, f"it cannot be read as DICOM ({type(error).__name__})") from None
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in dataset]
    if missing:
        raise _unsendable(path, f"it has no {' or '.join(missing)}")
    if "PixelData" in dataset and dataset["PixelData"].is_undefined_length:
        raise _unsendable(path, "it has compressed pixel data but no file meta naming the codec")
    implicit, little = (bool(flag) for flag in dataset.original_encoding)
    start = 132 if raw[128:132] == b"DICM" else 0
    try:
        again = encode(dataset, implicit, little)
    except (ValueError, TypeError, AttributeError):
        again = None
    if again != raw[start:]:
        raise _unsendable(path, "it has no complete file meta and cannot be re-sent byte for byte")
    if not little:
        syntax = ExplicitVRBigEndian
    else:
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    return dataset, syntax


def _unsendable(path: Path, why: str) -> errors.PermanentError:
    return errors.PermanentError(
        FILE_UNSENDABLE,
        f"{path.name} cannot be sent to the DICOM receiver as stored: {why}",
        'fix or leave out the file (re-export it from the scanner), or use transport = "rest" '
        "for this drop",
    )


def contexts_for(instances: Iterable[Instance]) -> list[tuple[str, str]]:
    """The presentation contexts to propose: each (SOP class, transfer syntax) pair present,
    in first-seen order, each with that one transfer syntax, so nothing is transcoded."""
    return list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in instances))


# --- the journal -------------------------------------------------------------------------


class Journal:
    """The append-only record of what the receiver answered, one JSON object per line.

    Each line names the instance (SOP Instance UID), the destination (`XNAT@host:port`), the
    status code and what it meant (`stored`, `warning`, `failed`). Only lines for the same
    destination count when a push resumes, so pointing xnatdrop at another receiver sends
    everything again. A line torn by a kill is ignored, and the next line starts on its own.

    A line is written only after the receiver's answer, so the journal never claims an instance
    the receiver did not confirm (that would lose it). It is written unbuffered and fsync'd
    before the next instance goes out, so after a kill or a power cut it lacks at most the
    instance in flight, which a resume sends again (harmless: see the module docstring).
    """

    def __init__(self, path: Path, destination: str) -> None:
        self.path = path
        self.destination = destination
        self.stored: set[str] = set()
        self._fd: int | None = None
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
            os.fsync(self._fd)
        except OSError as error:
            raise self._unwritable(error) from None

    def _unwritable(self, error: OSError) -> TransientSendError:
        reason = error.strerror or errno.errorcode.get(error.errno or 0, "I/O error")
        return TransientSendError(
            JOURNAL_UNWRITABLE,
            f"cannot write the DICOM send journal {self.path} ({reason})",
            "free space in xnatdrop's state folder or fix its permissions; nothing was lost",
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- associations ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """Where instances go: the receiver's address and both AE titles."""

    host: str
    port: int
    called_aet: str
    calling_aet: str

    @classmethod
    def of(cls, settings: DicomSettings) -> Target:
        host = settings.host or "127.0.0.1"  # Config fills it from xnat.url; bare settings: local
        return cls(host, settings.port, settings.called_aet, settings.calling_aet)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """How logs, the journal and messages name the receiver: `XNAT@host:8104`."""
        return f"{self.called_aet}@{self.address}"


class _Lost(Exception):
    """No association, or it went away: worth opening a new one after a wait."""

    def __init__(self, reason: str, code: str = UNREACHABLE, fix: str = "") -> None:
        self.reason = reason
        self.code = code
        self.fix = fix or (
            "check that XNAT's DICOM receiver is running and reachable from this machine "
            "(xnatdrop doctor); xnatdrop tries again later"
        )
        super().__init__(reason)


def _configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings; xnatdrop is the only pynetdicom user in its process.

    - STORE_SEND_CHUNKED_DATASET: `send_c_store(path)` sends the bytes after the file meta
      straight from the file, in PDU-sized pieces, instead of `dcmread` + re-encoding them
      (pynetdicom `association.py::send_c_store`, `dimse_messages.py::encode_msg`). Only
      requester sends are affected; receiving is not.
    - LOG_HANDLER_LEVEL "none": pynetdicom's standard event handlers log every PDU and DIMSE
      message, SOP Instance UIDs included, at DEBUG; xnatdrop logs labels and counts only.
      The identifier switches cover C-FIND/GET/MOVE, which xnatdrop never sends; set anyway.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def _no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: turn Nagle's algorithm off on our socket.

    A DIMSE message leaves as several writes (the command PDV, then data PDVs); with Nagle on,
    a write waits for the ACK of the previous one, which the receiver may hold back for its
    delayed-ACK time (~40 ms on Linux), once per message. Measured against Orthanc (DCMTK)
    over loopback, series of small MR images: 20 instances/s with Nagle, 120/s without.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _application_entity(settings: DicomSettings, contexts: Sequence[tuple[str, str]]) -> AE:
    ae = AE(ae_title=settings.calling_aet)
    ae.connection_timeout = settings.connect_timeout_seconds
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    return ae


@dataclasses.dataclass
class _Opened:
    """An association attempt; `assoc` is None when the host name did not resolve."""

    assoc: Association | None
    connected: bool


def _associate(
    settings: DicomSettings, target: Target, contexts: Sequence[tuple[str, str]]
) -> _Opened:
    ae = _application_entity(settings, contexts)
    connected = threading.Event()

    def on_open(event: evt.Event) -> None:
        connected.set()
        _no_delay(event)

    try:
        assoc = ae.associate(
            target.host,
            target.port,
            ae_title=target.called_aet,
            max_pdu=settings.max_pdu,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
        )
    except socket.gaierror:  # pynetdicom resolves the host before it connects
        return _Opened(None, connected=False)
    return _Opened(assoc, connected.is_set())


def _open(
    settings: DicomSettings, target: Target, contexts: Sequence[tuple[str, str]]
) -> Association:
    """Open one association proposing `contexts`; every context must be accepted.

    Raise PermanentError when the receiver rejects it for good (AE titles, contexts), _Lost
    when trying again later may work (no connection, no answer, a transient rejection).
    """
    opened = _associate(settings, target, contexts)
    assoc = opened.assoc
    if assoc is None or not opened.connected:
        raise _Lost(f"cannot connect to {target.address} ({_why_unreachable(settings, target)})")
    if assoc.is_rejected:
        raise _rejection(assoc, target)
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            raise _contexts_refused(assoc, target)
        raise _Lost(
            f"the receiver at {target.address} did not accept the association "
            f"(no answer within {settings.acse_timeout_seconds:g} s, or it aborted)"
        )
    if assoc.rejected_contexts:
        error = _contexts_refused(assoc, target)
        _close(assoc)
        raise error
    return assoc


def _why_unreachable(settings: DicomSettings, target: Target) -> str:
    """pynetdicom logs why it could not connect but does not say: ask the OS once more."""
    try:
        with socket.create_connection(
            (target.host, target.port), timeout=settings.connect_timeout_seconds
        ):
            return "it did not answer in time"
    except TimeoutError:
        return f"no answer within {settings.connect_timeout_seconds:g} s"
    except socket.gaierror:
        return f"unknown host {target.host}"
    except OSError as error:
        return (error.strerror or "network error").lower()


# PS3.8 9.3.4 / 7.1.1.9: A-ASSOCIATE-RJ (result source, reason) → what to tell a person.
_REJECT_REASONS: dict[tuple[int, int], tuple[str, str]] = {
    (1, 2): (
        "does not support the DICOM application context",
        "check dicom.host and dicom.port point at a DICOM receiver",
    ),
    (1, 3): (
        "does not know our calling AE title {calling}",
        "ask the XNAT admin to allow AE title {calling}, or set dicom.calling_aet to one it knows",
    ),
    (1, 7): (
        "is not AE title {called} (called AE title not recognised)",
        "set dicom.called_aet to the receiver's AE title (a stock XNAT receiver is XNAT)",
    ),
    (2, 2): (
        "does not support our protocol version",
        "check dicom.host and dicom.port point at a DICOM receiver",
    ),
    (3, 1): ("is congested", "xnatdrop tries again later"),
    (3, 2): ("has reached its limit of associations", "xnatdrop tries again later"),
}


def _refusal(assoc: Association, target: Target) -> tuple[bool, str, str]:
    """(permanent, sentence, fix) for an A-ASSOCIATE-RJ."""
    reply = assoc.acceptor.primitive
    result = int(getattr(reply, "result", 1) or 1)
    source = int(getattr(reply, "result_source", 1) or 1)
    reason = int(getattr(reply, "diagnostic", 1) or 1)
    what, fix = _REJECT_REASONS.get(
        (source, reason),
        (
            f"gave no usable reason (result {result}, source {source}, reason {reason})",
            "ask the XNAT admin why the receiver refuses this machine",
        ),
    )
    names = {"called": target.called_aet, "calling": target.calling_aet}
    sentence = (
        f"the receiver at {target.address} refused the association: it {what.format(**names)}"
    )
    return result == 1, sentence, fix.format(**names)


def _rejection(assoc: Association, target: Target) -> Exception:
    permanent, sentence, fix = _refusal(assoc, target)
    if permanent:
        return errors.PermanentError(REFUSED_AE, sentence, fix)
    return _Lost(sentence, RECEIVER_BUSY, fix)


# PS3.8 9.3.3.2: presentation context result/reason.
_CONTEXT_RESULTS = {
    1: "refused by the receiver's user",
    2: "refused without a reason",
    3: "this SOP class is not supported",
    4: "this transfer syntax is not supported",
}


def _contexts_refused(assoc: Association, target: Target) -> errors.PermanentError:
    parts = []
    for context in assoc.rejected_contexts:
        syntax = context.transfer_syntax[0] if context.transfer_syntax else "?"
        parts.append(
            f"{UID(context.abstract_syntax).name} in {UID(syntax).name} "
            f"({_CONTEXT_RESULTS.get(context.result or 0, 'refused')})"
        )
    return errors.PermanentError(
        CONTEXT_REFUSED,
        f"the receiver at {target.address} does not accept {'; '.join(parts)}",
        "ask the XNAT admin to accept these SOP classes and transfer syntaxes on the receiver, "
        'or use transport = "rest" for this drop (xnatdrop never converts files)',
    )


def _close(assoc: Association) -> None:
    """Release an established association; abort one that is half open."""
    if assoc.is_established:
        assoc.release()
    elif not (assoc.is_aborted or assoc.is_released or assoc.is_rejected):
        assoc.abort()


# --- sending -----------------------------------------------------------------------------


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
    _configure_pynetdicom()
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
                assoc = _open(settings, target, contexts)
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
                    _close(assoc)
            except _Lost as lost:
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
        raise TransientSendError(
            FILE_UNSENDABLE,
            f"cannot read {path.name} ({(error.strerror or 'I/O error').lower()})",
            "check the drop's folder is readable; xnatdrop tries again later",
        ) from None


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

    Raise _Lost when the association goes away (the caller re-opens it and sends the instance
    again), PermanentError or TransientSendError per `STATUS_RULES` when tries run out.
    """
    for attempt in range(1, settings.attempts + 1):
        began = time.monotonic()
        status = _c_store(assoc, instance)
        if status is None or "Status" not in status:
            waited = time.monotonic() - began
            if waited >= settings.dimse_timeout_seconds * 0.9:
                raise _Lost(f"no answer to a C-STORE within {settings.dimse_timeout_seconds:g} s")
            raise _Lost("the receiver aborted the association or closed the connection")
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
            raise errors.PermanentError(STORE_REFUSED, message, rule.fix)
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
        dataset, _ = _bare_dataset(instance.path)
        return assoc.send_c_store(dataset)
    except RuntimeError:  # pynetdicom: "the association … must be established"
        return None
    except OSError as error:
        assoc.abort()
        raise TransientSendError(
            FILE_UNSENDABLE,
            f"cannot read {instance.path.name} ({(error.strerror or 'I/O error').lower()})",
            "check the drop's folder is readable; xnatdrop tries again later",
        ) from None


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


# --- C-ECHO --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EchoResult:
    """The outcome of a C-ECHO: `sentence` is what `doctor` prints."""

    ok: bool
    sentence: str
    milliseconds: float | None = None


def echo(settings: DicomSettings) -> EchoResult:
    """C-ECHO the receiver (PS3.7 9.1.5, Verification SOP class) and say in one sentence how it
    went: "ok in 12 ms", "cannot connect to HOST:PORT (…)", "the receiver … refused …"."""
    _configure_pynetdicom()
    target = Target.of(settings)
    began = time.monotonic()
    opened = _associate(settings, target, [(Verification, ExplicitVRLittleEndian)])
    assoc = opened.assoc
    if assoc is None or not opened.connected:
        why = _why_unreachable(settings, target)
        return EchoResult(False, f"cannot connect to {target.address} ({why})")
    if assoc.is_rejected:
        _, sentence, fix = _refusal(assoc, target)
        return EchoResult(False, f"{sentence}; {fix}")
    if not assoc.is_established:
        if assoc.rejected_contexts:
            return EchoResult(
                False, f"the receiver at {target.address} does not answer C-ECHO (Verification)"
            )
        return EchoResult(
            False,
            f"the receiver at {target.address} did not accept the association "
            f"(no answer within {settings.acse_timeout_seconds:g} s, or it aborted)",
        )
    try:
        status = assoc.send_c_echo()
    finally:
        _close(assoc)
    elapsed = (time.monotonic() - began) * 1000
    if status is None or "Status" not in status:
        return EchoResult(
            False,
            f"the receiver at {target.address} did not answer C-ECHO within "
            f"{settings.dimse_timeout_seconds:g} s",
        )
    if int(status.Status) != 0x0000:
        code = int(status.Status)
        return EchoResult(
            False,
            f"the receiver at {target.address} answered C-ECHO with 0x{code:04X} "
            f"({status_meaning(code)})",
        )
    return EchoResult(True, f"ok in {elapsed:.0f} ms ({target.name})", elapsed)
