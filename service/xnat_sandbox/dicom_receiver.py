"""The sandbox's DICOM C-STORE receiver: XNAT's `DicomSCP` on one port (reference §9).

A pynetdicom service class provider that answers as XNAT's receiver does:

- **Application entities** (`Receiver`, XNAT's `DicomSCPInstance`): the stock one is AE title
  `XNAT` with the default identifier (`DicomSCPInstance.createDefault`). Several may share the
  port; an association calling an AE title none of them has is rejected, permanent, "called AE
  title not recognised" (dcm4che2 `Association` finds no `NetworkApplicationEntity`). Any calling
  AE title is accepted unless the receiver has a whitelist (`XnatApplicationEntity.negotiate`:
  "calling AE title not recognised" for one that matches no `AE`, `IP[/bits]` or `AE@IP` entry).
- **Presentation contexts**: Verification in implicit or explicit little endian; every storage
  SOP class of `CStoreService.CUIDS` in the transfer syntaxes of `DicomSCP.TSUIDS`
  (`dicom_classes`); others are refused.
- **C-STORE** (`CStoreService.doCStore`): the instance goes to the importer the REST
  gradual-DICOM path uses (`dicomzip.import_received`), filed as the site admin (XNAT's
  `receivedFileUser`, "admin" on a fresh install), with `prevent_anon` = not the receiver's
  `anonymizationEnabled`. A receiver bound to a project (`project`, XNAT's
  `FixedDicomProjectIdentifier` as the receiver's identifier) files everything there (or in
  Unassigned if that project is not writable); otherwise the §6 rules route it. The session stays
  RECEIVING until the rebuilder finds it idle for `rebuild_idle` seconds of the sandbox clock
  (XNAT's `sessionXmlRebuilderInterval`; there is no separate receiver timeout), then READY.
- **Statuses**: `GradualDicomImporter.call` turns every failure, a disk or database error
  included, into a ClientException ("unable to read DICOM object …"), which `doCStore` answers
  with 0xC000 "cannot understand" and the message as Error Comment. (Its 0xA700 "refused: out of
  resources" is for a ServerException from the importer's constructor, which the sandbox's
  cannot throw.) An instance a series import filter or the site script drops is answered
  0x0000, as there (an empty list, no exception).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from xnat_sandbox import dicom_classes, dicomzip
from xnat_sandbox.context import SiteContext
from xnat_sandbox.users import UNASSIGNED, User

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "XNAT"  # DicomSCPInstance.createDefault: "XNAT", 8104, dicomObjectIdentifier
DEFAULT_PORT = 8104

# CStoreService's statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
ERROR_CANNOT_UNDERSTAND = 0xC000

# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-permanent, by the service user, with the reason.
_REJECTED_PERMANENT, _SERVICE_USER = 0x01, 0x01
_CALLING_AET_NOT_RECOGNIZED, _CALLED_AET_NOT_RECOGNIZED = 0x03, 0x07


@dataclass(frozen=True)
class Receiver:
    """One application entity on the receiver's port (XNAT's `DicomSCPInstance`).

    `project`: a project the receiver files everything into (its identifier is a
    `FixedDicomProjectIdentifier`); None for the default identifier (§6). `anonymization`:
    whether the site script runs on what it receives (`anonymizationEnabled`, default on).
    `whitelist`: when not empty, the only callers accepted (`whitelistEnabled` + `whitelist`):
    entries `AE`, `IP`, `IP/bits` or `AE@IP[/bits]`.
    """

    ae_title: str = DEFAULT_AE_TITLE
    project: str | None = None
    anonymization: bool = True
    whitelist: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Receiver:
        """`TITLE[:PROJECT]` (the `--dicom-ae` option); ValueError names what is wrong."""
        title, _, project = spec.partition(":")
        title = title.strip()
        if not title or len(title) > 16 or "\\" in title or not title.isprintable():
            raise ValueError(f"AE title {title!r}: 1-16 printable characters, no backslash")
        if project and not project.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"project {project!r} is not a valid ID (use A-Z a-z 0-9 _ -)")
        return cls(title, project or None)

    def admits(self, calling_aet: str, address: str) -> bool:
        """`XnatApplicationEntity.isWhitelisted`, or True when there is no whitelist."""
        if not self.whitelist:
            return True
        for entry in (e.strip() for e in self.whitelist):
            title, at, network = entry.partition("@")
            if at:
                if calling_aet == title and _in_network(address, network):
                    return True
            elif _is_network(entry):
                if _in_network(address, entry):
                    return True
            elif calling_aet == entry:
                return True
        return False


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _in_network(address: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:  # IpAddressMatcher's IllegalArgumentException: logged and ignored
        log.error("DICOM receiver: invalid IP address in the whitelist: %s; ignoring it", network)
        return False


class DicomReceiver:
    """XNAT's DICOM SCP on `host:port` for `receivers`; `port` is the bound one after start."""

    def __init__(
        self,
        sandbox: SiteContext,
        host: str,
        port: int,
        receivers: Iterable[Receiver] = (Receiver(),),
    ) -> None:
        self.sandbox = sandbox
        self.host = host
        self.port = port
        self.receivers = {r.ae_title: r for r in receivers}
        if not self.receivers:
            raise ValueError("a DICOM receiver needs at least one AE title")
        self.stored = 0  # instances filed since start
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    @property
    def ae_titles(self) -> list[str]:
        return list(self.receivers)

    def start(self) -> None:
        """Bind the port and serve associations in pynetdicom's threads."""
        ae = AE(ae_title=next(iter(self.receivers)))
        ae.require_called_aet = False  # checked in _on_requested against every receiver
        ae.add_supported_context(Verification, list(dicom_classes.VERIFICATION_TRANSFER_SYNTAXES))
        for sop_class in dicom_classes.STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(dicom_classes.TRANSFER_SYNTAXES))
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        log.info(
            "sandbox DICOM receiver on %s:%d, AE title(s) %s",
            self.host,
            self.port,
            ", ".join(self.receivers),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("sandbox DICOM receiver stopped")

    # -- association negotiation ------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: refuse an unknown called AE title, or a caller off the whitelist."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        called = str(request.called_ae_title).strip()
        calling = str(request.calling_ae_title).strip()
        receiver = self.receivers.get(called)
        if receiver is None:
            log.info("DICOM receiver: association for unknown AE title %s refused", called)
            reason = _CALLED_AET_NOT_RECOGNIZED
        elif not receiver.admits(calling, assoc.requestor.address):
            log.info("DICOM receiver: %s@%s is not on %s's whitelist", calling, called, called)
            reason = _CALLING_AET_NOT_RECOGNIZED
        else:
            return
        assoc.acse.send_reject(_REJECTED_PERMANENT, _SERVICE_USER, reason)
        assoc.kill()

    # -- C-STORE ----------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """EVT_C_STORE: file the instance as `CStoreService.doCStore` does; answer its status."""
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        receiver = self.receivers[called]
        try:
            data = event.encoded_dataset(include_meta=True)  # as received, with a file meta
            dicomzip.import_received(
                self.sandbox,
                self._user(),
                io.BytesIO(data),
                self._project(receiver),
                prevent_anon=not receiver.anonymization,
            )
        except dicomzip.Unreadable as error:  # GradualDicomImporter's ClientException
            log.info("DICOM receiver (%s): instance refused: %s", called, error)
            return _failure(ERROR_CANNOT_UNDERSTAND, str(error))
        except (OSError, sqlite3.Error, ValueError) as error:  # "unable to read DICOM object"
            log.error("DICOM receiver (%s): C-STORE failed: %s", called, error)
            return _failure(
                ERROR_CANNOT_UNDERSTAND, f"unable to read DICOM object {dicomzip.RECEIVED_NAME}"
            )
        with self._lock:
            self.stored += 1
        return SUCCESS

    def _user(self) -> User:
        """XNAT's `receivedFileUser` (default `admin`): the sandbox's site admin."""
        admin = next((u for u in self.sandbox.accounts.values() if u.admin), None)
        return admin or User("admin", "", "none")

    def _project(self, receiver: Receiver) -> str | None:
        """The receiver's fixed project, resolved as the importer resolves a named one."""
        if receiver.project is None:
            return None
        row = self.sandbox.store.project(receiver.project)
        if row is not None and self._user().can_write(row["id"]):
            return str(row["id"])
        log.info(
            "DICOM receiver: project %s is not writable; filing in Unassigned", receiver.project
        )
        return UNASSIGNED


def _failure(status: int, comment: str) -> Dataset:
    """A C-STORE-RSP status with `DicomServiceException`'s message as Error Comment (LO: 64)."""
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:64]
    return answer
