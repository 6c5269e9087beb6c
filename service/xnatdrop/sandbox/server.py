"""The sandbox XNAT server: HTTP plumbing, authentication, the routing table, faults, admin API.

`Sandbox` is the one object with a lifetime: it owns the listening socket, the store, the
sessions, the clock and the rebuilder thread. Requests are served by the standard library's
`ThreadingHTTPServer` (HTTP/1.1, keep-alive), one thread per connection. Each request is
normalized (`/data` or `/REST` prefix stripped, `/archive/` alias folded), authenticated, matched
against `ROUTES` and handed to one handler function of an endpoint-family module. Any
`tables.HttpError` becomes XNAT's HTML status page.

The `/_sandbox/` admin API (JSON in and out, site admin's Basic auth) and the same operations as
methods on `Sandbox` control faults and the clock; see docs/sandbox.md.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import logging
import re
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xnatdrop.sandbox import (
    anonymize,
    archive,
    auth,
    bodies,
    control,
    dicomzip,
    entities,
    prearchive,
    prefs,
    resources,
    seriesfilter,
    site,
    siteconfig,
    snapshots,
    store,
    tables,
)
from xnatdrop.sandbox.wire import Request, User, parse_user

try:  # owned by the xnatpy-compatibility work; the sandbox runs without it
    from xnatdrop.sandbox import xapi
except ImportError:  # pragma: no cover - until xapi.py exists
    xapi = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Handler = Callable[[Request], tables.Response]

#: Routing table over the normalized path (no /data, /REST or /archive prefix). Restlet routes
#: by "starts with", so each pattern matches a prefix and the handler parses the remainder.
ROUTES: list[tuple[re.Pattern[str], Handler]] = [
    (re.compile(r"^/JSESSION(/|$)"), auth.jsession),
    (re.compile(r"^/auth/?$"), auth.auth_check),
    (re.compile(r"^/services/import/?$"), dicomzip.handle_import),
    (re.compile(r"^/services/archive/?$"), archive.handle_archive),
    (re.compile(r"^/services/prearchive/(move|delete|rebuild)/?$"), prearchive.handle_batch),
    (re.compile(r"^/prearchive(/|$)"), prearchive.handle),
    (re.compile(r"^/(projects|subjects|experiments)(/|$)"), entities.handle),
    (re.compile(r"^/config(/|$)"), seriesfilter.handle_site),
    (re.compile(r"^/search/elements/?$"), lambda request: _search_elements(request)),
    (re.compile(r"^/search/elements/[^/]+/?$"), lambda request: _search_fields(request)),
    (re.compile("^" + re.escape(site.CHANGE_PASSWORD_PATH) + "$"), site.change_password_page),
]

#: `/xapi/…` families that need the store or the user: each answers its paths, else None.
XAPI_FAMILIES: list[Callable[[Request], tables.Response | None]] = [
    anonymize.handle,
    siteconfig.handle,
    snapshots.handle,
]

#: Routes that answer without credentials.
ANONYMOUS: list[tuple[re.Pattern[str], Handler]] = [
    (re.compile(r"^/services/auth/?$"), auth.form_login),
]

#: Request bodies up to this size are read and discarded after an early answer so that the
#: connection can be kept alive; larger ones close the connection instead.
DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass
class Settings:
    """Behaviour switches; all can be changed at run time through `/_sandbox/settings`."""

    session_timeout: float = 900.0  # idle seconds before a JSESSIONID stops working (§2.2)
    login_page_on_expiry: bool = False  # expired cookie → 200 + login HTML (pitfall 12)
    rebuild_idle: float = 300.0  # RECEIVING sessions idle this long are built (§4.4)
    rebuild_repeat: float = 60.0  # how often the rebuilder looks, in wall seconds
    archive_timeout: float = 600.0  # sessionArchiveTimeoutInterval (slow-archive fault)
    site_url: str = ""  # XNAT's siteUrl preference; "" = the sandbox's own URL
    password_expiration_type: str = "Interval"  # SiteConfigPreferences l.539 (Date: not modelled)
    password_expiration_interval: str = "1 year"  # l.552, a PostgreSQL interval
    password_filter_before_basic: bool = False  # True: Basic + expired password → 403 (site.py)
    allow_insecure_cookies: bool = False  # SecurityPreferences: never mark cookies Secure
    concurrent_max_sessions: int = 1000  # SiteConfigPreferences l.1039; -1 = no cap

    def check(self) -> None:
        """Raise ValueError for a value XNAT would not accept or the sandbox cannot model."""
        if self.password_expiration_type in site.UNMODELLED_EXPIRATION_TYPES:
            raise ValueError(
                f"password_expiration_type {self.password_expiration_type!r} is not modelled "
                "by the sandbox: use Interval or Disabled"
            )
        site.parse_interval(self.password_expiration_interval)


class Sandbox:
    """A running sandbox XNAT. `start()` binds the socket before returning; `stop()` ends it."""

    def __init__(
        self,
        data: Path | str,
        host: str = "127.0.0.1",
        port: int = 8080,
        users: list[str] | None = None,
        projects: list[str] | None = None,
        **settings: Any,
    ) -> None:
        self.data = Path(data)
        self.host = host
        self.port = port
        self.settings = Settings(**settings)
        self.settings.check()
        self.users = list(users or ["admin:admin"])  # as given: NAME:PASSWORD[:ACCESS]
        self.projects = list(projects or [])
        self.accounts: dict[str, User] = {}
        admin_given = False
        for spec in self.users:
            name, password, access = parse_user(spec)
            admin = access == "owner" and not admin_given
            admin_given = admin_given or admin
            self.accounts[name] = User(name, password, access, admin)
        self.clock = control.Clock()
        self.faults = control.Faults()
        self.sessions = auth.Sessions()
        #: When each account's password was last set, on the sandbox clock: a fresh account's
        #: password is new, so it is not expired (xhbm_xdat_user_auth.password_updated).
        self.password_updated = dict.fromkeys(self.accounts, self.clock.now())
        #: What XNAT reads from its preferences once, at start-up (SecurityConfig): whether the
        #: session cookies are Secure, and the concurrent-session cap. `start()` and
        #: `apply_settings` refresh them; a preference set through XAPI waits for the next start.
        self.secure_cookies = False
        self.max_sessions = self.settings.concurrent_max_sessions
        #: PrearcSessionArchiver's GLOBAL_LOCKS: prearchive URIs and experiment IDs being
        #: archived into right now (archive.py).
        self.archive_locks: set[str] = set()
        self.archive_locks_guard = threading.Lock()
        #: Open workflows (a pipeline still running) by (project, experiment label).
        self.workflows: dict[tuple[str, str], str] = {}
        self.store: store.Store
        #: Requests received, by "METHOD /path/as/sent" (faulted ones included).
        self.requests: collections.Counter[str] = collections.Counter()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._inflight = 0  # requests being handled; stop() lets them end before closing
        self._idle = threading.Condition()

    # -- lifetime -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin(self) -> User | None:
        return next((u for u in self.accounts.values() if u.admin), None)

    def start(self) -> None:
        """Open the store, bind the socket and serve in background threads."""
        self.store = store.Store(self.data)
        for project in self.projects:
            entities.ensure_project(self.store, project, self.clock.now(), "sandbox")
        server = _Server((self.host, self.port), _RequestHandler)
        server.sandbox = self
        self.port = server.server_address[1]
        self._server = server
        self._read_startup_preferences()
        self._stopping.clear()
        serve = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
        )
        rebuild = threading.Thread(target=self._rebuild_loop, name="sandbox-rebuild", daemon=True)
        self._threads = [serve, rebuild]
        for thread in self._threads:
            thread.start()
        log.info("sandbox XNAT serving %s (data %s)", self.url, self.data)

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections, wait for the threads, close."""
        if self._server is None:
            return
        self._stopping.set()
        self.faults.release()
        self._server.shutdown()
        self._server.server_close()
        with self._connections_lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)
        with self._idle:  # a request cut off from its client ends at its next socket read
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=30):
                log.warning("sandbox: %d request(s) still running at stop", self._inflight)
        self._server = None
        self.store.close()
        log.info("sandbox XNAT stopped")

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _rebuild_loop(self) -> None:
        """The SessionXMLRebuilder: every `rebuild_repeat` seconds, build idle sessions."""
        while not self._stopping.wait(self.settings.rebuild_repeat):
            try:
                prearchive.rebuild_idle(self)
            except (OSError, sqlite3.Error) as error:
                log.error("prearchive rebuilder: %s", error)

    # -- test control (the same operations as the /_sandbox/ admin API) ---------------------

    def fail(
        self,
        path: str,
        status: int = 503,
        count: int | None = 1,
        method: str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next `count` requests whose path matches the regex with `status`."""
        self.faults.add(control.Rule("fail", path, method, count, status=status, body=body))

    def delay(
        self, path: str, seconds: float, count: int | None = None, method: str | None = None
    ) -> None:
        """Hold matching requests for `seconds` before handling them."""
        self.faults.add(control.Rule("latency", path, method, count, seconds=seconds))

    def drop(
        self, path: str, after_bytes: int, count: int | None = 1, method: str | None = None
    ) -> None:
        """Cut the connection of matching requests after `after_bytes` bytes of their body."""
        self.faults.add(control.Rule("drop", path, method, count, after_bytes=after_bytes))

    def slow_archive(self, seconds: float) -> None:
        """Make every archive operation take `seconds` (beyond `archive_timeout` → 500); 0 also
        ends the slow archives running now."""
        self.faults.set_archive_delay(seconds)

    def slow_build(self, seconds: float) -> None:
        """Make every prearchive build take `seconds`, the row reading BUILDING meanwhile; an
        import with `dest` answers only after it (DicomZipImporter builds synchronously). 0 also
        ends the slow builds running now."""
        self.faults.set_build_delay(seconds)

    def proxy_timeout(
        self, path: str, seconds: float, count: int | None = 1, method: str | None = None
    ) -> None:
        """Stand a proxy with a read timeout in front: a matching request still unanswered
        `seconds` after its body arrived gets nginx's 504 and its connection closed, while the
        sandbox goes on handling it (nginx `proxy_read_timeout`)."""
        self.faults.add(control.Rule("timeout", path, method, count, seconds=seconds))

    def open_workflow(self, project: str, label: str, pipeline: str | None = "AutoRun") -> None:
        """Give the archived experiment `label` an open workflow (a pipeline still running), or
        close it with `pipeline=None`. Archiving into it then fails unless overwrite is set."""
        if pipeline is None:
            self.workflows.pop((project, label), None)
        else:
            self.workflows[(project, label)] = pipeline

    def anonymize(self, enabled: bool = True) -> None:
        """Switch the site anonymisation script on or off (XNAT's default: on).

        An alias of `PUT /xapi/anonymize/site/enabled?enable=…`, kept for older tests; tests
        that need byte identity call that endpoint, as XNAT's own integration tests do.
        """
        prefs.put(self.store, "enableSitewideAnonymizationScript", enabled)

    def view_session(self, experiment: str, project: str | None = None) -> list[str]:
        """What a browser showing the session does: XNAT creates each scan's SNAPSHOTS.

        `experiment` is an ID, or a label with `project`. Returns the scans that got snapshots.
        """
        row = self.store.experiment(project, experiment)
        if row is None:
            raise ValueError(f"no experiment {experiment!r} (give an ID, or a label and project)")
        return snapshots.view_session(self.store, row)

    def add_scan_resource(
        self,
        experiment: str,
        scan: str,
        label: str,
        files: dict[str, bytes],
        project: str | None = None,
        format: str | None = None,
        content: str | None = None,
    ) -> list[str]:
        """Add a resource to an archived scan, as automation does (e.g. NIFTI from dcm2niix)."""
        row = self.store.experiment(project, experiment)
        if row is None:
            raise ValueError(f"no experiment {experiment!r} (give an ID, or a label and project)")
        if (
            self.store.one(
                "SELECT 1 FROM scans WHERE experiment_id = ? AND scan_id = ?", row["id"], scan
            )
            is None
        ):
            raise ValueError(f"experiment {row['id']} has no scan {scan!r}")
        owner = entities.scan_owner(self.store, row, scan)
        resource = resources.ensure(self.store, owner, label, format, content)
        for name, data in files.items():
            if not name or name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"invalid file name {name!r}")
            resources.store_bytes(self.store, resource, name, data)
        return sorted(files)

    def clear_faults(self) -> None:
        self.faults.clear()

    def apply_settings(self, **changes: Any) -> None:
        """Change settings by name (what `/_sandbox/settings` does); all or none are applied.

        Settings XNAT reads only at start-up (`site_url`, `allow_insecure_cookies`,
        `concurrent_max_sessions`) take effect at once, as after a restart.
        """
        self.store_preferences(**changes)
        self._read_startup_preferences()

    def store_preferences(self, **changes: Any) -> None:
        """Change settings as XNAT's preference API does: the start-up ones wait for `start()`."""
        updated = Settings(**asdict(self.settings))
        for key, value in changes.items():
            if not hasattr(updated, key):
                raise ValueError(f"unknown setting {key!r}")
            setattr(updated, key, _coerce(key, value, type(getattr(updated, key))))
        updated.check()
        for key in changes:
            setattr(self.settings, key, getattr(updated, key))

    def _read_startup_preferences(self) -> None:
        """`SecurityConfig.configure` (l.277-302): the session cookie is Secure when the site URL
        is https and insecure cookies are not allowed; the session cap is fixed here too."""
        url = self.settings.site_url or self.url
        self.secure_cookies = (
            url.lower().startswith("https") and not self.settings.allow_insecure_cookies
        )
        self.max_sessions = self.settings.concurrent_max_sessions

    def expire_sessions(self) -> int:
        """Invalidate every JSESSIONID; return how many there were."""
        return self.sessions.expire_all()

    def expire_password(self, user: str, expired: bool = True) -> None:
        """Make `user`'s password one that was set long ago (expired under the Interval type),
        or, with `expired=False`, one just changed. Sessions keep what they already checked."""
        if user not in self.accounts:
            raise ValueError(f"no account named {user!r}")
        self.password_updated[user] = 0.0 if expired else self.clock.now()

    def tick(self, seconds: float) -> dict[str, list[str]]:
        """Advance the clock and run the prearchive rebuilder once, now.

        Returns the prearchive URIs built and the archive URIs auto-archived by this pass.
        """
        self.clock.advance(seconds)
        return prearchive.rebuild_idle(self)

    def state(self) -> dict[str, Any]:
        """What the sandbox holds: prearchive rows and archived sessions with file counts."""
        return {
            "clock": self.clock.now(),
            "prearchive": prearchive.describe_all(self.store),
            "archive": entities.describe_archive(self.store),
            "requests": dict(self.requests),
            "faults": self.faults.describe(),
            "settings": asdict(self.settings),
        }

    # -- sessions ---------------------------------------------------------------------------

    def session_id_of(self, request: Request) -> str | None:
        return request.new_session_id or request.session_id

    def new_session(self, request: Request) -> str:
        sid = self.sessions.create(request.user, self.clock.now())
        request.new_session_id = sid
        request.session_id = sid
        return sid

    def _basic_login(self, request: Request, replaced: str | None) -> bool:
        """A Basic login through XNAT's session strategies, in `SecurityConfig`'s order:
        fixation protection (a session the cookie named is replaced), registration of a new
        session, then the concurrent-session cap, which counts the new session and refuses
        beyond `concurrentMaxSessions` (`maxSessionsPreventsLogin(true)`, l.177-179, l.301).

        A refused login's session stays registered, unauthenticated, until it idles out, as in
        Spring's SessionRegistry: retrying without sending its cookie back fills the registry
        further. Returns False for a refused login (its Set-Cookie still goes out).
        """
        if replaced is not None:
            self.sessions.drop(replaced)
        now = self.clock.now()
        sid = self.sessions.create(request.user, now, registered=True, authenticated=False)
        request.new_session_id = sid
        request.session_id = sid
        count = self.sessions.registered_count(
            request.user.name, now, self.settings.session_timeout
        )
        if 0 <= self.max_sessions < count:
            log.info("login of %s refused: %d sessions open", request.user.name, count - 1)
            return False
        created = self.sessions.get(sid)
        if created is not None:
            created.authenticated = True
        return True

    def forget_session(self, request: Request) -> None:
        if request.session_id:
            self.sessions.drop(request.session_id)
            request.session_id = None

    # -- one request ------------------------------------------------------------------------

    def respond(
        self, method: str, full_path: str, query: dict[str, list[str]], headers: Any, body: Any
    ) -> tables.Response:
        """Authenticate, route and run one request; every error becomes a status page."""
        if full_path.startswith("/_sandbox/") or full_path == "/_sandbox":
            return self._admin(method, full_path, headers, body)
        match = re.match(r"^/(data|REST)(/.*)?$", full_path)
        if match:
            path = match.group(2) or "/"
            path = re.sub(r"^/archive(?=/(projects|subjects|experiments)(/|$))", "", path)
        elif full_path.startswith("/xapi/") or full_path == site.CHANGE_PASSWORD_PATH:
            path = full_path
        elif full_path in ("/", ""):
            return tables.Response(200, tables.HTML, b"<html><body>XNAT sandbox</body></html>\n")
        else:
            return tables.error_response(tables.HttpError(404, "The requested URI was not found."))

        cookies = _cookies(headers)
        # Restlet answers HEAD like GET and drops the body (xnatpy `FileData.size` HEADs a file).
        routed = "GET" if method == "HEAD" else method
        request = Request(self, routed, path, full_path, query, headers, body, _ANONYMOUS)
        try:
            response = self._authenticated(request, cookies)
        except tables.HttpError as error:
            response = tables.error_response(error)
        except (bodies.ConnectionDropped, bodies.ClientGone):
            raise
        except Exception:  # the request boundary: a bug must not kill the connection thread
            log.exception("sandbox: unexpected error in %s %s", method, full_path)
            response = tables.error_response(tables.HttpError(500, "Internal Server Error"))
        finally:
            request.cleanup()
        now_ms = int(self.clock.now() * 1000)
        timeout_ms = int(self.settings.session_timeout * 1000)
        # Tomcat marks JSESSIONID Secure from SessionCookieConfig; XnatExpiredPasswordFilter marks
        # SESSION_EXPIRATION_TIME Secure exactly when that config is (its l.72-80).
        secure = "; Secure" if self.secure_cookies else ""
        response.headers.append(
            ("Set-Cookie", f'SESSION_EXPIRATION_TIME="{now_ms},{timeout_ms}"; Path=/{secure}')
        )
        if request.new_session_id:
            response.headers.append(
                ("Set-Cookie", f"JSESSIONID={request.new_session_id}; Path=/{secure}; HttpOnly")
            )
        return response

    def _authenticated(self, request: Request, cookies: dict[str, str]) -> tables.Response:
        """XNAT's Spring Security chain, then the route: the session from the cookie, Basic
        authentication (which opens a session), the expired-password filter (site.py)."""
        for pattern, handler in ANONYMOUS:
            if pattern.match(request.path):
                return handler(request)
        credentials = auth.basic_credentials(request.headers.get("Authorization"))
        sid = cookies.get("JSESSIONID")
        session = None
        if sid:
            session, _ = self.sessions.lookup(sid, self.clock.now(), self.settings.session_timeout)
        if credentials is not None:
            if self.settings.password_filter_before_basic and not _authenticates(session):
                refused = site.basic_before_authentication(self, credentials[0])
                if refused is not None:
                    return refused
            user = self.accounts.get(credentials[0])
            if user is None or user.password != credentials[1]:
                return auth.login_refused()
            request.user = user
            if session is not None and session.authenticated and session.user.name == user.name:
                request.session_id = sid
            elif not self._basic_login(request, sid if session is not None else None):
                return auth.login_refused()
        elif _authenticates(session):
            request.user = session.user
            request.session_id = sid
        elif sid and session is None:
            if self.settings.login_page_on_expiry:
                return tables.Response(200, tables.HTML, auth.LOGIN_PAGE.encode())
            raise auth.challenge()
        else:
            raise auth.challenge()
        redirect = site.expired_password_redirect(self, request)
        if redirect is not None:
            return redirect

        if request.path.startswith("/xapi/"):
            return self._xapi(request)
        for pattern, handler in ROUTES:
            if pattern.match(request.path):
                return handler(request)
        raise tables.HttpError(404, "The requested URI was not found.")

    def _xapi(self, request: Request) -> tables.Response:
        answer = site.handle(request)
        if answer is not None:
            return answer
        for family in XAPI_FAMILIES:
            response = family(request)
            if response is not None:
                return response
        served = None
        if xapi is not None:
            served = xapi.handle(request.method, request.path, request.query, request.user.name)
        if served is None:
            raise tables.HttpError(404, "The requested URI was not found.")
        status, content_type, payload = served
        return tables.Response(status, content_type, payload)

    # -- the admin API ----------------------------------------------------------------------

    def _admin(self, method: str, path: str, headers: Any, body: bodies.Body) -> tables.Response:
        """`/_sandbox/...`: JSON control endpoints, for the site admin only (Basic auth)."""
        credentials = auth.basic_credentials(headers.get("Authorization"))
        admin = self.admin
        if credentials is None or admin is None or credentials != (admin.name, admin.password):
            return tables.error_response(auth.challenge("The sandbox admin API needs the admin."))
        raw = bytearray()
        while chunk := body.read():
            raw += chunk
        try:
            args = json.loads(raw) if raw.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
            result = self._admin_action(method, path.removeprefix("/_sandbox").strip("/"), args)
        except (ValueError, TypeError, re.error) as error:
            payload = json.dumps({"error": str(error)}).encode()
            return tables.Response(400, tables.JSON, payload)
        if result is None:
            return tables.Response(404, tables.JSON, b'{"error": "no such admin endpoint"}')
        return tables.Response(200, tables.JSON, json.dumps(result).encode())

    def _admin_action(self, method: str, name: str, args: dict[str, Any]) -> Any:
        if method == "GET" and name == "state":
            return self.state()
        if name == "faults":
            if method == "DELETE":
                self.clear_faults()
            return self.faults.describe()
        if method != "POST":
            return None
        if name == "fail":
            self.fail(
                args["path"],
                int(args.get("status", 503)),
                args.get("count", 1),
                args.get("method"),
                args.get("body"),
            )
        elif name == "latency":
            self.delay(args["path"], float(args["seconds"]), args.get("count"), args.get("method"))
        elif name == "drop":
            self.drop(
                args["path"], int(args["after_bytes"]), args.get("count", 1), args.get("method")
            )
        elif name == "expire-sessions":
            return {"expired": self.expire_sessions()}
        elif name == "expire-password":
            self.expire_password(str(args["user"]), bool(args.get("expired", True)))
            return {"user": args["user"], "expired": site.password_expired(self, args["user"])}
        elif name == "tick":
            return self.tick(float(args.get("seconds", 0)))
        elif name == "slow-archive":
            self.slow_archive(float(args.get("seconds", 0)))
        elif name == "slow-build":
            self.slow_build(float(args.get("seconds", 0)))
        elif name == "proxy-timeout":
            self.proxy_timeout(
                args["path"], float(args["seconds"]), args.get("count", 1), args.get("method")
            )
        elif name == "workflow":
            self.open_workflow(str(args["project"]), str(args["label"]), args.get("pipeline"))
            return {"workflows": [[*k, v] for k, v in self.workflows.items()]}
        elif name == "anonymize":
            self.anonymize(bool(args.get("enabled", True)))
        elif name == "view-session":
            return {"scans": self.view_session(str(args["experiment"]), args.get("project"))}
        elif name == "scan-resource":
            label = str(args.get("label", "NIFTI"))
            scan = str(args["scan"])
            given = args.get("files") or {f"{scan}.nii.gz": "sandbox automation output\n"}
            if not isinstance(given, dict):
                raise ValueError("files must be an object of name: text")
            added = self.add_scan_resource(
                str(args["experiment"]),
                scan,
                label,
                {str(k): str(v).encode() for k, v in given.items()},
                args.get("project"),
                args.get("format", label if label == "NIFTI" else None),
                args.get("content"),
            )
            return {"files": added}
        elif name == "settings":
            self.apply_settings(**args)
            return asdict(self.settings)
        else:
            return None
        return self.faults.describe()


_ANONYMOUS = User("guest", "", "none", False)


def _authenticates(session: auth.Session | None) -> bool:
    """A session whose cookie alone authenticates (not one left by a refused login)."""
    return session is not None and session.authenticated


def _coerce(key: str, value: Any, kind: type) -> Any:
    """A JSON value for a setting of type `kind`; booleans must be true/false, not any string."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"setting {key!r} takes true or false, not {value!r}")
    return kind(value)


def _search_elements(request: Request) -> tables.Response:
    """`GET /data/search/elements`: the data types xnatpy looks up at connect time (xapi.py)."""
    if xapi is None:
        raise tables.HttpError(404, "The requested URI was not found.")
    rows = xapi.search_elements()
    columns = list(rows[0]) if rows else ["ELEMENT_NAME"]
    return tables.table(rows, columns, request.fmt)


def _search_fields(request: Request) -> tables.Response:
    """`GET /data/search/elements/{element}`: display fields xnatpy asks for at connect."""
    element = request.path.rstrip("/").rsplit("/", 1)[-1]
    rows = xapi.search_fields(element) if xapi is not None else None
    if rows is None:
        raise tables.HttpError(404, f"Unknown element: {element}")
    return tables.table(rows, list(xapi.SEARCH_FIELD_COLUMNS), request.fmt)


def _cookies(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers.get_all("Cookie") or []:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                out[name] = value.strip('"')
    return out


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sandbox: Sandbox

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a reset, a broken pipe: a killed or timed-out client) is
        everyday business for a server, which Tomcat does not report; socketserver would print a
        traceback to stderr for each. Anything else is a sandbox bug and keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away (%s)", client_address[0], type(error).__name__)
            return
        super().handle_error(request, client_address)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Like Tomcat (tcpNoDelay=true): without it, headers and body go out as two small
        # writes and Nagle + the client's delayed ACK stall every keep-alive response ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sandbox = self.server.sandbox
        with sandbox._connections_lock:
            sandbox._connections.add(self.connection)

    def finish(self) -> None:
        sandbox = self.server.sandbox
        with sandbox._connections_lock:
            sandbox._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one debug line per request is written by _serve instead

    def handle_expect_100(self) -> bool:
        return True  # Tomcat: 100 Continue only once the application reads the body

    def _send_continue(self) -> None:
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        started = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        full_path = urllib.parse.unquote(split.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        length = self.headers.get("Content-Length")
        body = bodies.Body(
            self.rfile,
            self._send_continue,
            int(length) if length and length.isdigit() else None,
            "chunked" in (self.headers.get("Transfer-Encoding") or "").lower(),
            (self.headers.get("Expect") or "").lower() == "100-continue",
        )
        sandbox.requests[f"{self.command} {full_path}"] += 1
        with sandbox._idle:
            sandbox._inflight += 1
        try:
            self._serve_counted(sandbox, started, full_path, query, body)
        finally:
            with sandbox._idle:
                sandbox._inflight -= 1
                sandbox._idle.notify_all()

    def _serve_counted(
        self,
        sandbox: Sandbox,
        started: float,
        full_path: str,
        query: dict[str, list[str]],
        body: bodies.Body,
    ) -> None:
        fired = sandbox.faults.fire(self.command, full_path)
        if fired.latency:
            sandbox._stopping.wait(fired.latency)
        body.drop_after = fired.drop_after
        try:
            if fired.fail is not None:
                response = _fault_response(fired.fail)
            elif fired.timeout is not None:
                answered = self._behind_proxy(sandbox, full_path, query, body, fired.timeout)
                if answered is None:
                    return
                response = answered
            else:
                method = "GET" if self.command == "HEAD" else self.command  # body dropped
                response = sandbox.respond(method, full_path, query, self.headers, body)
        except bodies.ConnectionDropped:
            log.debug(
                "%s %s: connection dropped after %d body bytes (fault)",
                self.command,
                full_path,
                body.received,
            )
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except bodies.ClientGone as error:
            log.debug("%s %s: %s", self.command, full_path, error)
            self.close_connection = True
            return
        try:
            keep = body.drain(DRAIN_LIMIT)
        except (bodies.ClientGone, bodies.ConnectionDropped):
            keep = False
        self._write(response, close=not keep)
        log.debug(
            "%s %s -> %d (%d body bytes in, %.3f s)",
            self.command,
            full_path,
            response.status,
            body.received,
            time.monotonic() - started,
        )

    def _behind_proxy(
        self,
        sandbox: Sandbox,
        full_path: str,
        query: dict[str, list[str]],
        body: bodies.Body,
        timeout: float,
    ) -> tables.Response | None:
        """Handle the request in a worker; answer what it answers, or, once `timeout` seconds
        passed after the whole body arrived, nginx's 504 (returns None: already written).

        The worker goes on to the end and its answer is dropped, as when nginx gives up on an
        upstream that is still building. It counts as in flight until it ends, so `stop()`
        waits for it. Waiting is on the worker's completion event, polled for the body's end.
        """
        done = threading.Event()
        outcome: list[Any] = []
        method = "GET" if self.command == "HEAD" else self.command
        headers = self.headers

        def work() -> None:
            try:
                outcome.append(sandbox.respond(method, full_path, query, headers, body))
            except (bodies.ConnectionDropped, bodies.ClientGone) as error:
                outcome.append(error)
            finally:
                done.set()
                with sandbox._idle:
                    sandbox._inflight -= 1
                    sandbox._idle.notify_all()

        with sandbox._idle:
            sandbox._inflight += 1
        threading.Thread(target=work, name="sandbox-behind-proxy", daemon=True).start()
        body_done_at: float | None = None
        while not done.wait(0.02):
            if body_done_at is None and body.finished:
                body_done_at = time.monotonic()
            if body_done_at is not None and time.monotonic() - body_done_at >= timeout:
                log.info("%s %s: proxy timeout after %.1f s, 504", self.command, full_path, timeout)
                page = control.PROXY_PAGES[504].encode()
                self._write(tables.Response(504, "text/html", page), close=True)
                return None
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _write(self, response: tables.Response, close: bool) -> None:
        try:
            self.send_response(response.status, response.reason)
            size = response.file.stat().st_size if response.file else len(response.body)
            if response.content_type:  # a redirect from a servlet filter has none
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(size))
            for name, value in response.headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is not None:
                with response.file.open("rb") as source:
                    while chunk := source.read(bodies.CHUNK):
                        self.wfile.write(chunk)
            else:
                self.wfile.write(response.body)
        except OSError as error:  # the client went away while we answered
            log.debug("answer not delivered: %s", error)
            self.close_connection = True
        finally:
            if response.file is not None and response.delete_file_after:
                response.file.unlink(missing_ok=True)


def _fault_response(rule: control.Rule) -> tables.Response:
    if rule.body is not None:
        return tables.Response(rule.status, tables.HTML, rule.body.encode())
    if rule.status in control.PROXY_PAGES:
        return tables.Response(rule.status, "text/html", control.PROXY_PAGES[rule.status].encode())
    message = http.HTTPStatus(rule.status).phrase if rule.status in _KNOWN else "Injected fault"
    return tables.error_response(tables.HttpError(rule.status, message))


_KNOWN = {s.value for s in http.HTTPStatus}
