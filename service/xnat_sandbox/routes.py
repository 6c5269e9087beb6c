"""How XNAT answers one request: the path normalized, the caller authenticated, the route run.

`respond` is everything between the socket and an endpoint function: `/data` or `/REST` stripped
and the `/archive/` alias folded, then XNAT's Spring Security chain (an anonymous route, the
JSESSIONID cookie, Basic authentication, which opens a session, the expired-password filter),
then the first of `ROUTES` whose prefix matches, or an `/xapi/…` family. Any `tables.HttpError`
becomes XNAT's HTML status page; every answer carries XNAT's session cookies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from email.message import Message

from xnat_sandbox import (
    anonymize,
    archive_service,
    auth,
    bodies,
    dicomzip,
    entities,
    prearchive_endpoints,
    seriesfilter,
    site,
    siteconfig,
    snapshots,
    tables,
    xapi,
)
from xnat_sandbox.context import SiteContext
from xnat_sandbox.sessions import Session
from xnat_sandbox.users import User
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)


Handler = Callable[[Request], tables.Response]


# -- the two routes that answer from xapi.py's data model --------------------------------------


def _search_elements(request: Request) -> tables.Response:
    """`GET /data/search/elements`: the data types xnatpy looks up at connect time (xapi.py)."""
    rows = xapi.search_elements()
    columns = list(rows[0]) if rows else ["ELEMENT_NAME"]
    return tables.table(rows, columns, request.fmt)


def _search_fields(request: Request) -> tables.Response:
    """`GET /data/search/elements/{element}`: display fields xnatpy asks for at connect."""
    element = request.path.rstrip("/").rsplit("/", 1)[-1]
    rows = xapi.search_fields(element)
    if rows is None:
        raise tables.HttpError(404, f"Unknown element: {element}")
    return tables.table(rows, list(xapi.SEARCH_FIELD_COLUMNS), request.fmt)


# -- the routing tables ------------------------------------------------------------------------


#: Routing table over the normalized path (no /data, /REST or /archive prefix). Restlet routes
#: by "starts with", so each pattern matches a prefix and the handler parses the remainder.
ROUTES: list[tuple[re.Pattern[str], Handler]] = [
    (re.compile(r"^/JSESSION(/|$)"), auth.jsession),
    (re.compile(r"^/auth/?$"), auth.auth_check),
    (re.compile(r"^/services/import/?$"), dicomzip.handle_import),
    (re.compile(r"^/services/archive/?$"), archive_service.handle_archive),
    (
        re.compile(r"^/services/prearchive/(move|delete|rebuild)/?$"),
        prearchive_endpoints.handle_batch,
    ),
    (re.compile(r"^/prearchive(/|$)"), prearchive_endpoints.handle),
    (re.compile(r"^/(projects|subjects|experiments)(/|$)"), entities.handle),
    (re.compile(r"^/config(/|$)"), seriesfilter.handle_site),
    (re.compile(r"^/search/elements/?$"), _search_elements),
    (re.compile(r"^/search/elements/[^/]+/?$"), _search_fields),
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

#: Who a request is until the security chain says otherwise.
_ANONYMOUS = User("guest", "", "none", False)


def respond(
    sandbox: SiteContext,
    method: str,
    full_path: str,
    query: dict[str, list[str]],
    headers: Message,
    body: bodies.Body,
) -> tables.Response:
    """Authenticate, route and run one request; every error becomes a status page. The
    sandbox's own `/_sandbox/` test-control API is answered by `sandbox.admin_api`."""
    if full_path.startswith("/_sandbox/") or full_path == "/_sandbox":
        return sandbox.admin_api(method, full_path, headers, body)
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
    request = Request(sandbox, routed, path, full_path, query, headers, body, _ANONYMOUS)
    try:
        response = _authenticated(sandbox, request, cookies)
    except tables.HttpError as error:
        response = tables.error_response(error)
    except (bodies.ConnectionDropped, bodies.ClientGone):
        raise
    except Exception:  # the request boundary: a bug must not kill the connection thread
        log.exception("sandbox: unexpected error in %s %s", method, full_path)
        response = tables.error_response(tables.HttpError(500, "Internal Server Error"))
    finally:
        request.cleanup()
    now_ms = int(sandbox.clock.now() * 1000)
    timeout_ms = int(sandbox.settings.session_timeout * 1000)
    # Tomcat marks JSESSIONID Secure from SessionCookieConfig; XnatExpiredPasswordFilter marks
    # SESSION_EXPIRATION_TIME Secure exactly when that config is (its l.72-80).
    secure = "; Secure" if sandbox.secure_cookies else ""
    response.headers.append(
        ("Set-Cookie", f'SESSION_EXPIRATION_TIME="{now_ms},{timeout_ms}"; Path=/{secure}')
    )
    if request.new_session_id:
        response.headers.append(
            ("Set-Cookie", f"JSESSIONID={request.new_session_id}; Path=/{secure}; HttpOnly")
        )
    return response


def _authenticated(
    sandbox: SiteContext, request: Request, cookies: dict[str, str]
) -> tables.Response:
    """XNAT's Spring Security chain, then the route: the session from the cookie, Basic
    authentication (which opens a session), the expired-password filter (site.py)."""
    for pattern, handler in ANONYMOUS:
        if pattern.match(request.path):
            return handler(request)
    credentials = auth.basic_credentials(request.headers.get("Authorization"))
    sid = cookies.get("JSESSIONID")
    session = None
    if sid:
        session, _ = sandbox.sessions.lookup(
            sid, sandbox.clock.now(), sandbox.settings.session_timeout
        )
    if credentials is not None:
        if sandbox.settings.password_filter_before_basic and not _authenticates(session):
            refused = site.basic_before_authentication(sandbox, credentials[0])
            if refused is not None:
                return refused
        user = sandbox.accounts.get(credentials[0])
        if user is None or user.password != credentials[1]:
            return auth.login_refused()
        request.user = user
        if session is not None and session.authenticated and session.user.name == user.name:
            request.session_id = sid
        elif not auth.basic_login(request, sid if session is not None else None):
            return auth.login_refused()
    elif _authenticates(session):
        request.user = session.user
        request.session_id = sid
    elif sid and session is None:
        if sandbox.settings.login_page_on_expiry:
            return tables.Response(200, tables.HTML, auth.LOGIN_PAGE.encode())
        raise auth.challenge()
    else:
        raise auth.challenge()
    redirect = site.expired_password_redirect(sandbox, request)
    if redirect is not None:
        return redirect

    if request.path.startswith("/xapi/"):
        return _xapi(request)
    for pattern, handler in ROUTES:
        if pattern.match(request.path):
            return handler(request)
    raise tables.HttpError(404, "The requested URI was not found.")


def _xapi(request: Request) -> tables.Response:
    answer = site.handle(request)
    if answer is not None:
        return answer
    for family in XAPI_FAMILIES:
        response = family(request)
        if response is not None:
            return response
    served = xapi.handle(request.method, request.path, request.query, request.user.name)
    if served is None:
        raise tables.HttpError(404, "The requested URI was not found.")
    status, content_type, payload = served
    return tables.Response(status, content_type, payload)


def _authenticates(session: Session | None) -> bool:
    """A session whose cookie alone authenticates (not one left by a refused login)."""
    return session is not None and session.authenticated


def _cookies(headers: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers.get_all("Cookie") or []:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                out[name] = value.strip('"')
    return out
