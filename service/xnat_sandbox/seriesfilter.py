"""Series import filters: instances whose series a site or project filter excludes are dropped.

`GradualDicomImporter.call` (l.171-193) asks `DicomFilterService` for the site filter and, once
the project is known, the project's filter; if either excludes the instance, the call returns an
empty list: the file is not stored and nothing says so. Both filters are ConfigService entries
(tool `seriesImportFilter`, path `config`) whose contents are JSON, e.g.
`{"mode": "blacklist", "list": "localizer\\n[ImageType]\\nDERIVED"}`; the configuration's status
(enabled/disabled) switches the filter. The site filter is set through the site preferences
`enableSitewideSeriesImportFilter` (default false), `sitewideSeriesImportFilterMode` (blacklist)
and `sitewideSeriesImportFilter` (`SeriesImportFilterHandlerMethod` copies them into the site
configuration); a project's through `/data/projects/{P}/config/seriesImportFilter/config` (the
project settings page, `settingsManager.js` `seriesImportFiltersGet`).

The regular-expression filters (`RegExBasedSeriesImportFilter`) are interpreted: the list is one
pattern per line, blank lines and `#` comments ignored, `[Keyword]` or `[(gggg,eeee)]` switching
the element the following patterns test (SeriesDescription by default), each pattern a
case-insensitive regular expression searched in the value, or `EXISTS` / `!EXISTS`. The first
match includes the instance in whitelist mode and excludes it in blacklist mode; no match does
the opposite. The `modalityMap` mode (JavaScript per modality) is not interpreted: the sandbox
refuses such a filter with 400 instead of ignoring it.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from xnat_sandbox import anonymize, bodies, dicomedit, prefs, tables
from xnat_sandbox.store import Store
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

TOOL = "seriesImportFilter"
PATH = "config"
PROJECT_TOOL = f"{TOOL}/{PATH}"  # key of a project's configuration in `project_configs`
SERIES_DESCRIPTION = 0x0008103E
MODES = ("blacklist", "whitelist")
CONFIG_COLUMNS = [
    "tool",
    "path",
    "project",
    "user",
    "create_date",
    "reason",
    "contents",
    "unversioned",
    "version",
    "status",
]


NO_PRIVILEGES = "User does not have privileges to modify config for this project"


class FilterError(ValueError):
    """A filter the sandbox cannot interpret (an unknown element, a bad pattern, modalityMap)."""


@dataclass
class Filter:
    """A parsed regular-expression series import filter."""

    mode: str
    fields: dict[int, list[re.Pattern[str] | str]] = field(default_factory=dict)

    def tags(self) -> list[int]:
        return sorted(self.fields)

    def includes(self, dataset: Dataset) -> bool:
        """`RegExBasedSeriesImportFilter.shouldIncludeDicomObjectImpl`."""
        for tag, patterns in self.fields.items():
            value = dicomedit.element_text(dataset, tag) if tag in dataset else None
            for pattern in patterns:
                if pattern == "EXISTS":
                    matched = value is not None
                elif pattern == "!EXISTS":
                    matched = value is None
                else:
                    assert isinstance(pattern, re.Pattern)
                    matched = value is not None and pattern.search(value) is not None
                if matched:
                    return self.mode == "whitelist"
        return self.mode == "blacklist"


def _element(name: str) -> int:
    """`DicomUtils.parseDicomHeaderId`: a keyword, `(gggg,eeee)`, `gggg,eeee` or `ggggeeee`."""
    text = name.strip()
    match = re.fullmatch(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?", text)
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise FilterError(f"[{name}] is not a DICOM element keyword or tag")
    return int(tag)


def parse(mode: str, text: str) -> Filter:
    """Build a filter from its mode and list; raise FilterError naming what is wrong."""
    mode = (mode or "blacklist").strip()
    if mode == "modalityMap":
        raise FilterError(
            "modalityMap series import filters are not interpreted by the sandbox; "
            "use blacklist or whitelist"
        )
    if mode not in MODES:
        raise FilterError(f"unknown series import filter mode {mode!r}")
    result = Filter(mode)
    current = SERIES_DESCRIPTION
    separator = "\\n" if "\\n" in text and "\n" not in text else "\n"
    for number, raw in enumerate(text.split(separator), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = _element(line[1:-1])
            result.fields.setdefault(current, [])
            continue
        if line in ("EXISTS", "!EXISTS"):
            result.fields.setdefault(current, []).append(line)
            continue
        try:
            compiled = re.compile(line, re.IGNORECASE)
        except re.error as error:
            raise FilterError(f"line {number}: invalid pattern {line!r}: {error}") from error
        result.fields.setdefault(current, []).append(compiled)
    result.fields = {tag: patterns for tag, patterns in result.fields.items() if patterns}
    return result


def from_contents(contents: str) -> Filter:
    """A filter from a configuration's JSON contents (`DicomFilterService.buildSeriesImportFilter`,
    which also unwraps a nested `contents`/`content`)."""
    try:
        values = json.loads(contents)
    except json.JSONDecodeError as error:
        raise FilterError(f"the filter is not JSON: {error}") from error
    if not isinstance(values, dict):
        raise FilterError("the filter must be a JSON object with mode and list")
    for key in ("contents", "content"):
        if key in values:
            return from_contents(str(values[key]))
    return parse(str(values.get("mode", "blacklist")), str(values.get("list") or ""))


def site_filter(store: Store) -> Filter | None:
    """The site filter when `enableSitewideSeriesImportFilter` is on."""
    if not prefs.flag(store, "enableSitewideSeriesImportFilter"):
        return None
    return parse(
        prefs.get(store, "sitewideSeriesImportFilterMode"),
        prefs.get(store, "sitewideSeriesImportFilter"),
    )


def project_filter(store: Store, project: str) -> Filter | None:
    """The project's filter when its configuration exists and is enabled."""
    row = prefs.project_config(store, project, PROJECT_TOOL)
    if row is None or not row["enabled"] or not row["contents"].strip():
        return None
    return from_contents(row["contents"])


# -- /data/config/seriesImportFilter/config and /data/projects/P/config/… (ConfigResource) --------


def handle_site(request: Request) -> tables.Response:
    """`/data/config/{tool}/{path}`: the site filter, stored as the site preferences."""
    parts = [p for p in request.path.split("/") if p][1:]
    if parts != [TOOL, PATH]:
        raise tables.HttpError(404, "The requested URI was not found.")
    store = request.sandbox.store
    if request.method == "GET":
        contents = json.dumps(
            {
                "mode": prefs.get(store, "sitewideSeriesImportFilterMode"),
                "list": prefs.get(store, "sitewideSeriesImportFilter"),
            }
        )
        enabled = prefs.flag(store, "enableSitewideSeriesImportFilter")
        return _represent(request, None, contents, enabled, "", None)
    if not request.user.admin:
        raise tables.HttpError(
            403, "User does not have privileges to modify config for this project"
        )
    if request.method == "DELETE":
        prefs.put(store, "enableSitewideSeriesImportFilter", False)
        return tables.text("")
    if request.method != "PUT":
        raise tables.HttpError(405, "Method Not Allowed")
    status, contents = _put_body(request)
    if contents is not None:
        checked = from_contents(contents)
        prefs.put(store, "sitewideSeriesImportFilterMode", checked.mode)
        prefs.put(store, "sitewideSeriesImportFilter", _list_of(contents))
    if status is not None:
        prefs.put(store, "enableSitewideSeriesImportFilter", status)
    log.info("site series import filter updated")
    return tables.text("")


def handle_project(request: Request, project: sqlite3.Row, rest: list[str]) -> tables.Response:
    """`/data/projects/{P}/config/seriesImportFilter/config`."""
    if rest != [TOOL, PATH]:
        raise tables.HttpError(404, "The requested URI was not found.")
    store = request.sandbox.store
    project_id = project["id"]
    row = prefs.project_config(store, project_id, PROJECT_TOOL)
    if request.method == "GET":
        if not request.user.can_read(project_id):
            raise tables.HttpError(
                403, f"User {request.user.name} can not access project {project_id}"
            )
        if row is None:
            return _not_found(request, project_id)
        return _represent(
            request, project_id, row["contents"], bool(row["enabled"]), row["user"], row
        )
    if not (request.user.can_write(project_id) or request.user.admin):
        raise tables.HttpError(
            403, "User does not have privileges to modify config for this project"
        )
    if request.method == "DELETE":
        if row is not None:
            prefs.put_project_config(store, project_id, PROJECT_TOOL, enabled=False)
        return tables.text("")
    if request.method != "PUT":
        raise tables.HttpError(405, "Method Not Allowed")
    status, contents = _put_body(request)
    if contents is not None:
        from_contents(contents)  # refuse what the sandbox cannot apply
    prefs.put_project_config(
        store, project_id, PROJECT_TOOL, contents=contents, enabled=status, user=request.user.name
    )
    log.info("project %s series import filter updated", project_id)
    created = row is None and contents is not None
    return tables.text("", 201 if created else 200)


def _put_body(request: Request) -> tuple[bool | None, str | None]:
    """(status, contents) of a ConfigResource PUT: a JSON body `{"contents", "status"}`, or the
    `status` parameter and the raw body (`inbody=true`) as contents."""
    media = bodies.media_type(request.headers.get("Content-Type"))
    raw = anonymize.read_body(request)
    if media == "application/json":
        try:
            values = json.loads(raw or b"{}")
        except json.JSONDecodeError as error:
            raise tables.HttpError(400, f"The body is not JSON: {error}") from error
        if not isinstance(values, dict):
            raise tables.HttpError(400, "The body must be a JSON object.")
        status_text = str(values.get("status") or "")
        contents = values.get("contents")
        contents = None if contents is None else str(contents)
    else:
        status_text = request.param("status") or ""
        contents = raw.decode("utf-8", "replace") if raw else None
    if not status_text and contents is None:
        raise tables.HttpError(
            400,
            "You must specify either the status querystring parameter or a configuration "
            "object in the request body.",
        )
    if status_text and status_text.lower() not in ("enabled", "true", "disabled", "false"):
        raise tables.HttpError(
            400,
            "Only valid values for the status flag are enabled or true and disabled or false: "
            + status_text,
        )
    if contents is not None and not contents.strip():
        raise tables.HttpError(500, "No contents provided")
    status = None if not status_text else status_text.lower() in ("enabled", "true")
    if contents is not None:
        try:
            from_contents(contents)
        except FilterError as error:
            raise tables.HttpError(
                400, f"The sandbox cannot interpret this series import filter: {error}"
            ) from error
    return status, contents


def _list_of(contents: str) -> str:
    values = json.loads(contents)
    while isinstance(values, dict) and ("contents" in values or "content" in values):
        values = json.loads(str(values.get("contents", values.get("content"))))
    return str(values.get("list") or "")


def _not_found(request: Request, project_id: str) -> tables.Response:
    if request.flag("accept-not-found"):
        return tables.Response(204, tables.TEXT, b"")
    raise tables.HttpError(
        404,
        f"Couldn't find config for user {request.user.name} and project {project_id} on tool "
        f"[{TOOL}] path [{PATH}]",
    )


def _represent(
    request: Request,
    project_id: str | None,
    contents: str,
    enabled: bool,
    user: str,
    row: sqlite3.Row | None,
) -> tables.Response:
    if request.flag("contents") and not request.flag("meta"):
        if not enabled:
            raise tables.HttpError(
                404,
                f"Config not found for user {request.user.name} and project {project_id} on "
                f"tool [{TOOL}] path [{PATH}]",
            )
        return tables.text(contents)
    created = row["created"] if row is not None and row["created"] else time.time()
    table_row = {
        "tool": TOOL,
        "path": PATH,
        "project": project_id or "",
        "user": user or "",
        "create_date": tables.java_timestamp(created),
        "reason": "",
        "contents": contents,
        "unversioned": "false",
        "version": str(row["version"] if row is not None and row["version"] else 1),
        "status": "enabled" if enabled else "disabled",
    }
    return tables.table([table_row], CONFIG_COLUMNS, request.fmt)
