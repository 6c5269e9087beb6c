"""The request as the endpoint handlers see it, and the refusals they share.

A handler is `handler(request) -> tables.Response`; it raises `tables.HttpError` for any error
page. Parameters follow XNAT: form fields and multipart fields first, then the query string,
which wins (`Importer.handlePost` loads the query after the body, §3.1). Names are case-sensitive.
Who may do what is `users.User`; the sandbox behind the request is a `context.SiteContext`.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from xnat_sandbox import bodies, tables
from xnat_sandbox.context import SiteContext
from xnat_sandbox.users import User


@dataclass
class Request:
    """One request after authentication: normalized path, parameters, body, user."""

    sandbox: SiteContext
    method: str
    path: str  # without /data, /REST and the /archive alias, e.g. "/projects/P"
    full_path: str  # as sent, without the query string
    query: dict[str, list[str]]
    headers: Message
    body: bodies.Body
    user: User
    params: dict[str, list[str]] = field(default_factory=dict)
    json: object = None
    session_id: str | None = None  # the servlet session this request belongs to
    new_session_id: str | None = None  # set when this request created one (Set-Cookie)
    _spool: Path | None = None

    def __post_init__(self) -> None:
        self.params = {k: list(v) for k, v in self.query.items()}

    def param(self, *names: str, default: str | None = None) -> str | None:
        """The last value of the first of `names` present with a non-empty value."""
        for name in names:
            values = self.params.get(name)
            if values and values[-1] != "":
                return values[-1]
        return default

    def values(self, name: str) -> list[str]:
        return [v for v in self.params.get(name, []) if v]

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() == "true"

    @property
    def fmt(self) -> str | None:
        value = self.param("format")
        return value.lower() if value else None

    @property
    def base_url(self) -> str:
        host = self.headers.get("Host") or f"{self.sandbox.host}:{self.sandbox.port}"
        return f"http://{host}"

    def spool_dir(self) -> Path:
        if self._spool is None:
            self._spool = self.sandbox.store.spool_root / uuid.uuid4().hex
            self._spool.mkdir()
        return self._spool

    def receive(
        self,
        raw_name: str | None = None,
        raw_any_type: bool = False,
        digest: bool = True,
        stream_raw: bool = False,
    ) -> bodies.Received:
        """Read the body (uploads spooled, with their MD5 when `digest`, or a raw body left
        for the caller to stream when `stream_raw`; fields merged into params below the
        query)."""
        received = bodies.receive(
            self.body,
            self.headers.get("Content-Type"),
            (self.query.get("inbody") or [""])[-1].lower() == "true",
            self.spool_dir(),
            raw_name=raw_name,
            raw_any_type=raw_any_type,
            digest=digest,
            stream_raw=stream_raw,
        )
        merged = {k: list(v) for k, v in received.fields.items()}
        if isinstance(received.json, dict):
            for key, value in received.json.items():
                merged.setdefault(str(key), []).append("" if value is None else str(value))
        for key, values in self.query.items():
            merged[key] = list(values)
        self.params = merged
        self.json = received.json
        return received

    def cleanup(self) -> None:
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)


def require_write(request: Request, project: str, message: str) -> None:
    """403 with XNAT's `message` unless the user may write to `project`."""
    if not request.user.can_write(project):
        raise tables.HttpError(403, message)


NOT_FOUND = "Unable to find the specified experiment."


def hidden() -> tables.HttpError:
    """What a GET of something the user may not read answers: 404, as if it did not exist
    (§1.8), so that a project's contents do not leak to outsiders."""
    return tables.HttpError(404, NOT_FOUND)
