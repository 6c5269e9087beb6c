"""Import into the prearchive and look after what is there: list, read, rebuild, delete.

The import service with the DICOM-zip handler (reference §3), the prearchive table and its
sessions (§4). Archiving a prearchive session is in `archive`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xnatdrop.errors import TransientError
from xnatdrop.xnat import answers
from xnatdrop.xnat.answers import RemoteFile, XnatAnswer
from xnatdrop.xnat.connection import Connection, Upload


@dataclass(frozen=True)
class PrearchiveEntry:
    """One row of the prearchive table (reference §4.1); `uri` carries the /data prefix."""

    project: str
    timestamp: str
    folder: str
    name: str
    subject: str
    status: str
    tag: str
    uri: str
    lastmod: str = ""


def prearchive_entry(row: dict[str, str]) -> PrearchiveEntry:
    """One row of a prearchive listing; XNAT gives `url` without the /data prefix."""
    url = row.get("url", "")
    return PrearchiveEntry(
        project=row.get("project", ""),
        timestamp=row.get("timestamp", ""),
        folder=row.get("folderName", ""),
        name=row.get("name", ""),
        subject=row.get("subject", ""),
        status=row.get("status", ""),
        tag=row.get("tag", ""),
        uri=url if url.startswith("/data/") else "/data" + url,
        lastmod=row.get("lastmod", ""),
    )


class Prearchive(Connection):
    """The import service and the prearchive endpoints (part of `XnatClient`)."""

    def import_zip(
        self,
        source: Path | Callable[[], Any],
        *,
        project: str,
        subject: str,
        session: str,
        progress: Callable[[int], None] | None = None,
        prevent_anon: bool = False,
    ) -> str:
        """POST /data/services/import with the DICOM-zip handler into the prearchive.

        `source` is a zip file, or a factory of a fresh file-like body with `__len__` (the
        streamed `pack.Body`), called again when the request is repeated after a re-login.

        Labels are explicit (PROJECT_ID, SUBJECT_ID, EXPT_LABEL are honoured by both DICOM-zip
        and gradual-DICOM, reference §3.3) and `dest=/prearchive/projects/P` builds the session
        before answering, without archiving it (§3.4 step 6; stock row 4: for a large session
        this can outlast a proxy's timeout). `prevent_anon=true` keeps XNAT's anonymisation
        scripts off this session (GradualDicomImporter l.319, PrearcSessionAnonymizer).
        Content-Type must be application/zip or XNAT cannot tell the format (§3.1, pitfall 1).
        Return the prearchive URI with its /data prefix.

        XNAT silently routes an unknown or unwritable project elsewhere (pitfall 17): that is an
        XnatAnswer XNAT_ROUTED_ELSEWHERE whose `leftover` is the URI, for the caller to clean.
        """
        params = {
            "import-handler": "DICOM-zip",
            "PROJECT_ID": project,
            "SUBJECT_ID": subject,
            "EXPT_LABEL": session,
            "dest": f"/prearchive/projects/{project}",
            "prevent_auto_commit": "true",
            "SOURCE": "xnatdrop",
        }
        if prevent_anon:
            params["prevent_anon"] = "true"
        self.heartbeat()  # start a long upload on a fresh session
        with Upload(source, progress) as upload:
            try:
                response = self.request(
                    "POST",
                    "/data/services/import",
                    params=params,
                    body=upload.open,
                    headers={"Content-Type": "application/zip"},
                    timeout=(self._timeout[0], max(self._timeout[1], 600.0)),
                )
            except XnatAnswer as answer:
                if answer.status == 413 and upload.size is not None:
                    raise XnatAnswer(
                        "XNAT_TOO_LARGE",
                        f"the upload of {session} ({upload.size / 1e9:.2f} GB) was refused as "
                        "too large (HTTP 413 from the proxy in front of XNAT)",
                        "ask the XNAT administrator to raise the proxy's upload limit (nginx "
                        "client_max_body_size, Apache LimitRequestBody) above "
                        f"{upload.size / 1e9:.1f} GB, then copy the folder back into the drop "
                        "folder",
                        status=413,
                        answer=answer.answer,
                        suspect=False,
                    ) from None
                raise
        uris = [line.strip() for line in response.text.splitlines() if line.strip()]
        if not uris:
            raise XnatAnswer(
                "XNAT_NOTHING_IMPORTED",
                "XNAT accepted the upload but kept none of its files",
                "check that the zip holds DICOM files",
                answer="HTTP 200 without a session",
            )
        if len(uris) > 1:
            raise XnatAnswer(
                "MULTIPLE_STUDIES",
                f"XNAT split the upload into {len(uris)} sessions: {', '.join(uris)}",
                "put each study in its own subject folder",
                suspect=False,
            )
        uri = uris[0]
        expected = f"/data/prearchive/projects/{project}/"
        if not uri.startswith(expected):
            routed = XnatAnswer(
                "XNAT_ROUTED_ELSEWHERE",
                f"XNAT filed the upload under {uri} instead of project {project}",
                f"make sure project {project} exists and user {self._username!r} may write to it",
                answer="HTTP 200 routed to another project",
            )
            routed.leftover = uri  # type: ignore[attr-defined]
            raise routed
        return uri

    def prearchive_entries(self, project: str) -> list[PrearchiveEntry]:
        """GET /data/prearchive/projects/P?format=json (reference §4.1)."""
        rows = self._get_table(f"/data/prearchive/projects/{quote(project)}")
        return [prearchive_entry(row) for row in rows]

    def prearchive_all(self) -> list[PrearchiveEntry]:
        """GET /data/prearchive?format=json: every session of every project the user may edit,
        and Unassigned for a data admin (PrearcSessionListResource, reference §4.1)."""
        return [prearchive_entry(row) for row in self._get_table("/data/prearchive")]

    def prearchive_entry(self, uri: str) -> PrearchiveEntry | None:
        """GET <prearchive uri>?format=json: a one-row table, or None (reference §4.3)."""
        response = self.request("GET", uri, params={"format": "json"}, ok=(200, 404))
        if response.status_code == 404:
            return None
        rows = answers.table(response)
        return prearchive_entry(rows[0]) if rows else None

    def prearchive_files(self, uri: str) -> list[RemoteFile]:
        """Files of every scan of a prearchive session (reference §4.3), one scan at a time;
        `prearchive_scans` and `prearchive_scan_files` let a caller read scans concurrently.

        The prearchive lists `Name,Size,URI` only: no digest, no SOPInstanceUID
        (PrearcSessionResourceFiles; stock row 10).
        """
        scans = self.prearchive_scans(uri)
        return [f for scan in scans for f in self.prearchive_scan_files(uri, scan)]

    def prearchive_scans(self, uri: str) -> list[str]:
        """GET <prearchive uri>/scans?format=json: the scan IDs (reference §4.3)."""
        return [scan.get("ID", "") for scan in self._get_table(f"{uri}/scans")]

    def prearchive_scan_files(self, uri: str, scan: str) -> list[RemoteFile]:
        """GET <prearchive uri>/scans/S/resources/DICOM/files?format=json: one scan's files.

        The prearchive answers one scan per request and knows no `ALL`
        (PrearcSessionResourceFiles.represent: MergeUtils.getMatchingScanById), unlike the
        archive's `scans/ALL/files`.
        """
        return [
            RemoteFile(
                scan=scan,
                resource="DICOM",
                name=row.get("Name", ""),
                path=row.get("Name", ""),
                size=int(row.get("Size") or 0),
                digest=row.get("digest", ""),
                uri=row.get("URI", ""),
            )
            for row in self._get_table(f"{uri}/scans/{quote(scan)}/resources/DICOM/files")
        ]

    def build(self, uri: str) -> None:
        """POST <prearchive uri>?action=build: synchronous rebuild (reference §4.5).

        409 "session document locked" means XNAT holds the session in a `_`-prefixed status
        (PrearcSessionResource.postActionBuild, PrearcDatabase.isLocked; stock row 5): it is
        busy with it, which is transient.
        """
        response = self.request("POST", uri, params={"action": "build"}, ok=(200, 201, 204, 409))
        if response.status_code == 409:
            raise TransientError(
                f"XNAT is busy with the prearchive session ({answers.error_message(response)})"
            )

    def move_prearchive(self, uri: str, project: str) -> str:
        """POST <prearchive uri>?action=move&newProject=Q: move a session to another project's
        prearchive, synchronously (reference §4.5; PrearcSessionResource.postActionMove, which
        answers 301 with the new URI as text/uri-list, 403 "Unable to modify session data for
        destination project.", 409 when the session is locked). Return the new URI with /data.
        """
        response = self.request(
            "POST", uri, params={"action": "move", "newProject": project}, ok=(200, 301, 409)
        )
        if response.status_code == 409:
            raise TransientError(
                f"XNAT is busy with the prearchive session ({answers.error_message(response)})"
            )
        lines = [line.strip() for line in response.text.splitlines() if line.strip()]
        if not lines:  # PrearcUtils.buildURI(newProj, timestamp, session), as XNAT would say
            timestamp, folder = uri.rstrip("/").rsplit("/", 2)[-2:]
            return f"/data/prearchive/projects/{quote(project)}/{timestamp}/{folder}"
        return lines[0] if lines[0].startswith("/data/") else "/data" + lines[0]

    def delete_prearchive(self, uri: str) -> None:
        """DELETE <prearchive uri> (reference §4.3); a missing session is already deleted."""
        self.request("DELETE", uri, ok=(200, 204, 404))
