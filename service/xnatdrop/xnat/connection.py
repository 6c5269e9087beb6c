"""The HTTP plumbing to one XNAT: the session, login and logout, and one request with its errors.

Hygiene (issue 4 point 5, issue 9 point 8): one `requests.Session` per client, a non-browser
User-Agent (XNAT serves browser agents a login page instead of 401, reference §2.3), TLS
verified unless configured otherwise (`verify` is passed on every call, so `verify_tls = false`
is not undone by REQUESTS_CA_BUNDLE, which requests would otherwise let win), a timeout on every
call, a JSESSIONID cookie renewed when it expires (a 401, or a 2xx HTML login page, reference §10
pitfall 12), and no redirect ever followed. The base URL is stripped of any user:password part
before it is used or shown anywhere; log lines carry paths built from labels only.

What an answer means is `answers`' business; `Connection.request` asks it whenever the status
is not one the caller expects. The endpoints themselves are in `site`, `prearchive`, `archive`
and `resources`, each a `Connection` subclass that `client.XnatClient` puts together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from xnatdrop import __version__
from xnatdrop.config import XnatSettings
from xnatdrop.errors import AuthenticationError, TransientError
from xnatdrop.xnat import answers

log = logging.getLogger(__name__)

USER_AGENT = f"xnatdrop/{__version__} (+python-requests)"
UPLOAD_CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10.0
# One retry of a failed connection: a blip is absorbed, while an unreachable XNAT is reported
# in about 2 × CONNECT_TIMEOUT when packets are dropped and at once when the port is closed. The
# pipeline retries transient errors itself with backoff; more retries here only delay the news.
CONNECT_RETRIES = 1


class ProgressReader:
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


class Upload:
    """The body of one upload, opened afresh for each try and closed afterwards.

    `source` is a file, or a factory of a fresh file-like body with `__len__` (the streamed
    `pack.Body`, so that no zip is ever written to disk). `Connection.request` calls `open`
    again when it repeats the request after a re-login; leaving the `with` block closes every
    body it opened. `size` is the length of the last one.
    """

    def __init__(
        self, source: Path | Callable[[], Any], progress: Callable[[int], None] | None = None
    ) -> None:
        self.source = source
        self.progress = progress
        self.size: int | None = None
        self._handles: list[Any] = []

    def open(self) -> ProgressReader:
        if isinstance(self.source, Path):
            handle = open(self.source, "rb")  # noqa: SIM115 - closed in __exit__
            size = os.fstat(handle.fileno()).st_size
        else:
            handle = self.source()  # a fresh stream from the start, e.g. pack.Body
            size = len(handle)
        self._handles.append(handle)
        self.size = size
        return ProgressReader(handle, size, self.progress)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.close()


def connect_failure(error: requests.RequestException) -> bool:
    """True when no connection was made at all (refused, no route, DNS, connect timeout)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the last cause
    return isinstance(
        reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    )


class Connection:
    """A logged-in HTTP session with one XNAT server; use it as a context manager."""

    def __init__(self, settings: XnatSettings, password: str) -> None:
        self.base = answers.public_url(settings.url)
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
        self._environment()
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
        self._owns_session = False  # logged in by this client, so logged out by it on close
        self.secure_cookie: bool | None = None  # did XNAT mark JSESSIONID Secure at login?

    def _environment(self) -> None:
        """Read what requests takes from the environment once, for this client's base URL:
        the proxies (HTTPS_PROXY, NO_PROXY, …) and, when TLS is verified with the system's
        authorities, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE; then stop requests reading it again.

        Why: with `trust_env` requests reads it on every request, scanning the whole process
        environment twice and looking for ~/.netrc (`Session.merge_environment_settings`,
        `get_netrc_auth`), about 0.3 ms of CPU a request, over 1,600 requests in the read-back
        of a 2 GB session. And credentials come from xnatdrop's own configuration only: a
        ~/.netrc entry for the XNAT host would otherwise add Basic authentication to every
        request after the login, a second login per request (or a 401 every time, when the
        entry is stale)."""
        found = self.http.merge_environment_settings(self.base, {}, None, self._verify, None)
        self.http.proxies.update(found["proxies"])
        self._verify = found["verify"]
        self.http.trust_env = False

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_session:
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

    def _unreachable(self, method: str, path: str, error: requests.RequestException) -> Exception:
        """One sentence for a request that got no HTTP answer; never urllib3's text or a URL."""
        if isinstance(error, requests.exceptions.SSLError):
            return TransientError(
                f"the TLS certificate of {self.host} could not be verified — if XNAT uses a "
                "private certificate authority, set xnat.ca_bundle to its PEM file"
            )
        if connect_failure(error):
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

        Refusals are sorted by `answers.login_failure`. XNAT may also mark the cookie Secure
        when its site URL is https (SecurityConfig.configure l.287, stock row 9): over http
        the cookie would then never be sent back and every request would fail, so that is an
        authentication alert too.
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
        failure = answers.login_failure(response, user=self._username, base=self.base)
        if failure is not None:
            raise failure
        self.secure_cookie = any(c.name == "JSESSIONID" and c.secure for c in self.http.cookies)
        if self.secure_cookie and self.base.startswith("http://"):
            raise AuthenticationError(
                f"XNAT marks its session cookie Secure (its site URL is https), so over "
                f"{self.base} the cookie is never sent back and every request would fail: set "
                f"xnat.url to {'https://' + self.base.removeprefix('http://')}"
            )
        self._logged_in = self._owns_session = True
        log.debug("logged in to %s as %s", self.base, self._username)

    def ensure_login(self) -> None:
        """Log in now unless this client already has a session."""
        if not self._logged_in:
            self.login()

    def adopt(self, lead: Connection) -> None:
        """Use `lead`'s XNAT session (its JSESSIONID) instead of logging in: a worker of
        `parallel.fan_out`. The session stays `lead`'s: closing this client does not log it out;
        if it expires here, this client logs in on its own (`request`) and owns that one."""
        lead.ensure_login()
        self.http.cookies.update(lead.http.cookies)
        self.secure_cookie = lead.secure_cookie
        self._logged_in = True
        self._owns_session = False

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
        self.ensure_login()
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
            if answers.session_expired(response) and attempt == 1:
                log.info("XNAT session expired; logging in again")
                self.login()
                continue
            break
        log.debug("%s %s -> %s", method, shown, response.status_code)
        if response.status_code in ok:
            return response
        raise answers.refusal(method, shown, response, user=self._username, base=self.base)

    def _get_table(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        return answers.table(self.request("GET", path, params={"format": "json", **(params or {})}))

    def _session_path(self, project: str, subject: str, label: str) -> str:
        """The archived session's REST path (reference §7)."""
        return (
            f"/data/projects/{quote(project)}/subjects/{quote(subject)}/experiments/{quote(label)}"
        )

    def whoami(self) -> str:
        """GET /data/auth → "User 'NAME' is logged in" (reference §2.1)."""
        text = self.request("GET", "/data/auth").text.strip()
        match = re.search(r"User '([^']+)'", text)
        return match.group(1) if match else self._username

    def heartbeat(self) -> None:
        """GET /data/JSESSION keeps the HTTP session alive during long work (reference §2.2)."""
        self.request("GET", "/data/JSESSION")
