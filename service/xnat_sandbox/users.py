"""Sandbox accounts and what each may read and write, as XNAT's project groups decide.

An account is given as `NAME:PASSWORD[:ACCESS]` (`xnatdrop sandbox --user`, `Sandbox(users=…)`).
ACCESS is a site-wide level or a list of project groups; `User.can_read` and `User.can_write` are
the checks every endpoint applies. The Unassigned prearchive folder is the site admin's only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

UNASSIGNED = "Unassigned"
"""The prearchive folder of uploads that name no project the account may write to (§6)."""

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
