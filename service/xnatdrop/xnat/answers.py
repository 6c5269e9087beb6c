"""What XNAT's answers mean: its tables and items read, its errors sorted by what to do next.

Errors are sorted from the HTTP status and XNAT's own fixed wording, never from text that can
contain a label or a file name (issue 9 point 8):

- `TransientError`: timeouts, 5xx, XNAT busy with the session (409 "session document locked",
  "Session processing in progress", 423 "Duplicate archive attempt"). The caller retries later
  with backoff; never a reason to quarantine.
- `XnatAnswer` (a `PermanentError`): a 4xx or an archive conflict that retrying cannot change.
  It carries `answer`, the status and XNAT's fixed wording without labels, so the circuit breaker
  (`breaker`) can tell when different drops get the same answer.
- `AuthenticationError`: XNAT refused our credentials, the password expired, or the setup keeps
  every request from working (a redirect to https, a login page instead of an answer). Uploads
  stop and an operator is told; never a quarantine.

"The reference" is ../shared/reference/xnat-rest.md; "stock" is ../shared/reference/xnat-stock.md.
Nothing here sends a request: `connection` does, and asks this module what came back.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

from xnatdrop.errors import AuthenticationError, PermanentError, TransientError

# XnatExpiredPasswordFilter: the page an authenticated user with an expired password is sent
# to (SecurityConfig.expiredPasswordFilter sets it), and the 403 text for Basic auth (l.152).
CHANGE_PASSWORD_PAGE = "/app/template/XDATScreen_UpdateUser.vm"
INACTIVE_ACCOUNT_PAGE = "/app/template/InactiveAccount.vm"
LOGIN_PAGE = "/app/template/Login.vm"
PASSWORD_EXPIRED = "Your password has expired"
# XnatBasicAuthenticationFilter's login failure text: a wrong password and an account at XNAT's
# cap of open sessions (SecurityConfig: maximumSessions, maxSessionsPreventsLogin) read the same.
LOGIN_FAILED = "Your login attempt failed"

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


@dataclass(frozen=True, slots=True)
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


def public_url(url: str) -> str:
    """`url` without a user:password part, for use and for every message (issue 9 point 8)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def fixed_wording(message: str) -> str:
    """The FIXED_WORDING entry `message` starts with, or ''."""
    return next((w for w in FIXED_WORDING if message.startswith(w)), "")


def archive_cause(message: str, folder: str) -> str:
    """The cause of an archive failure without what XNAT puts before it.

    The archive queue reports "FAILED: Unable to archive {folder}: Operation Failed: {cause}"
    (QueueBasedImageCommit.call, PrearchiveArchiveHandler.execute, PrearcDatabase.wrapException);
    each prefix is removed if present, so the cause is read from its start.
    """
    for prefix in ("FAILED: ", f"Unable to archive {folder}: ", "Operation Failed: "):
        message = message.removeprefix(prefix)
    return message


# -- reading answers ------------------------------------------------------------------------


def error_message(response: requests.Response) -> str:
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


# Answer types that are never a login page (XNAT serves that as text/html). Such an answer is not
# read here: a streamed catalog or download would otherwise be loaded whole just to look at it.
NOT_A_PAGE = ("xml", "json", "application/octet-stream", "application/dicom", "application/zip")


def looks_like_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").lower()
    if "html" not in kind and any(name in kind for name in NOT_A_PAGE):
        return False
    head = response.content[:64].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html"))


def table(response: requests.Response) -> list[dict[str, str]]:
    """Rows of a JSON table (reference §1.4), parsed from the answer's bytes (json detects
    UTF-8), not from `response.json()`, which decodes a second copy of a large listing first."""
    try:
        return list(json.loads(response.content)["ResultSet"]["Result"])
    except (ValueError, KeyError, TypeError) as error:
        raise TransientError(
            f"XNAT sent an unreadable table for {urlsplit(response.url).path}"
        ) from error


def item_fields(response: requests.Response) -> dict[str, Any]:
    """The data fields of the first item of a `format=json` item answer (reference §7)."""
    try:
        return dict(response.json()["items"][0]["data_fields"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise TransientError(
            f"XNAT sent an unreadable item for {urlsplit(response.url).path}"
        ) from error


def json_value(response: requests.Response) -> Any:
    """An XAPI answer as JSON, or its text when it is not JSON (some preferences are bare)."""
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


def remote_file(row: dict[str, str]) -> RemoteFile:
    """One row of a file listing (`…/files?format=json`, reference §7, §8.3)."""
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


# -- sorting answers by what the caller does next ---------------------------------------------


def session_expired(response: requests.Response) -> bool:
    """401, a 2xx login page, or a redirect to the login page (reference §10 pitfall 12)."""
    status = response.status_code
    if status == 401 or (status < 300 and looks_like_html(response)):
        return True
    return 300 <= status < 400 and LOGIN_PAGE in response.headers.get("Location", "")


def password_expired(what: str, *, user: str, base: str) -> AuthenticationError:
    return AuthenticationError(
        f"the password of XNAT user {user!r} has expired ({what}): change it at "
        f"{base}{CHANGE_PASSWORD_PAGE}, put the new one in the password file, then "
        "restart xnatdrop"
    )


def redirected(response: requests.Response, *, user: str, base: str) -> AuthenticationError:
    """A redirect XNAT (or a proxy in front of it) sends instead of an answer.

    xnatdrop never follows redirects (a followed 303 turns an archive into a GET, reference
    §5.1), so each kind is named: the change-password page (an expired password for a
    session user, XnatExpiredPasswordFilter l.186-191), the inactive-account page, or a
    move to https. Each stops every push until someone acts: an authentication alert.
    """
    location = response.headers.get("Location", "")
    target = urlsplit(location)
    if target.path.endswith(CHANGE_PASSWORD_PAGE):
        return password_expired(
            f"XNAT answered HTTP {response.status_code} with a redirect to its "
            "change-password page",
            user=user,
            base=base,
        )
    if target.path.endswith(INACTIVE_ACCOUNT_PAGE):
        return AuthenticationError(
            f"XNAT says the account {user!r} is disabled (redirect to its "
            "inactive-account page); ask the XNAT administrator to enable it"
        )
    if target.scheme == "https" and base.startswith("http://"):
        return AuthenticationError(
            f"XNAT redirects {base} to https; set xnat.url to "
            f"https://{target.netloc or base.removeprefix('http://')}"
        )
    return AuthenticationError(
        f"XNAT answered HTTP {response.status_code} with a redirect to "
        f"{public_url(location).split('?')[0] or 'nowhere'}; xnatdrop never follows "
        "redirects: check xnat.url"
    )


def login_failure(response: requests.Response, *, user: str, base: str) -> Exception | None:
    """Why XNAT refused POST /data/JSESSION, or None when the login worked (reference §2.1).

    Besides a wrong password or an account at XNAT's cap of open sessions (the same 401;
    xnatdrop logs out after each drop so as not to add to it), XNAT may answer with a
    redirect to its change-password page or 403 "Your password has expired…"
    (XnatExpiredPasswordFilter l.152, l.186-191; password expiry is on by default, one
    year, stock row 8): authentication alerts, never a quarantine.
    """
    status = response.status_code
    message = error_message(response) if status >= 300 else ""
    if status == 403 and message.startswith(PASSWORD_EXPIRED):
        return password_expired(
            f'XNAT answered the login with 403 "{message}"', user=user, base=base
        )
    if 300 <= status < 400:
        return redirected(response, user=user, base=base)
    if status in (401, 403) or (response.ok and looks_like_html(response)):
        first = message.split(". ", 1)[0].rstrip(".") + "."
        said = f': "{first}"' if message.startswith(LOGIN_FAILED) else ""
        also = (
            "; if it is right, the account has too many XNAT sessions open (XNAT's cap, "
            "concurrentMaxSessions): they end after XNAT's session timeout"
            if said
            else ""
        )
        return AuthenticationError(
            f"XNAT at {base} refused the login of user {user!r} "
            f"(HTTP {status}){said}; check the username and password{also}"
        )
    if status >= 500:
        return TransientError(f"XNAT login failed with HTTP {status}")
    if not response.ok:
        # No drop can cause this: the URL does not lead to XNAT's REST API (a missing
        # context path such as /xnat, a proxy's error page). Every push stops until fixed.
        return AuthenticationError(
            f"{base} answered the login with HTTP {status} ({message}): is xnat.url "
            "XNAT's address, with its context path if it has one (e.g. https://host/xnat)?"
        )
    return None


def refusal(
    method: str, path: str, response: requests.Response, *, user: str, base: str
) -> Exception:
    """The error for an answer whose status the caller did not expect: transient (busy, 5xx),
    authentication (expired password, redirect, login page), or a permanent `XnatAnswer`."""
    status = response.status_code
    text = error_message(response)
    message = f"{method} {path}: HTTP {status}: {text}"
    if status == 403 and text.startswith(PASSWORD_EXPIRED):
        return password_expired(f'XNAT answered 403 "{text}"', user=user, base=base)
    if 300 <= status < 400:
        return redirected(response, user=user, base=base)
    if status == 401 or (status < 300 and looks_like_html(response)):
        return AuthenticationError(f"XNAT no longer accepts user {user!r}: {message}")
    if status in (408, 423, 429) or status >= 500 or text.startswith(ARCHIVE_BUSY):
        return TransientError(message)
    wording = fixed_wording(text)
    answer = f"HTTP {status} {wording}".strip()
    if status == 403:
        return XnatAnswer(
            "XNAT_FORBIDDEN",
            message,
            f"give user {user!r} member or owner access to the project in XNAT",
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
