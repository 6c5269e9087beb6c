"""The sandbox's `/xapi/...` endpoints: what XNAT's Spring "XAPI" answers to real clients.

The core server routes every authenticated request under `/xapi/` here and answers 404 when
`handle` returns None. Only what unmodified clients ask for is served (docs/sandbox-clients.md):

* `GET /xapi/siteConfig/buildInfo` and `/buildInfo/{key}`: the version probe. xnatpy picks its
  data-model builder from `version` (1.8/1.9 use `/xapi/schemas`), pyxnat's `version()` falls back
  to it when `/data/version` fails, and the Desktop Client uses it as a heartbeat
  (reference/xnat-rest.md §2.5, `SiteConfigApi.getBuildInfo`).
* `GET /xapi/siteConfig/uptime`: xnatpy `XNATSession.xnat_uptime`.
* `GET /xapi/schemas` and `/xapi/schemas/{name}`: the data-model schemas. xnatpy generates its
  classes from them at connect time and cannot create an object whose xsi:type is missing
  (`xnat/__init__.py:parse_schemas_17`); pyxnat loads them on `manage.schemas.add(...)`.
* `GET /xapi/plugins`: xnatpy `session.plugins`; the sandbox has none.

Everything else under /xapi is "not mine". The module has no state beyond its start time and
reads the schemas from `schemas/` beside it (shipped as package data).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]

XNAT_VERSION = "1.8.10"
"""The XNAT release the sandbox claims to be. 1.8.x: xnatpy then enables the 1.8.3+ import
parameters (`Ignore-Unparsable`, `Direct-Archive`) and reads schemas from /xapi/schemas."""

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

_STARTED = time.time()
_BUILD_TIME = time.gmtime(_STARTED)

JSON = "application/json"
TEXT = "text/plain"
XML = "application/xml"

# A schema name is one path segment of word characters (no dots, no traversal).
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def handle(method: str, path: str, query: dict[str, list[str]], user: str) -> Response | None:
    """Answer one authenticated /xapi request, or return None when the path is not served.

    `path` is the URL path without the query string (e.g. "/xapi/schemas/xnat"); `query` is
    the parsed query string and `user` the authenticated login (unused: every served document
    is the same for all users). HEAD is answered like GET; the server drops the body. A served
    path with another method gets 405, like Spring's handler mapping.
    """
    segments = [s for s in path.split("/") if s]
    if not segments or segments[0] != "xapi":
        return None
    route = _route(segments[1:])
    if route is None:
        return None
    if method not in ("GET", "HEAD"):
        return 405, TEXT, f"Request method '{method}' not supported".encode()
    return route()


def build_info() -> dict[str, str]:
    """Return XNAT's build information map: every value is a string (`XnatAppInfo`)."""
    host = socket.gethostname()
    return {
        "version": XNAT_VERSION,
        "buildNumber": "xnatdrop-sandbox",
        "buildDate": time.strftime("%a %b %d %H:%M:%S UTC %Y", _BUILD_TIME),
        "sha": "sandbox",
        "shaFull": "sandbox",
        "isDirty": "false",
        "commit": "sandbox",
        "branch": "sandbox",
        "tag": XNAT_VERSION,
        "timestamp": str(int(_STARTED * 1000)),
        "hostName": host,
        "displayHostName": host,
        "nodeId": "",
    }


SEARCH_ELEMENTS = (
    ("xnat:projectData", "Project", "Projects"),
    ("xnat:subjectData", "Subject", "Subjects"),
    ("xnat:mrSessionData", "MR Session", "MR Sessions"),
    ("xnat:otherDicomSessionData", "Other DICOM Session", "Other DICOM Sessions"),
    ("xnat:mrScanData", "MR Scan", "MR Scans"),
    ("xnat:otherDicomScanData", "Other DICOM Scan", "Other DICOM Scans"),
)
"""The searchable data types, all defined in schemas/xnat.xsd."""


def search_elements() -> list[dict[str, str]]:
    """Rows of `GET /data/search/elements` (a /data route the core serves with this data).

    xnatpy needs the route at connect time (`search.inject_search_fields`, unguarded) and reads
    only `ELEMENT_NAME`; every name must have a class in the served schema, else xnatpy logs
    "Cannot find matching class". Cells are strings, as in every XFTTable (reference §1.4).
    """
    return [
        {"ELEMENT_NAME": name, "SINGULAR": singular, "PLURAL": plural, "SECURED": "true"}
        for name, singular, plural in SEARCH_ELEMENTS
    ]


def search_fields(element: str) -> list[dict[str, str]] | None:
    """Rows of `GET /data/search/elements/{element}`, or None for an unknown element (404).

    xnatpy asks for every element at connect time and turns each `FIELD_ID` into a search-query
    attribute; an error answer is survivable but logged as a warning on every connect. The
    sandbox implements no search service (`/data/search`), so it advertises no display fields:
    an empty table with XNAT's columns.
    """
    if element not in {name for name, _, _ in SEARCH_ELEMENTS}:
        return None
    return []


SEARCH_FIELD_COLUMNS = ("FIELD_ID", "HEADER", "SUMMARY", "TYPE", "REQUIRES_VALUE", "DESC")
"""Columns of the display-field table (`/data/search/elements/{element}`)."""


def schema_names() -> list[str]:
    """Return the names served under /xapi/schemas, one per `schemas/*.xsd` file."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.xsd"))


def _route(rest: list[str]):
    """Map the path segments after /xapi to a zero-argument responder, or None."""
    match rest:
        case ["siteConfig", "buildInfo"]:
            return lambda: _json(build_info())
        case ["siteConfig", "buildInfo", key]:
            return lambda: _build_info_value(key)
        case ["siteConfig", "uptime"]:
            return _uptime
        case ["schemas"]:
            return lambda: _json(schema_names())
        case ["schemas", name]:
            return lambda: _schema(name)
        case ["plugins"]:
            return lambda: _json({})
    return None


def _json(value: object) -> Response:
    return 200, JSON, json.dumps(value, separators=(",", ":")).encode()


def _build_info_value(key: str) -> Response:
    """`/buildInfo/{property}` answers the bare value as text (`SiteConfigApi`)."""
    info = build_info()
    if key not in info:
        return 404, TEXT, b""
    return 200, TEXT, info[key].encode()


def _uptime() -> Response:
    """Uptime of the sandbox process, split like XNAT's `XnatAppInfo.getUptime()`."""
    seconds = int(time.time() - _STARTED)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return _json(
        {"days": str(days), "hours": str(hours), "minutes": str(minutes), "seconds": str(secs)}
    )


def _schema(name: str) -> Response:
    """Serve `schemas/{name}.xsd`; a trailing ".xsd" in the request is accepted too."""
    if name.endswith(".xsd"):
        name = name[: -len(".xsd")]
    path = SCHEMA_DIR / f"{name}.xsd"
    if not _SCHEMA_NAME.match(name) or not path.is_file():
        log.debug("xapi: no schema named %s", name)
        return 404, TEXT, b""
    return 200, XML, path.read_bytes()
