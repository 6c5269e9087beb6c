"""`SiteContext`: what the endpoint modules may use of the running sandbox.

Handlers get the sandbox as `request.sandbox`. Typing it as the `Sandbox` class would make every
endpoint module import `server`, which imports them all to route to them: an import circle. This
protocol names the state handlers share instead (the store, the clock, the faults, accounts and
sessions, the archive locks), so the imports run one way, from the server down to the endpoints
and from the endpoints down to the model. `Sandbox` satisfies it (tests/sandbox/test_layout.py).
"""

from __future__ import annotations

import threading
from email.message import Message
from typing import Any, Protocol, runtime_checkable

from xnat_sandbox.bodies import Body
from xnat_sandbox.control import Clock, Faults
from xnat_sandbox.sessions import Sessions
from xnat_sandbox.settings import Settings
from xnat_sandbox.store import Store
from xnat_sandbox.tables import Response
from xnat_sandbox.users import User


@runtime_checkable
class SiteContext(Protocol):
    """The running sandbox as its handlers see it."""

    host: str
    port: int
    store: Store
    clock: Clock
    faults: Faults
    settings: Settings
    #: Accounts by name, and when each one's password was last set (sandbox clock).
    accounts: dict[str, User]
    password_updated: dict[str, float]
    sessions: Sessions
    #: What XNAT reads from its preferences at start-up only (`SecurityConfig`).
    secure_cookies: bool
    max_sessions: int
    #: `PrearcSessionArchiver`'s GLOBAL_LOCKS: prearchive URIs and experiment IDs in use.
    archive_locks: set[str]
    archive_locks_guard: threading.Lock
    #: Open workflows (a pipeline still running) by (project, experiment label).
    workflows: dict[tuple[str, str], str]

    @property
    def url(self) -> str:
        """`http://host:port`, the sandbox's own address."""
        ...

    def store_preferences(self, **changes: Any) -> None:
        """Change settings as XNAT's preference API does (start-up ones wait for a restart)."""
        ...

    def admin_api(self, method: str, path: str, headers: Message, body: Body) -> Response:
        """`/_sandbox/…`: the sandbox's test-control API, for the site admin only."""
        ...
