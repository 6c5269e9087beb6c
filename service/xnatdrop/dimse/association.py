"""Associations with the receiver: opening one (and why it failed), closing it, pynetdicom's
process-wide settings.

References: DICOM PS3.8 9.3.3.2 (presentation context results), 9.3.4 and 7.1.1.9
(A-ASSOCIATE-RJ result, source and reason); reference xnat-rest.md §9.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Sequence

from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association

from xnatdrop import errors
from xnatdrop.config import DicomSettings
from xnatdrop.dimse.failures import CONTEXT_REFUSED, RECEIVER_BUSY, REFUSED_AE, UNREACHABLE


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


class Lost(Exception):
    """No association, or it went away: worth opening a new one after a wait."""

    def __init__(self, reason: str, code: str = UNREACHABLE, fix: str = "") -> None:
        self.reason = reason
        self.code = code
        self.fix = fix or (
            "check that XNAT's DICOM receiver is running and reachable from this machine "
            "(xnatdrop doctor); xnatdrop tries again later"
        )
        super().__init__(reason)


def configure_pynetdicom() -> None:
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
class Opened:
    """An association attempt; `assoc` is None when the host name did not resolve."""

    assoc: Association | None
    connected: bool


def associate(
    settings: DicomSettings, target: Target, contexts: Sequence[tuple[str, str]]
) -> Opened:
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
        return Opened(None, connected=False)
    return Opened(assoc, connected.is_set())


def open_association(
    settings: DicomSettings, target: Target, contexts: Sequence[tuple[str, str]]
) -> Association:
    """Open one association proposing `contexts`; every context must be accepted.

    Raise PermanentError when the receiver rejects it for good (AE titles, contexts), Lost
    when trying again later may work (no connection, no answer, a transient rejection).
    """
    opened = associate(settings, target, contexts)
    assoc = opened.assoc
    if assoc is None or not opened.connected:
        raise Lost(f"cannot connect to {target.address} ({why_unreachable(settings, target)})")
    if assoc.is_rejected:
        raise _rejection(assoc, target)
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            raise _contexts_refused(assoc, target)
        raise Lost(
            f"the receiver at {target.address} did not accept the association "
            f"(no answer within {settings.acse_timeout_seconds:g} s, or it aborted)"
        )
    if assoc.rejected_contexts:
        error = _contexts_refused(assoc, target)
        close_association(assoc)
        raise error
    return assoc


def why_unreachable(settings: DicomSettings, target: Target) -> str:
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


def refusal(assoc: Association, target: Target) -> tuple[bool, str, str]:
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
    permanent, sentence, fix = refusal(assoc, target)
    if permanent:
        return errors.PermanentError(REFUSED_AE, sentence, fix)
    return Lost(sentence, RECEIVER_BUSY, fix)


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


def close_association(assoc: Association) -> None:
    """Release an established association; abort one that is half open."""
    if assoc.is_established:
        assoc.release()
    elif not (assoc.is_aborted or assoc.is_released or assoc.is_rejected):
        assoc.abort()
