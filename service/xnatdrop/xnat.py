"""The only module that speaks HTTP to XNAT.

Every method names its endpoint and the section of ../shared/reference/xnat-rest.md ("the
reference") or the XNAT source file it follows; "stock" refers to
../shared/reference/xnat-stock.md, which lists what a fresh XNAT install does. Errors are sorted
by what the caller does next, from the HTTP status and XNAT's own fixed wording, never from
text that can contain a label or a file name:

- `TransientError`: connection errors, timeouts, 5xx, XNAT busy with the session (409 "session
  document locked", "Session processing in progress", 423 "Duplicate archive attempt"). The
  caller retries later with backoff; never a reason to quarantine.
- `XnatAnswer` (a `PermanentError`): a 4xx or an archive conflict that retrying cannot change.
  It carries `answer`, the status and XNAT's fixed wording without labels, so the circuit breaker
  (`breaker`) can tell when different drops get the same answer.
- `AuthenticationError`: XNAT refused our credentials, the password expired, or the setup keeps
  every request from working (a redirect to https, a Secure cookie over http). Uploads stop and
  an operator is told; never a quarantine.

Hygiene (issue 4 point 5, issue 9 point 8): one `requests.Session` per client, a non-browser
User-Agent (XNAT serves browser agents a login page instead of 401, reference §2.3), TLS
verified unless configured otherwise (`verify` is passed on every call, so `verify_tls = false`
is not undone by REQUESTS_CA_BUNDLE, which requests would otherwise let win), a timeout on every
call, a JSESSIONID cookie renewed when it expires (a 401, or a 2xx HTML login page, reference §10
pitfall 12), and no redirect ever followed. The base URL is stripped of any user:password part
before it is used or shown anywhere; log lines carry paths built from labels only.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from xnatdrop import __version__
from xnatdrop.config import XnatSettings
from xnatdrop.errors import AuthenticationError, PermanentError, TransientError

log = logging.getLogger(__name__)

USER_AGENT = f"xnatdrop/{__version__} (+python-requests)"
UPLOAD_CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10.0
# One retry of a failed connection: a blip is absorbed, while an unreachable XNAT is reported
# in about 2 × CONNECT_TIMEOUT when packets are dropped and at once when the port is closed. The
# pipeline retries transient errors itself with backoff; more retries here only delay the news.
CONNECT_RETRIES = 1

# XnatExpiredPasswordFilter: the page an authenticated user with an expired password is sent
# to (SecurityConfig.expiredPasswordFilter sets it), and the 403 text for Basic auth (l.152).
CHANGE_PASSWORD_PAGE = "/app/template/XDATScreen_UpdateUser.vm"
INACTIVE_ACCOUNT_PAGE = "/app/template/InactiveAccount.vm"
LOGIN_PAGE = "/app/template/Login.vm"
WRITER_ROLES = frozenset({"Owners", "Members"})  # group display names that may upload, archive
ALL_DATA_ADMIN = "ALL_DATA_ADMIN"  # the site-wide group of site administrators (all data)
PASSWORD_EXPIRED = "Your password has expired"
# XnatBasicAuthenticationFilter's login failure text: a wrong password and an account at XNAT's
# cap of open sessions (SecurityConfig: maximumSessions, maxSessionsPreventsLogin) read the same.
LOGIN_FAILED = "Your login attempt failed"

# DICOM resources of a scan, as XNAT's importer creates them (DefaultCatalogService: "DICOM" or
# "secondary"). Anything else on a scan (SNAPSHOTS, NIFTI from automation) is not ours.
DICOM_RESOURCES = frozenset({"DICOM", "secondary"})

# Archive failures, as PrearcSessionArchiver and MergeSessionsA word them; the archive service
# wraps them in 500 "FAILED: Unable to archive {folder}: Operation Failed: {cause}"
# (`archive_cause`). Matched at the start of the cause only, so a label inside the message can
# never change the verdict (issue 9 point 8). XNAT busy with the session is transient, whatever
# the status it comes with (409, 423, 403, 500).
ARCHIVE_CONFLICTS = (
    "Session already exists",  # PRE_EXISTS; "…with matching files." / "…the same resources."
    "Invalid modification of session",  # label, project, modality, subject, UID
    "Session already contains a scan",
    "Duplicate DICOM file uploaded",
    "Duplicate file uploaded",
    "Duplicate DCM UID cannot be merged",
)
ARCHIVE_BUSY = (
    "Session processing may already be in progress",  # the 409 ClientException
    "Session processing in progress",  # the workflow's failed() text
    "Duplicate archive attempt",  # 423: already archiving, or destination in use
    "Operation already in progress on this prearchive entry",  # 403 from the Archiver
    "Unable to lock session for archiving",  # PrearchiveArchiveHandler
    "session document locked",  # 409 for a `_` status (PrearcSessionResource)
)
# Fixed leading words of XNAT answers that identify one kind of problem whatever the drop:
# the circuit breaker groups answers by these (plus the status), never by their free text.
FIXED_WORDING = (
    "unable to read DICOM object",
    "Unable to identify upload format.",
    "Unsupported format",
    "Parameter dest format error",
    "Upload included files for multiple imaging sessions.",
    "Upload did not include parsable files",
    "unable to archive for the Prearchive session",
    "Invalid permissions",
    "The current user does not have access",
    "Unable to modify session data",
    "Cannot archive sessions from the Unassigned folder.",
    "Empty sessions cannot be archived",
    "Error updating existing metadata",
    "An error occurred when anonymizing the data",
    "An error occurred adding the session to the prearchive database",
)


class XnatAnswer(PermanentError):
    """A permanent answer from XNAT itself.

    `status` is the HTTP status; `answer` is the status with XNAT's fixed leading wording (see
    FIXED_WORDING), free of labels and file names, e.g. "HTTP 400 unable to read DICOM object".
    `suspect` says whether the same answer to every drop would point at XNAT rather than at the
    drop (a 4xx the drop cannot explain, a build or archive error), which the circuit breaker
    watches; a label conflict or a size limit is about the drop and is not suspect.
    """

    def __init__(
        self,
        code: str,
        message: str,
        fix: str = "",
        *,
        status: int = 0,
        answer: str = "",
        suspect: bool = True,
    ) -> None:
        super().__init__(code, message, fix)
        self.status = status
        self.answer = answer or (f"HTTP {status}" if status else code)
        self.suspect = suspect


def public_url(url: str) -> str:
    """`url` without a user:password part, for use and for every message (issue 9 point 8)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def fixed_wording(message: str) -> str:
    """The FIXED_WORDING entry `message` starts with, or ''."""
    return next((w for w in FIXED_WORDING if message.startswith(w)), "")


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


@dataclass(frozen=True)
class RemoteFile:
    """One file XNAT holds: its scan ("" for session resources), resource, name and path.

    `path` is the file's path inside its resource (extracted zips keep their folders).
    `resource` is the listing's `collection`: the resource label (DICOM, SNAPSHOTS, behav, …).
    """

    scan: str
    resource: str
    name: str
    path: str
    size: int
    digest: str
    uri: str


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Anonymization:
    """Whether XNAT's anonymisation scripts are on, as `/xapi/anonymize` says (AnonymizeApi).

    None means XNAT would not tell this account (403) or has no such API (404): rewriting is
    then possible and must be assumed.
    """

    site: bool | None
    project: bool | None


@dataclass(frozen=True)
class SeriesFilter:
    """A series import filter (DicomFilterService): `scope` "site" or "project", its mode
    (whitelist, blacklist, modalityMap) and its patterns, one per line."""

    scope: str
    enabled: bool
    mode: str
    patterns: str


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
    """The human part of an error answer, unescaped and on one line.

    Tomcat's error report (what `response.sendError` gives, e.g. the expired-password 403) has
    it in "<b>Message</b> …</p>" (its <h3> names the server); Restlet's status page in <h3>
    (reference §1.6); a proxy's page (nginx 502/504/413) in <h1> or <title>; plain text is
    taken as it is.
    """
    text = response.text or ""
    for pattern in (
        r"<b>Message</b>\s*(.*?)</p>",
        r"<h3>(.*?)</h3>",
        r"<h1>(.*?)</h1>",
        r"<title>(.*?)</title>",
    ):
        match = re.search(pattern, text, re.S | re.I)
        if match:
            text = match.group(1)
            break
    text = re.sub(r"<[^>]+>", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))
    message = " ".join(text.split())[:500]
    return message or response.reason or str(response.status_code)


def _looks_like_html(response: requests.Response) -> bool:
    head = response.content[:64].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html"))


def _table(response: requests.Response) -> list[dict[str, str]]:
    """Rows of a JSON table (reference §1.4)."""
    try:
        return list(response.json()["ResultSet"]["Result"])
    except (ValueError, KeyError, TypeError) as error:
        raise TransientError(
            f"XNAT sent an unreadable table for {urlsplit(response.url).path}"
        ) from error


def _json_value(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text.strip()


def as_bool(value: Any) -> bool | None:
    """XNAT's ways of saying a switch is on or off (JSON true, "true", "enabled"); None else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return {"true": True, "false": False, "enabled": True, "disabled": False}.get(text)


def _connect_failure(error: requests.RequestException) -> bool:
    """True when no connection was made at all (refused, no route, DNS, connect timeout)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the last cause
    return isinstance(
        reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    )


class XnatClient:
    """A logged-in connection to one XNAT server; use it as a context manager."""

    def __init__(self, settings: XnatSettings, password: str) -> None:
        self.base = public_url(settings.url)
        parts = urlsplit(self.base)
        self.host = parts.netloc  # HOST:PORT as written, for messages
        if parts.port is None:
            self.host += ":443" if parts.scheme == "https" else ":80"
        self._username = settings.username
        self._password = password
        self._timeout = (min(CONNECT_TIMEOUT, settings.timeout_seconds), settings.timeout_seconds)
        self._verify = settings.verify()
        if self._verify is False:
            # The operator chose it (verify_tls = false, for a test server); urllib3 would
            # otherwise warn on every request.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        self.http.verify = self._verify
        # Idempotent reads are retried here with backoff and jitter (urllib3's Retry); writes are
        # not, because the pipeline must first ask XNAT what already arrived.
        retry = Retry(
            total=4,
            connect=CONNECT_RETRIES,
            read=2,
            status=4,
            other=0,  # a TLS verification failure does not fix itself in a second
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
        self.secure_cookie: bool | None = None  # did XNAT mark JSESSIONID Secure at login?

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._logged_in:
            # Logging out is a courtesy (the session expires on its own), so it bypasses the
            # session's retrying adapter: a server that is down must not delay shutdown. It also
            # keeps XNAT's cap on open sessions per account (stock "lacks entirely") far away.
            with contextlib.suppress(requests.RequestException):
                requests.delete(
                    self.base + "/data/JSESSION",
                    cookies=self.http.cookies,
                    headers={"User-Agent": USER_AGENT},
                    verify=self._verify,
                    timeout=(2.0, 5.0),
                    allow_redirects=False,
                )
        self.http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _unreachable(self, method: str, path: str, error: requests.RequestException) -> Exception:
        """One sentence for a request that got no HTTP answer; never urllib3's text or a URL."""
        if isinstance(error, requests.exceptions.SSLError):
            return TransientError(
                f"the TLS certificate of {self.host} could not be verified — if XNAT uses a "
                "private certificate authority, set xnat.ca_bundle to its PEM file"
            )
        if _connect_failure(error):
            return TransientError(f"cannot connect to {self.host} — is the URL right, is XNAT up?")
        if isinstance(error, requests.exceptions.Timeout):
            return TransientError(
                f"XNAT at {self.host} did not answer {method} {path} within "
                f"{self._timeout[1]:.0f} s"
            )
        cause = error.args[0] if error.args else error
        cause = getattr(cause, "reason", cause)
        while isinstance(cause, Exception) and cause.args and isinstance(cause.args[-1], Exception):
            cause = cause.args[-1]  # ProtocolError("Connection aborted.", ConnectionResetError())
        return TransientError(
            f"the connection to {self.host} broke during {method} {path} ({type(cause).__name__})"
        )

    def login(self) -> None:
        """POST /data/JSESSION with Basic auth; keep the JSESSIONID cookie (reference §2.1).

        Besides a wrong password or an account at XNAT's cap of open sessions (the same 401;
        xnatdrop logs out after each drop so as not to add to it), XNAT may answer with a
        redirect to its change-password page or 403 "Your password has expired…"
        (XnatExpiredPasswordFilter l.152, l.186-191; password expiry is on by default, one
        year, stock row 8) and may mark the cookie Secure when its site URL is https
        (SecurityConfig.configure l.287, stock row 9): over http the cookie would then never be
        sent back and every request would fail, so both are authentication alerts here.
        """
        self.http.cookies.clear()
        try:
            response = self.http.post(
                self.base + "/data/JSESSION",
                auth=(self._username, self._password),
                timeout=self._timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            raise self._unreachable("POST", "/data/JSESSION", error) from None
        status = response.status_code
        message = _error_message(response) if status >= 300 else ""
        if status == 403 and message.startswith(PASSWORD_EXPIRED):
            raise self._password_expired(f'XNAT answered the login with 403 "{message}"')
        if 300 <= status < 400:
            raise self._redirected(response)
        if status in (401, 403) or (response.ok and _looks_like_html(response)):
            first = message.split(". ", 1)[0].rstrip(".") + "."
            said = f': "{first}"' if message.startswith(LOGIN_FAILED) else ""
            also = (
                "; if it is right, the account has too many XNAT sessions open (XNAT's cap, "
                "concurrentMaxSessions): they end after XNAT's session timeout"
                if said
                else ""
            )
            raise AuthenticationError(
                f"XNAT at {self.base} refused the login of user {self._username!r} "
                f"(HTTP {status}){said}; check the username and password{also}"
            )
        if status >= 500:
            raise TransientError(f"XNAT login failed with HTTP {status}")
        if not response.ok:
            # No drop can cause this: the URL does not lead to XNAT's REST API (a missing
            # context path such as /xnat, a proxy's error page). Every push stops until fixed.
            raise AuthenticationError(
                f"{self.base} answered the login with HTTP {status} ({message}): is xnat.url "
                "XNAT's address, with its context path if it has one (e.g. https://host/xnat)?"
            )
        self.secure_cookie = any(c.name == "JSESSIONID" and c.secure for c in self.http.cookies)
        if self.secure_cookie and self.base.startswith("http://"):
            raise AuthenticationError(
                f"XNAT marks its session cookie Secure (its site URL is https), so over "
                f"{self.base} the cookie is never sent back and every request would fail: set "
                f"xnat.url to {'https://' + self.base.removeprefix('http://')}"
            )
        self._logged_in = True
        log.debug("logged in to %s as %s", self.base, self._username)

    def _password_expired(self, what: str) -> AuthenticationError:
        return AuthenticationError(
            f"the password of XNAT user {self._username!r} has expired ({what}): change it at "
            f"{self.base}{CHANGE_PASSWORD_PAGE}, put the new one in the password file, then "
            "restart xnatdrop"
        )

    def _redirected(self, response: requests.Response) -> AuthenticationError:
        """A redirect XNAT (or a proxy in front of it) sends instead of an answer.

        xnatdrop never follows redirects (a followed 303 turns an archive into a GET, reference
        §5.1), so each kind is named: the change-password page (an expired password for a
        session user, XnatExpiredPasswordFilter l.186-191), the inactive-account page, or a
        move to https. Each stops every push until someone acts: an authentication alert.
        """
        location = response.headers.get("Location", "")
        target = urlsplit(location)
        if target.path.endswith(CHANGE_PASSWORD_PAGE):
            return self._password_expired(
                f"XNAT answered HTTP {response.status_code} with a redirect to its "
                "change-password page"
            )
        if target.path.endswith(INACTIVE_ACCOUNT_PAGE):
            return AuthenticationError(
                f"XNAT says the account {self._username!r} is disabled (redirect to its "
                "inactive-account page); ask the XNAT administrator to enable it"
            )
        if target.scheme == "https" and self.base.startswith("http://"):
            return AuthenticationError(
                f"XNAT redirects {self.base} to https; set xnat.url to "
                f"https://{target.netloc or self.base.removeprefix('http://')}"
            )
        return AuthenticationError(
            f"XNAT answered HTTP {response.status_code} with a redirect to "
            f"{public_url(location).split('?')[0] or 'nowhere'}; xnatdrop never follows "
            "redirects: check xnat.url"
        )

    @staticmethod
    def _session_expired(response: requests.Response) -> bool:
        """401, a 2xx login page, or a redirect to the login page (reference §10 pitfall 12)."""
        status = response.status_code
        if status == 401 or (status < 300 and _looks_like_html(response)):
            return True
        return 300 <= status < 400 and LOGIN_PAGE in response.headers.get("Location", "")

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
        stream: bool = False,
    ) -> requests.Response:
        """Send one request with the session cookie, renewing the session once if it expired.

        `body`, when given, is a factory so the upload can be reopened after a re-login.
        Statuses in `ok` are returned; others raise Transient/XnatAnswer/AuthenticationError.
        """
        if not self._logged_in:
            self.login()
        url = path if path.startswith("http") else self.base + path
        shown = urlsplit(url).path
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
                    verify=self._verify,
                    stream=stream,
                )
            except requests.RequestException as error:
                raise self._unreachable(method, shown, error) from None
            if self._session_expired(response) and attempt == 1:
                log.info("XNAT session expired; logging in again")
                self.login()
                continue
            break
        log.debug("%s %s -> %s", method, shown, response.status_code)
        if response.status_code in ok:
            return response
        raise self._error(method, shown, response)

    def _error(self, method: str, path: str, response: requests.Response) -> Exception:
        status = response.status_code
        text = _error_message(response)
        message = f"{method} {path}: HTTP {status}: {text}"
        if status == 403 and text.startswith(PASSWORD_EXPIRED):
            return self._password_expired(f'XNAT answered 403 "{text}"')
        if 300 <= status < 400:
            return self._redirected(response)
        if status == 401 or (status < 300 and _looks_like_html(response)):
            return AuthenticationError(f"XNAT no longer accepts user {self._username!r}: {message}")
        if status in (408, 423, 429) or status >= 500 or text.startswith(ARCHIVE_BUSY):
            return TransientError(message)
        wording = fixed_wording(text)
        answer = f"HTTP {status} {wording}".strip()
        if status == 403:
            return XnatAnswer(
                "XNAT_FORBIDDEN",
                message,
                f"give user {self._username!r} member or owner access to the project in XNAT",
                status=status,
                answer=answer,
            )
        if status == 413:
            return XnatAnswer(
                "XNAT_TOO_LARGE",
                f"{message} (a proxy in front of XNAT limits the size of a request)",
                "ask the XNAT administrator to raise the proxy's upload limit (nginx "
                "client_max_body_size, Apache LimitRequestBody)",
                status=status,
                answer=answer,
                suspect=False,
            )
        return XnatAnswer(
            "XNAT_REJECTED", message, "see the XNAT message above", status=status, answer=answer
        )

    def _get_table(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        return _table(self.request("GET", path, params={"format": "json", **(params or {})}))

    # -- session, site and project ------------------------------------------------------------

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

    def project_access(self, project: str) -> tuple[str | None, frozenset[str]]:
        """The user's role in `project` as XNAT names it (None without a row), and the
        site-wide groups it belongs to.

        GET /xapi/access/projects (DataAccessApi → RoleHolder.getUserProjectRoles, l.198-213):
        one row per group; `role` is the group's display name, `Owners`, `Members` or
        `Collaborators` (Groups.java l.44-49, stock row 7). Owners and members may upload and
        archive; collaborators may only read. A site-wide group has a row without `ID`: a site
        administrator is in ALL_DATA_ADMIN (all data, read and write) and has no per-project
        row for projects it did not create; ALL_DATA_ACCESS reads all data.
        """
        response = self.request("GET", "/xapi/access/projects")
        try:
            rows = [row for row in response.json() if isinstance(row, dict)]
        except (ValueError, TypeError) as error:
            raise TransientError("XNAT sent an unreadable project access list") from error
        role = next((str(r.get("role", "")) for r in rows if r.get("ID") == project), None)
        groups = frozenset(str(r.get("group_id", "")) for r in rows if "ID" not in r)
        return role, groups

    def project_role(self, project: str) -> str | None:
        """The user's role in `project` as XNAT names it, or None without a row."""
        return self.project_access(project)[0]

    def user_roles(self) -> list[str] | None:
        """GET /xapi/users/{me}/roles (UsersApi, restrictTo User: one's own roles), e.g.
        ["Administrator", "non_expiring"] (UserRole.java); None if XNAT would not say."""
        response = self.request(
            "GET", f"/xapi/users/{quote(self._username)}/roles", ok=(200, 403, 404)
        )
        if response.status_code != 200:
            return None
        value = _json_value(response)
        return [str(v) for v in value] if isinstance(value, list) else None

    def prearchive_code(self, project: str) -> int:
        """GET /data/projects/P/prearchive_code → 0 manual, 4/5 auto-archive (reference §7)."""
        text = self.request("GET", f"/data/projects/{quote(project)}/prearchive_code").text
        try:
            return int(text.strip())
        except ValueError:
            raise TransientError(f"unexpected prearchive_code answer {text[:40]!r}") from None

    def site_preference(self, name: str) -> Any | None:
        """GET /xapi/siteConfig/{name} (SiteConfigApi): a preference's value, or None when
        this account may not read it or XNAT has no such preference.

        Any logged-in account may read `checksums`, `enableSitewideAnonymizationScript`, the
        series-import-filter preferences and `siteUrl` (site-config-access.yaml); the password
        expiry settings are for administrators only.
        """
        response = self.request("GET", f"/xapi/siteConfig/{quote(name)}", ok=(200, 401, 403, 404))
        return _json_value(response) if response.status_code == 200 else None

    def anonymization(self, project: str) -> Anonymization:
        """Whether the site-wide and the project's anonymisation scripts are on.

        GET /xapi/anonymize/site/enabled (restrictTo Authenticated) and
        /xapi/anonymize/projects/P/enabled (restrictTo Read) in AnonymizeApi.java. The site
        script runs on every imported file (GradualDicomImporter.call l.390-411), the project
        script at archive time (MergePrearcToArchiveSession l.55), neither for a session
        imported with prevent_anon=true (PrearcSessionAnonymizer.needsAnonymization).
        """
        values = []
        for path in (
            "/xapi/anonymize/site/enabled",
            f"/xapi/anonymize/projects/{quote(project)}/enabled",
        ):
            response = self.request("GET", path, ok=(200, 401, 403, 404))
            values.append(as_bool(_json_value(response)) if response.status_code == 200 else None)
        return Anonymization(site=values[0], project=values[1])

    def anonymization_script(self, project: str | None = None) -> str | None:
        """The site's (or the project's) anonymisation script text; "" when the project has
        none (204); None when XNAT would not say (AnonymizeApi GET site / projects/P)."""
        path = "/xapi/anonymize/site" if project is None else f"/xapi/anonymize/projects/{project}"
        response = self.request("GET", path, ok=(200, 204, 401, 403, 404))
        if response.status_code == 204:
            return ""
        return response.text if response.status_code == 200 else None

    def series_import_filters(self, project: str) -> list[SeriesFilter] | None:
        """The site-wide and the project's series import filters that are enabled.

        XNAT drops every instance a filter rejects without a word (GradualDicomImporter.call
        l.193, stock row 6). Site: the preferences `enableSitewideSeriesImportFilter`,
        `sitewideSeriesImportFilterMode` and `sitewideSeriesImportFilter` (readable by any
        account). Project: the config service entry `seriesImportFilter/config`
        (DicomFilterService), GET /data/projects/P/config/seriesImportFilter/config, whose
        `contents` is JSON ({"mode", "list"}) and `status` "enabled"/"disabled" (what XNAT's
        own project page reads, settingsManager.js). None when the account may not read them.
        """
        filters = []
        enabled = as_bool(self.site_preference("enableSitewideSeriesImportFilter"))
        if enabled is None:
            return None
        if enabled:
            filters.append(
                SeriesFilter(
                    "site",
                    True,
                    str(self.site_preference("sitewideSeriesImportFilterMode") or ""),
                    str(self.site_preference("sitewideSeriesImportFilter") or ""),
                )
            )
        response = self.request(
            "GET",
            f"/data/projects/{quote(project)}/config/seriesImportFilter/config",
            params={"format": "json"},
            ok=(200, 204, 401, 403, 404),
        )
        if response.status_code in (401, 403):
            return None
        if response.status_code == 200:
            for row in _table(response):
                try:
                    contents = json.loads(row.get("contents") or "{}")
                except ValueError:
                    contents = {}
                if not isinstance(contents, dict):
                    contents = {}
                if as_bool(row.get("status", "")):
                    filters.append(
                        SeriesFilter(
                            "project",
                            True,
                            str(contents.get("mode", "")),
                            str(contents.get("list", "")),
                        )
                    )
        return filters

    # -- import and prearchive ----------------------------------------------------------------

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
        handles: list[Any] = []
        sizes: list[int] = []

        def open_body() -> _ProgressReader:
            if isinstance(source, Path):
                handle = open(source, "rb")  # noqa: SIM115 - closed below, reopened on re-login
                size = os.fstat(handle.fileno()).st_size
            else:
                handle = source()  # a fresh stream from the start, e.g. pack.Body
                size = len(handle)
            handles.append(handle)
            sizes.append(size)
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
        except XnatAnswer as answer:
            if answer.status == 413 and sizes:
                raise XnatAnswer(
                    "XNAT_TOO_LARGE",
                    f"the upload of {session} ({sizes[-1] / 1e9:.2f} GB) was refused as too "
                    "large (HTTP 413 from the proxy in front of XNAT)",
                    "ask the XNAT administrator to raise the proxy's upload limit (nginx "
                    "client_max_body_size, Apache LimitRequestBody) above "
                    f"{sizes[-1] / 1e9:.1f} GB, then copy the folder back into the drop folder",
                    status=413,
                    answer=answer.answer,
                    suspect=False,
                ) from None
            raise
        finally:
            for handle in handles:
                handle.close()
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
            lastmod=row.get("lastmod", ""),
        )

    def prearchive_entries(self, project: str) -> list[PrearchiveEntry]:
        """GET /data/prearchive/projects/P?format=json (reference §4.1)."""
        rows = self._get_table(f"/data/prearchive/projects/{quote(project)}")
        return [self._entry(row) for row in rows]

    def prearchive_all(self) -> list[PrearchiveEntry]:
        """GET /data/prearchive?format=json: every session of every project the user may edit,
        and Unassigned for a data admin (PrearcSessionListResource, reference §4.1)."""
        return [self._entry(row) for row in self._get_table("/data/prearchive")]

    def prearchive_entry(self, uri: str) -> PrearchiveEntry | None:
        """GET <prearchive uri>?format=json: a one-row table, or None (reference §4.3)."""
        response = self.request("GET", uri, params={"format": "json"}, ok=(200, 404))
        if response.status_code == 404:
            return None
        rows = _table(response)
        return self._entry(rows[0]) if rows else None

    def prearchive_files(self, uri: str) -> list[RemoteFile]:
        """Files of every scan of a prearchive session (reference §4.3).

        The prearchive lists `Name,Size,URI` only: no digest, no SOPInstanceUID
        (PrearcSessionResourceFiles; stock row 10).
        """
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
        """POST <prearchive uri>?action=build: synchronous rebuild (reference §4.5).

        409 "session document locked" means XNAT holds the session in a `_`-prefixed status
        (PrearcSessionResource.postActionBuild, PrearcDatabase.isLocked; stock row 5): it is
        busy with it, which is transient.
        """
        response = self.request("POST", uri, params={"action": "build"}, ok=(200, 201, 204, 409))
        if response.status_code == 409:
            raise TransientError(
                f"XNAT is busy with the prearchive session ({_error_message(response)})"
            )

    def delete_prearchive(self, uri: str) -> None:
        """DELETE <prearchive uri> (reference §4.3); a missing session is already deleted."""
        self.request("DELETE", uri, ok=(200, 204, 404))

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
            message = _error_message(response)
            cause = archive_cause(message, uri.rstrip("/").rsplit("/", 1)[-1])
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

    # -- archive ------------------------------------------------------------------------------

    def _session_path(self, project: str, subject: str, label: str) -> str:
        return (
            f"/data/projects/{quote(project)}/subjects/{quote(subject)}/experiments/{quote(label)}"
        )

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
        path = self._session_path(project, subject, label) + "/scans/ALL/files"
        return [_remote_file(row) for row in self._get_table(path)]

    def scan_catalog(
        self, project: str, subject: str, label: str, scan: str, resource: str = "DICOM"
    ) -> list[CatalogEntry]:
        """GET …/experiments/E/scans/S/resources/R: the resource's catalog document.

        XNAT's CatalogResource.represent writes the catalog bean as text/xml whatever the
        format asked; in a DICOM catalog every file is a `cat:dcmEntry` whose `UID` is the
        SOPInstanceUID. One request per scan is the cheapest way to the instance UIDs XNAT
        catalogued (the prearchive has no such endpoint). Entries without a UID are skipped.
        """
        path = (
            self._session_path(project, subject, label)
            + f"/scans/{quote(scan)}/resources/{quote(resource)}"
        )
        response = self.request("GET", path)
        try:
            root = ElementTree.fromstring(response.content)
        except ElementTree.ParseError as error:
            raise TransientError(f"XNAT sent an unreadable catalog for scan {scan}") from error
        entries = []
        for element in root.iter():
            if not element.tag.endswith("}entry") and element.tag != "entry":
                continue
            uid = element.get("UID", "")
            if uid:
                entries.append(
                    CatalogEntry(
                        scan=scan,
                        resource=resource,
                        uid=uid,
                        path=unquote(element.get("URI", "") or element.get("ID", "")),
                        digest=element.get("digest", ""),
                    )
                )
        return entries

    def download(self, uri: str, limit: int = 512 << 20) -> bytes:
        """GET one file by the URI a listing gave (its /data/… path); at most `limit` bytes."""
        response = self.request("GET", uri, stream=True)
        try:
            data = bytearray()
            for piece in response.iter_content(1 << 20):
                data += piece
                if len(data) > limit:
                    raise TransientError(f"{uri.rsplit('/', 1)[-1]} is larger than expected")
            return bytes(data)
        except requests.RequestException as error:
            raise self._unreachable("GET", urlsplit(uri).path, error) from None
        finally:
            response.close()

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
        return [_remote_file(row) for row in _table(response)]

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
        handles: list[Any] = []

        def open_body() -> Any:
            handle = open(source, "rb") if isinstance(source, Path) else source()  # noqa: SIM115
            handles.append(handle)  # closed below
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


def archive_cause(message: str, folder: str) -> str:
    """The cause of an archive failure without what XNAT puts before it.

    The archive queue reports "FAILED: Unable to archive {folder}: Operation Failed: {cause}"
    (QueueBasedImageCommit.call, PrearchiveArchiveHandler.execute, PrearcDatabase.wrapException);
    each prefix is removed if present, so the cause is read from its start.
    """
    for prefix in ("FAILED: ", f"Unable to archive {folder}: ", "Operation Failed: "):
        message = message.removeprefix(prefix)
    return message


def _item_fields(response: requests.Response) -> dict[str, Any]:
    try:
        return dict(response.json()["items"][0]["data_fields"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise TransientError(
            f"XNAT sent an unreadable item for {urlsplit(response.url).path}"
        ) from error


def _remote_file(row: dict[str, str]) -> RemoteFile:
    uri = row.get("URI", "")
    scan = re.search(r"/scans/([^/]+)/resources/", uri)
    inside = uri.split("/files/", 1)[1] if "/files/" in uri else row.get("Name", "")
    return RemoteFile(
        scan=unquote(scan.group(1)) if scan else "",
        resource=row.get("collection", ""),
        name=row.get("Name", ""),
        path=unquote(inside),
        size=int(row.get("Size") or 0),
        digest=row.get("digest", ""),
        uri=uri,
    )
