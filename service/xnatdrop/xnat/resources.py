"""Session resources (the sidecar folders behav/, physio/, logs/) and the subject's fields.

XNAT's resource endpoints (reference §8) and the subject's demographics (§7). Files that already
exist are never replaced: XNAT lists them as duplicates and the caller verifies their content.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xnatdrop.xnat import answers
from xnatdrop.xnat.answers import RemoteFile
from xnatdrop.xnat.connection import Connection, Upload


class Resources(Connection):
    """The resource and subject endpoints (part of `XnatClient`)."""

    def resource_files(
        self, project: str, subject: str, label: str, resource: str
    ) -> list[RemoteFile] | None:
        """GET …/experiments/E/resources/R/files?format=json; None when R does not exist (§8.3).

        XNAT may answer a missing resource with 200 and no rows instead of 404 (stock row 11);
        both mean "nothing there yet" to the caller.
        """
        path = self._session_path(project, subject, label) + f"/resources/{quote(resource)}/files"
        response = self.request("GET", path, params={"format": "json"}, ok=(200, 404))
        if response.status_code == 404:
            return None
        return [answers.remote_file(row) for row in answers.table(response)]

    def create_resource(self, project: str, subject: str, label: str, resource: str) -> None:
        """PUT …/experiments/E/resources/R; 409 means it exists already, which is fine (§8.1)."""
        path = self._session_path(project, subject, label) + f"/resources/{quote(resource)}"
        self.request(
            "PUT", path, params={"format": "MISC", "content": resource}, ok=(200, 201, 204, 409)
        )

    def upload_resource_zip(
        self,
        project: str,
        subject: str,
        label: str,
        resource: str,
        source: Path | Callable[[], Any],
        name: str | None = None,
    ) -> list[str]:
        """PUT …/resources/R/files/NAME.zip?extract=true: XNAT unpacks it into R (§8.2).

        `source` is a zip file, or a factory of a fresh body with `__len__` (a streamed
        `pack.Body`, so that no zip is ever written to disk), called again if the request is
        repeated after a re-login; `name` is then the zip's name in the URL. Files that already
        exist are not replaced; XNAT lists them as duplicates, which are returned so the caller
        can verify they hold the same content.
        """
        name = name or (source.name if isinstance(source, Path) else f"{resource}.zip")
        path = (
            self._session_path(project, subject, label)
            + f"/resources/{quote(resource)}/files/{quote(name)}"
        )
        with Upload(source) as upload:
            response = self.request(
                "PUT",
                path,
                params={"extract": "true", "content": resource},
                body=upload.open,
                headers={"Content-Type": "application/zip"},
            )
        text = response.text.strip()
        if text.startswith("{"):
            try:
                return [str(name) for name in response.json().get("duplicates", [])]
            except ValueError:
                pass
        return []

    def set_subject_fields(self, project: str, subject: str, fields: dict[str, str]) -> None:
        """PUT /data/projects/P/subjects/S?gender=…&handedness=…&yob=… (reference §7)."""
        if fields:
            self.request(
                "PUT", f"/data/projects/{quote(project)}/subjects/{quote(subject)}", params=fields
            )
