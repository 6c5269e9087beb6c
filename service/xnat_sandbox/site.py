"""Who may do what on the site: the accounts' project roles as XNAT's XAPI reports them.

`GET /xapi/access/projects` is `DataAccessApi.getProjectRoles` (web/.../xapi/rest/users/
DataAccessApi.java), which returns `RoleHolder.getUserProjectRoles` (libs/xdat/.../security/
services/RoleHolder.java l.198-213): one row per user group the account belongs to, joined to
the project the group is tagged with. Its columns are `secondary_ID`, `ID`, `role` (the group's
*display name*: `Owners`, `Members`, `Collaborators`, `Groups.java` l.44-49), `name`, `URI`
(`/data/projects/{ID}`), `group_id` (`{ID}_owner` …) and `description`, ordered by secondary_ID.

Site-wide groups have no project: the default admin is in `ALL_DATA_ADMIN` ("All Data
Administration", `init_security_000.sql` l.92 and l.215), whose row has no project columns at
all — XNAT's Jackson mapper drops null values (`SerializerConfig` `NON_NULL`), and xnatpy's
`access_levels` skips rows without `ID` for that reason. So an admin sees no per-project row
for a project it did not create; a project's creator is put in its Owners group
(`BaseXnatProjectdata.save`, xnat-data-models).

How sandbox accounts map onto groups: the site admin is in ALL_DATA_ADMIN and owns the projects
it created through `PUT /data/projects/P`; other `owner` accounts are in every project's Owners
group, `read` accounts in every Collaborators group, per-project accounts
(`member@SPN01`) in the groups they name; `none` accounts in none.

Password expiry is `XnatExpiredPasswordFilter` (web/.../security/XnatExpiredPasswordFilter.java)
with the site preferences `passwordExpirationType` (default `Interval`) and
`passwordExpirationInterval` (default `1 year`, `SiteConfigPreferences` l.539-553): a password is
expired when `now() - password_updated > interval` in PostgreSQL. An authenticated request of an
account whose password has expired is redirected (302) to the change-password page
`{siteUrl}/app/template/XDATScreen_UpdateUser.vm` (l.186-191; the path is set in
`SecurityConfig.expiredPasswordFilter`). The result is cached in the HTTP session: a session
that was checked while the password was valid stays usable (l.85, l.262-266).

Where the filter sits decides what a Basic request gets. In XNAT 1.8.11's `SecurityConfig`
(l.318) it runs after `BasicAuthenticationFilter`, so the user is already authenticated and gets
the same 302. Earlier releases (1.7.5+ code with `XnatBasicAuthConfigurer`) added it after
`SecurityContextPersistenceFilter`, before Basic authentication: there a Basic request without a
session takes the unauthenticated branch and gets 403 "Your password has expired. Please try
again after changing your password." (l.152), decided from the user name alone. The sandbox
setting `password_filter_before_basic` chooses.
"""

from __future__ import annotations

import json

from xnat_sandbox import settings, tables
from xnat_sandbox.context import SiteContext
from xnat_sandbox.users import PROJECT_GROUPS, User
from xnat_sandbox.wire import Request

CHANGE_PASSWORD_PATH = "/app/template/XDATScreen_UpdateUser.vm"
"""`SecurityConfig.expiredPasswordFilter`: `setChangePasswordPath` (l.195)."""

PASSWORD_EXPIRED = "Your password has expired. Please try again after changing your password."
"""`XnatExpiredPasswordFilter` l.152, sent with `sendError(403, …)`."""

PREFERENCES = {
    "passwordExpirationType": "password_expiration_type",
    "passwordExpirationInterval": "password_expiration_interval",
    "siteUrl": "site_url",
    "concurrentMaxSessions": "concurrent_max_sessions",
}
"""Site preferences served at `/xapi/siteConfig/{name}` → the sandbox setting behind each.
`siteUrl` and `concurrentMaxSessions` are read by `SecurityConfig` at start-up only: a new value
set here takes effect at the sandbox's next `start()`, as after an XNAT restart."""

ALL_DATA_ADMIN = {
    "role": "All Data Administration",
    "group_id": "ALL_DATA_ADMIN",
    "description": "",
}
"""The admin's site-wide group row: only the non-null columns of RoleHolder's query."""


def handle(request: Request) -> tables.Response | None:
    """Answer the /xapi routes this module owns, or None when the path is not one of them."""
    path = request.path.rstrip("/")
    if path == "/xapi/access/projects":
        if request.method not in ("GET", "HEAD"):
            return _not_supported(request)
        rows = project_roles(request.sandbox, request.user)
        return tables.Response(200, "application/json", json.dumps(rows).encode())
    name = path.removeprefix("/xapi/siteConfig/")
    if name in PREFERENCES:
        return _preference(request, name)
    return None


def _not_supported(request: Request) -> tables.Response:
    message = f"Request method '{request.method}' not supported"
    return tables.Response(405, "text/plain", message.encode())


def _preference(request: Request, name: str) -> tables.Response:
    """`SiteConfigApi.getSpecifiedSiteConfigProperty` / `setSiteConfigProperty`: GET answers the
    raw value (Spring's StringHttpMessageConverter writes a String as is, even as JSON); POST
    takes the raw body as the new value, for site admins only."""
    sandbox = request.sandbox
    attribute = PREFERENCES[name]
    if request.method in ("GET", "HEAD"):
        value = (
            site_url(sandbox) if name == "siteUrl" else str(getattr(sandbox.settings, attribute))
        )
        return tables.Response(200, "application/json", value.encode())
    if request.method not in ("POST", "PUT"):
        return _not_supported(request)
    if not request.user.admin:
        return tables.Response(403, "text/plain", b"")
    body = bytearray()
    while chunk := request.body.read():
        body += chunk
        if len(body) > 65536:
            return tables.Response(413, "text/plain", b"")
    try:
        sandbox.store_preferences(**{attribute: body.decode("utf-8")})
    except ValueError as error:
        return tables.Response(400, "text/plain", str(error).encode())
    return tables.Response(200, "application/json", b"")


def project_group(user: User, project: str, creator: str | None) -> str | None:
    """The project group (owner, member, collaborator) `user` belongs to in `project`, or None."""
    if user.groups:
        return user.groups.get(project)
    if user.admin:
        return "owner" if creator == user.name else None
    return {"owner": "owner", "read": "collaborator"}.get(user.access)


def project_roles(sandbox: SiteContext, user: User) -> list[dict[str, str]]:
    """The rows of `GET /xapi/access/projects` for `user` (module docstring)."""
    rows = []
    for project in sandbox.store.all("SELECT * FROM projects"):
        pid = project["id"]
        group = project_group(user, pid, project["insert_user"])
        if group is None:
            continue
        rows.append(
            {
                "secondary_ID": project["secondary_id"] or pid,
                "ID": pid,
                "role": PROJECT_GROUPS[group],
                "name": project["name"] or pid,
                "URI": f"/data/projects/{pid}",
                "group_id": f"{pid}_{group}",
                "description": project["description"] or "",
            }
        )
    rows.sort(key=lambda row: row["secondary_ID"])
    if user.admin:  # NULL secondary_ID sorts last in PostgreSQL
        rows.append(dict(ALL_DATA_ADMIN))
    return rows


# -- password expiry ----------------------------------------------------------------------------


def password_expired(sandbox: SiteContext, name: str) -> bool:
    """`isPasswordExpired`: Interval type and `now - password_updated > interval`."""
    chosen = sandbox.settings
    if chosen.password_expiration_type != "Interval" or name not in sandbox.password_updated:
        return False
    interval = settings.parse_interval(chosen.password_expiration_interval)
    return sandbox.clock.now() - sandbox.password_updated[name] > interval


def site_url(sandbox: SiteContext) -> str:
    """`TurbineUtils.GetFullServerPath`: the siteUrl preference without a trailing slash."""
    return (sandbox.settings.site_url or sandbox.url).rstrip("/")


def basic_before_authentication(sandbox: SiteContext, name: str) -> tables.Response | None:
    """The filter placed before Basic authentication (`password_filter_before_basic`): a Basic
    request that no session authenticates is refused with 403 when that user name's password has
    expired, whatever the password sent (l.125-157)."""
    if password_expired(sandbox, name):
        return tables.tomcat_error(403, PASSWORD_EXPIRED)
    return None


def expired_password_redirect(sandbox: SiteContext, request: Request) -> tables.Response | None:
    """The authenticated branch (l.158-199): 302 to the change-password page when the account's
    password has expired, remembering a valid result for the rest of the HTTP session. The
    change-password page itself passes (`isChangePassword`), so a client that follows the
    redirect gets that page: 200 and HTML."""
    if request.full_path == CHANGE_PASSWORD_PATH:
        return None
    session = sandbox.sessions.get(request.session_id) if request.session_id else None
    if session is not None and session.password_expired is False:
        return None
    expired = password_expired(sandbox, request.user.name)
    if session is not None:
        session.password_expired = expired
    if not expired:
        return None
    location = site_url(sandbox) + CHANGE_PASSWORD_PATH
    return tables.Response(302, "", b"", headers=[("Location", location)])


CHANGE_PASSWORD_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>XNAT</title></head>\n<body>\n"
    "<!-- BEGIN xnat-templates/screens/XDATScreen_UpdateUser.vm -->\n"
    "<h2>Change Password</h2>\n<p>Your password has expired. Please choose a new one.</p>\n"
    '<form name="form1" method="post" action="/app/action/ModifyPassword">\n'
    '<input type="password" name="current_password"><input type="password" name="new_password">\n'
    "</form>\n<!-- END xnat-templates/screens/XDATScreen_UpdateUser.vm -->\n</body>\n</html>\n"
)


def change_password_page(request: Request) -> tables.Response:
    """`GET /app/template/XDATScreen_UpdateUser.vm`: the Turbine page the redirect points to,
    200 with HTML whatever the client asked for (a sign that a redirect was followed)."""
    return tables.Response(200, tables.HTML, CHANGE_PASSWORD_PAGE.encode())
