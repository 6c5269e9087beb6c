"""The sandbox XNAT: `Sandbox`, the one object with a lifetime, and its `/_sandbox/` admin API.

`Sandbox` owns the store, the accounts and their sessions, the clock, the faults, the HTTP front
(`transport.py`) and the prearchive rebuilder thread. Each request the front receives goes to
`routes.respond`, which hands `/_sandbox/…` back to `Sandbox.admin_api` and everything XNAT
answers to one endpoint function. Endpoint modules see the sandbox only as a
`context.SiteContext`, so none of them imports this module.

The `/_sandbox/` admin API (JSON in and out, site admin's Basic auth) and the same operations as
methods on `Sandbox` control faults and the clock; see docs/sandbox.md.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import re
import sqlite3
import threading
from dataclasses import asdict
from email.message import Message
from pathlib import Path
from typing import Any

from xnat_sandbox import (
    auth,
    bodies,
    control,
    dicom_receiver,
    documents,
    entities,
    prearchive,
    prearchive_rebuilder,
    prefs,
    resources,
    routes,
    sessions,
    site,
    snapshots,
    store,
    tables,
    transport,
)
from xnat_sandbox.settings import Settings
from xnat_sandbox.users import User, parse_user

log = logging.getLogger(__name__)


class Sandbox:
    """A running sandbox XNAT. `start()` binds the socket before returning; `stop()` ends it."""

    def __init__(
        self,
        data: Path | str,
        host: str = "127.0.0.1",
        port: int = 8080,
        users: list[str] | None = None,
        projects: list[str] | None = None,
        dicom_port: int | None = None,
        dicom_receivers: list[dicom_receiver.Receiver] | None = None,
        **settings: Any,
    ) -> None:
        self.data = Path(data)
        self.host = host
        self.port = port
        #: The DICOM receiver's port (None: no receiver; 0: a free one, the bound port once
        #: started) and its application entities (default: AE title XNAT, §9).
        self.dicom_port = dicom_port
        self.dicom_receivers = list(dicom_receivers or [dicom_receiver.Receiver()])
        self.dicom: dicom_receiver.DicomReceiver | None = None  # while started with a port
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
        self.sessions = sessions.Sessions()
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
        self._server: transport.HttpFront | None = None  # None while stopped
        self._rebuilder: threading.Thread | None = None
        self._stopping = threading.Event()

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
        self._start_dicom()
        respond = functools.partial(routes.respond, self)
        try:
            front = transport.HttpFront(self.host, self.port, respond, self.faults, self.requests)
        except OSError:
            self._stop_dicom()
            self.store.close()
            raise
        self.port = front.port
        self._server = front
        self._read_startup_preferences()
        self._stopping.clear()
        self._rebuilder = threading.Thread(
            target=self._rebuild_loop, name="sandbox-rebuild", daemon=True
        )
        front.start()
        self._rebuilder.start()
        log.info("sandbox XNAT serving %s (data %s)", self.url, self.data)

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections, wait for the threads, close."""
        if self._server is None:
            return
        self._stopping.set()
        self.faults.release()
        self._stop_dicom()
        self._server.stop()
        if self._rebuilder is not None:
            self._rebuilder.join(timeout=10)
        self._server = None
        self.store.close()
        log.info("sandbox XNAT stopped")

    def _start_dicom(self) -> None:
        """Start the DICOM receiver when a port is set (`dicom_port` becomes the bound one)."""
        if self.dicom_port is None:
            return
        receiver = dicom_receiver.DicomReceiver(
            self, self.host, self.dicom_port, self.dicom_receivers
        )
        try:
            receiver.start()
        except OSError:
            self.store.close()
            raise
        self.dicom, self.dicom_port = receiver, receiver.port

    def _stop_dicom(self) -> None:
        if self.dicom is not None:
            self.dicom.stop()
            self.dicom = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _rebuild_loop(self) -> None:
        """The SessionXMLRebuilder: every `rebuild_repeat` seconds, build idle sessions."""
        while not self._stopping.wait(self.settings.rebuild_repeat):
            try:
                prearchive_rebuilder.rebuild_idle(self)
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
        owner = documents.scan_owner(self.store, row, scan)
        resource = resources.ensure(self.store, owner, label, format=format, content=content)
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
        updated = self.settings.changed(**changes)
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
        return prearchive_rebuilder.rebuild_idle(self)

    def state(self) -> dict[str, Any]:
        """What the sandbox holds: prearchive rows and archived sessions with file counts."""
        return {
            "clock": self.clock.now(),
            "prearchive": prearchive.describe_all(self.store),
            "archive": documents.describe_archive(self.store),
            "requests": dict(self.requests),
            "faults": self.faults.describe(),
            "settings": asdict(self.settings),
        }

    # -- the admin API ----------------------------------------------------------------------

    def admin_api(
        self, method: str, path: str, headers: Message, body: bodies.Body
    ) -> tables.Response:
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
