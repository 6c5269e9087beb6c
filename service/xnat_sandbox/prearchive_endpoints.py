"""The prearchive's endpoints: `/data/prearchive/…` (§4.1, §4.3, §4.5) and the batch services
`/data/services/prearchive/{move,delete,rebuild}` (§4.6).

They sit above both the prearchive model (`prearchive.py`) and the archiver (`archive.py`), which
`action=commit` in an auto-archiving project calls; neither of those imports this module.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import tempfile
import zipfile
from pathlib import Path

from xnat_sandbox import archive, prearchive, prearchive_build, tables
from xnat_sandbox.users import UNASSIGNED
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)


def handle(request: Request) -> tables.Response:
    """Everything under `/data/prearchive` (§4.1, §4.3, §4.5)."""
    parts = [p for p in request.path.split("/") if p][1:]
    store = request.sandbox.store
    if not parts or parts == ["projects"]:
        if request.method == "PUT":
            if not request.user.admin:
                raise tables.HttpError(403, "Only site administrators can rebuild the prearchive.")
            return tables.text("")
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        rows = [
            prearchive.table_row(r)
            for r in store.all("SELECT * FROM prearchive ORDER BY pk")
            if request.user.can_write(r["project"])
        ]
        tag = request.param("tag")
        if tag and request.user.admin:
            rows = [r for r in rows if r["tag"] == tag]
        return prearchive.rows_table(rows, request.fmt)
    if parts[0] != "projects":
        raise tables.HttpError(404, "The requested URI was not found.")
    if len(parts) == 2:
        projects = parts[1].split(",")
        for project in projects:
            if not request.user.can_read(project):
                raise tables.HttpError(
                    403,
                    f"The current user does not have access to the requested project: {project}",
                )
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        marks = ",".join("?" * len(projects))
        rows = store.all(
            f"SELECT * FROM prearchive WHERE project IN ({marks}) ORDER BY pk", *projects
        )
        return prearchive.rows_table([prearchive.table_row(r) for r in rows], request.fmt)
    if len(parts) < 4:
        raise tables.HttpError(404, "The requested URI was not found.")
    project, timestamp, folder, rest = parts[1], parts[2], parts[3], parts[4:]
    if not request.user.can_read(project):
        raise tables.HttpError(
            403, f"The current user does not have access to the requested project: {project}"
        )
    row = prearchive.find(store, project, timestamp, folder)
    if row is None:
        raise tables.HttpError(404, f"Unable to find the prearchive session {request.path}.")
    if rest:
        return _session_part(request, row, rest)
    if request.method == "GET":
        return _get_session(request, row)
    if not request.user.can_write(project):
        raise tables.HttpError(403, "Unable to modify session data for destination project.")
    if request.method == "DELETE":
        prearchive.delete_session(store, row)
        log.info("prearchive %s: deleted", prearchive.uri(row))
        return tables.text("")
    if request.method == "POST":
        request.receive()
        return _action(request, row)
    raise tables.HttpError(405, "Method Not Allowed")


def _get_session(request: Request, row: sqlite3.Row) -> tables.Response:
    fmt = request.fmt or "xml"
    if fmt in ("json", "csv", "html", "txt"):
        return prearchive.rows_table([prearchive.table_row(row)], fmt)
    if fmt == "zip":
        return _zip_folder(
            request, prearchive.session_dir(request.sandbox.store, row), row["folder"]
        )
    document = prearchive.session_dir(request.sandbox.store, row).with_name(row["folder"] + ".xml")
    if not row["built"] or not document.exists():
        raise tables.HttpError(
            404,
            "The named session exists, but its XNAT session document is not available. The "
            "session is likely invalid or incomplete.",
        )
    return tables.Response(200, tables.XML, document.read_bytes())


def _zip_folder(request: Request, folder: Path, name: str) -> tables.Response:
    fd, tmp = tempfile.mkstemp(dir=request.sandbox.store.spool_root, suffix=".zip")
    with open(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{name}/{path.relative_to(folder)}")
    response = tables.Response(200, "application/zip", file=Path(tmp), delete_file_after=True)
    response.headers.append(("Content-Disposition", f'attachment; filename="{name}.zip"'))
    return response


def _session_part(request: Request, row: sqlite3.Row, rest: list[str]) -> tables.Response:
    """`…/scans`, `…/scans/{id}/resources`, `…/resources/DICOM/files[/{name}]` (§4.3)."""
    store = request.sandbox.store
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    if rest == ["scans"]:
        rows = [
            {
                "ID": s["scan_id"],
                "xsiType": prearchive_build.scan_xsi_type(s["modality"]),
                "series_description": s["series_description"],
            }
            for s in prearchive.scans_of(store, row["pk"])
        ]
        return tables.table(rows, ["ID", "xsiType", "series_description"], request.fmt)
    if len(rest) >= 3 and rest[0] == "scans" and rest[2] == "resources":
        # One scan's counts only: a per-scan request must not cost the whole session's files.
        scan = store.one(
            "SELECT s.*, COUNT(f.name) AS file_count, COALESCE(SUM(f.size), 0) AS file_size "
            "FROM prearc_scans s LEFT JOIN prearc_files f "
            "ON f.session = s.session AND f.scan_id = s.scan_id "
            "WHERE s.session = ? AND s.scan_id = ? GROUP BY s.scan_id",
            row["pk"],
            rest[1],
        )
        if scan is None:
            raise tables.HttpError(404, f"Unable to find scan {rest[1]}.")
        if len(rest) in (3, 4):
            # Restlet routes by "starts with": `…/scans/{id}/resources/{R}` has no route of its
            # own and lands on `PrearcScanResourceList`, the scan's resource table. XNAT has no
            # per-scan catalog document in the prearchive (only `…/{session}/resources/{R}`).
            rows = [
                {"label": "DICOM", "file_count": scan["file_count"], "file_size": scan["file_size"]}
            ]
            return tables.table(rows, ["label", "file_count", "file_size"], request.fmt)
        if len(rest) >= 5 and rest[3] == "DICOM" and rest[4] == "files":
            files = store.all(
                "SELECT * FROM prearc_files WHERE session = ? AND scan_id = ? ORDER BY name",
                row["pk"],
                scan["scan_id"],
            )
            base = f"{prearchive.data_uri(row)}/scans/{scan['scan_id']}/resources/DICOM/files"
            if len(rest) == 5:
                listing = [
                    {"Name": f["name"], "Size": f["size"], "URI": f"{base}/{f['name']}"}
                    for f in files
                ]
                return tables.table(listing, ["Name", "Size", "URI"], request.fmt)
            name = "/".join(rest[5:])
            path = prearchive.session_dir(store, row) / "SCANS" / scan["scan_id"] / "DICOM" / name
            if name not in {f["name"] for f in files} or not path.is_file():
                raise tables.HttpError(404, f"Unable to find file {name}.")
            return tables.Response(200, "application/dicom", file=path)
    if rest == ["resources"]:
        return _session_resources(request, row)
    if len(rest) == 2 and rest[0] == "resources":
        return _session_resource(request, row, rest[1])
    raise tables.HttpError(404, "The requested URI was not found.")


def _session_resources(request: Request, row: sqlite3.Row) -> tables.Response:
    """`…/{session}/resources`: `PrearcSessionResourcesList`, one row per resource of the built
    session, each scan's first (category `scans`, cat_id the scan ID), then the session's own
    (category `resources`; a prearchive resource has no database ID, so cat_id is empty).
    Before the build there is no session document to read: 404 like XNAT's."""
    if not row["built"]:
        raise tables.HttpError(404, "Unable to locate prearc resource.")
    store = request.sandbox.store
    rows: list[dict[str, object]] = [
        {
            "category": "scans",
            "cat_id": scan["scan_id"],
            "label": "DICOM",
            "file_count": scan["file_count"],
            "file_size": scan["file_size"],
        }
        for scan in prearchive.scans_of(store, row["pk"])
    ]
    folder = prearchive.session_dir(store, row) / "RESOURCES"
    for resource in sorted(folder.iterdir()) if folder.is_dir() else []:
        files = [f for f in resource.rglob("*") if f.is_file()]
        rows.append(
            {
                "category": "resources",
                "cat_id": "",
                "label": resource.name,
                "file_count": len(files),
                "file_size": sum(f.stat().st_size for f in files),
            }
        )
    columns = ["category", "cat_id", "label", "file_count", "file_size"]
    return tables.table(rows, columns, request.fmt)


#: The media type Restlet settles on for a `format` value (`SecureResource.overrideVariant`).
_MEDIA_TYPES = {"json": "application/json", "csv": "text/csv", "html": "text/html"}


def _session_resource(request: Request, row: sqlite3.Row, resource: str) -> tables.Response:
    """`…/{session}/resources/{R}`: `PrearcSessionResourceCatalog` serves a zip and nothing else.

    `PrearcSessionResourceA.getRepresentation` zips `{session}/RESOURCES/{R}` for a zip variant
    and answers 400 "Requested type … is not supported" for any other: the prearchive has no
    catalog document to read UIDs from (only the archive's `CatalogResource` has).
    """
    fmt = request.fmt or "xml"
    if fmt != "zip":
        kind = _MEDIA_TYPES.get(fmt, "text/xml")
        raise tables.HttpError(400, f"Requested type {kind} is not supported")
    folder = prearchive.session_dir(request.sandbox.store, row) / "RESOURCES" / resource
    if not row["built"] or not folder.is_dir():
        raise tables.HttpError(404, "Unable to locate prearc resource.")
    return _zip_folder(request, folder, resource)


def _action(request: Request, row: sqlite3.Row) -> tables.Response:
    """`POST …/P/TS/S?action=build|commit|move|reset-status|set-status` (§4.5).

    `PrearcSessionResource.handlePost`: build, commit and reset-status answer the session URI,
    move 301 with the new URI, an auto-archiving commit 301 with the archive URI as plain text;
    all without a trailing CRLF (`returnString`). set-status answers nothing.
    """
    sandbox = request.sandbox
    store = sandbox.store
    action = request.param("action")
    if not action:
        raise tables.HttpError(
            400, f"No action parameter was specified for prearchive session: {prearchive.uri(row)}"
        )
    if action in ("build", "commit") and row["status"].startswith("_"):
        # PrearcSessionResource.postActionBuild/postActionCommit: setStatus(BUILDING) is refused
        # exactly for the locked statuses, PrearcDatabase.isLocked (PrearcUtils.inProcessStatusMap)
        raise tables.HttpError(409, "session document locked")
    if action == "build":
        if prearchive_build.build(sandbox, row) is None:
            raise tables.HttpError(500, f"Unable to build {row['folder']}: it was deleted")
        return _uri_answer(prearchive.data_uri(row))
    if action == "commit":
        built = prearchive_build.build(sandbox, row)
        if built is None:
            raise tables.HttpError(500, f"Unable to build {row['folder']}: it was deleted")
        if built["status"] != "READY":
            raise tables.HttpError(500, f"FAILED: Unable to build {row['folder']}")
        aa_param = (request.param("AA", "auto-archive") or "").lower() == "true"
        if (aa_param or prearchive.is_auto_archive(store, built)) and built[
            "project"
        ] != UNASSIGNED:
            options = prearchive.auto_archive_options(store, built)
            archived = archive.archive_or_500(sandbox, built, **options)
            return tables.Response(301, tables.TEXT, archived.encode())  # returnString(uri, 301)
        return _uri_answer(prearchive.data_uri(row))
    if action == "move":
        target = _move_target(request)
        moved = prearchive.move_session(store, row, target)
        return _uri_answer(prearchive.data_uri(moved), 301)
    if action == "reset-status":
        document = prearchive.session_dir(store, row).with_name(row["folder"] + ".xml")
        prearchive.set_status(
            store, row["pk"], "READY" if row["built"] and document.exists() else "RECEIVING"
        )
        return _uri_answer(prearchive.data_uri(row))
    if action == "set-status":
        # PrearcDatabase.setStatus(String): an unknown name is PrearcStatus.valueOf's error, a
        # locked ("_") status may not be set, and a locked row silently keeps its status.
        status = request.param("status") or ""
        if status not in prearchive.STATUSES:
            raise tables.HttpError(400, f"No enum constant {prearchive.STATUS_ENUM}.{status}")
        if status.startswith("_"):
            raise tables.HttpError(400, f"Cannot set session status to {status}")
        if not row["status"].startswith("_"):
            prearchive.set_status(store, row["pk"], status)
        return tables.Response(200, "", b"")  # postActionSet sets no entity
    raise tables.HttpError(
        400,
        f"User {request.user.name} requested an unsupported action on prearchive session: {action}",
    )


def _uri_answer(uri_: str, status: int = 200) -> tables.Response:
    """`returnString(uri, TEXT_URI_LIST, status)` of PrearcSessionResource: the URI as it is,
    without the CRLF the importer and the archive service put after each URI."""
    return tables.Response(status, tables.URI_LIST, uri_.encode())


def _move_target(request: Request) -> str:
    """`newProject` of a move, checked: 400 missing, 404 unknown, 403 not writable (§4.5, §4.6)."""
    target = request.param("newProject")
    if not target:
        raise tables.HttpError(400, "No newProject parameter was specified.")
    if target != UNASSIGNED and request.sandbox.store.project(target) is None:
        raise tables.HttpError(404, f"One or more specified projects does not exist: {target}")
    if not request.user.can_write(target):
        raise tables.HttpError(403, "Unable to modify session data for destination project.")
    return target


def handle_batch(request: Request) -> tables.Response:
    """`POST /data/services/prearchive/{move,delete,rebuild}` → the §4.1 table of the rows (§4.6).

    XNAT queues these on JMS and answers with the rows in QUEUED_* states; the sandbox does the
    work synchronously and answers with the rows as they were when "queued".
    """
    if request.method != "POST":
        raise tables.HttpError(405, "Method Not Allowed")
    request.receive()
    operation = request.path.rstrip("/").rsplit("/", 1)[-1]
    store = request.sandbox.store
    sources = request.values("src")
    for src in sources:
        match = re.search(r"/prearchive/projects/([^/]+)/", src)
        project = match.group(1) if match else ""
        if project and project != UNASSIGNED and store.project(project) is None:
            raise tables.HttpError(404, f"One or more specified projects does not exist: {project}")
    rows = [prearchive.parse_src(store, src) for src in sources]
    denied = sorted({r["project"] for r in rows if not request.user.can_write(r["project"])})
    if denied:
        raise tables.HttpError(
            403,
            f"Invalid permissions for user {request.user.name} to {operation} prearchive "
            f"sessions in one or more projects: {', '.join(denied)}",
        )
    answer = []
    if operation == "move":
        target = _move_target(request)
        for row in rows:
            answer.append(dict(prearchive.table_row(row), status="QUEUED_MOVING"))
            prearchive.move_session(store, row, target)
    elif operation == "delete":
        for row in rows:
            answer.append(dict(prearchive.table_row(row), status="QUEUED_DELETING"))
            prearchive.delete_session(store, row)
    else:
        for row in rows:
            answer.append(dict(prearchive.table_row(row), status="QUEUED_BUILDING"))
            prearchive_build.build(
                request.sandbox, row
            )  # autoArchiveBlocked: a batch rebuild never archives
    return prearchive.rows_table(answer, request.fmt or "xml")
