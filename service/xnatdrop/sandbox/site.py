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
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from xnatdrop.sandbox import tables
from xnatdrop.sandbox.wire import PROJECT_GROUPS, User

if TYPE_CHECKING:
    from xnatdrop.sandbox.server import Sandbox
    from xnatdrop.sandbox.wire import Request

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
            message = f"Request method '{request.method}' not supported"
            return tables.Response(405, "text/plain", message.encode())
        rows = project_roles(request.sandbox, request.user)
        return tables.Response(200, "application/json", json.dumps(rows).encode())
    return None


def project_group(user: User, project: str, creator: str | None) -> str | None:
    """The project group (owner, member, collaborator) `user` belongs to in `project`, or None."""
    if user.groups:
        return user.groups.get(project)
    if user.admin:
        return "owner" if creator == user.name else None
    return {"owner": "owner", "read": "collaborator"}.get(user.access)


def project_roles(sandbox: Sandbox, user: User) -> list[dict[str, str]]:
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
