"""Authentication: Basic on every call, JSESSIONID sessions with an idle timeout (§2).

Basic auth creates an HTTP session as a side effect (`Set-Cookie: JSESSIONID`), exactly what
xnatpy relies on; the session then authenticates by cookie alone until it has been idle for
`session_timeout` seconds of the sandbox clock. Every response carries
`SESSION_EXPIRATION_TIME="<nowMillis>,<timeoutMillis>"`, which xnatpy uses to time heartbeats.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets

from xnat_sandbox import tables
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

REALM = "XNAT Protected Area"
LOGIN_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>XNAT Login</title></head>\n<body>\n"
    "<!-- BEGIN xnat-templates/screens/Login.vm -->\n"
    '<form name="form1" method="post" action="/login">\n'
    '<input type="text" name="username"><input type="password" name="password">\n'
    "</form>\n<!-- END xnat-templates/screens/Login.vm -->\n</body>\n</html>\n"
)


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


# -- sessions of a request ----------------------------------------------------------------------


def session_id_of(request: Request) -> str | None:
    """The session this request belongs to: the one it opened, else the one its cookie named."""
    return request.new_session_id or request.session_id


def new_session(request: Request) -> str:
    """Open a session for the request's user; its Set-Cookie goes out with the answer."""
    site = request.sandbox
    sid = site.sessions.create(request.user, site.clock.now())
    request.new_session_id = sid
    request.session_id = sid
    return sid


def forget_session(request: Request) -> None:
    if request.session_id:
        request.sandbox.sessions.drop(request.session_id)
        request.session_id = None


def basic_login(request: Request, replaced: str | None) -> bool:
    """A Basic login through XNAT's session strategies, in `SecurityConfig`'s order:
    fixation protection (a session the cookie named is replaced), registration of a new
    session, then the concurrent-session cap, which counts the new session and refuses
    beyond `concurrentMaxSessions` (`maxSessionsPreventsLogin(true)`, l.177-179, l.301).

    A refused login's session stays registered, unauthenticated, until it idles out, as in
    Spring's SessionRegistry: retrying without sending its cookie back fills the registry
    further. Returns False for a refused login (its Set-Cookie still goes out).
    """
    site = request.sandbox
    if replaced is not None:
        site.sessions.drop(replaced)
    now = site.clock.now()
    sid = site.sessions.create(request.user, now, registered=True, authenticated=False)
    request.new_session_id = sid
    request.session_id = sid
    count = site.sessions.registered_count(request.user.name, now, site.settings.session_timeout)
    if 0 <= site.max_sessions < count:
        log.info("login of %s refused: %d sessions open", request.user.name, count - 1)
        return False
    created = site.sessions.get(sid)
    if created is not None:
        created.authenticated = True
    return True


# -- endpoints -------------------------------------------------------------------------------


def jsession(request: Request) -> tables.Response:
    """`GET|POST /data/JSESSION` → the session id; `DELETE` logs out (§2.1)."""
    sid = session_id_of(request)
    if request.method == "DELETE":
        target = request.path.removeprefix("/JSESSION").strip("/") or sid
        if target:
            request.sandbox.sessions.drop(target)
        return tables.text("")
    if request.method not in ("GET", "POST"):
        raise tables.HttpError(405, "Method Not Allowed")
    if sid is None:
        sid = new_session(request)
    body = sid
    if request.flag("CSRF"):
        session = request.sandbox.sessions.get(sid)
        body += f"; XNAT_CSRF={session.csrf if session else ''}"
    return tables.text(body)


def auth_check(request: Request) -> tables.Response:
    """`GET /data/auth` → "User 'x' is logged in" (xnatpy's login check)."""
    body = f"User '{request.user.name}' is logged in"
    if request.flag("CSRF"):
        sid = session_id_of(request)
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
    forget_session(request)
    return tables.text(new_session(request))
