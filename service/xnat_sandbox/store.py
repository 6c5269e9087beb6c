"""The sandbox's persistent state: one SQLite database plus real files in XNAT's layout.

Everything lives under the data directory so a restart on the same directory finds it again:

    {data}/sandbox.db                                                  rows (this module)
    {data}/prearchive/{project}/{TS}/{folder}/SCANS/{scan}/DICOM/{file}  prearchive files
    {data}/prearchive/{project}/{TS}/{folder}.xml                       session document, once built
    {data}/archive/{project}/arc001/{label}/SCANS/{scan}/{resource}/…   scan resources (DICOM too)
    {data}/archive/{project}/arc001/{label}/RESOURCES/{resource}/…      session resources
    {data}/archive/{project}/subjects/{subject ID}/resources/{resource}/…
    {data}/archive/{project}/resources/{resource}/…
    {data}/.spool/                                                      request bodies in flight

Site preferences (`preferences`) and per-project tool configurations (`project_configs`, XNAT's
ConfigService) live in the database too, so an admin's change survives a restart (`prefs.py`).

Sizes are recorded while a file is written and kept in the `files` and `prearc_files` tables,
so listings never re-read the data. `files.md5` is the catalog's `digest`: computed when a
resource file is uploaded, or for imported DICOM when the session is archived (as XNAT, whose
importer hashes nothing), and empty when the `checksums` preference was off then.
`prearc_files.md5` is "" until a rewrite at archive (the project script) computes it.
One RLock serialises the database; callers hold `store.lock` across a read-check-write sequence
that must be atomic (archiving).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, secondary_id TEXT, name TEXT, description TEXT,
    pi_firstname TEXT, pi_lastname TEXT, aliases TEXT NOT NULL DEFAULT '',
    prearchive_code INTEGER NOT NULL DEFAULT 0, quarantine_code INTEGER NOT NULL DEFAULT 0,
    insert_date REAL, insert_user TEXT);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, label TEXT NOT NULL, insert_date REAL,
    insert_user TEXT, fields TEXT NOT NULL DEFAULT '{}');
CREATE UNIQUE INDEX IF NOT EXISTS subjects_label ON subjects (project, label COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, subject_id TEXT NOT NULL, label TEXT NOT NULL,
    xsi_type TEXT NOT NULL, date TEXT, time TEXT, uid TEXT, modality TEXT, insert_date REAL,
    insert_user TEXT, fields TEXT NOT NULL DEFAULT '{}');
CREATE UNIQUE INDEX IF NOT EXISTS experiments_label ON experiments (project, label);
CREATE TABLE IF NOT EXISTS scans (
    pk INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL, scan_id TEXT NOT NULL,
    type TEXT, series_description TEXT, xsi_type TEXT, uid TEXT, quality TEXT DEFAULT 'usable',
    note TEXT, modality TEXT, UNIQUE (experiment_id, scan_id));
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner_kind TEXT NOT NULL, owner_id TEXT NOT NULL,
    label TEXT NOT NULL, format TEXT, content TEXT, description TEXT, tags TEXT,
    path TEXT NOT NULL, uid TEXT, UNIQUE (owner_kind, owner_id, label));
CREATE TABLE IF NOT EXISTS files (
    resource_id INTEGER NOT NULL, relpath TEXT NOT NULL, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    uid TEXT, instance INTEGER, format TEXT, content TEXT, PRIMARY KEY (resource_id, relpath));
CREATE TABLE IF NOT EXISTS prearchive (
    pk INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, timestamp TEXT NOT NULL,
    folder TEXT NOT NULL, name TEXT NOT NULL, subject TEXT, tag TEXT, status TEXT NOT NULL,
    lastmod REAL, uploaded REAL, scan_date TEXT, scan_time TEXT, autoarchive TEXT DEFAULT '',
    prevent_anon TEXT DEFAULT '', prevent_auto_commit TEXT DEFAULT '', source TEXT DEFAULT '',
    visit TEXT DEFAULT '', protocol TEXT DEFAULT '', timezone TEXT DEFAULT '',
    subtype TEXT DEFAULT '', aa TEXT DEFAULT '', built INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project, timestamp, folder));
CREATE TABLE IF NOT EXISTS prearc_scans (
    session INTEGER NOT NULL, scan_id TEXT NOT NULL, series_uid TEXT, series_number TEXT,
    series_description TEXT, modality TEXT, PRIMARY KEY (session, scan_id));
CREATE TABLE IF NOT EXISTS prearc_files (
    session INTEGER NOT NULL, scan_id TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    md5 TEXT NOT NULL, sop_uid TEXT, instance INTEGER, PRIMARY KEY (session, scan_id, name));
CREATE TABLE IF NOT EXISTS preferences (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS project_configs (
    project TEXT NOT NULL, tool TEXT NOT NULL, contents TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 0, user TEXT, created REAL, version INTEGER,
    PRIMARY KEY (project, tool));
"""

#: Columns added after the first release: (table, column, declaration). A data directory written
#: by an older sandbox gets them on open (`ALTER TABLE … ADD COLUMN`), so a restart never fails.
ADDED_COLUMNS = (
    ("resources", "uid", "TEXT"),  # a DICOM catalog's UID: the SeriesInstanceUID (cat:DCMCatalog)
    ("files", "uid", "TEXT"),  # a DICOM file's SOPInstanceUID (cat:dcmEntry UID)
    ("files", "instance", "INTEGER"),  # its InstanceNumber (cat:dcmEntry instanceNumber)
    ("prearc_files", "instance", "INTEGER"),
    ("files", "format", "TEXT"),  # an entry's own format/content (SNAPSHOTS: GIF, ORIGINAL)
    ("files", "content", "TEXT"),
    ("project_configs", "user", "TEXT"),  # who stored the configuration, and when (ConfigResource)
    ("project_configs", "created", "REAL"),
    ("project_configs", "version", "INTEGER"),
)


class Store:
    """The database connection and the data directory; lives as long as the server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prearchive_root = root / "prearchive"
        self.archive_root = root / "archive"
        self.spool_root = root / ".spool"
        for path in (root, self.prearchive_root, self.archive_root):
            path.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.spool_root, ignore_errors=True)  # bodies of a previous run
        self.spool_root.mkdir()
        self.lock = threading.RLock()
        self._db = sqlite3.connect(root / "sandbox.db", check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        for table, column, declaration in ADDED_COLUMNS:
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._db.commit()

    def session_folder(self, project: str, label: str) -> Path:
        """`{data}/archive/{project}/arc001/{label}`: where an archived session's files live."""
        return self.archive_root / project / "arc001" / label

    def close(self) -> None:
        with self.lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and commit (or roll back) everything done inside as one unit."""
        with self.lock:
            try:
                yield self._db
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    def all(self, sql: str, *args: object) -> list[sqlite3.Row]:
        with self.lock:
            return self._db.execute(sql, args).fetchall()

    def one(self, sql: str, *args: object) -> sqlite3.Row | None:
        with self.lock:
            return self._db.execute(sql, args).fetchone()

    def run(self, sql: str, *args: object) -> int:
        """Execute one statement and commit; return lastrowid."""
        with self.transaction() as db:
            return int(db.execute(sql, args).lastrowid or 0)

    def next_id(self, db: sqlite3.Connection, kind: str) -> str:
        """`XNAT_S00001` / `XNAT_E00001`: the site-prefixed IDs XNAT generates."""
        row = db.execute("SELECT value FROM counters WHERE name = ?", (kind,)).fetchone()
        value = (row["value"] if row else 0) + 1
        db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (kind, value))
        return f"XNAT_{kind}{value:05d}"

    # -- lookups shared by several endpoint families -------------------------------------

    def project(self, ref: str) -> sqlite3.Row | None:
        """A project by ID or alias (aliases are stored comma-separated)."""
        row = self.one("SELECT * FROM projects WHERE id = ?", ref)
        if row is not None:
            return row
        for candidate in self.all("SELECT * FROM projects WHERE aliases != ''"):
            if ref in candidate["aliases"].split(","):
                return candidate
        return None

    def subject(self, project: str, ref: str) -> sqlite3.Row | None:
        """A subject of a project by label (case-insensitive, as the archiver) or ID."""
        row = self.one(
            "SELECT * FROM subjects WHERE project = ? AND label = ? COLLATE NOCASE", project, ref
        )
        return row or self.one("SELECT * FROM subjects WHERE project = ? AND id = ?", project, ref)

    def experiment(self, project: str | None, ref: str) -> sqlite3.Row | None:
        """An experiment by ID, or by label within a project."""
        row = self.one("SELECT * FROM experiments WHERE id = ?", ref)
        if row is not None and (project is None or row["project"] == project):
            return row
        if project is None:
            return None
        return self.one("SELECT * FROM experiments WHERE project = ? AND label = ?", project, ref)

    def fields(self, row: sqlite3.Row) -> dict[str, str]:
        return dict(json.loads(row["fields"] or "{}"))

    def resource_stats(self, resource_id: int) -> tuple[int, int]:
        row = self.one(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS s FROM files WHERE resource_id = ?",
            resource_id,
        )
        assert row is not None
        return int(row["n"]), int(row["s"])


def remove_empty_parents(path: Path, stop: Path) -> None:
    """Remove now-empty directories from `path` up to (not including) `stop`."""
    path = path.resolve()
    stop = stop.resolve()
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
