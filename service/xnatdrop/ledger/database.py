"""The ledger's SQLite file: where it lives, its schema and migrations, opening it, transactions,
and "cannot write the state" as an error of its own.

One SQLite database (WAL journal) under `[paths] state`, file mode 0600 in a 0700 folder. The
tables are read and written by `drops`, `queries` and `xnat_answers`, each a `Database` subclass
that `book.Ledger` puts together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xnatdrop.errors import StateError
from xnatdrop.ledger.records import COLUMNS, Drop

FILENAME = "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drops (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    work TEXT NOT NULL,
    state TEXT NOT NULL,
    running TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error_code TEXT,
    last_error TEXT,
    prearchive_uri TEXT,
    archive_uri TEXT,
    target TEXT,
    final_path TEXT
);
-- At most one unfinished drop per label and project.
CREATE UNIQUE INDEX IF NOT EXISTS drops_active
    ON drops(project, label) WHERE state NOT IN ('done', 'quarantined', 'requeued');
CREATE INDEX IF NOT EXISTS drops_state ON drops(state, next_attempt);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    drop_id INTEGER NOT NULL REFERENCES drops(id),
    at REAL NOT NULL,
    event TEXT NOT NULL,
    step TEXT NOT NULL,
    state_before TEXT NOT NULL,
    state_after TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS history_drop ON history(drop_id, id);
CREATE INDEX IF NOT EXISTS history_event ON history(event, id);
CREATE TABLE IF NOT EXISTS xnat_answers (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    drop_id INTEGER NOT NULL,
    answer TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    answer TEXT NOT NULL,
    drops INTEGER NOT NULL,
    opened REAL NOT NULL,
    retry_at REAL NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0
);
"""


SCHEMA_VERSION = 2  # PRAGMA user_version; 2: the state `requeued`
PRIVATE_FOLDERS = ("spool", "locks", "requeued")  # created 0700 with the ledger


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a ledger written by an older xnatdrop up to SCHEMA_VERSION (inside a transaction)."""
    if version < 2:
        # `requeued` is final: the partial index of unfinished drops must leave it out.
        conn.execute("DROP INDEX IF EXISTS drops_active")
        conn.execute(
            "CREATE UNIQUE INDEX drops_active ON drops(project, label) "
            "WHERE state NOT IN ('done', 'quarantined', 'requeued')"
        )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _secure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def private_dir(path: Path) -> Path:
    """Create `path` and every missing parent 0700 (mkdir's `parents=True` would give the parents
    the umask's mode, 0755, and the spool holds file lists of sessions)."""
    missing, parent = [], path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    return path


# SQLite's primary result codes that mean "the state cannot be written" rather than a bug:
# SQLITE_READONLY 8, SQLITE_IOERR 10, SQLITE_FULL 13, SQLITE_CANTOPEN 14 (sqlite.org/rescode.html).
_STATE_CODES = {8: "it is read-only", 10: "disk I/O error", 13: "its file system is full"}
_STATE_CODES[14] = "the ledger file cannot be opened"
STATE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES})


@contextmanager
def state_errors(state: Path) -> Iterator[None]:
    """Turn "cannot write the state" into errors.StateError; let every other error through.

    A full state file system once made the daemon crash and restart hundreds of times a
    minute: nowhere to record when to retry. As a StateError (a TransientError) it is retried
    with backoff by whoever called, and reported in one sentence.
    """
    try:
        yield
    except sqlite3.OperationalError as error:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code not in _STATE_CODES:
            raise
        raise StateError(state, f"{_STATE_CODES[code]}: {error}") from None
    except OSError as error:
        if error.errno not in STATE_ERRNOS:
            raise
        raise StateError(state, error.strerror or str(error)) from None


def _create_private(path: Path) -> None:
    """Create the ledger file 0600 before SQLite does, so it never exists with a wider mode.

    Only when it does not exist yet (O_EXCL): a close() of *any* descriptor of a file drops
    every POSIX lock the process holds on it, including those of SQLite connections other
    threads have open (sqlite.org/howtocorrupt.html §2.2). The daemon opens a Ledger per job;
    an open-and-close of an existing ledger here once let a `push` process believe it was the
    last connection, checkpoint and delete the WAL under the daemon: "disk I/O error", rows
    lost. An existing file gets its mode by path (chmod opens no descriptor).
    """
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(descriptor)  # just created: no connection of this process has it open
    os.chmod(path, 0o600)


class Database:
    """An open ledger database. Use as a context manager, or call `close()`.

    One connection per Ledger, used from one thread (the pipeline runs drops one at a time);
    several processes may open the same file, SQLite's locking and `busy_timeout` serialise them.
    """

    def __init__(self, state_dir: Path, readonly: bool = False) -> None:
        """Open (and create, unless `readonly`) the ledger of a state folder.

        `readonly` is for `xnatdrop status`: it changes nothing, not even the schema, so it
        works on a full or read-only state file system; a ledger without tables reads as empty.
        """
        self.state = state_dir
        self.path = state_dir / FILENAME
        if readonly:
            uri = f"{self.path.absolute().as_uri()}?mode=ro"
            with state_errors(state_dir):
                self._conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            return
        with state_errors(state_dir):
            _secure_dir(state_dir)
            for sub in PRIVATE_FOLDERS:
                _secure_dir(state_dir / sub)
            _create_private(self.path)
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across a process crash in WAL mode; only a power cut may lose the
            # last transaction, and every step is safe to repeat.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            if version < SCHEMA_VERSION:
                _migrate(self._conn, version)
        for suffix in ("-wal", "-shm"):
            sidecar = self.path.with_name(self.path.name + suffix)
            if sidecar.exists():
                os.chmod(sidecar, 0o600)

    def close(self) -> None:
        self._conn.close()

    def probe(self) -> None:
        """Prove that the state folder takes writes again; raise StateError if it does not.

        Two real writes: a ledger transaction (the schema version, rewritten), and a new 64 KiB
        file, because SQLite can still write into pages its files already own while the file
        system has no free block left.
        """
        with self._transaction() as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        probe = self.state / ".probe"
        with state_errors(self.state):
            try:
                descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(descriptor, bytes(64 * 1024))
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two processes never both read a
        # state and then both write a transition from it.
        with state_errors(self.state):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back by itself
                    self._conn.execute("ROLLBACK")
                raise

    def _has_table(self, name: str) -> bool:
        """Whether the ledger has table `name`. A write-mode open creates every table; a
        read-only open (`status`) of a ledger written by an xnatdrop older than the breaker
        finds none, and reads that as "no answers, breaker closed"."""
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def _row(self, conn: sqlite3.Connection, drop_id: int) -> Drop:
        row = conn.execute("SELECT * FROM drops WHERE id = ?", (drop_id,)).fetchone()
        if row is None:
            raise KeyError(f"no drop with id {drop_id}")
        return Drop(**{k: row[k] for k in COLUMNS})

    def get(self, drop_id: int) -> Drop:
        return self._row(self._conn, drop_id)
