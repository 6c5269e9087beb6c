"""Archiving a prearchive session, with XNAT's merge and conflict rules (§5).

`archive_session` is the one path every archive takes (the archive service, `action=commit`,
DICOM-zip with an `/archive` dest, the rebuilder's auto-archive). It decides everything before it
moves anything: labels are `cleanValue`d, the subject is matched case-insensitively and created
when missing, and an existing experiment is merged into or refused per the §5.3 table. A refusal
leaves the prearchive row CONFLICT (409-class causes) or ERROR and raises `ArchiveFailure`;
each caller maps it to its own status (400 for DICOM-zip, 500 "FAILED: …" for the services,
`archive_or_500`). The archive service's endpoint is `archive_service.py`.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections import defaultdict
from pathlib import Path

from xnat_sandbox import anonymize, catalog, prearchive, prearchive_build, prefs, tables
from xnat_sandbox.context import SiteContext
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.users import UNASSIGNED

log = logging.getLogger(__name__)

_UNCLEAN = re.compile(r"[ `~@#$%^&*()+=\[\]{}|\\/?:;\"',.<>]")

SESSION_EXISTS = "Session already exists, retry with overwrite enabled"
MODALITY_CHANGED = (
    "Invalid modification of session modality via archive process.  "
    "Data may require a manual merge."
)
UID_CHANGED = "Invalid modification of session UID via archive process."
DUPLICATE_FILE = "Duplicate DICOM file uploaded."
SAME_RESOURCES = "Session already exists with the same resources."
"""`MergeSessionsA.CAT_ENTRY_MATCH`: `checkForConflict` runs `SessionOverwriteCheck` unless files
may be overwritten, and it refuses the merge when any incoming `cat:dcmEntry` has a UID already
catalogued in the same scan of the destination (`CatalogUtils.getDCMEntryByUID`), whatever the
file is called."""
EMPTY_SESSION = "Empty sessions cannot be archived."


DESTINATION_LOCKED = "Duplicate archive attempt.  Destination session in use."
"""`PrearcSessionArchiver.call` l.468: a `ClientException(423 Locked, …)` when another archiver
holds the existing experiment (`GLOBAL_LOCKS`). Its sibling at l.441, "…Prearchive session
already archiving.", needs two archivers of one row past `setStatus(ARCHIVING)` before either
locks it, a race between JMS workers the sandbox (which checks and locks in one step) does not
reproduce: a second archive of a locked row is refused earlier (403 or ArchiveLocked)."""

WORKFLOW_OPEN = (
    "Session processing may already be in progress: {}.  Concurrent modification is discouraged."
)
"""`PrearcSessionArchiver.preventConcurrentArchiving` l.305: 409 when the existing experiment has
an open workflow (a pipeline still running) and overwrite was not given. Its status message,
"Session processing in progress:{pipeline}" (l.304), goes to archive listeners, not to HTTP."""

UNABLE_TO_LOCK = "Unable to lock session for archiving."
"""`PrearchiveArchiveHandler.commitSessionToArchive` (also `FinishImageUpload`, `DicomZipImporter`):
the row is locked (`_`-prefixed) by another operation, so this archive never starts."""


class ArchiveFailure(Exception):
    """The archive was refused; `conflict` says whether it was a 409-class cause (the row then
    reads CONFLICT, else ERROR: `PrearcDatabase.LockAndSync.run`)."""

    def __init__(self, reason: str, conflict: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.conflict = conflict


class ArchiveLocked(ArchiveFailure):
    """The row was locked by another operation: refused before archiving, its status untouched."""

    def __init__(self) -> None:
        super().__init__(UNABLE_TO_LOCK, conflict=False)


class ArchiveTimeout(Exception):
    """The archive outlasted `archive_timeout` (it still completed, as XNAT's may)."""


def clean_value(value: str) -> str:
    """`BaseXnatExperimentdata.cleanValue`: space and punctuation → `_` (§5.2)."""
    return _UNCLEAN.sub("_", value.strip())


def archive_uri(project: str, subject: str, label: str) -> str:
    return f"/data/archive/projects/{project}/subjects/{subject}/experiments/{label}"


def archive_session(
    sandbox: SiteContext,
    row: sqlite3.Row,
    *,
    label: str | None = None,
    subject: str | None = None,
    allow_merge: bool,
    override: bool,
    overwrite_files: bool,
    delete_files: bool = False,
    fields: dict[str, str] | None = None,
) -> str:
    """Archive one prearchive session and return its `/data/archive/…` URI.

    The steps of XNAT's archive operation: the row is marked ARCHIVING and locked (`_ARCHIVING`,
    `PrearcDatabase._archive` → `LockAndSync`) while `PrearcSessionArchiver.call` runs, which
    takes its global lock on the existing experiment (423 "Duplicate archive attempt…"), refuses
    to merge into an experiment with an open workflow unless `override`, then checks conflicts
    and moves the files. The slow-archive fault's delay
    is spent inside, locks held. Raise ArchiveLocked when the row is already locked,
    ArchiveFailure (row → CONFLICT or ERROR) when refused, or ArchiveTimeout after a completed
    but slow archive.
    """
    store = sandbox.store
    with store.transaction() as db:  # ARCHIVING, then LockAndSync's lock, in one step
        locked = db.execute(
            "UPDATE prearchive SET status = '_ARCHIVING' WHERE pk = ? "
            "AND substr(status, 1, 1) != '_'",
            (row["pk"],),
        )
    if locked.rowcount != 1:
        raise ArchiveLocked()
    delay = sandbox.faults.archive_delay
    timed_out = False
    held: list[str] = []
    try:
        existing = store.experiment(row["project"], _label(row, label))
        if existing is not None:
            _lock(sandbox, existing["id"], held, DESTINATION_LOCKED)
            pipeline = sandbox.workflows.get((existing["project"], existing["label"]))
            if pipeline and not override:
                raise ArchiveFailure(WORKFLOW_OPEN.format(pipeline))
        if delay > 0:
            limit = sandbox.settings.archive_timeout
            released = sandbox.faults.archive_released.wait(min(delay, limit))
            timed_out = not released and delay >= limit
        with store.lock:
            result = _archive(
                sandbox,
                row,
                label,
                subject,
                allow_merge,
                override,
                overwrite_files or delete_files,
                fields or {},
            )
    except ArchiveFailure as failure:
        prearchive.set_status(store, row["pk"], "CONFLICT" if failure.conflict else "ERROR")
        log.info("archive of %s refused: %s", prearchive.uri(row), failure.reason)
        raise
    finally:
        with sandbox.archive_locks_guard:
            sandbox.archive_locks.difference_update(held)
    if timed_out:
        raise ArchiveTimeout(prearchive.data_uri(row))
    return result


def _lock(sandbox: SiteContext, key: str, held: list[str], message: str) -> None:
    """`PrearcSessionArchiver.requestLock`: take `key` or fail with the 423 `message`."""
    with sandbox.archive_locks_guard:
        if key in sandbox.archive_locks:
            raise ArchiveFailure(message, conflict=False)
        sandbox.archive_locks.add(key)
    held.append(key)


def _label(row: sqlite3.Row, label_param: str | None) -> str:
    """`fixSessionLabel`: the label parameter, else the session's name or folder, cleaned."""
    return clean_value(label_param or row["name"] or row["folder"])


def _archive(
    sandbox: SiteContext,
    row: sqlite3.Row,
    label_param: str | None,
    subject_param: str | None,
    allow_merge: bool,
    override: bool,
    replace_files: bool,
    fields: dict[str, str],
) -> str:
    store = sandbox.store
    project = row["project"]
    if project == UNASSIGNED:
        raise ArchiveFailure("Cannot archive sessions from the Unassigned folder.", conflict=False)
    if store.project(project) is None:
        raise ArchiveFailure(f"Unknown project {project}.", conflict=False)
    scans = prearchive.scans_of(store, row["pk"])
    files = store.all("SELECT * FROM prearc_files WHERE session = ?", row["pk"])
    if not files:
        raise ArchiveFailure("Session contains no files.", conflict=False)
    xsi = prearchive_build.session_xsi_type({s["modality"] for s in scans})
    label = _label(row, label_param)
    subject_label = clean_value(subject_param or row["subject"] or label)
    existing = store.experiment(project, label)
    subject_row = store.subject(project, subject_label)
    by_scan = _by_scan(files)

    plan: list[tuple[sqlite3.Row, str]] = []
    if existing is not None:
        if not allow_merge:
            raise ArchiveFailure(SESSION_EXISTS)
        if existing["xsi_type"] != xsi:
            raise ArchiveFailure(MODALITY_CHANGED)
        if subject_row is None or existing["subject_id"] != subject_row["id"]:
            raise ArchiveFailure(
                "Invalid modification of session subject via archive process.: "
                f"{label} Already Exists for another Subject"
            )
        if existing["uid"] and row["tag"] and existing["uid"] != row["tag"] and not override:
            raise ArchiveFailure(UID_CHANGED)
        archived = {
            s["scan_id"]: s
            for s in store.all("SELECT * FROM scans WHERE experiment_id = ?", existing["id"])
        }
        taken = set(archived)
        for scan in scans:
            same_uid = [a for a in archived.values() if a["uid"] and a["uid"] == scan["series_uid"]]
            if same_uid:
                target = same_uid[0]["scan_id"]
                if target != scan["scan_id"] and not override:
                    raise ArchiveFailure(
                        "Session already contains a scan with the same UID, but a different "
                        f"number ({target})."
                    )
                present = _dicom_files(store, existing["id"], target)
                mine = {f["name"] for f in by_scan[scan["scan_id"]]}
                if present & mine and not replace_files:
                    raise ArchiveFailure(DUPLICATE_FILE)
                present_uids = _dicom_uids(store, existing["id"], target)
                mine_uids = {f["sop_uid"] for f in by_scan[scan["scan_id"]]}
                if present_uids & mine_uids and not (replace_files or override):
                    raise ArchiveFailure(SAME_RESOURCES)
            else:
                target, k = scan["scan_id"], 0
                while target in taken:
                    k += 1
                    target = f"{scan['scan_id']}-{scan['modality'] or 'OT'}{k}"
            taken.add(target)
            plan.append((scan, target))
    else:
        plan = [(scan, scan["scan_id"]) for scan in scans]

    session_dir = prearchive.session_dir(store, row)
    final_subject = subject_row["label"] if subject_row is not None else subject_label
    files = _project_anonymization(store, row, session_dir, files, final_subject, label)
    by_scan = _by_scan(files)
    plan = [(scan, target) for scan, target in plan if scan["scan_id"] in by_scan]

    now = sandbox.clock.now()
    # The catalog's digest is computed at archive time only while the `checksums` preference is
    # on (PrearcUtils.cleanupScans → CatalogUtils.calculateResourceChecksums); else it is "".
    # The importer computed none, as XNAT's; a file the project script rewrote has its own.
    checksums = prefs.flag(store, "checksums")
    digests = catalog.digests(session_dir, files) if checksums else {}
    with store.transaction() as db:
        if subject_row is None:
            subject_id = store.next_id(db, "S")
            db.execute(
                "INSERT INTO subjects (id, project, label, insert_date, insert_user) "
                "VALUES (?, ?, ?, ?, ?)",
                (subject_id, project, subject_label, now, "sandbox"),
            )
        else:
            subject_id, subject_label = subject_row["id"], subject_row["label"]
        if existing is None:
            experiment_id = store.next_id(db, "E")
            extra = {"visit": row["visit"]} if row["visit"] else {}
            extra.update(fields)
            db.execute(
                "INSERT INTO experiments (id, project, subject_id, label, xsi_type, date, time, "
                "uid, modality, insert_date, insert_user, fields) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    experiment_id,
                    project,
                    subject_id,
                    label,
                    xsi,
                    row["scan_date"],
                    row["scan_time"],
                    row["tag"],
                    _modality(xsi),
                    now,
                    "sandbox",
                    json.dumps(extra),
                ),
            )
        else:
            experiment_id = existing["id"]
        experiment_dir = store.session_folder(project, label)
        for scan, target in plan:
            db.execute(
                "INSERT OR IGNORE INTO scans (experiment_id, scan_id, type, series_description, "
                "xsi_type, uid, modality) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    experiment_id,
                    target,
                    scan["series_description"],
                    scan["series_description"],
                    prearchive_build.scan_xsi_type(scan["modality"]),
                    scan["series_uid"],
                    scan["modality"],
                ),
            )
            target_dir = experiment_dir / "SCANS" / target / "DICOM"
            resource_id = _resource(
                db, experiment_id, target, target_dir, store.root, scan["series_uid"]
            )
            target_dir.mkdir(parents=True, exist_ok=True)
            source_dir = session_dir / "SCANS" / scan["scan_id"] / "DICOM"
            entries = by_scan[scan["scan_id"]]
            for entry in entries:  # a rename: the bytes are not read again, nor copied
                (source_dir / entry["name"]).replace(target_dir / entry["name"])
            db.executemany(
                "INSERT OR REPLACE INTO files (resource_id, relpath, size, md5, uid, "
                "instance) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        resource_id,
                        entry["name"],
                        entry["size"],
                        digests.get((entry["scan_id"], entry["name"]), "") if checksums else "",
                        entry["sop_uid"],
                        entry["instance"],
                    )
                    for entry in entries
                ],
            )
    prearchive.delete_session(store, row)
    remove_empty_parents(session_dir.parent, store.prearchive_root)
    result = archive_uri(project, subject_label, label)
    log.info("archived %s → %s (%d files)", prearchive.uri(row), result, len(files))
    return result


def _project_anonymization(
    store: Store,
    row: sqlite3.Row,
    session_dir: Path,
    files: list[sqlite3.Row],
    subject: str,
    label: str,
) -> list[sqlite3.Row]:
    """Run the project's script on the session's files, at archive time; return what remains.

    `MergePrearcToArchiveSession.anonymizeSession` (XW `helpers/merge/`): skipped for a
    `prevent_anon` session, else `PrearcSessionAnonymizer` runs the project script with the
    archive's subject and session labels on every DICOM file, and rejected files are removed
    from the session (`MergeUtils.deleteRejectedFiles`). A session left with no file cannot be
    archived: 500 and the row ERROR (RT `TestPrearchiveMgmt.
    testArchiveEmptySessionAfterProjectAnonRejection`, "Empty sessions cannot be archived.").
    """
    if (row["prevent_anon"] or "").lower() == "true":
        return files
    script = anonymize.project_script(store, row["project"])
    if script is None:
        return files
    variables = {"project": row["project"], "subject": subject, "session": label}
    remaining: list[sqlite3.Row] = []
    dropped: list[tuple[object, ...]] = []
    rewritten: list[tuple[object, ...]] = []
    try:
        for entry in files:
            path = session_dir / "SCANS" / entry["scan_id"] / "DICOM" / entry["name"]
            try:
                outcome = anonymize.rewrite(path, script, variables)
            except anonymize.Unrewritable as error:
                raise ArchiveFailure(
                    f"Anonymization failed for {entry['name']}: {error}", conflict=False
                ) from error
            key = (row["pk"], entry["scan_id"], entry["name"])
            if outcome.rejected:
                dropped.append(key)
                continue
            rewritten.append((outcome.size, outcome.md5, *key))
            remaining.append(entry)
    finally:
        # One commit for the session's records, not one per file; also when a file fails, so
        # that the files rewritten before it are recorded with their new size and MD5.
        with store.transaction() as db:
            db.executemany(
                "DELETE FROM prearc_files WHERE session = ? AND scan_id = ? AND name = ?", dropped
            )
            db.executemany(
                "UPDATE prearc_files SET size = ?, md5 = ? WHERE session = ? AND scan_id = ? "
                "AND name = ?",
                rewritten,
            )
    rejected = len(dropped)
    log.info(
        "archive of %s: project %s script applied to %d file(s), %d rejected",
        prearchive.uri(row),
        row["project"],
        len(remaining),
        rejected,
    )
    if not remaining:
        raise ArchiveFailure(EMPTY_SESSION, conflict=False)
    return store.all("SELECT * FROM prearc_files WHERE session = ?", row["pk"])


def _by_scan(files: list[sqlite3.Row]) -> defaultdict[str, list[sqlite3.Row]]:
    """The session's files grouped by prearchive scan, in their order: one pass, where a
    filter over all files for each scan grew as scans × files (8 GB: 2,400 × 64,000)."""
    grouped: defaultdict[str, list[sqlite3.Row]] = defaultdict(list)
    for entry in files:
        grouped[entry["scan_id"]].append(entry)
    return grouped


def _modality(xsi: str) -> str:
    return {
        "xnat:mrSessionData": "MR",
        "xnat:ctSessionData": "CT",
        "xnat:petSessionData": "PT",
        "xnat:petmrSessionData": "PT",
    }.get(xsi, "OT")


def _dicom_files(store: object, experiment_id: str, scan_id: str) -> set[str]:
    rows = store.all(  # type: ignore[attr-defined]
        "SELECT f.relpath FROM files f JOIN resources r ON r.id = f.resource_id "
        "WHERE r.owner_kind = 'scan' AND r.owner_id = ? AND r.label = 'DICOM'",
        f"{experiment_id}/{scan_id}",
    )
    return {r["relpath"] for r in rows}


def _dicom_uids(store: object, experiment_id: str, scan_id: str) -> set[str]:
    rows = store.all(  # type: ignore[attr-defined]
        "SELECT f.uid FROM files f JOIN resources r ON r.id = f.resource_id "
        "WHERE r.owner_kind = 'scan' AND r.owner_id = ? AND r.label = 'DICOM'",
        f"{experiment_id}/{scan_id}",
    )
    return {r["uid"] for r in rows if r["uid"]}


def _resource(
    db: sqlite3.Connection,
    experiment_id: str,
    scan_id: str,
    path: object,
    root: object,
    series_uid: str | None,
) -> int:
    """The scan's DICOM resource: a `cat:DCMCatalog` whose UID is the SeriesInstanceUID.

    dicom-xnat `CatalogBuilder` makes it (label DICOM, format DICOM, content RAW) and
    `CatalogAttributes` sets the catalog's UID from (0020,000E).
    """
    owner = f"{experiment_id}/{scan_id}"
    found = db.execute(
        "SELECT id FROM resources WHERE owner_kind = 'scan' AND owner_id = ? AND label = 'DICOM'",
        (owner,),
    ).fetchone()
    if found:
        return int(found["id"])
    relative = str(path.relative_to(root))  # type: ignore[attr-defined]
    cursor = db.execute(
        "INSERT INTO resources (owner_kind, owner_id, label, format, content, path, uid) "
        "VALUES ('scan', ?, 'DICOM', 'DICOM', 'RAW', ?, ?)",
        (owner, relative, series_uid or ""),
    )
    return int(cursor.lastrowid or 0)


def archive_or_500(sandbox: SiteContext, row: sqlite3.Row, **options: object) -> str:
    """Archive for the services (`/services/archive`, `action=commit`): failures → 500 (§5.1)."""
    try:
        return archive_session(sandbox, row, **options)  # type: ignore[arg-type]
    except ArchiveFailure as failure:
        raise tables.HttpError(500, failed_message(row, failure)) from failure
    except ArchiveTimeout as timeout:
        raise tables.HttpError(
            500,
            f"The session {timeout} did not complete within the configured timeout interval.",
        ) from timeout


def failed_message(row: sqlite3.Row, failure: ArchiveFailure) -> str:
    """The 500 message of a failed archive, as it reaches HTTP through XNAT's queue.

    `PrearchiveArchiveHandler.execute` reports "Unable to archive {folder}: {error}", where the
    error is `PrearcDatabase.wrapException`'s "Operation Failed: {archiver message}";
    `QueueBasedImageCommit.call` turns the FAILED event into `ServerException(500, "FAILED: " …)`.
    The archiver's own status (409, 423) is lost on the way.
    """
    if isinstance(failure, ArchiveLocked):
        return f"FAILED: Unable to archive {row['folder']}: {failure.reason}"
    return f"FAILED: Unable to archive {row['folder']}: Operation Failed: {failure.reason}"
