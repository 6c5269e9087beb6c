"""Authentication and the wire over raw HTTP and raw sockets (§1, §2): Basic, JSESSIONID,
session expiry, 401/403/404 shapes, prefixes, Expect: 100-continue, keep-alive, chunked bodies."""

from __future__ import annotations

import base64
import re
import socket

import pytest
import requests

BASIC = "Basic " + base64.b64encode(b"svc:pw").decode()


def test_anonymous_requests_get_a_basic_challenge(sandbox, anonymous):
    for response in (
        anonymous.get("/data/projects"),
        requests.get(sandbox.url + "/xapi/siteConfig/buildInfo"),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="XNAT Protected Area"'


def test_a_bad_basic_password_is_refused_by_the_filter_without_a_challenge(sandbox):
    """XnatBasicAuthenticationFilter answers a failed login itself: sendError(401, the login
    failure message), a Tomcat page without WWW-Authenticate (the entry point is not involved)."""
    for user in ("svc", "nobody"):
        response = requests.get(sandbox.url + "/data/projects", auth=(user, "wrong"))
        assert response.status_code == 401
        assert "WWW-Authenticate" not in response.headers
        assert "<p><b>Message</b> Your login attempt failed because the username" in response.text
        assert "maximum number of user sessions open" in response.text
        assert "JSESSIONID" not in response.cookies  # no session for a failed password


def test_basic_auth_creates_a_session_and_the_cookie_alone_then_works(sandbox, svc):
    response = svc.get("/data/JSESSION")
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", response.text)
    assert svc.cookies["JSESSIONID"] == response.text
    assert re.fullmatch(r'"\d{13},900000"', svc.cookies["SESSION_EXPIRATION_TIME"])
    with requests.Session() as cookie_only:
        cookie_only.cookies.set("JSESSIONID", response.text)
        auth = cookie_only.get(sandbox.url + "/data/auth")
        assert (auth.status_code, auth.text) == (200, "User 'svc' is logged in")
        assert cookie_only.post(sandbox.url + "/data/JSESSION").text == response.text


def test_csrf_token_is_offered(svc):
    sid, token = svc.get("/data/JSESSION", params={"CSRF": "true"}).text.split("; XNAT_CSRF=")
    assert re.fullmatch(r"[0-9a-f-]{36}", token) and sid == svc.cookies["JSESSIONID"]


def test_form_login_and_logout(sandbox, anonymous):
    bad = anonymous.post("/data/services/auth", data={"username": "svc", "password": "nope"})
    assert bad.status_code == 401
    assert "<h3>Authentication failed.</h3>" in bad.text
    good = anonymous.put("/data/services/auth", data={"username": "svc", "password": "pw"})
    assert good.status_code == 200
    assert anonymous.cookies["JSESSIONID"] == good.text
    assert anonymous.get("/data/projects").status_code == 200
    assert anonymous.delete("/data/JSESSION").status_code == 200
    assert anonymous.get("/data/projects").status_code == 401


@pytest.mark.sandbox(session_timeout=60)
def test_idle_sessions_expire_on_the_sandbox_clock(sandbox, svc):
    sid = svc.get("/data/JSESSION").text
    with requests.Session() as cookie_only:
        cookie_only.cookies.set("JSESSIONID", sid)
        sandbox.tick(59)
        assert cookie_only.get(sandbox.url + "/data/auth").status_code == 200  # touched
        sandbox.tick(59)
        assert cookie_only.get(sandbox.url + "/data/auth").status_code == 200
        sandbox.tick(61)
        expired = cookie_only.get(sandbox.url + "/data/auth")
        assert expired.status_code == 401
        assert "WWW-Authenticate" in expired.headers


@pytest.mark.parametrize(
    ("sandbox", "login_page"),
    [
        pytest.param({}, False, id="challenge"),
        pytest.param({"login_page_on_expiry": True}, True, id="login-page"),
    ],
    indirect=["sandbox"],
)
def test_expired_session_can_answer_200_with_the_login_page(sandbox, svc, login_page):
    """An expired cookie gets 401 and a Basic challenge, or, behind `login_page_on_expiry`
    (pitfall 12), 200 with the login page's HTML whatever format was asked for."""
    sid = svc.get("/data/JSESSION").text
    assert sandbox.expire_sessions() >= 1
    with requests.Session() as cookie_only:
        cookie_only.cookies.set("JSESSIONID", sid)
        page = cookie_only.get(sandbox.url + "/data/projects", params={"format": "json"})
    if login_page:
        assert page.status_code == 200
        assert "<!-- BEGIN xnat-templates/screens/Login.vm -->" in page.text
    else:
        assert page.status_code == 401
        assert "WWW-Authenticate" in page.headers


def test_prefixes_and_unknown_routes(sandbox, svc):
    assert svc.json_rows("/REST/projects") == svc.json_rows("/data/archive/projects")
    version = svc.get("/data/version")
    assert version.status_code == 404
    assert version.text.startswith("<html>") and "<title>Status page</title>" in version.text
    assert svc.get("/xapi/no/such/thing").status_code == 404
    assert svc.get("/elsewhere").status_code == 404


def _raw(sandbox, payload: bytes) -> socket.socket:
    connection = socket.create_connection((sandbox.host, sandbox.port), timeout=10)
    connection.sendall(payload)
    return connection


def _read_response(stream) -> tuple[str, dict[str, str], bytes]:
    status = stream.readline().decode().strip()
    headers = {}
    while (line := stream.readline().decode().strip()) != "":
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return status, headers, body


def test_expect_100_continue_is_sent_only_when_the_body_is_read(sandbox):
    body = b"username=svc&password=pw"
    head = (
        "POST /data/services/auth HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _raw(sandbox, head) as connection, connection.makefile("rb") as stream:
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
        connection.sendall(body)
        status, _, text = _read_response(stream)
        assert status.startswith("HTTP/1.1 200") and len(text) == 32
    refused = (
        b"POST /data/services/import HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/zip\r\nContent-Length: 5000000\r\n\r\n"
    )
    with _raw(sandbox, refused) as connection, connection.makefile("rb") as stream:
        status, headers, _ = _read_response(stream)
        assert status.startswith("HTTP/1.1 401")  # no 100 first: the body is never requested
        assert headers["connection"] == "close"


def test_keep_alive_serves_several_requests_on_one_connection(sandbox):
    request = f"GET /data/auth HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\n\r\n".encode()
    with _raw(sandbox, request * 3) as connection, connection.makefile("rb") as stream:
        for _ in range(3):
            status, _, body = _read_response(stream)
            assert status.startswith("HTTP/1.1 200") and body == b"User 'svc' is logged in"


def test_chunked_request_bodies_are_accepted(svc, dicom):
    data = dicom.zip(dicom.files(count=2))
    pieces = (data[i : i + 10000] for i in range(0, len(data), 10000))
    response = svc.post(
        "/data/services/import",
        params={"project": "SPN01"},
        data=pieces,
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 200, response.text
    assert response.text.startswith("/data/prearchive/projects/SPN01/")


def test_read_only_and_outsider_codes(svc, reader, outsider):
    svc.put("/data/projects/SPN01/subjects/S1")
    assert reader.get("/data/projects/SPN01/subjects/S1", params={"format": "json"}).ok
    assert reader.put("/data/projects/SPN01/subjects/S2").status_code == 403
    hidden = outsider.get("/data/projects/SPN01/subjects/S1", params={"format": "json"})
    assert hidden.status_code == 404
    assert outsider.put("/data/projects/SPN01/subjects/S2").status_code == 403
    assert (
        reader.get("/data/projects/SPN01/subjects/NOPE", params={"format": "json"}).status_code
        == 404
    )


# -- password expiry (XnatExpiredPasswordFilter) ------------------------------------------------

CHANGE_PASSWORD = "/app/template/XDATScreen_UpdateUser.vm"
EXPIRED_TEXT = "Your password has expired. Please try again after changing your password."


def _basic(sandbox, user: str, password: str = "pw", path: str = "/data/projects"):
    """One Basic request without a cookie: a fresh HTTP session, so nothing cached."""
    return requests.get(sandbox.url + path, auth=(user, password), allow_redirects=False)


def test_a_fresh_account_is_not_expired_and_an_expired_one_is_sent_to_change_its_password(
    sandbox, anonymous
):
    assert _basic(sandbox, "reader").status_code == 200
    form = anonymous.post("/data/services/auth", data={"username": "reader", "password": "pw"})
    assert form.status_code == 200  # the login itself passes the filter as a guest
    sandbox.expire_password("reader")
    for response in (
        _basic(sandbox, "reader"),
        anonymous.get("/data/projects", allow_redirects=False),
    ):
        assert response.status_code == 302
        assert response.headers["Location"] == sandbox.url + CHANGE_PASSWORD
        assert response.content == b""
    assert _basic(sandbox, "svc").status_code == 200  # other accounts are not affected


def test_a_session_checked_before_the_password_expired_keeps_working(sandbox, reader):
    assert reader.get("/data/projects").status_code == 200  # the session remembers "not expired"
    sandbox.expire_password("reader")
    assert reader.get("/data/projects", allow_redirects=False).status_code == 200
    assert _basic(sandbox, "reader").status_code == 302  # a new session is checked again
    sandbox.expire_password("reader", expired=False)  # the password was changed
    assert _basic(sandbox, "reader").status_code == 200


def test_basic_gets_403_with_xnats_text_when_the_filter_runs_before_basic_auth(sandbox, anonymous):
    """Earlier XNAT releases put the filter before Basic authentication: the unauthenticated branch
    answers 403 by user name alone (even a wrong password), as a Tomcat error page."""
    sandbox.apply_settings(password_filter_before_basic=True)
    anonymous.post("/data/services/auth", data={"username": "reader", "password": "pw"})
    sandbox.expire_password("reader")
    for password in ("pw", "wrong"):
        refused = _basic(sandbox, "reader", password)
        assert refused.status_code == 403
        assert f"<p><b>Message</b> {EXPIRED_TEXT}</p>" in refused.text
        assert "<h3>Apache Tomcat/" in refused.text
    cookie = anonymous.get("/data/projects", allow_redirects=False)  # an authenticated session
    assert (cookie.status_code, cookie.headers["Location"]) == (302, sandbox.url + CHANGE_PASSWORD)


def test_expiry_follows_the_interval_on_the_sandbox_clock(sandbox):
    """PostgreSQL compares "1 year" as 360 days; the interval is a site preference."""
    sandbox.tick(359 * 86400)
    assert _basic(sandbox, "reader").status_code == 200
    sandbox.tick(2 * 86400)
    assert _basic(sandbox, "reader").status_code == 302
    assert _basic(sandbox, "svc").status_code == 302  # every account was created at start
    admin = ("svc", "pw")
    url = sandbox.url + "/xapi/siteConfig/passwordExpirationInterval"
    refused = requests.post(url, data="2 years", auth=admin, allow_redirects=False)
    assert refused.status_code == 302  # svc is expired too
    followed = requests.post(url, data="2 years", auth=admin)  # requests follows with a GET
    assert followed.status_code == 200 and "XDATScreen_UpdateUser.vm" in followed.text
    assert requests.get(url, auth=("reader", "pw"), allow_redirects=False).status_code == 302
    sandbox.expire_password("svc", expired=False)
    assert requests.post(url, data="2 years", auth=admin, headers={"Content-Type": "text/plain"}).ok
    assert requests.get(url, auth=admin).text == "2 years"
    assert _basic(sandbox, "reader").status_code == 200


def test_expiry_is_switchable_through_the_admin_api_and_xnats_preferences(sandbox, svc, reader):
    answer = svc.post(f"{sandbox.url}/_sandbox/expire-password", json={"user": "outsider"})
    assert answer.json() == {"user": "outsider", "expired": True}
    assert _basic(sandbox, "outsider").status_code == 302
    kind = sandbox.url + "/xapi/siteConfig/passwordExpirationType"
    assert svc.get(kind).text == "Interval"
    assert reader.post(kind, data="Disabled").status_code == 403  # site admins only
    assert svc.post(kind, data="Date").status_code == 400  # not modelled, said so
    assert svc.post(kind, data="Disabled").status_code == 200
    assert _basic(sandbox, "outsider").status_code == 200
    bad = svc.post(f"{sandbox.url}/_sandbox/settings", json={"password_expiration_interval": "x"})
    assert bad.status_code == 400 and "interval" in bad.json()["error"]
    assert (
        svc.post(f"{sandbox.url}/_sandbox/expire-password", json={"user": "nobody"}).status_code
        == 400
    )


# -- the Secure cookie and the concurrent-session cap (SecurityConfig.configure) ------------------

SITE = "https://xnat.example.org"


def _set_cookies(response) -> list[str]:
    return response.raw.headers.getlist("Set-Cookie")


def test_session_cookies_are_secure_when_the_site_url_is_https(sandbox):
    plain = _set_cookies(_basic(sandbox, "svc", path="/data/JSESSION"))
    assert any(c.startswith("JSESSIONID=") and c.endswith("; Path=/; HttpOnly") for c in plain)
    assert not any("Secure" in c for c in plain)
    sandbox.apply_settings(site_url=SITE)
    secure = _set_cookies(_basic(sandbox, "svc", path="/data/JSESSION"))
    assert any(
        c.startswith("JSESSIONID=") and c.endswith("; Path=/; Secure; HttpOnly") for c in secure
    )
    assert any(c.startswith("SESSION_EXPIRATION_TIME=") and c.endswith("; Secure") for c in secure)
    with requests.Session() as client:  # an http:// client of an https site
        login = client.post(sandbox.url + "/data/JSESSION", auth=("svc", "pw"))
        assert login.status_code == 200 and client.cookies["JSESSIONID"] == login.text
        assert client.get(sandbox.url + "/data/auth").status_code == 401  # cookie never sent
    sandbox.apply_settings(allow_insecure_cookies=True)
    assert not any("Secure" in c for c in _set_cookies(_basic(sandbox, "svc")))


def test_the_site_url_preference_is_read_at_start_up(sandbox, svc):
    """SecurityConfig reads siteUrl once: XAPI changes it at once for links, not for cookies."""
    url = sandbox.url + "/xapi/siteConfig/siteUrl"
    assert svc.get(url).text == sandbox.url
    assert svc.post(url, data=SITE, headers={"Content-Type": "text/plain"}).status_code == 200
    assert svc.get(url).text == SITE
    sandbox.expire_password("reader")
    assert _basic(sandbox, "reader").headers["Location"] == SITE + CHANGE_PASSWORD
    assert not any("Secure" in c for c in _set_cookies(_basic(sandbox, "svc")))
    sandbox.stop()
    sandbox.start()  # "restart XNAT"
    assert any("; Secure" in c for c in _set_cookies(_basic(sandbox, "svc")))


def test_logins_beyond_the_concurrent_session_cap_are_refused(sandbox, anonymous):
    """1. cap 2: two Basic logins open two sessions 2. a third is refused with the login failure
    401, and its session stays registered 3. a logout frees a slot, but the refusals hold it
    4. the sessions idle out and logins work again. Form logins are never counted."""
    sandbox.apply_settings(concurrent_max_sessions=2)
    first, second = _basic(sandbox, "svc", path="/data/JSESSION"), _basic(sandbox, "svc")
    assert (first.status_code, second.status_code) == (200, 200)
    refused = _basic(sandbox, "svc")
    assert refused.status_code == 401 and "WWW-Authenticate" not in refused.headers
    assert "maximum number of user sessions open" in refused.text
    stale = refused.cookies["JSESSIONID"]
    assert (
        requests.get(sandbox.url + "/data/auth", cookies={"JSESSIONID": stale}).status_code == 401
    )
    assert _basic(sandbox, "reader").status_code == 200  # the cap is per account
    form = anonymous.post("/data/services/auth", data={"username": "svc", "password": "pw"})
    assert form.status_code == 200  # AuthenticationRestlet does not run the session strategies

    logout = requests.delete(sandbox.url + "/data/JSESSION", cookies={"JSESSIONID": first.text})
    assert logout.status_code == 200
    blocked = _basic(sandbox, "svc")
    assert blocked.status_code == 401  # the slot freed by the logout is held by the refusal
    retry = requests.get(
        sandbox.url + "/data/projects",
        auth=("svc", "pw"),
        cookies={"JSESSIONID": blocked.cookies["JSESSIONID"]},
    )
    assert retry.status_code == 401
    # sending the refused session back replaces it (fixation protection): the registry holds
    # the open session and the two refusals, and does not grow with such retries
    assert sandbox.sessions.registered_count("svc", sandbox.clock.now(), 900) == 3
    sandbox.tick(901)
    assert _basic(sandbox, "svc").status_code == 200


def test_the_session_cap_is_a_preference_read_at_start_up(sandbox, svc):
    url = sandbox.url + "/xapi/siteConfig/concurrentMaxSessions"
    assert svc.get(url).text == "1000"
    assert svc.post(url, data="1", headers={"Content-Type": "text/plain"}).status_code == 200
    assert svc.get(url).text == "1"
    assert _basic(sandbox, "reader").status_code == 200
    assert _basic(sandbox, "reader").status_code == 200  # still 1000 until a restart
    assert svc.post(url, data="many").status_code == 400
    sandbox.stop()
    sandbox.start()
    assert _basic(sandbox, "other").status_code == 200
    assert _basic(sandbox, "other").status_code == 401
