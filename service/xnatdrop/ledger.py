"""The ledger: xnatdrop's single source of truth for the progress of every drop.

One SQLite database (WAL journal) under `[paths] state`, file mode 0600 in a 0700 folder. Table
`drops` has one row per drop (one subject folder handed to the pipeline once): its project, label,
where it came from, where it sits now, its state, the step running, attempts, timestamps, the last
error and the time of the next attempt. Table `history` has one row per event of every drop
(a step started, finished or failed, a resend, a quarantine), so `xnatdrop status` can tell what
happened and when.

States move only along `NEXT`, a transition table in the manner of pynetdicom's `fsm.py`:
`(state, step) -> next state`. Any other pair raises `InvalidTransition`. Each step is written
twice: `begin()` before the work (the row gets `running = step` and a "start" history row) and
`advance()` after it (the new state and a "done" history row in one transaction). A process
killed between the two leaves `running` set; the next run sees the same state, repeats the step
(every step is idempotent, see `pipeline`) and writes a fresh "start" row.

Queries for the daemon and for `xnatdrop status`:

- `Ledger.counts()`: number of drops per state;
- `Ledger.pending(now)`: unfinished drops whose next attempt is due, oldest first;
- `Ledger.oldest_pending()`: the unfinished drop waiting longest;
- `Ledger.recent_failures(limit)`: the latest "failed" history rows with their drop;
- `Ledger.last_finished()`: the drop that most recently reached `done`;
- `Ledger.active(project, label)`: the unfinished drop for a label, if any.

Table `xnat_answers` and the one-row table `breaker` hold the circuit breaker's state (see
`breaker`): XNAT's permanent-looking answers per drop, successes, and whether pushes are held.
They live here so that the daemon, `xnatdrop push` and `xnatdrop status` all see them.

A drop in `done` or `quarantined` is final; a later folder with the same label is a new drop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xnatdrop.errors import StateError

log = logging.getLogger(__name__)

FILENAME = "ledger.sqlite3"

STATES: dict[str, str] = {
    "new": "registered; the folder is still in the drop root",
    "frozen": "moved into the working area; later changes in the drop root do not affect it",
    "checked": "the rules passed (no block finding)",
    "packed": "upload zip planned (names, sizes, length)",
    "imported": "sent to the XNAT prearchive",
    "verified": "the prearchive session is READY and its file counts match the manifest",
    "archived": "archived in XNAT and read back: instance UIDs, pixel data of one file per scan, "
    "sizes and MD5s where XNAT keeps the bytes",
    "attached": "sidecar folders uploaded as session resources and verified",
    "done": "moved to done/ with a receipt (final)",
    "quarantined": "moved to quarantine/ with a reason file (final)",
    "requeued": "was quarantined, then sent back into the drop root by `xnatdrop requeue` "
    "(final: it comes back as a new drop)",
}
FINAL = frozenset({"done", "quarantined", "requeued"})
_UNFINISHED = "state NOT IN ('done', 'quarantined', 'requeued')"  # SQL for "not in FINAL"

STEPS = ("freeze", "check", "pack", "import", "verify", "archive", "attach", "finish")

NEXT: dict[tuple[str, str], str] = {
    ("new", "freeze"): "frozen",
    ("frozen", "check"): "checked",
    ("checked", "pack"): "packed",
    ("packed", "import"): "imported",
    ("imported", "verify"): "verified",
    ("verified", "archive"): "archived",
    ("archived", "attach"): "attached",
    ("attached", "finish"): "done",
    # The prearchive copy vanished or is incomplete and nothing is archived: send it again.
    ("imported", "resend"): "packed",
    ("verified", "resend"): "packed",
    # The check found files still being copied: the folder goes back to the drop root to settle.
    ("frozen", "thaw"): "new",
    # Any permanent failure before the end.
    **{(state, "quarantine"): "quarantined" for state in STATES if state not in FINAL},
    # A person fixed the folder and sent it back (`xnatdrop requeue`): it is no longer in
    # quarantine/, and it will be a new drop.
    ("quarantined", "requeue"): "requeued",
}

# The step to run next from each unfinished state.
STEP_FROM = {state: step for (state, step) in NEXT if step in STEPS}

_COLUMNS = (
    "id",
    "project",
    "label",
    "source",
    "work",
    "state",
    "running",
    "attempts",
    "created",
    "updated",
    "next_attempt",
    "last_error_code",
    "last_error",
    "prearchive_uri",
    "archive_uri",
    "target",
    "final_path",
)
# Fields the pipeline may set through begin()/advance()/update().
SETTABLE = frozenset({"work", "prearchive_uri", "archive_uri", "target", "final_path"})
_INTERNAL = frozenset(
    {"state", "running", "updated", "attempts", "next_attempt", "last_error_code", "last_error"}
)

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


class InvalidTransition(Exception):
    """A (state, step) pair outside `NEXT`: a bug in the caller, never a drop's fault."""


@dataclasses.dataclass(frozen=True)
class Drop:
    """One row of `drops`. Times are seconds since the epoch."""

    id: int
    project: str
    label: str
    source: str
    work: str
    state: str
    running: str | None
    attempts: int
    created: float
    updated: float
    next_attempt: float
    last_error_code: str | None
    last_error: str | None
    prearchive_uri: str | None
    archive_uri: str | None
    target: str | None
    final_path: str | None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def next_step(self) -> str | None:
        return STEP_FROM.get(self.state)


@dataclasses.dataclass(frozen=True)
class Streak:
    """A drop whose last `count` attempts all failed at `step` with `code`."""

    drop: Drop
    count: int
    step: str
    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class Event:
    """One row of `history`, with the label and project of its drop."""

    id: int
    drop_id: int
    project: str
    label: str
    at: float
    event: str
    step: str
    state_before: str
    state_after: str
    detail: dict[str, Any]


def _secure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer of XNAT to a drop: `answer` is "" for a success."""

    at: float
    drop_id: int
    answer: str


@dataclasses.dataclass(frozen=True)
class Breaker:
    """The open circuit breaker: pushes held since `opened` until `retry_at`."""

    answer: str
    drops: int
    opened: float
    retry_at: float
    tries: int


HELD = "HELD"  # last_error_code of a drop held by the open circuit breaker
SUSPECT = "XNAT_SUSPECT"  # … of a drop waiting to see whether XNAT answers other drops alike
_WAITING_ON_XNAT = (HELD, SUSPECT)
ANSWER_KEEP_SECONDS = 7 * 86400.0


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


class Ledger:
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

    def __enter__(self) -> Ledger:
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

    # -- rows ------------------------------------------------------------------------------

    def _row(self, conn: sqlite3.Connection, drop_id: int) -> Drop:
        row = conn.execute("SELECT * FROM drops WHERE id = ?", (drop_id,)).fetchone()
        if row is None:
            raise KeyError(f"no drop with id {drop_id}")
        return Drop(**{k: row[k] for k in _COLUMNS})

    def get(self, drop_id: int) -> Drop:
        return self._row(self._conn, drop_id)

    def active(self, project: str, label: str) -> Drop | None:
        """The unfinished drop for this label, if any (there is at most one)."""
        row = self._conn.execute(
            f"SELECT id FROM drops WHERE project = ? AND label = ? AND {_UNFINISHED}",
            (project, label),
        ).fetchone()
        return None if row is None else self.get(row["id"])

    def drops(self, project: str | None = None, label: str | None = None) -> list[Drop]:
        """Every drop, oldest first, optionally for one project and label."""
        query, args = "SELECT id FROM drops WHERE 1", []
        if project is not None:
            query, args = query + " AND project = ?", [*args, project]
        if label is not None:
            query, args = query + " AND label = ?", [*args, label]
        return [self.get(r["id"]) for r in self._conn.execute(query + " ORDER BY id", args)]

    def _history(
        self,
        conn: sqlite3.Connection,
        drop: Drop,
        event: str,
        step: str,
        after: str,
        detail: dict[str, Any],
        now: float,
    ) -> None:
        conn.execute(
            "INSERT INTO history (drop_id, at, event, step, state_before, state_after, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (drop.id, now, event, step, drop.state, after, json.dumps(detail, sort_keys=True)),
        )

    def _set(self, conn: sqlite3.Connection, drop_id: int, fields: dict[str, Any]) -> None:
        unknown = set(fields) - SETTABLE - _INTERNAL
        if unknown:
            raise ValueError(f"not a ledger field: {', '.join(sorted(unknown))}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = (str(v) if isinstance(v, Path) else v for v in fields.values())
        conn.execute(f"UPDATE drops SET {assignments} WHERE id = ?", (*values, drop_id))

    # -- transitions -----------------------------------------------------------------------

    def register(self, project: str, label: str, source: Path, work: Path) -> Drop:
        """Add a new drop in state `new`. Raise sqlite3.IntegrityError if one is unfinished."""
        now = time.time()
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO drops (project, label, source, work, state, created, updated) "
                "VALUES (?, ?, ?, ?, 'new', ?, ?)",
                (project, label, str(source), str(work), now, now),
            )
            drop = self._row(conn, int(cursor.lastrowid or 0))
            self._history(conn, drop, "registered", "register", "new", {}, now)
        log.debug("%s: registered as drop %d", label, drop.id)
        return drop

    def _check(self, drop: Drop, step: str) -> str:
        try:
            return NEXT[(drop.state, step)]
        except KeyError:
            raise InvalidTransition(
                f"drop {drop.id} ({drop.label}): no step {step!r} from state {drop.state!r}"
            ) from None

    def begin(self, drop: Drop, step: str, **fields: Any) -> Drop:
        """Record that `step` starts now (before any of its work); return the updated drop."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            self._check(current, step)
            self._set(conn, drop.id, {**fields, "running": step, "updated": now})
            self._history(conn, current, "start", step, current.state, _public(fields), now)
            return self._row(conn, drop.id)

    def advance(self, drop: Drop, step: str, **fields: Any) -> Drop:
        """Record that `step` finished: move to its next state in one transaction."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            after = self._check(current, step)
            changes = {
                **fields,
                "state": after,
                "running": None,
                "updated": now,
                "last_error_code": None,
                "last_error": None,
                "next_attempt": 0,
            }
            self._set(conn, drop.id, changes)
            self._history(conn, current, "done", step, after, _public(fields), now)
            drop = self._row(conn, drop.id)
        log.debug("%s: %s -> %s", drop.label, current.state, drop.state)
        return drop

    def update(self, drop: Drop, **fields: Any) -> Drop:
        """Store facts learnt during a step (e.g. the prearchive URI) without changing state."""
        with self._transaction() as conn:
            self._set(conn, drop.id, {**fields, "updated": time.time()})
            return self._row(conn, drop.id)

    def fail(self, drop: Drop, step: str, code: str, message: str, retry_at: float | None) -> Drop:
        """Record a failed attempt at `step`; the drop keeps its state and waits for `retry_at`.

        `retry_at` None means no automatic retry (an authentication failure waits for a person).
        """
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            self._set(
                conn,
                drop.id,
                {
                    "running": None,
                    "attempts": current.attempts + 1,
                    "last_error_code": code,
                    "last_error": message,
                    "next_attempt": retry_at if retry_at is not None else float("inf"),
                    "updated": now,
                },
            )
            detail = {"code": code, "message": message, "retry_at": retry_at}
            self._history(conn, current, "failed", step, current.state, detail, now)
            return self._row(conn, drop.id)

    def requeue(self, drop: Drop, to: Path, label: str) -> Drop:
        """Record that a quarantined drop's folder went back to `to` (as `label`): final state
        `requeued`, so it no longer counts as in quarantine; the folder will be a new drop."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            after = self._check(current, "requeue")
            self._set(conn, drop.id, {"state": after, "running": None, "updated": now})
            detail = {"to": str(to), "label": label}
            self._history(conn, current, "requeued", "requeue", after, detail, now)
            return self._row(conn, drop.id)

    def quarantined_at(self, folder: Path) -> Drop | None:
        """The quarantined drop whose folder is `folder` (its `final_path`), if any."""
        row = self._conn.execute(
            "SELECT id FROM drops WHERE state = 'quarantined' AND final_path = ? "
            "ORDER BY id DESC LIMIT 1",
            (str(folder),),
        ).fetchone()
        return None if row is None else self.get(row["id"])

    def release_waiting_for(self, code: str) -> list[Drop]:
        """Make every unfinished drop whose last error is `code` due now; return them.

        After a refused login the drops wait `push.retry_max_seconds`; once a person fixed the
        password and restarted the service there is no reason to wait any longer.
        """
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT id FROM drops WHERE {_UNFINISHED} AND last_error_code = ? "
                "AND next_attempt > ?",
                (code, now),
            ).fetchall()
            for row in rows:
                self._set(conn, row["id"], {"next_attempt": 0, "updated": now})
            return [self._row(conn, row["id"]) for row in rows]

    def failure_streaks(self, minimum: int) -> list[Streak]:
        """Unfinished drops whose last `minimum` or more attempts failed the same way.

        "The same way" is the same step and the same code: messages may differ in details
        (a byte count, a retry time) while the cause is one. Success of any step ends a streak.
        """
        streaks = []
        for drop in self.unfinished():
            rows = self._conn.execute(
                "SELECT event, step, detail FROM history WHERE drop_id = ? "
                "AND event IN ('failed', 'done', 'thaw', 'resend', 'registered') "
                "ORDER BY id DESC LIMIT ?",
                (drop.id, max(minimum, 1) * 4),
            ).fetchall()
            count, key, message = 0, None, ""
            for row in rows:
                if row["event"] != "failed":
                    break
                detail = json.loads(row["detail"])
                this = (row["step"], detail.get("code"))
                if key is None:
                    key, message = this, str(detail.get("message", ""))
                elif this != key:
                    break
                count += 1
            if key is not None and count >= minimum:
                streaks.append(Streak(drop, count, key[0], str(key[1]), message))
        return streaks

    def in_state(self, state: str) -> list[Drop]:
        """Every drop in `state`, oldest first."""
        rows = self._conn.execute("SELECT id FROM drops WHERE state = ? ORDER BY id", (state,))
        return [self.get(r["id"]) for r in rows]

    def unfinished(self) -> list[Drop]:
        """Every drop not in a final state, oldest first, due or not."""
        rows = self._conn.execute(f"SELECT id FROM drops WHERE {_UNFINISHED} ORDER BY created, id")
        return [self.get(r["id"]) for r in rows]

    def release(self, drop: Drop) -> Drop:
        """Make a drop that waits for a person (retry_at None) due again now."""
        with self._transaction() as conn:
            self._set(conn, drop.id, {"next_attempt": 0, "updated": time.time()})
            return self._row(conn, drop.id)

    # -- queries ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of drops in each state (states with none are left out)."""
        rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM drops GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def pending(self, now: float | None = None) -> list[Drop]:
        """Unfinished drops whose next attempt is due at `now`, oldest first."""
        now = time.time() if now is None else now
        rows = self._conn.execute(
            f"SELECT id FROM drops WHERE {_UNFINISHED} AND next_attempt <= ? ORDER BY created, id",
            (now,),
        )
        return [self.get(r["id"]) for r in rows]

    def oldest_pending(self) -> Drop | None:
        """The unfinished drop registered first, due or not."""
        row = self._conn.execute(
            f"SELECT id FROM drops WHERE {_UNFINISHED} ORDER BY created, id LIMIT 1"
        ).fetchone()
        return None if row is None else self.get(row["id"])

    def recent_failures(self, limit: int = 10) -> list[Event]:
        """The latest failed attempts and quarantines, newest first."""
        return self._events("event IN ('failed', 'quarantined')", limit)

    def last_finished(self) -> Drop | None:
        """The drop that most recently reached `done`."""
        row = self._conn.execute(
            "SELECT id FROM drops WHERE state = 'done' ORDER BY updated DESC, id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else self.get(row["id"])

    def history(self, drop: Drop) -> list[Event]:
        """Every event of one drop, oldest first."""
        return self._events("drop_id = ?", None, (drop.id,), order="ASC")

    def _events(
        self, where: str, limit: int | None, args: tuple[Any, ...] = (), order: str = "DESC"
    ) -> list[Event]:
        query = (
            "SELECT history.*, drops.project, drops.label FROM history "
            f"JOIN drops ON drops.id = history.drop_id WHERE {where} ORDER BY history.id {order}"
        )
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [
            Event(
                id=r["id"],
                drop_id=r["drop_id"],
                project=r["project"],
                label=r["label"],
                at=r["at"],
                event=r["event"],
                step=r["step"],
                state_before=r["state_before"],
                state_after=r["state_after"],
                detail=json.loads(r["detail"]),
            )
            for r in self._conn.execute(query, args)
        ]

    def quarantine(self, drop: Drop, code: str, message: str, **fields: Any) -> Drop:
        """Move a drop to the final state `quarantined`, recording why."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            self._check(current, "quarantine")
            changes = {
                **fields,
                "state": "quarantined",
                "running": None,
                "last_error_code": code,
                "last_error": message,
                "updated": now,
            }
            self._set(conn, drop.id, changes)
            detail = {"code": code, "message": message, **_public(fields)}
            self._history(conn, current, "quarantined", "quarantine", "quarantined", detail, now)
            return self._row(conn, drop.id)

    def resend(self, drop: Drop, reason: str) -> Drop:
        """Go back to `packed` because XNAT no longer holds a usable prearchive copy."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            after = self._check(current, "resend")
            self._set(
                conn,
                drop.id,
                {"state": after, "running": None, "prearchive_uri": None, "updated": now},
            )
            self._history(conn, current, "resend", "resend", after, {"reason": reason}, now)
            return self._row(conn, drop.id)

    def thaw(self, drop: Drop, reason: str) -> Drop:
        """Go back to `new`: the folder was moved back to the drop root to settle again."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            after = self._check(current, "thaw")
            self._set(conn, drop.id, {"state": after, "running": None, "updated": now})
            self._history(conn, current, "thaw", "thaw", after, {"reason": reason}, now)
            return self._row(conn, drop.id)

    # -- the circuit breaker (see `breaker`) ---------------------------------------------

    def _has_table(self, name: str) -> bool:
        """Whether the ledger has table `name`. A write-mode open creates every table; a
        read-only open (`status`) of a ledger written by an xnatdrop older than the breaker
        finds none, and reads that as "no answers, breaker closed"."""
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def record_answer(self, drop_id: int, answer: str, at: float | None = None) -> None:
        """Remember XNAT's answer to a drop ("" for a success); forget week-old answers."""
        now = time.time() if at is None else at
        with self._transaction() as conn:
            conn.execute("DELETE FROM xnat_answers WHERE at < ?", (now - ANSWER_KEEP_SECONDS,))
            conn.execute(
                "INSERT INTO xnat_answers (at, drop_id, answer) VALUES (?, ?, ?)",
                (now, drop_id, answer),
            )

    def answers(self) -> list[Answer]:
        if not self._has_table("xnat_answers"):
            return []
        rows = self._conn.execute("SELECT at, drop_id, answer FROM xnat_answers ORDER BY id")
        return [Answer(r["at"], r["drop_id"], r["answer"]) for r in rows]

    def breaker(self) -> Breaker | None:
        if not self._has_table("breaker"):
            return None
        row = self._conn.execute("SELECT * FROM breaker WHERE id = 1").fetchone()
        if row is None:
            return None
        return Breaker(row["answer"], row["drops"], row["opened"], row["retry_at"], row["tries"])

    def open_breaker(self, answer: str, drops: int, retry_at: float) -> Breaker:
        """Open the breaker, or keep it open until `retry_at` (counting the try)."""
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO breaker (id, answer, drops, opened, retry_at, tries) "
                "VALUES (1, ?, ?, ?, ?, 0) ON CONFLICT(id) DO UPDATE SET "
                "retry_at = excluded.retry_at, tries = tries + 1, "
                "drops = MAX(drops, excluded.drops)",
                (answer, drops, now, retry_at),
            )
            conn.execute(
                f"UPDATE drops SET next_attempt = ? WHERE last_error_code IN (?, ?) "
                f"AND {_UNFINISHED}",
                (retry_at, *_WAITING_ON_XNAT),
            )
        breaker = self.breaker()
        assert breaker is not None
        return breaker

    def close_breaker(self) -> int:
        """Close the breaker and make every drop that waited on XNAT due now (held ones, and
        those waiting to confirm the same answer); return how many."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM breaker")
            cursor = conn.execute(
                f"UPDATE drops SET next_attempt = 0 WHERE last_error_code IN (?, ?) "
                f"AND {_UNFINISHED}",
                _WAITING_ON_XNAT,
            )
            return cursor.rowcount

    def try_breaker_now(self) -> Breaker | None:
        """Make the open breaker due for a try at once (a restart after a fix)."""
        with self._transaction() as conn:
            conn.execute("UPDATE breaker SET retry_at = MIN(retry_at, ?)", (time.time(),))
        return self.breaker()


def _public(fields: dict[str, Any]) -> dict[str, Any]:
    # History rows keep only plain values; paths become strings.
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}
