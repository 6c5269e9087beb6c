"""The request as the endpoint handlers see it, and the access rules they apply.

A handler is `handler(request) -> tables.Response`; it raises `tables.HttpError` for any error
page. Parameters follow XNAT: form fields and multipart fields first, then the query string,
which wins (`Importer.handlePost` loads the query after the body, §3.1). Names are case-sensitive.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from email.message import Message
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from xnat_sandbox import bodies, tables

if TYPE_CHECKING:
    from xnat_sandbox.server import Sandbox

UNASSIGNED = "Unassigned"


#: The three groups XNAT creates for every project (`Groups.java` l.44-49): group id suffix →
#: display name. The display name is what `/xapi/access/projects` reports as `role`.
PROJECT_GROUPS = {"owner": "Owners", "member": "Members", "collaborator": "Collaborators"}

ACCESS_LEVELS = ("owner", "read", "none")

_MEMBERSHIP = re.compile(r"^(owner|member|collaborator)@([A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class User:
    """A sandbox account.

    `access` is a site-wide level (`owner`: writes every project, `read`: reads every project,
    `none`) or a list of project groups, `member@SPN01,collaborator@SPN02`, for an account that
    belongs to those projects only, as XNAT's project groups do (owners and members may write,
    collaborators only read; `Groups.java`, `init_data_type_access_functions.sql`).
    """

    name: str
    password: str
    access: str = "owner"
    admin: bool = False

    @cached_property
    def groups(self) -> dict[str, str]:
        """Project → group (owner, member, collaborator) for a per-project account, else {}."""
        if self.access in ACCESS_LEVELS:
            return {}
        return {m.group(2): m.group(1) for m in map(_MEMBERSHIP.match, self.access.split(",")) if m}

    def can_read(self, project: str) -> bool:
        if project == UNASSIGNED:
            return self.admin
        if self.groups:
            return project in self.groups
        return self.access in ("owner", "read")

    def can_write(self, project: str) -> bool:
        if project == UNASSIGNED:
            return self.admin
        if self.groups:
            return self.groups.get(project) in ("owner", "member")
        return self.access == "owner"


def parse_user(spec: str) -> tuple[str, str, str]:
    """`NAME:PASSWORD[:ACCESS]` → (name, password, access); ValueError names what is wrong.

    ACCESS is `owner`, `read`, `none` or comma-separated `GROUP@PROJECT` memberships
    (`member@SPN01,collaborator@SPN02`). A last segment that is neither belongs to the password.
    """
    name, sep, rest = spec.partition(":")
    if not name or not sep or not rest:
        raise ValueError(f"user {spec.split(':')[0]!r}: expected NAME:PASSWORD[:ACCESS]")
    password, access = rest, "owner"
    head, sep, tail = rest.rpartition(":")
    if sep and head and (tail in ACCESS_LEVELS or _is_memberships(tail)):
        password, access = head, tail
    return name, password, access


def _is_memberships(text: str) -> bool:
    return all(_MEMBERSHIP.match(part) for part in text.split(","))


@dataclass
class Request:
    """One request after authentication: normalized path, parameters, body, user."""

    sandbox: Sandbox
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

    def receive(self, raw_name: str | None = None, raw_any_type: bool = False) -> bodies.Received:
        """Read the body (uploads spooled, fields merged into params below the query)."""
        received = bodies.receive(
            self.body,
            self.headers.get("Content-Type"),
            (self.query.get("inbody") or [""])[-1].lower() == "true",
            self.spool_dir(),
            raw_name=raw_name,
            raw_any_type=raw_any_type,
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
    if not request.user.can_write(project):
        raise tables.HttpError(403, message)


NOT_FOUND = "Unable to find the specified experiment."
