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
        """Make every archive operation take `seconds` (beyond `archive_timeout` → 500)."""
        self.faults.archive_delay = seconds

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

    def expire_sessions(self) -> int:
        """Invalidate every JSESSIONID; return how many there were."""
        return self.sessions.expire_all()

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
        elif full_path.startswith("/xapi/"):
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
        response.headers.append(
            ("Set-Cookie", f'SESSION_EXPIRATION_TIME="{now_ms},{timeout_ms}"; Path=/')
        )
        if request.new_session_id:
            response.headers.append(
                ("Set-Cookie", f"JSESSIONID={request.new_session_id}; Path=/; HttpOnly")
            )
        return response

    def _authenticated(self, request: Request, cookies: dict[str, str]) -> tables.Response:
        for pattern, handler in ANONYMOUS:
            if pattern.match(request.path):
                return handler(request)
        credentials = auth.basic_credentials(request.headers.get("Authorization"))
        sid = cookies.get("JSESSIONID")
        if credentials is not None:
            user = self.accounts.get(credentials[0])
            if user is None or user.password != credentials[1]:
                raise auth.challenge()
            request.user = user
            session, _ = (
                self.sessions.lookup(sid, self.clock.now(), self.settings.session_timeout)
                if sid
                else (None, False)
            )
            if session is not None and session.user.name == user.name:
                request.session_id = sid
            else:
                self.new_session(request)
        elif sid:
            session, _ = self.sessions.lookup(sid, self.clock.now(), self.settings.session_timeout)
            if session is None:
                if self.settings.login_page_on_expiry:
                    return tables.Response(200, tables.HTML, auth.LOGIN_PAGE.encode())
                raise auth.challenge()
            request.user = session.user
            request.session_id = sid
        else:
            raise auth.challenge()

        if request.path.startswith("/xapi/"):
            return self._xapi(request)
        for pattern, handler in ROUTES:
            if pattern.match(request.path):
                return handler(request)
        raise tables.HttpError(404, "The requested URI was not found.")

    def _xapi(self, request: Request) -> tables.Response:
        if request.path.rstrip("/") == "/xapi/access/projects" and request.method in (
            "GET",
            "HEAD",
        ):
            return self._access_projects(request)
        for family in XAPI_FAMILIES:
            response = family(request)
            if response is not None:
                return response
        answer = None
        if xapi is not None:
            answer = xapi.handle(request.method, request.path, request.query, request.user.name)
        if answer is None:
            raise tables.HttpError(404, "The requested URI was not found.")
        status, content_type, payload = answer
        return tables.Response(status, content_type, payload)

    def _access_projects(self, request: Request) -> tables.Response:
        """GET /xapi/access/projects: the projects the user can see, each with its role.

        XNAT's AccessApi answers a JSON list of project summaries with `ID` and `role`
        (owner, member, collaborator); xnatpy's `access_levels` reads exactly those two keys.
        A read-only sandbox user is a collaborator; a user with no access sees no project.
        """
        role = "owner" if request.user.access == "owner" else "collaborator"
        rows = [
            {
                "ID": project["id"],
                "secondary_ID": project["secondary_id"] or project["id"],
                "name": project["name"] or project["id"],
                "description": project["description"] or "",
                "role": role,
            }
            for project in self.store.all("SELECT * FROM projects ORDER BY id")
            if request.user.can_read(project["id"])
        ]
        return tables.Response(200, "application/json", json.dumps(rows).encode())

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
        elif name == "tick":
            return self.tick(float(args.get("seconds", 0)))
        elif name == "slow-archive":
            self.slow_archive(float(args.get("seconds", 0)))
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
            for key, value in args.items():
                if not hasattr(self.settings, key):
                    raise ValueError(f"unknown setting {key!r}")
                setattr(self.settings, key, type(getattr(self.settings, key))(value))
            return asdict(self.settings)
        else:
            return None
        return self.faults.describe()


_ANONYMOUS = User("guest", "", "none", False)


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

    def _write(self, response: tables.Response, close: bool) -> None:
        try:
            self.send_response(response.status, response.reason)
            size = response.file.stat().st_size if response.file else len(response.body)
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
