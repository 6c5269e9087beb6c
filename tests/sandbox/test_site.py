"""The site's accounts over real HTTP: project roles as `GET /xapi/access/projects` reports them
(XNAT's DataAccessApi / RoleHolder), and accounts that belong to one project only."""

from __future__ import annotations

import pytest
import requests

from xnat_sandbox import Sandbox, settings

SITE_USERS = [
    "admin:pw",
    "owner2:pw",
    "reader:pw:read",
    "outsider:pw:none",
    "member1:pw:member@SPN01",
    "collab2:pw:collaborator@SPN02,member@SPN03",
]
COLUMNS = {"secondary_ID", "ID", "role", "name", "URI", "group_id", "description"}

pytestmark = pytest.mark.sandbox(users=SITE_USERS, projects=["SPN01", "SPN02", "SPN03"])


def roles(site: Sandbox, user: str) -> list[dict[str, str]]:
    response = requests.get(site.url + "/xapi/access/projects", auth=(user, "pw"))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def test_roles_are_the_group_display_names_with_xnats_columns(sandbox):
    rows = roles(sandbox, "owner2")
    assert [(r["ID"], r["role"], r["group_id"]) for r in rows] == [
        ("SPN01", "Owners", "SPN01_owner"),
        ("SPN02", "Owners", "SPN02_owner"),
        ("SPN03", "Owners", "SPN03_owner"),
    ]
    assert all(set(r) == COLUMNS for r in rows)
    assert rows[0]["URI"] == "/data/projects/SPN01" and rows[0]["secondary_ID"] == "SPN01"
    read_rows = roles(sandbox, "reader")
    assert [(r["ID"], r["role"], r["group_id"]) for r in read_rows] == [
        ("SPN01", "Collaborators", "SPN01_collaborator"),
        ("SPN02", "Collaborators", "SPN02_collaborator"),
        ("SPN03", "Collaborators", "SPN03_collaborator"),
    ]
    assert roles(sandbox, "outsider") == []


def test_the_admin_has_a_site_wide_row_and_owns_only_the_projects_it_created(sandbox):
    """RoleHolder's query joins the ALL_DATA_ADMIN group to no project: a row with no ID."""
    admin_row = {"role": "All Data Administration", "group_id": "ALL_DATA_ADMIN", "description": ""}
    assert roles(sandbox, "admin") == [admin_row]
    created = requests.put(sandbox.url + "/data/projects/NEW1", auth=("admin", "pw"))
    assert created.status_code == 201
    rows = roles(sandbox, "admin")
    assert [r.get("ID") for r in rows] == ["NEW1", None]
    assert rows[0]["role"] == "Owners" and rows[1] == admin_row


def test_per_project_accounts_see_and_write_only_their_projects(sandbox):
    assert [(r["ID"], r["role"]) for r in roles(sandbox, "member1")] == [("SPN01", "Members")]
    assert [(r["ID"], r["role"]) for r in roles(sandbox, "collab2")] == [
        ("SPN02", "Collaborators"),
        ("SPN03", "Members"),
    ]
    with requests.Session() as member:
        member.auth = ("member1", "pw")
        listed = member.get(sandbox.url + "/data/projects", params={"format": "json"})
        assert [r["ID"] for r in listed.json()["ResultSet"]["Result"]] == ["SPN01"]
        assert member.put(sandbox.url + "/data/projects/SPN01/subjects/S1").status_code == 201
        hidden = member.get(f"{sandbox.url}/data/projects/SPN02/subjects/S1?format=json")
        assert hidden.status_code == 404
        assert member.put(sandbox.url + "/data/projects/NEW2").status_code == 403
    with requests.Session() as collaborator:
        collaborator.auth = ("collab2", "pw")
        assert collaborator.put(sandbox.url + "/data/projects/SPN02/subjects/S2").status_code == 403
        assert collaborator.put(sandbox.url + "/data/projects/SPN03/subjects/S3").status_code == 201
        readable = collaborator.get(sandbox.url + "/data/projects/SPN02", params={"format": "json"})
        assert readable.status_code == 200


def test_a_bad_membership_is_a_password_not_an_access(tmp_path):
    """A last segment that is not an access level or GROUP@PROJECT stays part of the password."""
    server = Sandbox(data=tmp_path / "x", port=0, users=["a:pw", "b:x:guest@SPN01"])
    assert server.accounts["b"].password == "x:guest@SPN01"
    assert server.accounts["b"].access == "owner"


@pytest.mark.parametrize(
    ("text", "days"),
    [("1 year", 360), ("2 years", 720), ("6 mons", 180), ("90 days 12 hours", 90.5), ("1 week", 7)],
)
def test_password_intervals_compare_as_postgresql_does(text, days):
    assert settings.parse_interval(text) == days * 86400


@pytest.mark.parametrize("text", ["", "one year", "1 fortnight"])
def test_an_interval_the_sandbox_cannot_compare_is_refused(text):
    with pytest.raises(ValueError, match="interval"):
        settings.parse_interval(text)
