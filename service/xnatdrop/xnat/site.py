"""What the site and the project are set up to do: access, roles, preferences, anonymisation
scripts, series import filters, auto-archive.

Asked at push time (and by `doctor`), because a fresh XNAT rewrites what it imports (stock rows
1, 6, 10): `verify` decides from these answers what can be compared. Each call names its
endpoint and the XNAT source it follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from xnatdrop.errors import TransientError
from xnatdrop.xnat import answers
from xnatdrop.xnat.connection import Connection

WRITER_ROLES = frozenset({"Owners", "Members"})  # group display names that may upload, archive
ALL_DATA_ADMIN = "ALL_DATA_ADMIN"  # the site-wide group of site administrators (all data)


@dataclass(frozen=True)
class Anonymization:
    """Whether XNAT's anonymisation scripts are on, as `/xapi/anonymize` says (AnonymizeApi).

    None means XNAT would not tell this account (403) or has no such API (404): rewriting is
    then possible and must be assumed.
    """

    site: bool | None
    project: bool | None


@dataclass(frozen=True)
class SeriesFilter:
    """A series import filter (DicomFilterService): `scope` "site" or "project", its mode
    (whitelist, blacklist, modalityMap) and its patterns, one per line."""

    scope: str
    enabled: bool
    mode: str
    patterns: str


class SiteSettings(Connection):
    """The endpoints that read the site's and the project's setup (part of `XnatClient`)."""

    def project_exists(self, project: str) -> bool:
        """GET /data/projects/P: 404 means missing or not visible to us (reference §1.8)."""
        response = self.request(
            "GET", f"/data/projects/{quote(project)}", params={"format": "json"}, ok=(200, 404)
        )
        return response.status_code == 200

    def project_access(self, project: str) -> tuple[str | None, frozenset[str]]:
        """The user's role in `project` as XNAT names it (None without a row), and the
        site-wide groups it belongs to.

        GET /xapi/access/projects (DataAccessApi → RoleHolder.getUserProjectRoles, l.198-213):
        one row per group; `role` is the group's display name, `Owners`, `Members` or
        `Collaborators` (Groups.java l.44-49, stock row 7). Owners and members may upload and
        archive; collaborators may only read. A site-wide group has a row without `ID`: a site
        administrator is in ALL_DATA_ADMIN (all data, read and write) and has no per-project
        row for projects it did not create; ALL_DATA_ACCESS reads all data.
        """
        response = self.request("GET", "/xapi/access/projects")
        try:
            rows = [row for row in response.json() if isinstance(row, dict)]
        except (ValueError, TypeError) as error:
            raise TransientError("XNAT sent an unreadable project access list") from error
        role = next((str(r.get("role", "")) for r in rows if r.get("ID") == project), None)
        groups = frozenset(str(r.get("group_id", "")) for r in rows if "ID" not in r)
        return role, groups

    def project_role(self, project: str) -> str | None:
        """The user's role in `project` as XNAT names it, or None without a row."""
        return self.project_access(project)[0]

    def user_roles(self) -> list[str] | None:
        """GET /xapi/users/{me}/roles (UsersApi, restrictTo User: one's own roles), e.g.
        ["Administrator", "non_expiring"] (UserRole.java); None if XNAT would not say."""
        response = self.request(
            "GET", f"/xapi/users/{quote(self._username)}/roles", ok=(200, 403, 404)
        )
        if response.status_code != 200:
            return None
        value = answers.json_value(response)
        return [str(v) for v in value] if isinstance(value, list) else None

    def prearchive_code(self, project: str) -> int:
        """GET /data/projects/P/prearchive_code → 0 manual, 4/5 auto-archive (reference §7)."""
        text = self.request("GET", f"/data/projects/{quote(project)}/prearchive_code").text
        try:
            return int(text.strip())
        except ValueError:
            raise TransientError(f"unexpected prearchive_code answer {text[:40]!r}") from None

    def site_preference(self, name: str) -> Any | None:
        """GET /xapi/siteConfig/{name} (SiteConfigApi): a preference's value, or None when
        this account may not read it or XNAT has no such preference.

        Any logged-in account may read `checksums`, `enableSitewideAnonymizationScript`, the
        series-import-filter preferences and `siteUrl` (site-config-access.yaml); the password
        expiry settings are for administrators only.
        """
        response = self.request("GET", f"/xapi/siteConfig/{quote(name)}", ok=(200, 401, 403, 404))
        return answers.json_value(response) if response.status_code == 200 else None

    def anonymization(self, project: str) -> Anonymization:
        """Whether the site-wide and the project's anonymisation scripts are on.

        GET /xapi/anonymize/site/enabled (restrictTo Authenticated) and
        /xapi/anonymize/projects/P/enabled (restrictTo Read) in AnonymizeApi.java. The site
        script runs on every imported file (GradualDicomImporter.call l.390-411), the project
        script at archive time (MergePrearcToArchiveSession l.55), neither for a session
        imported with prevent_anon=true (PrearcSessionAnonymizer.needsAnonymization).
        """
        values = []
        for path in (
            "/xapi/anonymize/site/enabled",
            f"/xapi/anonymize/projects/{quote(project)}/enabled",
        ):
            response = self.request("GET", path, ok=(200, 401, 403, 404))
            values.append(
                answers.as_bool(answers.json_value(response))
                if response.status_code == 200
                else None
            )
        return Anonymization(site=values[0], project=values[1])

    def anonymization_script(self, project: str | None = None) -> str | None:
        """The site's (or the project's) anonymisation script text; "" when the project has
        none (204); None when XNAT would not say (AnonymizeApi GET site / projects/P)."""
        path = "/xapi/anonymize/site" if project is None else f"/xapi/anonymize/projects/{project}"
        response = self.request("GET", path, ok=(200, 204, 401, 403, 404))
        if response.status_code == 204:
            return ""
        return response.text if response.status_code == 200 else None

    def series_import_filters(self, project: str) -> list[SeriesFilter] | None:
        """The site-wide and the project's series import filters that are enabled.

        XNAT drops every instance a filter rejects without a word (GradualDicomImporter.call
        l.193, stock row 6). Site: the preferences `enableSitewideSeriesImportFilter`,
        `sitewideSeriesImportFilterMode` and `sitewideSeriesImportFilter` (readable by any
        account). Project: the config service entry `seriesImportFilter/config`
        (DicomFilterService), GET /data/projects/P/config/seriesImportFilter/config, whose
        `contents` is JSON ({"mode", "list"}) and `status` "enabled"/"disabled" (what XNAT's
        own project page reads, settingsManager.js). None when the account may not read them.
        """
        filters = []
        enabled = answers.as_bool(self.site_preference("enableSitewideSeriesImportFilter"))
        if enabled is None:
            return None
        if enabled:
            filters.append(
                SeriesFilter(
                    "site",
                    True,
                    str(self.site_preference("sitewideSeriesImportFilterMode") or ""),
                    str(self.site_preference("sitewideSeriesImportFilter") or ""),
                )
            )
        response = self.request(
            "GET",
            f"/data/projects/{quote(project)}/config/seriesImportFilter/config",
            params={"format": "json"},
            ok=(200, 204, 401, 403, 404),
        )
        if response.status_code in (401, 403):
            return None
        if response.status_code == 200:
            for row in answers.table(response):
                try:
                    contents = json.loads(row.get("contents") or "{}")
                except ValueError:
                    contents = {}
                if not isinstance(contents, dict):
                    contents = {}
                if answers.as_bool(row.get("status", "")):
                    filters.append(
                        SeriesFilter(
                            "project",
                            True,
                            str(contents.get("mode", "")),
                            str(contents.get("list", "")),
                        )
                    )
        return filters
