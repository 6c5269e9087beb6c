"""Archive a prearchive session, and read back what the archive holds: the session, its scans,
their files and DICOM catalogs, one file's bytes.

The archive service with explicit labels (reference §5.1) and the archive's REST listings (§7);
`verify` compares what these return with what was sent.
"""

from __future__ import annotations

import codecs
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import requests

from xnatdrop.errors import TransientError
from xnatdrop.xnat import answers
from xnatdrop.xnat.answers import ARCHIVE_BUSY, ARCHIVE_CONFLICTS, RemoteFile, XnatAnswer
from xnatdrop.xnat.connection import Connection

# DICOM resources of a scan, as XNAT's importer creates them (DefaultCatalogService: "DICOM" or
# "secondary"). Anything else on a scan (SNAPSHOTS, NIFTI from automation) is not ours.
DICOM_RESOURCES = frozenset({"DICOM", "secondary"})
# Bytes of a catalog answer parsed at a time: each piece's elements (about 50 entries of 300
# bytes, 1 kB each parsed) are alive at once, so a small piece keeps the parse small.
CATALOG_PIECE = 16 * 1024
# Bytes of a table answer decoded at a time (`_table_rows`).
TABLE_PIECE = 64 * 1024
# Bytes of a download held at a time (`Archive.download_to`). Not more: a few pixel samples
# download at once, each in its own thread, whose allocator arena keeps its largest pieces
# resident after the read-back (issue 13: 1 MiB pieces were part of the push's peak).
DOWNLOAD_PIECE = 256 * 1024


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One `cat:dcmEntry` of a scan's DICOM catalog: the instance XNAT catalogued.

    `uid` is the SOPInstanceUID, `path` the file's path inside the resource (the entry's URI),
    `digest` the MD5 XNAT recorded ("" when the `checksums` preference is off).
    """

    scan: str
    resource: str
    uid: str
    path: str
    digest: str


@dataclass(frozen=True)
class ArchivedSession:
    """An archived session; `uid` is its StudyInstanceUID (xnat:imageSessionData/@UID), ""
    when XNAT has none."""

    id: str
    label: str
    subject: str
    project: str
    uri: str
    uid: str = ""


class Archive(Connection):
    """The archive service and the archive's read-back endpoints (part of `XnatClient`)."""

    def archive(self, uri: str, *, project: str, subject: str, session: str) -> str:
        """POST /data/services/archive with explicit labels and no overwrite (reference §5.1).

        Success is 200 with the archive URI, or 303 for auto-archive projects. A failure is 500
        "FAILED: Unable to archive {folder}: {cause}" (QueueBasedImageCommit.call); the cause is
        read from its start only (ARCHIVE_CONFLICTS, ARCHIVE_BUSY), never searched, because it
        can contain the label. A conflict is permanent (the label holds other data); XNAT busy
        with the session, or any other 500 (the 600 s `sessionArchiveTimeoutInterval`, §10
        pitfall 11), is transient: the caller then asks XNAT what happened.
        """
        response = self.request(
            "POST",
            "/data/services/archive",
            data={
                "src": uri.removeprefix("/data"),
                "dest": f"/archive/projects/{project}",
                "subject": subject,
                "session": session,
                "overwrite": "none",
            },
            ok=(200, 201, 301, 303, 500),
            timeout=(self._timeout[0], max(self._timeout[1], 900.0)),
        )
        if response.status_code == 500:
            message = answers.error_message(response)
            cause = answers.archive_cause(message, uri.rstrip("/").rsplit("/", 1)[-1])
            if cause.startswith(ARCHIVE_CONFLICTS):
                raise XnatAnswer(
                    "XNAT_CONFLICT",
                    f"XNAT refused to archive {session}: {message}",
                    f"session {session} already exists in project {project} with other data: "
                    "rename the folder if this is a new session, or ask the XNAT admin to "
                    "merge or delete the existing one",
                    status=500,
                    answer=f"HTTP 500 {cause[:40]}",
                    suspect=False,
                )
            if cause.startswith(ARCHIVE_BUSY):
                raise TransientError(f"XNAT is still busy with {session}: {message}")
            error = TransientError(f"archive of {session}: HTTP 500: {message}")
            error.cause = cause  # type: ignore[attr-defined]
            raise error
        text = response.text.strip() or response.headers.get("Location", "")
        return text.splitlines()[0].strip() if text else ""

    def session_url(self, project: str, session_id: str) -> str:
        """The page of an archived session for people (no credentials, ever)."""
        return f"{self.base}/data/projects/{quote(project)}/experiments/{session_id}?format=html"

    def find_session(self, project: str, label: str) -> ArchivedSession | None:
        """GET /data/projects/P/experiments/E?format=json, then its subject's label (§7)."""
        response = self.request(
            "GET",
            f"/data/projects/{quote(project)}/experiments/{quote(label)}",
            params={"format": "json"},
            ok=(200, 404),
        )
        if response.status_code == 404:
            return None
        fields = answers.item_fields(response)
        subject_id = str(fields.get("subject_ID", ""))
        subject = self.request(
            "GET",
            f"/data/projects/{quote(project)}/subjects/{quote(subject_id)}",
            params={"format": "json"},
        )
        subject_label = str(answers.item_fields(subject).get("label", subject_id))
        return ArchivedSession(
            id=str(fields.get("ID", "")),
            label=str(fields.get("label", label)),
            subject=subject_label,
            project=project,
            uri=self._session_path(project, subject_label, str(fields.get("label", label))),
            uid=str(fields.get("UID", "") or ""),
        )

    def session_scans(self, project: str, subject: str, label: str) -> list[dict[str, str]]:
        """GET …/experiments/E/scans?format=json (reference §7)."""
        return self._get_table(self._session_path(project, subject, label) + "/scans")

    def session_files(self, project: str, subject: str, label: str) -> list[RemoteFile]:
        """GET …/experiments/E/scans/ALL/files?format=json: every file of every resource of
        every scan, with size, MD5 (when the `checksums` preference is on, stock row 10) and
        `collection`, the resource label: SNAPSHOTS and automation outputs are listed too
        (XNATTemplate.loadCatalogs, FileList.handleMultipleCatalogs; stock row 3)."""
        return list(self.each_session_file(project, subject, label))

    def each_session_file(self, project: str, subject: str, label: str) -> Iterator[RemoteFile]:
        """`session_files` one row at a time as the answer arrives, so a caller that keeps
        less than a `RemoteFile` per file (`archivecheck.dicom_listing`) never holds them all."""
        path = self._session_path(project, subject, label) + "/scans/ALL/files"
        response = self.request("GET", path, params={"format": "json"}, stream=True)
        try:
            for row in _table_rows(response):
                yield answers.remote_file(row)
        except ValueError as error:
            raise TransientError(f"XNAT sent an unreadable file listing for {label}") from error
        except requests.RequestException as error:
            raise self._unreachable("GET", urlsplit(path).path, error) from None
        finally:
            response.close()

    def scan_catalog(
        self, project: str, subject: str, label: str, scan: str, resource: str = "DICOM"
    ) -> list[CatalogEntry]:
        """GET …/experiments/E/scans/S/resources/R: the resource's catalog document.

        XNAT's CatalogResource.represent writes the catalog bean as text/xml whatever the
        format asked; in a DICOM catalog every file is a `cat:dcmEntry` whose `UID` is the
        SOPInstanceUID. One request per scan is the cheapest way to the instance UIDs XNAT
        catalogued (the prearchive has no such endpoint). Entries without a UID are skipped.
        The document is parsed as it arrives and each element dropped once read
        (`_catalog_entries`), so a scan of thousands of files never sits in memory as a tree.
        """
        path = (
            self._session_path(project, subject, label)
            + f"/scans/{quote(scan)}/resources/{quote(resource)}"
        )
        response = self.request("GET", path, stream=True)
        try:
            return list(_catalog_entries(response, scan, resource))
        except ElementTree.ParseError as error:
            raise TransientError(f"XNAT sent an unreadable catalog for scan {scan}") from error
        except requests.RequestException as error:
            raise self._unreachable("GET", urlsplit(path).path, error) from None
        finally:
            response.close()

    def download(self, uri: str, limit: int = 512 << 20) -> bytes:
        """GET one file by the URI a listing gave (its /data/… path); at most `limit` bytes.

        The whole file in memory: for small files and tests. The pipeline's pixel sample,
        which may be an enhanced multi-frame scan's one file of hundreds of MB, goes through
        `download_to` instead."""
        data = io.BytesIO()
        self.download_to(uri, data, limit)
        return data.getvalue()

    def download_to(self, uri: str, target: BinaryIO, limit: int = 4 << 30) -> int:
        """GET one file by the URI a listing gave into `target`, a piece at a time (at most
        `limit` bytes, so a runaway answer cannot fill the disk); return its size.

        Only one piece (DOWNLOAD_PIECE) is in memory at a time, whatever the file's size."""
        response = self.request("GET", uri, stream=True)
        written = 0
        try:
            for piece in response.iter_content(DOWNLOAD_PIECE):
                written += len(piece)
                if written > limit:
                    raise TransientError(f"{uri.rsplit('/', 1)[-1]} is larger than expected")
                target.write(piece)
            return written
        except requests.RequestException as error:
            raise self._unreachable("GET", urlsplit(uri).path, error) from None
        finally:
            response.close()


def _table_rows(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The rows of a JSON table answer (`{"ResultSet": {"Result": [row, …], …}}`, reference
    §1.4), each decoded alone as the answer arrives: a session's listing of 50,000 files is
    about 20 MB of text and 80 MB as dicts, of which only one row at a time is held here.

    ValueError if the answer has no `Result` list or ends inside it.
    """
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")()
    buffer, pos, started, ended = "", 0, False, False
    pieces = response.iter_content(TABLE_PIECE)
    while not ended:
        piece = next(pieces, None)
        buffer = buffer[pos:] + text.decode(piece or b"", final=piece is None)
        pos = 0
        if not started:
            found = _RESULT_START.search(buffer)
            if found is None:
                if piece is None:
                    raise ValueError("no Result list in the table")
                continue
            started, pos = True, found.end()
        while True:
            pos = _SEPARATOR.match(buffer, pos).end()
            if buffer.startswith("]", pos):
                ended = True
                break
            try:
                row, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if piece is None:
                    raise
                break  # the row is not whole yet: read on
            if end == len(buffer) and piece is not None:
                break  # a number or name may go on in the next piece
            pos = end
            yield row


_RESULT_START = re.compile(r'"Result"\s*:\s*\[')
_SEPARATOR = re.compile(r"[\s,]*")


def _catalog_entries(
    response: requests.Response, scan: str, resource: str
) -> Iterator[CatalogEntry]:
    """The `cat:entry` elements of a catalog answer that carry a UID, parsed piece by piece.

    Only the attributes compared are kept (UID, URI or ID, digest); every element is removed
    from its parent once its end is read, so the parsed part never grows with the scan.
    """
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    open_elements: list[ElementTree.Element] = []
    for piece in response.iter_content(CATALOG_PIECE):
        parser.feed(piece)
        for event, element in parser.read_events():
            if event == "start":
                open_elements.append(element)
                continue
            open_elements.pop()
            if element.tag.endswith("}entry") or element.tag == "entry":
                uid = element.get("UID", "")
                if uid:
                    yield CatalogEntry(
                        scan=scan,
                        resource=resource,
                        uid=uid,
                        path=unquote(element.get("URI", "") or element.get("ID", "")),
                        digest=element.get("digest", ""),
                    )
            if open_elements:  # read: drop it from its parent (its only child by now)
                open_elements[-1].remove(element)
    parser.close()
