"""Authentication: Basic on every call, JSESSIONID sessions with an idle timeout (§2).

Basic auth creates an HTTP session as a side effect (`Set-Cookie: JSESSIONID`), exactly what
xnatpy relies on; the session then authenticates by cookie alone until it has been idle for
`session_timeout` seconds of the sandbox clock. Every response carries
`SESSION_EXPIRATION_TIME="<nowMillis>,<timeoutMillis>"`, which xnatpy uses to time heartbeats.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import uuid
from dataclasses import dataclass

from xnat_sandbox import tables
from xnat_sandbox.wire import Request, User

REALM = "XNAT Protected Area"
LOGIN_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>XNAT Login</title></head>\n<body>\n"
    "<!-- BEGIN xnat-templates/screens/Login.vm -->\n"
    '<form name="form1" method="post" action="/login">\n'
    '<input type="text" name="username"><input type="password" name="password">\n'
    "</form>\n<!-- END xnat-templates/screens/Login.vm -->\n</body>\n</html>\n"
)


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


LOGIN_FAILURE = (
    "Your login attempt failed because the username and password combination you provided was "
    "invalid or your user already has the maximum number of user sessions open. After 20 failed "
    "login attempts, your user account will be locked. If you believe your account is currently "
    "locked, you can:<ul><li>Unlock it by resetting your password</li><li>Wait one hour for it "
    "to unlock automatically</li></ul>"
)
"""`AdminUtils.GetLoginFailureMessage()`: the `uiLoginFailureMessage` default
(`SiteConfigPreferences` l.1455) with `maxFailedLogins` (20) filled in. `XnatBasicAuthentication
Filter` sends it with `sendError(401, …)` for every failed Basic login: a wrong password and a
login refused by the concurrent-session cap get the same answer, without a challenge header."""


def login_refused() -> tables.Response:
    """401 from the Basic authentication filter: Tomcat's error page, no WWW-Authenticate."""
    return tables.tomcat_error(401, LOGIN_FAILURE)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    name, _, password = decoded.partition(":")
    return name, password


def challenge(message: str = "Unauthorized") -> tables.HttpError:
    return tables.HttpError(401, message, [("WWW-Authenticate", f'Basic realm="{REALM}"')])


# -- endpoints -------------------------------------------------------------------------------


def jsession(request: Request) -> tables.Response:
    """`GET|POST /data/JSESSION` → the session id; `DELETE` logs out (§2.1)."""
    sid = request.sandbox.session_id_of(request)
    if request.method == "DELETE":
        target = request.path.removeprefix("/JSESSION").strip("/") or sid
        if target:
            request.sandbox.sessions.drop(target)
        return tables.text("")
    if request.method not in ("GET", "POST"):
        raise tables.HttpError(405, "Method Not Allowed")
    if sid is None:
        sid = request.sandbox.new_session(request)
    body = sid
    if request.flag("CSRF"):
        session = request.sandbox.sessions.get(sid)
        body += f"; XNAT_CSRF={session.csrf if session else ''}"
    return tables.text(body)


def auth_check(request: Request) -> tables.Response:
    """`GET /data/auth` → "User 'x' is logged in" (xnatpy's login check)."""
    body = f"User '{request.user.name}' is logged in"
    if request.flag("CSRF"):
        sid = request.sandbox.session_id_of(request)
        session = request.sandbox.sessions.get(sid) if sid else None
        body += f"; XNAT_CSRF={session.csrf if session else ''}"
    return tables.text(body)


def form_login(request: Request) -> tables.Response:
    """`PUT|POST /data/services/auth` with `username`/`password` form fields → session id."""
    if request.method not in ("PUT", "POST"):
        raise tables.HttpError(405, "Method Not Allowed")
    request.receive()
    name = request.param("username") or ""
    password = request.param("password") or ""
    user = request.sandbox.accounts.get(name)
    if user is None or not secrets.compare_digest(user.password, password):
        raise tables.HttpError(401, "Authentication failed.")
    request.user = user
    request.sandbox.forget_session(request)
    return tables.text(request.sandbox.new_session(request))
