"""The servlet sessions: JSESSIONID → user, last activity and what the security filters noted.

A session authenticates by its cookie alone until it has been idle for `session_timeout` seconds
of the sandbox clock (§2.2). A Basic login registers its session in Spring's SessionRegistry,
which the concurrent-session cap counts (`auth.basic_login`).
"""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass

from xnat_sandbox.users import User


@dataclass
class Session:
    user: User
    last_seen: float
    csrf: str
    password_expired: bool | None = None  # XnatExpiredPasswordFilter's "expired" attribute
    authenticated: bool = True  # False: a login refused after its session was registered
    registered: bool = False  # in Spring's SessionRegistry: counts against the session cap


class Sessions:
    """The servlet sessions: id → user and last activity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(
        self, user: User, now: float, registered: bool = False, authenticated: bool = True
    ) -> str:
        sid = secrets.token_hex(16).upper()  # Tomcat: 32 hex characters
        with self._lock:
            self._by_id[sid] = Session(
                user, now, str(uuid.uuid4()), registered=registered, authenticated=authenticated
            )
            if len(self._by_id) > 10000:  # clients that never send the cookie back
                oldest = sorted(self._by_id, key=lambda k: self._by_id[k].last_seen)
                for key in oldest[:5000]:
                    del self._by_id[key]
        return sid

    def lookup(self, sid: str, now: float, timeout: float) -> tuple[Session | None, bool]:
        """(session, expired): touch a live session; forget and report an expired one."""
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None, False
            if now - session.last_seen >= timeout:
                del self._by_id[sid]
                return None, True
            session.last_seen = now
            return session, False

    def registered_count(self, name: str, now: float, timeout: float) -> int:
        """Live sessions of `name` in the SessionRegistry (`getAllSessions(principal, false)`):
        registered by a Basic login, refused or not, and not yet timed out or logged out."""
        with self._lock:
            return sum(
                1
                for s in self._by_id.values()
                if s.registered and s.user.name == name and now - s.last_seen < timeout
            )

    def get(self, sid: str) -> Session | None:
        with self._lock:
            return self._by_id.get(sid)

    def drop(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def expire_all(self) -> int:
        with self._lock:
            count = len(self._by_id)
            self._by_id.clear()
        return count
