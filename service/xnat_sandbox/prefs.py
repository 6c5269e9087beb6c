"""Site preferences and per-project tool configurations, with a fresh XNAT install's defaults.

XNAT keeps site settings in `SiteConfigPreferences` (each getter's `@NrgPreference(defaultValue)`
is what a fresh install answers) and per-project settings such as a project's anonymisation
script or series import filter in its ConfigService (contents plus an enabled/disabled status).
The sandbox stores both in its database (`preferences`, `project_configs`), so a change made
through the admin endpoints survives a restart, and starts from XNAT's defaults:

| preference | default | XNAT source |
|---|---|---|
| `enableSitewideAnonymizationScript` | true | `SiteConfigPreferences` l.578 |
| `sitewideAnonymizationScript` | `defaults/id.das` | `DefaultAnonUtils.getDefaultScript` |
| `checksums` | true | `SiteConfigPreferences` l.682 |
| `enableSitewideSeriesImportFilter` | false | `SiteConfigPreferences` l.617 |
| `sitewideSeriesImportFilterMode` | blacklist | `SiteConfigPreferences` l.630 |
| `sitewideSeriesImportFilter` | (empty) | `SiteConfigPreferences` l.643 |
"""

from __future__ import annotations

import sqlite3
import time

from xnat_sandbox.store import Store

#: XNAT's default anonymisation script, `web/src/main/resources/META-INF/xnat/defaults/id.das`
#: (its statements; the file's copyright header is shortened to one comment line).
DEFAULT_ANON_SCRIPT = """//
// Default XNAT anonymization script (META-INF/xnat/defaults/id.das)
//
version "6.1"
project != "Unassigned" ? (0008,1030) := project
(0010,0010) := subject
(0010,0020) := session"""

DEFAULTS = {
    "enableSitewideAnonymizationScript": "true",
    "sitewideAnonymizationScript": DEFAULT_ANON_SCRIPT,
    "checksums": "true",
    "enableSitewideSeriesImportFilter": "false",
    "sitewideSeriesImportFilterMode": "blacklist",
    "sitewideSeriesImportFilter": "",
}


def get(store: Store, name: str) -> str:
    """A site preference, or its fresh-install default."""
    row = store.one("SELECT value FROM preferences WHERE name = ?", name)
    return str(row["value"]) if row is not None else DEFAULTS[name]


def flag(store: Store, name: str) -> bool:
    return get(store, name).strip().lower() == "true"


def put(store: Store, name: str, value: str | bool) -> None:
    if name not in DEFAULTS:
        raise KeyError(name)
    text = ("true" if value else "false") if isinstance(value, bool) else value
    store.run("INSERT OR REPLACE INTO preferences (name, value) VALUES (?, ?)", name, text)


def project_config(store: Store, project: str, tool: str) -> sqlite3.Row | None:
    """A project's configuration of one tool (`anon`, `seriesImportFilter`), if ever set."""
    return store.one("SELECT * FROM project_configs WHERE project = ? AND tool = ?", project, tool)


def put_project_config(
    store: Store,
    project: str,
    tool: str,
    contents: str | None = None,
    enabled: bool | None = None,
    user: str | None = None,
) -> None:
    """Store contents and/or status. A new configuration starts enabled, as XNAT's
    `ConfigService.replaceConfig` creates it; replacing contents keeps the status and makes a
    new version."""
    with store.transaction() as db:
        row = db.execute(
            "SELECT * FROM project_configs WHERE project = ? AND tool = ?", (project, tool)
        ).fetchone()
        new_contents = contents if contents is not None else (row["contents"] if row else "")
        if enabled is None:
            enabled = bool(row["enabled"]) if row is not None else True
        version = (row["version"] or 1) if row is not None else 1
        if row is not None and contents is not None and contents != row["contents"]:
            version += 1
        db.execute(
            "INSERT OR REPLACE INTO project_configs (project, tool, contents, enabled, user, "
            "created, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                project,
                tool,
                new_contents,
                int(enabled),
                user or (row["user"] if row is not None else None),
                time.time() if row is None or contents is not None else row["created"],
                version,
            ),
        )
