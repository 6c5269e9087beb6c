"""The prearchive: session rows, their files, the build step, the idle rebuilder and its endpoints.

One row per prearchive session, keyed like XNAT by (project, timestamp, folder) and found again
by the grouping key (project, StudyInstanceUID, label) (§3.4 step 4, §6.2). "Building" writes the
session document `{TS}/{folder}.xml` and makes the session READY; the rebuilder builds RECEIVING
sessions that have been idle for `settings.rebuild_idle` seconds of the sandbox clock and then
auto-archives them when the project or the upload asks for it (§4.4). Endpoints: §4.1–§4.6.
"""

from __future__ import annotations

import datetime
import logging
import re
import shutil
import sqlite3
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xnat_sandbox import archive, tables
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.wire import UNASSIGNED, Request

if TYPE_CHECKING:
    from xnat_sandbox.server import Sandbox

log = logging.getLogger(__name__)

STATUSES = [
    "ARCHIVING",
    "BUILDING",
    "CONFLICT",
    "DELETING",
    "ERROR",
    "MOVING",
    "READY",
    "RECEIVING",
    "RECEIVING_INTERRUPT",
    "SEPARATING",
    "QUEUED_ARCHIVING",
    "QUEUED_BUILDING",
    "QUEUED_DELETING",
    "QUEUED_MOVING",
    "QUEUED_SEPARATING",
    "_ARCHIVING",
    "_BUILDING",
    "_CONFLICT",
    "_DELETING",
    "_MOVING",
    "_RECEIVING",
    "_RECEIVING_INTERRUPT",
    "_SEPARATING",
]

#: New data may reopen a session in these states (`PrearcStatus` "interruptible", §4.2).
INTERRUPTIBLE = frozenset(
    [
        "BUILDING",
        "CONFLICT",
        "ERROR",
        "READY",
        "RECEIVING",
        "RECEIVING_INTERRUPT",
        "QUEUED_BUILDING",
        "_BUILDING",
        "_CONFLICT",
        "_RECEIVING",
        "_RECEIVING_INTERRUPT",
    ]
)

COLUMNS = [
    "project",
    "timestamp",
    "lastmod",
    "uploaded",
    "scan_date",
    "scan_time",
    "subject",
    "folderName",
    "name",
    "tag",
    "status",
    "url",
    "autoarchive",
    "prevent_anon",
    "prevent_auto_commit",
    "SOURCE",
    "VISIT",
    "PROTOCOL",
    "TIMEZONE",
]

PREARCHIVE_CODES = {0: "Manual", 4: "AutoArchive", 5: "AutoArchiveOverwrite"}

_STATUS_ENUM = "org.nrg.xnat.helpers.prearchive.PrearcUtils.PrearcStatus"


def make_timestamp(epoch: float) -> str:
    """`PrearcUtils.makeTimestamp`: `yyyyMMdd_HHmmssSSS` in local time."""
    moment = datetime.datetime.fromtimestamp(epoch)
    return moment.strftime("%Y%m%d_%H%M%S") + f"{moment.microsecond // 1000:03d}"


def uri(row: sqlite3.Row) -> str:
    """The listing's `url`: no `/data` prefix (§4.1, pitfall 16)."""
    return f"/prearchive/projects/{row['project']}/{row['timestamp']}/{row['folder']}"


def data_uri(row: sqlite3.Row) -> str:
    return "/data" + uri(row)


def session_dir(store: Store, row: sqlite3.Row) -> Path:
    return store.prearchive_root / row["project"] / row["timestamp"] / row["folder"]


def get(store: Store, pk: int) -> sqlite3.Row:
    row = store.one("SELECT * FROM prearchive WHERE pk = ?", pk)
    if row is None:
        raise tables.HttpError(404, "Unknown prearchive session.")
    return row


def find(store: Store, project: str, timestamp: str, folder: str) -> sqlite3.Row | None:
    return store.one(
        "SELECT * FROM prearchive WHERE project = ? AND timestamp = ? AND folder = ?",
        project,
        timestamp,
        folder,
    )


def set_status(store: Store, pk: int, status: str) -> None:
    store.run("UPDATE prearchive SET status = ? WHERE pk = ?", status, pk)


def project_code(store: Store, project: str) -> int:
    row = store.one("SELECT prearchive_code FROM projects WHERE id = ?", project)
    return int(row["prearchive_code"]) if row else 0


def is_auto_archive(store: Store, row: sqlite3.Row) -> bool:
    """`PrearcSession.isAutoArchive`: session code, `AA` parameter, or project code ≥ 4."""
    if row["autoarchive"] in ("AutoArchive", "AutoArchiveOverwrite"):
        return True
    if (row["aa"] or "").lower() == "true":
        return True
    return project_code(store, row["project"]) >= 4


def open_session(
    store: Store,
    now: float,
    project: str,
    study_uid: str,
    label: str,
    values: dict[str, str],
    timestamp: str | None = None,
    folder: str | None = None,
) -> tuple[sqlite3.Row, bool]:
    """Find the session new data for (project, study, label) goes to, or create it.

    `PrearcDatabase.eitherGetOrCreateSession` (§3.4 step 4): RECEIVING rows take the data,
    interruptible ones (READY, ERROR, CONFLICT, …) go back to RECEIVING, a BUILDING one becomes
    RECEIVING_INTERRUPT, and locked ones (ARCHIVING, MOVING, …) leave the data to a new session.
    An explicit `timestamp`/`folder` (dest `/prearchive/projects/P/TS/F`) names the session; it
    must belong to the same study. Returns (row, created).
    """
    with store.transaction() as db:
        if timestamp and folder:
            candidates = db.execute(
                "SELECT * FROM prearchive WHERE project = ? AND timestamp = ? AND folder = ?",
                (project, timestamp, folder),
            ).fetchall()
            if candidates and candidates[0]["tag"] and candidates[0]["tag"] != study_uid:
                raise tables.HttpError(
                    400,
                    f"The prearchive session {uri(candidates[0])} holds a different study "
                    "(StudyInstanceUID); upload this study without naming that session.",
                )
        else:
            candidates = db.execute(
                "SELECT * FROM prearchive WHERE project = ? AND tag = ? AND name = ? ORDER BY pk",
                (project, study_uid, label),
            ).fetchall()
        for row in candidates:
            status = row["status"]
            if status in ("RECEIVING", "RECEIVING_INTERRUPT"):
                return row, False
            if status in INTERRUPTIBLE:
                new_status = "RECEIVING_INTERRUPT" if status == "BUILDING" else "RECEIVING"
                db.execute(
                    "UPDATE prearchive SET status = ?, lastmod = ? WHERE pk = ?",
                    (new_status, now, row["pk"]),
                )
                return db.execute(
                    "SELECT * FROM prearchive WHERE pk = ?", (row["pk"],)
                ).fetchone(), False
        timestamp = timestamp or make_timestamp(now)
        base = folder or label
        folder, suffix = base, 0
        while db.execute(
            "SELECT 1 FROM prearchive WHERE project = ? AND timestamp = ? AND folder = ?",
            (project, timestamp, folder),
        ).fetchone():
            suffix += 1
            folder = f"{base}_{suffix}"
        name = label if folder == base else folder  # XNAT suffixes folder and name on a clash
        code = None
        if project != UNASSIGNED:
            found = db.execute(
                "SELECT prearchive_code FROM projects WHERE id = ?", (project,)
            ).fetchone()
            code = PREARCHIVE_CODES.get(int(found["prearchive_code"]) if found else 0, "Manual")
        autoarchive = values.get("autoarchive") or code or ""
        cursor = db.execute(
            "INSERT INTO prearchive (project, timestamp, folder, name, subject, tag, status, "
            "lastmod, scan_date, scan_time, autoarchive, prevent_anon, prevent_auto_commit, "
            "source, visit, protocol, timezone, subtype, aa) "
            "VALUES (?, ?, ?, ?, ?, ?, 'RECEIVING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                project,
                timestamp,
                folder,
                name,
                values.get("subject", ""),
                study_uid,
                now,
                values.get("scan_date", ""),
                values.get("scan_time", ""),
                autoarchive,
                values.get("prevent_anon", ""),
                values.get("prevent_auto_commit", ""),
                values.get("source", ""),
                values.get("visit", ""),
                values.get("protocol", ""),
                values.get("timezone", ""),
                values.get("subtype", ""),
                values.get("aa", ""),
            ),
        )
        row = db.execute("SELECT * FROM prearchive WHERE pk = ?", (cursor.lastrowid,)).fetchone()
        return row, True


def update_flags(store: Store, pk: int, values: dict[str, str]) -> None:
    """A later upload into the same session may set the flags again (last one wins)."""
    columns = ("prevent_anon", "prevent_auto_commit", "source", "visit", "timezone", "aa")
    changes = {c: values[c] for c in columns if values.get(c)}
    if changes:
        assignments = ", ".join(f"{c} = ?" for c in changes)
        store.run(f"UPDATE prearchive SET {assignments} WHERE pk = ?", *changes.values(), pk)


def touch(store: Store, pk: int, now: float) -> None:
    store.run("UPDATE prearchive SET lastmod = ? WHERE pk = ?", now, pk)


def assign_scan(
    store: Store, pk: int, series_uid: str, series_number: str, description: str, modality: str
) -> str:
    """The scan folder of a series: SeriesNumber, else the sanitized SeriesInstanceUID, else NA.

    A different series reusing a number gets `{N}-{MODALITY}{k}` (§6.2, `N-MR1`).
    """
    with store.transaction() as db:
        found = db.execute(
            "SELECT scan_id FROM prearc_scans WHERE session = ? AND series_uid = ?",
            (pk, series_uid),
        ).fetchone()
        if found:
            return str(found["scan_id"])
        if series_number and re.fullmatch(r"[\w.\-]+", series_number):
            base = series_number
        elif series_uid:
            base = re.sub(r"[^\w-]", "_", series_uid)
        else:
            base = "NA"
        scan_id, k = base, 0
        while db.execute(
            "SELECT 1 FROM prearc_scans WHERE session = ? AND scan_id = ?", (pk, scan_id)
        ).fetchone():
            k += 1
            scan_id = f"{base}-{modality or 'OT'}{k}"
        db.execute(
            "INSERT INTO prearc_scans (session, scan_id, series_uid, series_number, "
            "series_description, modality) VALUES (?, ?, ?, ?, ?, ?)",
            (pk, scan_id, series_uid, series_number, description, modality),
        )
        return scan_id


def file_owner(store: Store, pk: int, scan_id: str, name: str) -> str | None:
    """The SOPInstanceUID already stored under this name in the scan, if any."""
    row = store.one(
        "SELECT sop_uid FROM prearc_files WHERE session = ? AND scan_id = ? AND name = ?",
        pk,
        scan_id,
        name,
    )
    return None if row is None else str(row["sop_uid"] or "")


def record_file(
    store: Store,
    pk: int,
    scan_id: str,
    name: str,
    size: int,
    md5: str,
    sop_uid: str,
    instance: int | None = None,
) -> None:
    """Keep one stored file's size, MD5, SOPInstanceUID and InstanceNumber.

    The UID and instance number become the archive catalog's `cat:dcmEntry` `UID` and
    `instanceNumber` (dicom-xnat `ImageFileAttributes`: UID ← (0008,0018), instanceNumber ←
    (0020,0013)).
    """
    store.run(
        "INSERT OR REPLACE INTO prearc_files (session, scan_id, name, size, md5, sop_uid, "
        "instance) VALUES (?, ?, ?, ?, ?, ?, ?)",
        pk,
        scan_id,
        name,
        size,
        md5,
        sop_uid,
        instance,
    )


def drop_scan_if_empty(store: Store, pk: int, scan_id: str) -> bool:
    """Forget a scan whose only files were rejected: the builder sees an empty folder."""
    with store.transaction() as db:
        if db.execute(
            "SELECT 1 FROM prearc_files WHERE session = ? AND scan_id = ?", (pk, scan_id)
        ).fetchone():
            return False
        db.execute("DELETE FROM prearc_scans WHERE session = ? AND scan_id = ?", (pk, scan_id))
        return True


def scans_of(store: Store, pk: int) -> list[sqlite3.Row]:
    return store.all(
        "SELECT s.*, COUNT(f.name) AS file_count, COALESCE(SUM(f.size), 0) AS file_size "
        "FROM prearc_scans s LEFT JOIN prearc_files f "
        "ON f.session = s.session AND f.scan_id = s.scan_id WHERE s.session = ? "
        "GROUP BY s.scan_id ORDER BY s.rowid",
        pk,
    )


def session_xsi_type(modalities: set[str]) -> str:
    if "PT" in modalities and "MR" in modalities:
        return "xnat:petmrSessionData"
    for modality, xsi in (("MR", "mr"), ("CT", "ct"), ("PT", "pet"), ("US", "us")):
        if modality in modalities:
            return f"xnat:{xsi}SessionData"
    return "xnat:otherDicomSessionData"


def scan_xsi_type(modality: str) -> str:
    known = {"MR": "mr", "CT": "ct", "PT": "pet", "US": "us", "SR": "sr", "SC": "sc"}
    return f"xnat:{known[modality]}ScanData" if modality in known else "xnat:otherDicomScanData"


def session_node(store: Store, row: sqlite3.Row) -> dict[str, Any]:
    """The session document of a prearchive session as an item node (XML when built)."""
    scans = scans_of(store, row["pk"])
    xsi = session_xsi_type({s["modality"] for s in scans})
    scan_nodes = [_scan_node(s) for s in scans]
    fields = {
        "label": row["name"],
        "project": row["project"],
        "subject_ID": row["subject"],
        "UID": row["tag"],
        "date": row["scan_date"],
        "time": row["scan_time"],
        "visit": row["visit"],
    }
    return tables.item(xsi, fields, [{"field": "scans/scan", "items": scan_nodes}])


def _scan_node(scan: sqlite3.Row) -> dict[str, Any]:
    scan_id = scan["scan_id"]
    catalog = tables.item(
        "xnat:resourceCatalog",
        {
            "label": "DICOM",
            "format": "DICOM",
            "content": "RAW",
            "URI": f"SCANS/{scan_id}/DICOM/scan_{scan_id}_catalog.xml",
            "file_count": scan["file_count"],
            "file_size": scan["file_size"],
        },
    )
    fields = {
        "ID": scan_id,
        "type": scan["series_description"],
        "UID": scan["series_uid"],
        "series_description": scan["series_description"],
        "modality": scan["modality"],
    }
    return tables.item(
        scan_xsi_type(scan["modality"]), fields, [{"field": "file", "items": [catalog]}]
    )


def build(sandbox: Sandbox, row: sqlite3.Row) -> sqlite3.Row | None:
    """Write the session document and make the session READY (ERROR if it holds no files).

    `PrearchiveRebuildHandler.rebuild`: QUEUED_BUILDING, then BUILDING while `buildSession`
    reads the files (the slow-build fault's delay is spent here), then READY — or RECEIVING if
    new data arrived meanwhile (RECEIVING_INTERRUPT). Returns None when the row was deleted
    while it was being built (BUILDING is not a locked status, so a DELETE may come in).
    """
    store = sandbox.store
    set_status(store, row["pk"], "QUEUED_BUILDING")
    set_status(store, row["pk"], "BUILDING")
    if sandbox.faults.build_delay > 0:
        sandbox.faults.build_released.wait(sandbox.faults.build_delay)
        if store.one("SELECT pk FROM prearchive WHERE pk = ?", row["pk"]) is None:
            log.info("prearchive %s: deleted while it was being built", uri(row))
            return None
    scans = scans_of(store, row["pk"])
    if not any(s["file_count"] for s in scans):
        set_status(store, row["pk"], "ERROR")
        log.info("prearchive %s: build failed, no files", uri(row))
        return get(store, row["pk"])
    document = session_dir(store, row).with_name(row["folder"] + ".xml")
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_bytes(tables.item_xml(session_node(store, row)))
    uploaded = datetime.datetime.strptime(row["timestamp"][:18], "%Y%m%d_%H%M%S%f").timestamp()
    with store.transaction() as db:
        current = db.execute("SELECT status FROM prearchive WHERE pk = ?", (row["pk"],)).fetchone()
        status = "RECEIVING" if current["status"] == "RECEIVING_INTERRUPT" else "READY"
        db.execute(
            "UPDATE prearchive SET status = ?, built = 1, uploaded = ? WHERE pk = ?",
            (status, uploaded, row["pk"]),
        )
    log.debug("prearchive %s: built, %d scans", uri(row), len(scans))
    return get(store, row["pk"])


def auto_archive_options(store: Store, row: sqlite3.Row) -> dict[str, bool]:
    """Archive options of an automatic archive: the project code decides (§3.4 step 6)."""
    code = project_code(store, row["project"])
    overwrite = code == 5 or row["autoarchive"] == "AutoArchiveOverwrite"
    return {"allow_merge": code != 0, "override": False, "overwrite_files": overwrite}


def rebuild_idle(sandbox: Sandbox) -> dict[str, list[str]]:
    """One pass of `SessionXMLRebuilder` (§4.4): build idle sessions, then auto-archive."""
    store = sandbox.store
    cutoff = sandbox.clock.now() - sandbox.settings.rebuild_idle
    rows = store.all(
        "SELECT * FROM prearchive WHERE status = 'RECEIVING' AND lastmod <= ? "
        "AND LOWER(COALESCE(prevent_auto_commit, '')) != 'true' "
        "AND LOWER(COALESCE(source, '')) != 'uploader' ORDER BY pk",
        cutoff,
    )
    result: dict[str, list[str]] = {"built": [], "archived": [], "failed": []}
    for row in rows:
        built = build(sandbox, row)
        if built is None or built["status"] != "READY":
            result["failed"].append(data_uri(row))
            continue
        result["built"].append(data_uri(row))
        if is_auto_archive(store, built) and built["project"] != UNASSIGNED:
            try:
                result["archived"].append(
                    archive.archive_session(sandbox, built, **auto_archive_options(store, built))
                )
            except archive.ArchiveFailure as failure:
                log.info("prearchive %s: auto-archive failed: %s", uri(row), failure)
                result["failed"].append(data_uri(row))
    if rows:
        log.info(
            "prearchive rebuilder: %d built, %d auto-archived",
            len(result["built"]),
            len(result["archived"]),
        )
    return result


def delete_session(store: Store, row: sqlite3.Row) -> None:
    folder = session_dir(store, row)
    shutil.rmtree(folder, ignore_errors=True)
    folder.with_name(row["folder"] + ".xml").unlink(missing_ok=True)
    with store.transaction() as db:
        for table in ("prearc_files", "prearc_scans"):
            db.execute(f"DELETE FROM {table} WHERE session = ?", (row["pk"],))
        db.execute("DELETE FROM prearchive WHERE pk = ?", (row["pk"],))
    remove_empty_parents(folder.parent, store.prearchive_root)


def move_session(store: Store, row: sqlite3.Row, project: str) -> sqlite3.Row:
    if find(store, project, row["timestamp"], row["folder"]) is not None:
        raise tables.HttpError(409, f"Session already exists in project {project}: {uri(row)}")
    source = session_dir(store, row)
    target = store.prearchive_root / project / row["timestamp"] / row["folder"]
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        source.rename(target)
    document = source.with_name(row["folder"] + ".xml")
    if document.exists():
        document.rename(target.with_name(row["folder"] + ".xml"))
    remove_empty_parents(source.parent, store.prearchive_root)
    code = PREARCHIVE_CODES.get(project_code(store, project), "Manual")
    store.run(
        "UPDATE prearchive SET project = ?, autoarchive = ? WHERE pk = ?", project, code, row["pk"]
    )
    return get(store, row["pk"])


def table_row(row: sqlite3.Row) -> dict[str, str]:
    return {
        "project": row["project"],
        "timestamp": row["timestamp"],
        "lastmod": tables.java_timestamp(row["lastmod"]),
        "uploaded": tables.java_timestamp(row["uploaded"]) if row["uploaded"] else "",
        "scan_date": row["scan_date"] or "",
        "scan_time": row["scan_time"] or "",
        "subject": row["subject"] or "",
        "folderName": row["folder"],
        "name": row["name"],
        "tag": row["tag"] or "",
        "status": row["status"],
        "url": uri(row),
        "autoarchive": row["autoarchive"] or "",
        "prevent_anon": row["prevent_anon"] or "",
        "prevent_auto_commit": row["prevent_auto_commit"] or "",
        "SOURCE": row["source"] or "",
        "VISIT": row["visit"] or "",
        "PROTOCOL": row["protocol"] or "",
        "TIMEZONE": row["timezone"] or "",
    }


def rows_table(rows: list[dict[str, str]], fmt: str | None) -> tables.Response:
    return tables.table(rows, COLUMNS, fmt, total=False)


def describe_all(store: Store) -> list[dict[str, Any]]:
    out = []
    for row in store.all("SELECT * FROM prearchive ORDER BY pk"):
        scans = scans_of(store, row["pk"])
        out.append(
            {
                "project": row["project"],
                "timestamp": row["timestamp"],
                "folder": row["folder"],
                "name": row["name"],
                "subject": row["subject"],
                "tag": row["tag"],
                "status": row["status"],
                "url": uri(row),
                "scans": len(scans),
                "files": sum(s["file_count"] for s in scans),
            }
        )
    return out


# -- endpoints ---------------------------------------------------------------------------------


def parse_src(store: Store, src: str) -> sqlite3.Row:
    """`/prearchive/projects/P/TS/F` (optionally `/data`-prefixed) → its row, or 404."""
    path = re.sub(r"^/(data|REST)(?=/)", "", src.strip())
    match = re.fullmatch(r"/prearchive/projects/([^/]+)/([^/]+)/([^/]+)/?", path)
    if not match:
        raise tables.HttpError(400, f"Invalid src URI ({src})")
    row = find(store, *match.groups())
    if row is None:
        raise tables.HttpError(404, f"{src} not found.")
    return row


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
            table_row(r)
            for r in store.all("SELECT * FROM prearchive ORDER BY pk")
            if request.user.can_write(r["project"])
        ]
        tag = request.param("tag")
        if tag and request.user.admin:
            rows = [r for r in rows if r["tag"] == tag]
        return rows_table(rows, request.fmt)
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
        return rows_table([table_row(r) for r in rows], request.fmt)
    if len(parts) < 4:
        raise tables.HttpError(404, "The requested URI was not found.")
    project, timestamp, folder, rest = parts[1], parts[2], parts[3], parts[4:]
    if not request.user.can_read(project):
        raise tables.HttpError(
            403, f"The current user does not have access to the requested project: {project}"
        )
    row = find(store, project, timestamp, folder)
    if row is None:
        raise tables.HttpError(404, f"Unable to find the prearchive session {request.path}.")
    if rest:
        return _session_part(request, row, rest)
    if request.method == "GET":
        return _get_session(request, row)
    if not request.user.can_write(project):
        raise tables.HttpError(403, "Unable to modify session data for destination project.")
    if request.method == "DELETE":
        delete_session(store, row)
        log.info("prearchive %s: deleted", uri(row))
        return tables.text("")
    if request.method == "POST":
        request.receive()
        return _action(request, row)
    raise tables.HttpError(405, "Method Not Allowed")


def _get_session(request: Request, row: sqlite3.Row) -> tables.Response:
    fmt = request.fmt or "xml"
    if fmt in ("json", "csv", "html", "txt"):
        return rows_table([table_row(row)], fmt)
    if fmt == "zip":
        return _zip_folder(request, session_dir(request.sandbox.store, row), row["folder"])
    document = session_dir(request.sandbox.store, row).with_name(row["folder"] + ".xml")
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
                "xsiType": scan_xsi_type(s["modality"]),
                "series_description": s["series_description"],
            }
            for s in scans_of(store, row["pk"])
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
            base = f"{data_uri(row)}/scans/{scan['scan_id']}/resources/DICOM/files"
            if len(rest) == 5:
                listing = [
                    {"Name": f["name"], "Size": f["size"], "URI": f"{base}/{f['name']}"}
                    for f in files
                ]
                return tables.table(listing, ["Name", "Size", "URI"], request.fmt)
            name = "/".join(rest[5:])
            path = session_dir(store, row) / "SCANS" / scan["scan_id"] / "DICOM" / name
            if name not in {f["name"] for f in files} or not path.is_file():
                raise tables.HttpError(404, f"Unable to find file {name}.")
            return tables.Response(200, "application/dicom", file=path)
    if len(rest) == 2 and rest[0] == "resources":
        return _session_resource(request, row, rest[1])
    raise tables.HttpError(404, "The requested URI was not found.")


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
    folder = session_dir(request.sandbox.store, row) / "RESOURCES" / resource
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
            400, f"No action parameter was specified for prearchive session: {uri(row)}"
        )
    if action in ("build", "commit") and row["status"].startswith("_"):
        # PrearcSessionResource.postActionBuild/postActionCommit: setStatus(BUILDING) is refused
        # exactly for the locked statuses, PrearcDatabase.isLocked (PrearcUtils.inProcessStatusMap)
        raise tables.HttpError(409, "session document locked")
    if action == "build":
        if build(sandbox, row) is None:
            raise tables.HttpError(500, f"Unable to build {row['folder']}: it was deleted")
        return _uri_answer(data_uri(row))
    if action == "commit":
        built = build(sandbox, row)
        if built is None:
            raise tables.HttpError(500, f"Unable to build {row['folder']}: it was deleted")
        if built["status"] != "READY":
            raise tables.HttpError(500, f"FAILED: Unable to build {row['folder']}")
        aa_param = (request.param("AA", "auto-archive") or "").lower() == "true"
        if (aa_param or is_auto_archive(store, built)) and built["project"] != UNASSIGNED:
            options = auto_archive_options(store, built)
            archived = archive.archive_or_500(sandbox, built, **options)
            return tables.Response(301, tables.TEXT, archived.encode())  # returnString(uri, 301)
        return _uri_answer(data_uri(row))
    if action == "move":
        target = _move_target(request)
        moved = move_session(store, row, target)
        return _uri_answer(data_uri(moved), 301)
    if action == "reset-status":
        document = session_dir(store, row).with_name(row["folder"] + ".xml")
        set_status(store, row["pk"], "READY" if row["built"] and document.exists() else "RECEIVING")
        return _uri_answer(data_uri(row))
    if action == "set-status":
        # PrearcDatabase.setStatus(String): an unknown name is PrearcStatus.valueOf's error, a
        # locked ("_") status may not be set, and a locked row silently keeps its status.
        status = request.param("status") or ""
        if status not in STATUSES:
            raise tables.HttpError(400, f"No enum constant {_STATUS_ENUM}.{status}")
        if status.startswith("_"):
            raise tables.HttpError(400, f"Cannot set session status to {status}")
        if not row["status"].startswith("_"):
            set_status(store, row["pk"], status)
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
    rows = [parse_src(store, src) for src in sources]
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
            answer.append(dict(table_row(row), status="QUEUED_MOVING"))
            move_session(store, row, target)
    elif operation == "delete":
        for row in rows:
            answer.append(dict(table_row(row), status="QUEUED_DELETING"))
            delete_session(store, row)
    else:
        for row in rows:
            answer.append(dict(table_row(row), status="QUEUED_BUILDING"))
            build(request.sandbox, row)  # autoArchiveBlocked: a batch rebuild never archives
    return rows_table(answer, request.fmt or "xml")
