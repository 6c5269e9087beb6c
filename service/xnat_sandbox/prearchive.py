"""The prearchive: session rows, their scans and files, statuses, moves and deletes.

One row per prearchive session, keyed like XNAT by (project, timestamp, folder) and found again
by the grouping key (project, StudyInstanceUID, label) (§3.4 step 4, §6.2). This is the model the
importer, the build step (`prearchive_build.py`), the archiver (`archive.py`) and the endpoints
share. The endpoints (`prearchive_endpoints.py`, §4.1–§4.6) and the idle rebuilder
(`prearchive_rebuilder.py`, §4.4) sit above `archive.py`, which archives from here.
"""

from __future__ import annotations

import datetime
import logging
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from xnat_sandbox import tables
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.users import UNASSIGNED

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

STATUS_ENUM = "org.nrg.xnat.helpers.prearchive.PrearcUtils.PrearcStatus"


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


#: One stored file's row: (session pk, scan id, name, size, MD5 ("" until the archive or a
#: rewrite computes it), SOPInstanceUID, instance).
FileRow = tuple[int, str, str, int, str, str, int | None]


def record_files(store: Store, rows: list[FileRow]) -> None:
    """Keep stored files' sizes, MD5s, SOPInstanceUIDs and InstanceNumbers, in one commit.

    The UID and instance number become the archive catalog's `cat:dcmEntry` `UID` and
    `instanceNumber` (dicom-xnat `ImageFileAttributes`: UID ← (0008,0018), instanceNumber ←
    (0020,0013)).
    """
    with store.transaction() as db:
        db.executemany(
            "INSERT OR REPLACE INTO prearc_files (session, scan_id, name, size, md5, sop_uid, "
            "instance) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
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


def auto_archive_options(store: Store, row: sqlite3.Row) -> dict[str, bool]:
    """Archive options of an automatic archive: the project code decides (§3.4 step 6)."""
    code = project_code(store, row["project"])
    overwrite = code == 5 or row["autoarchive"] == "AutoArchiveOverwrite"
    return {"allow_merge": code != 0, "override": False, "overwrite_files": overwrite}


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
