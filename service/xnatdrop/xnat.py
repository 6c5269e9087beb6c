"""The only module that speaks HTTP to XNAT.

Every method names its endpoint and the section of ../shared/reference/xnat-rest.md ("the
reference") it follows. Errors are sorted by what the caller does next:

- `TransientError`: connection errors, timeouts, 5xx, a session that could not be renewed in time.
  The caller retries later with backoff; never a reason to quarantine.
- `PermanentError`: a 4xx (or an archive conflict) that retrying cannot change; the drop goes to
  quarantine with the reason.
- `AuthenticationError`: XNAT refused our credentials. Uploads stop and an operator is told.

Hygiene (issue 4, point 5): one `requests.Session` per client, a non-browser User-Agent (XNAT
serves browser agents a login page instead of 401, reference §2.3), TLS verified unless configured
otherwise, a timeout on every call, and a JSESSIONID cookie that is renewed when it expires (a 401,
or a 2xx HTML login page, reference §10 pitfall 12). Nothing here logs credentials, and log lines
carry paths built from labels only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from xnatdrop import __version__
from xnatdrop.config import XnatSettings
from xnatdrop.errors import AuthenticationError, PermanentError, TransientError

log = logging.getLogger(__name__)

USER_AGENT = f"xnatdrop/{__version__} (+python-requests)"
UPLOAD_CHUNK = 1024 * 1024

# Archive conflict messages (reference §5.3); a 500 carrying one of them is permanent.
_CONFLICT_MARKERS = (
    "already exists",
    "invalid modification",
    "already contains",
    "duplicate",
    "conflict",
)


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


@dataclass(frozen=True)
class RemoteFile:
    """One file XNAT holds: its scan ("" for session resources), resource, name and path.

    `path` is the file's path inside its resource (extracted zips keep their folders).
    """

    scan: str
    resource: str
    name: str
    path: str
    size: int
    digest: str
    uri: str


@dataclass(frozen=True)
class ArchivedSession:
    id: str
    label: str
    subject: str
    project: str
    uri: str


class _ProgressReader:
    """A file wrapper that reports bytes read, so uploads can drive a progress bar.

    `__len__` lets requests send a Content-Length instead of chunked encoding.
    """

    def __init__(self, handle: IO[bytes], size: int, progress: Callable[[int], None] | None):
        self._handle = handle
        self._size = size
        self._progress = progress
        self._sent = 0

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = -1) -> bytes:
        data = self._handle.read(max(amount, UPLOAD_CHUNK) if amount != -1 else -1)
        self._sent += len(data)
        if self._progress is not None and data:
            self._progress(self._sent)
        return data


def _error_message(response: requests.Response) -> str:
    """The human part of an XNAT error: the <h3> of a Restlet status page, or the text."""
    text = response.text or ""
    match = re.search(r"<h3>(.*?)</h3>", text, re.S)
    message = match.group(1) if match else text
    return " ".join(message.split())[:500] or response.reason or str(response.status_code)


def _looks_like_html(response: requests.Response) -> bool:
    head = response.content[:64].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html"))


def _table(response: requests.Response) -> list[dict[str, str]]:
    """Rows of a JSON table (reference §1.4)."""
    try:
        return list(response.json()["ResultSet"]["Result"])
    except (ValueError, KeyError, TypeError) as error:
        raise TransientError(f"XNAT sent an unreadable table from {response.url}") from error


class XnatClient:
    """A logged-in connection to one XNAT server; use it as a context manager."""

    def __init__(self, settings: XnatSettings, password: str) -> None:
        self.base = settings.url
        self._username = settings.username
        self._password = password
        self._timeout = (min(15.0, settings.timeout_seconds), settings.timeout_seconds)
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        self.http.verify = settings.verify_tls
        # Idempotent reads are retried here with backoff and jitter (urllib3's Retry); writes are
        # not, because the pipeline must first ask XNAT what already arrived.
        retry = Retry(
            total=4,
            connect=4,
            read=2,
            status=4,
            backoff_factor=0.5,
            backoff_jitter=0.5,
            status_forcelist=(502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=4)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self._logged_in = False

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._logged_in:
            # Logging out is a courtesy (the session expires on its own), so it bypasses the
            # session's retrying adapter: a server that is down must not delay shutdown.
            with contextlib.suppress(requests.RequestException):
                requests.delete(
                    self.base + "/data/JSESSION",
                    cookies=self.http.cookies,
                    headers={"User-Agent": USER_AGENT},
                    verify=self.http.verify,
                    timeout=(2.0, 5.0),
                )
        self.http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def login(self) -> None:
        """POST /data/JSESSION with Basic auth; keep the JSESSIONID cookie (reference §2.1)."""
        self.http.cookies.clear()
        try:
            response = self.http.post(
                self.base + "/data/JSESSION",
                auth=(self._username, self._password),
                timeout=self._timeout,
            )
        except requests.RequestException as error:
            raise TransientError(f"cannot reach XNAT at {self.base}: {error}") from None
        if response.status_code in (401, 403) or (response.ok and _looks_like_html(response)):
            raise AuthenticationError(
                f"XNAT at {self.base} refused the login of user {self._username!r} "
                f"(HTTP {response.status_code}); check the username and password"
            )
        if response.status_code >= 500:
            raise TransientError(f"XNAT login failed with HTTP {response.status_code}")
        if not response.ok:
            raise PermanentError(
                "XNAT_REJECTED", f"XNAT login answered HTTP {response.status_code}"
            )
        self._logged_in = True
        log.debug("logged in to %s as %s", self.base, self._username)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: Any = None,
        body: Callable[[], Any] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
        timeout: tuple[float, float] | None = None,
    ) -> requests.Response:
        """Send one request with the session cookie, renewing the session once if it expired.

        `body`, when given, is a factory so the upload can be reopened after a re-login.
        Statuses in `ok` are returned; others raise Transient/Permanent/AuthenticationError.
        """
        if not self._logged_in:
            self.login()
        url = path if path.startswith("http") else self.base + path
        for attempt in (1, 2):
            try:
                response = self.http.request(
                    method,
                    url,
                    params=params,
                    data=body() if body is not None else data,
                    headers=headers,
                    timeout=timeout or self._timeout,
                    allow_redirects=False,
                )
            except requests.exceptions.RetryError as error:
                raise TransientError(f"{method} {path}: XNAT kept failing ({error})") from None
            except requests.RequestException as error:
                raise TransientError(f"{method} {path}: {type(error).__name__}: {error}") from None
            expired = response.status_code == 401 or (
                response.status_code < 300 and _looks_like_html(response)
            )
            if expired and attempt == 1:
                log.info("XNAT session expired; logging in again")
                self.login()
                continue
            break
        log.debug("%s %s -> %s", method, path, response.status_code)
        if response.status_code in ok:
            return response
        raise self._error(method, path, response)

    def _error(self, method: str, path: str, response: requests.Response) -> Exception:
        status = response.status_code
        message = f"{method} {path}: HTTP {status}: {_error_message(response)}"
        if status == 401 or (status < 300 and _looks_like_html(response)):
            return AuthenticationError(f"XNAT no longer accepts user {self._username!r}: {message}")
        if status in (408, 423, 429) or status >= 500:
            return TransientError(message)
        if status == 403:
            return PermanentError(
                "XNAT_FORBIDDEN",
                message,
                f"give user {self._username!r} member or owner access to the project in XNAT",
            )
        return PermanentError("XNAT_REJECTED", message, "see the XNAT message above")

    def _get_table(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        return _table(self.request("GET", path, params={"format": "json", **(params or {})}))

    # -- session and project ------------------------------------------------------------------

    def whoami(self) -> str:
        """GET /data/auth → "User 'NAME' is logged in" (reference §2.1)."""
        text = self.request("GET", "/data/auth").text.strip()
        match = re.search(r"User '([^']+)'", text)
        return match.group(1) if match else self._username

    def heartbeat(self) -> None:
        """GET /data/JSESSION keeps the HTTP session alive during long work (reference §2.2)."""
        self.request("GET", "/data/JSESSION")

    def project_exists(self, project: str) -> bool:
        """GET /data/projects/P: 404 means missing or not visible to us (reference §1.8)."""
        response = self.request(
            "GET", f"/data/projects/{quote(project)}", params={"format": "json"}, ok=(200, 404)
        )
        return response.status_code == 200

    def project_role(self, project: str) -> str | None:
        """The user's role in `project` (owner, member, collaborator), or None if it is not
        visible, from GET /xapi/access/projects (XNAT's AccessApi). Owners and members may
        upload and archive; collaborators may only read."""
        response = self.request("GET", "/xapi/access/projects")
        try:
            roles = {row["ID"]: row.get("role", "") for row in response.json() if "ID" in row}
        except (ValueError, TypeError, AttributeError) as error:
            raise TransientError("XNAT sent an unreadable project access list") from error
        return roles.get(project)

    def prearchive_code(self, project: str) -> int:
        """GET /data/projects/P/prearchive_code → 0 manual, 4/5 auto-archive (reference §7)."""
        text = self.request("GET", f"/data/projects/{quote(project)}/prearchive_code").text
        try:
            return int(text.strip())
        except ValueError:
            raise TransientError(f"unexpected prearchive_code answer {text[:40]!r}") from None

    # -- import and prearchive ----------------------------------------------------------------

    def import_zip(
        self,
        source: Path | Callable[[], Any],
        *,
        project: str,
        subject: str,
        session: str,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """POST /data/services/import with the DICOM-zip handler into the prearchive.

        `source` is a zip file, or a factory of a fresh file-like body with `__len__` (the
        streamed `pack.Body`), called again when the request is repeated after a re-login.

        Labels are explicit (PROJECT_ID, SUBJECT_ID, EXPT_LABEL are honoured by both DICOM-zip
        and gradual-DICOM, reference §3.3) and `dest=/prearchive/projects/P` builds the session at
        once without archiving it (§3.4 step 6). Content-Type must be application/zip or XNAT
        cannot tell the format (§3.1, pitfall 1). Return the prearchive URI with its /data
        prefix. XNAT silently routes an unknown or unwritable project elsewhere (pitfall 17), so
        a URI for another project is a PermanentError.
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
        handles: list[Any] = []

        def open_body() -> _ProgressReader:
            if isinstance(source, Path):
                handle = open(source, "rb")  # noqa: SIM115 - closed below, reopened on re-login
                size = os.fstat(handle.fileno()).st_size
            else:
                handle = source()  # a fresh stream from the start, e.g. pack.Body
                size = len(handle)
            handles.append(handle)
            return _ProgressReader(handle, size, progress)

        self.heartbeat()  # start a long upload on a fresh session
        try:
            response = self.request(
                "POST",
                "/data/services/import",
                params=params,
                body=open_body,
                headers={"Content-Type": "application/zip"},
                timeout=(self._timeout[0], max(self._timeout[1], 600.0)),
            )
        finally:
            for handle in handles:
                handle.close()
        uris = [line.strip() for line in response.text.splitlines() if line.strip()]
        if not uris:
            raise PermanentError(
                "XNAT_NOTHING_IMPORTED",
                "XNAT accepted the upload but created no session",
                "check that the zip holds DICOM files",
            )
        if len(uris) > 1:
            raise PermanentError(
                "MULTIPLE_STUDIES",
                f"XNAT split the upload into {len(uris)} sessions: {', '.join(uris)}",
                "put each study in its own subject folder",
            )
        uri = uris[0]
        expected = f"/data/prearchive/projects/{project}/"
        if not uri.startswith(expected):
            raise PermanentError(
                "XNAT_ROUTED_ELSEWHERE",
                f"XNAT filed the upload under {uri} instead of project {project}",
                f"make sure project {project} exists and user {self._username!r} may write to it",
            )
        return uri

    @staticmethod
    def _entry(row: dict[str, str]) -> PrearchiveEntry:
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
        )

    def prearchive_entries(self, project: str) -> list[PrearchiveEntry]:
        """GET /data/prearchive/projects/P?format=json (reference §4.1)."""
        rows = self._get_table(f"/data/prearchive/projects/{quote(project)}")
        return [self._entry(row) for row in rows]

    def prearchive_entry(self, uri: str) -> PrearchiveEntry | None:
        """GET <prearchive uri>?format=json: a one-row table, or None (reference §4.3)."""
        response = self.request("GET", uri, params={"format": "json"}, ok=(200, 404))
        if response.status_code == 404:
            return None
        rows = _table(response)
        return self._entry(rows[0]) if rows else None

    def prearchive_files(self, uri: str) -> list[RemoteFile]:
        """Files of every scan of a prearchive session (reference §4.3)."""
        files = []
        for scan in self._get_table(f"{uri}/scans"):
            scan_id = scan.get("ID", "")
            for row in self._get_table(f"{uri}/scans/{quote(scan_id)}/resources/DICOM/files"):
                files.append(
                    RemoteFile(
                        scan=scan_id,
                        resource="DICOM",
                        name=row.get("Name", ""),
                        path=row.get("Name", ""),
                        size=int(row.get("Size") or 0),
                        digest=row.get("digest", ""),
                        uri=row.get("URI", ""),
                    )
                )
        return files

    def build(self, uri: str) -> None:
        """POST <prearchive uri>?action=build: synchronous rebuild (reference §4.5)."""
        self.request("POST", uri, params={"action": "build"})

    def delete_prearchive(self, uri: str) -> None:
        """DELETE <prearchive uri> (reference §4.3); a missing session is already deleted."""
        self.request("DELETE", uri, ok=(200, 204, 404))

    def archive(self, uri: str, *, project: str, subject: str, session: str) -> str:
        """POST /data/services/archive with explicit labels and no overwrite (reference §5.1).

        Success is 200 with the archive URI, or 303 for auto-archive projects. A conflict is
        500 "FAILED: …" (§10 pitfall 3): permanent, the label already holds other data. Any
        other 5xx may mean "still archiving" (§10 pitfall 11); the caller checks the archive.
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
            message = _error_message(response)
            if any(marker in message.lower() for marker in _CONFLICT_MARKERS):
                raise PermanentError(
                    "XNAT_CONFLICT",
                    f"XNAT refused to archive {session}: {message}",
                    f"session {session} already exists in project {project} with other data: "
                    "rename the folder if this is a new session, or ask the XNAT admin to "
                    "merge or delete the existing one",
                )
            raise TransientError(f"archive of {session}: HTTP 500: {message}")
        text = response.text.strip() or response.headers.get("Location", "")
        return text.splitlines()[0].strip() if text else ""

    # -- archive ------------------------------------------------------------------------------

    def _session_path(self, project: str, subject: str, label: str) -> str:
        return (
            f"/data/projects/{quote(project)}/subjects/{quote(subject)}/experiments/{quote(label)}"
        )

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
        fields = _item_fields(response)
        subject_id = str(fields.get("subject_ID", ""))
        subject = self.request(
            "GET",
            f"/data/projects/{quote(project)}/subjects/{quote(subject_id)}",
            params={"format": "json"},
        )
        subject_label = str(_item_fields(subject).get("label", subject_id))
        return ArchivedSession(
            id=str(fields.get("ID", "")),
            label=str(fields.get("label", label)),
            subject=subject_label,
            project=project,
            uri=self._session_path(project, subject_label, str(fields.get("label", label))),
        )

    def session_scans(self, project: str, subject: str, label: str) -> list[dict[str, str]]:
        """GET …/experiments/E/scans?format=json (reference §7)."""
        return self._get_table(self._session_path(project, subject, label) + "/scans")

    def session_files(self, project: str, subject: str, label: str) -> list[RemoteFile]:
        """GET …/experiments/E/scans/ALL/files?format=json: every scan file with size and MD5."""
        path = self._session_path(project, subject, label) + "/scans/ALL/files"
        return [_remote_file(row) for row in self._get_table(path)]

    def resource_files(
        self, project: str, subject: str, label: str, resource: str
    ) -> list[RemoteFile] | None:
        """GET …/experiments/E/resources/R/files?format=json; None when R does not exist (§8.3)."""
        path = self._session_path(project, subject, label) + f"/resources/{quote(resource)}/files"
        response = self.request("GET", path, params={"format": "json"}, ok=(200, 404))
        if response.status_code == 404:
            return None
        return [_remote_file(row) for row in _table(response)]

    def create_resource(self, project: str, subject: str, label: str, resource: str) -> None:
        """PUT …/experiments/E/resources/R; 409 means it exists already, which is fine (§8.1)."""
        path = self._session_path(project, subject, label) + f"/resources/{quote(resource)}"
        self.request(
            "PUT", path, params={"format": "MISC", "content": resource}, ok=(200, 201, 204, 409)
        )

    def upload_resource_zip(
        self, project: str, subject: str, label: str, resource: str, zip_path: Path
    ) -> list[str]:
        """PUT …/resources/R/files/NAME.zip?extract=true: XNAT unpacks it into R (§8.2).

        Files that already exist are not replaced; XNAT lists them as duplicates, which are
        returned so the caller can verify they hold the same content.
        """
        path = (
            self._session_path(project, subject, label)
            + f"/resources/{quote(resource)}/files/{quote(zip_path.name)}"
        )
        handles: list[IO[bytes]] = []

        def open_body() -> IO[bytes]:
            handle = open(zip_path, "rb")  # noqa: SIM115 - closed below
            handles.append(handle)
            return handle

        try:
            response = self.request(
                "PUT",
                path,
                params={"extract": "true", "content": resource},
                body=open_body,
                headers={"Content-Type": "application/zip"},
            )
        finally:
            for handle in handles:
                handle.close()
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


def _item_fields(response: requests.Response) -> dict[str, Any]:
    try:
        return dict(response.json()["items"][0]["data_fields"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise TransientError(f"XNAT sent an unreadable item from {response.url}") from error


def _remote_file(row: dict[str, str]) -> RemoteFile:
    uri = row.get("URI", "")
    scan = re.search(r"/scans/([^/]+)/resources/", uri)
    inside = uri.split("/files/", 1)[1] if "/files/" in uri else row.get("Name", "")
    return RemoteFile(
        scan=scan.group(1) if scan else "",
        resource=row.get("collection", ""),
        name=row.get("Name", ""),
        path=unquote(inside),
        size=int(row.get("Size") or 0),
        digest=row.get("digest", ""),
        uri=uri,
    )
