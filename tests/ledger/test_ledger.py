"""The ledger: transition table, history, crash semantics, queries, file modes."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xnatdrop import ledger


@pytest.fixture
def book(tmp_path: Path) -> ledger.Ledger:
    with ledger.Ledger(tmp_path / "state") as opened:
        yield opened


def register(book: ledger.Ledger, label: str = "SPN01_0001") -> ledger.Drop:
    return book.register("SPN01", label, Path("/drop") / label, Path("/drop/.w") / label)


def run_all(book: ledger.Ledger, drop: ledger.Drop) -> ledger.Drop:
    for step in ledger.STEPS:
        drop = book.begin(drop, step)
        drop = book.advance(drop, step)
    return drop


def test_state_files_are_private_and_wal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ledger.Ledger(state) as book:
        register(book)
        mode = book._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert {p.name for p in state.iterdir() if p.is_dir()} == set(ledger.PRIVATE_FOLDERS)


def test_opening_the_ledger_again_keeps_the_locks_of_the_connections_already_open(
    tmp_path: Path,
) -> None:
    """The daemon opens a Ledger per job while other threads hold theirs. A close() of any
    descriptor of the database file drops every POSIX lock of the process, so SQLite in another
    process (a `push`) then gets the exclusive lock it must never get while we are connected: it
    once checkpointed and deleted the WAL under the daemon ("disk I/O error", rows lost)."""
    state = tmp_path / "state"
    with ledger.Ledger(state) as held:
        register(held)
        ledger.Ledger(state).close()  # another job of the same process, come and gone
        ledger.Ledger(state, readonly=True).close()
        probe = (
            "import sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
            "conn.execute('PRAGMA locking_mode=EXCLUSIVE')\n"
            "try:\n"
            "    conn.execute('BEGIN EXCLUSIVE')\n"
            "except sqlite3.OperationalError as error:\n"
            "    print(error)\n"
            "else:\n"
            "    print('exclusive')\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", probe, str(held.path)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert other.stdout.strip() == "database is locked"
        assert held.drops()[0].label == "SPN01_0001"
    assert stat.S_IMODE(held.path.stat().st_mode) == 0o600


def test_the_happy_path_visits_every_state_in_order(book: ledger.Ledger) -> None:
    drop = run_all(book, register(book))
    assert drop.state == "done" and drop.final and drop.running is None
    events = book.history(drop)
    assert [e.event for e in events] == ["registered"] + ["start", "done"] * len(ledger.STEPS)
    visited = [e.state_after for e in events if e.event == "done"]
    assert visited == [
        "frozen",
        "checked",
        "packed",
        "imported",
        "verified",
        "archived",
        "attached",
        "done",
    ]


BAD_PAIRS = [
    ("new", "check"),
    ("new", "import"),
    ("frozen", "archive"),
    ("checked", "finish"),
    ("packed", "resend"),
    ("done", "freeze"),
    ("quarantined", "finish"),
]


@pytest.mark.parametrize(("state", "step"), BAD_PAIRS)
def test_steps_outside_the_table_are_refused(book: ledger.Ledger, state: str, step: str) -> None:
    drop = register(book)
    while drop.state != state:
        if state == "quarantined":
            drop = book.quarantine(drop, "X", "test")
            continue
        next_step = drop.next_step
        drop = book.advance(book.begin(drop, next_step), next_step)
    with pytest.raises(ledger.InvalidTransition, match=f"no step '{step}' from state '{state}'"):
        book.begin(drop, step)
    assert book.get(drop.id).state == state


def test_every_unfinished_state_can_be_quarantined(book: ledger.Ledger) -> None:
    for state in ledger.STATES:
        if state not in ledger.FINAL:
            assert ledger.NEXT[(state, "quarantine")] == "quarantined"


def test_a_crash_between_begin_and_advance_leaves_the_step_to_repeat(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ledger.Ledger(state) as book:
        drop = register(book)
        drop = book.advance(book.begin(drop, "freeze"), "freeze")
        book.begin(drop, "check")  # the process "dies" here
    with ledger.Ledger(state) as book:
        drop = book.active("SPN01", "SPN01_0001")
        assert drop is not None
        assert (drop.state, drop.running, drop.next_step) == ("frozen", "check", "check")
        drop = book.advance(book.begin(drop, "check"), "check")
        starts = [e for e in book.history(drop) if e.step == "check" and e.event == "start"]
        assert len(starts) == 2 and drop.state == "checked"


def test_fail_counts_attempts_and_schedules_the_retry(book: ledger.Ledger) -> None:
    drop = register(book)
    drop = book.begin(drop, "freeze")
    retry_at = time.time() + 60
    drop = book.fail(drop, "freeze", "TRANSIENT", "HTTP 503", retry_at)
    assert (drop.attempts, drop.state, drop.running) == (1, "new", None)
    assert drop.last_error == "HTTP 503" and drop.next_attempt == retry_at
    assert book.pending(now=retry_at - 1) == []
    assert [d.id for d in book.pending(now=retry_at)] == [drop.id]
    failures = book.recent_failures()
    assert failures[0].detail["code"] == "TRANSIENT" and failures[0].label == "SPN01_0001"
    # A later success clears the error but keeps the attempt count.
    drop = book.advance(book.begin(drop, "freeze"), "freeze")
    assert (drop.attempts, drop.last_error, drop.next_attempt) == (1, None, 0)


def test_a_failure_without_retry_time_waits_for_release(book: ledger.Ledger) -> None:
    drop = book.fail(register(book), "freeze", "AUTH", "login refused", None)
    assert book.pending(now=time.time() + 10**9) == []
    book.release(drop)
    assert [d.id for d in book.pending()] == [drop.id]


def test_resend_goes_back_to_packed_and_forgets_the_prearchive(book: ledger.Ledger) -> None:
    drop = register(book)
    for step in ("freeze", "check", "pack"):
        drop = book.advance(book.begin(drop, step), step)
    drop = book.advance(
        book.begin(drop, "import"), "import", prearchive_uri="/data/prearchive/projects/P/1/S"
    )
    assert drop.prearchive_uri
    drop = book.resend(drop, "prearchive session vanished")
    assert drop.state == "packed" and drop.prearchive_uri is None
    assert book.history(drop)[-1].detail == {"reason": "prearchive session vanished"}


def test_one_unfinished_drop_per_label_and_a_new_one_after_the_end(book: ledger.Ledger) -> None:
    first = register(book)
    with pytest.raises(sqlite3.IntegrityError):
        register(book)
    book.quarantine(first, "RULE", "blocked", target="/q/SPN01_0001__x")
    assert book.active("SPN01", "SPN01_0001") is None
    second = register(book)
    assert second.id != first.id and book.active("SPN01", "SPN01_0001") == second
    assert [d.id for d in book.drops(label="SPN01_0001")] == [first.id, second.id]


def test_status_queries(book: ledger.Ledger) -> None:
    finished = run_all(book, register(book, "SPN01_0001"))
    waiting = register(book, "SPN01_0002")
    book.quarantine(register(book, "SPN01_0003"), "RULE", "blocked")
    assert book.counts() == {"done": 1, "new": 1, "quarantined": 1}
    assert book.oldest_pending() == waiting
    assert book.last_finished() == finished
    assert [e.label for e in book.recent_failures()] == ["SPN01_0003"]


def test_unknown_fields_are_refused(book: ledger.Ledger) -> None:
    with pytest.raises(ValueError, match="not a ledger field: colour"):
        book.update(register(book), colour="red")


def test_thaw_sends_a_frozen_drop_back_to_settle(book: ledger.Ledger) -> None:
    drop = register(book)
    drop = book.advance(book.begin(drop, "freeze"), "freeze")
    drop = book.begin(drop, "check")
    drop = book.thaw(drop, "2 file(s) still being copied")
    assert (drop.state, drop.running, drop.next_step) == ("new", None, "freeze")
    assert book.history(drop)[-1].detail == {"reason": "2 file(s) still being copied"}
    with pytest.raises(ledger.InvalidTransition):
        book.thaw(drop, "again")


# The schema as xnatdrop wrote it before issues 8 and 9 (PRAGMA user_version 0): no circuit
# breaker tables, and an index of unfinished drops that does not know the state `requeued`.
OLD_SCHEMA = """
CREATE TABLE drops (
    id INTEGER PRIMARY KEY, project TEXT NOT NULL, label TEXT NOT NULL, source TEXT NOT NULL,
    work TEXT NOT NULL, state TEXT NOT NULL, running TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL,
    next_attempt REAL NOT NULL DEFAULT 0, last_error_code TEXT, last_error TEXT,
    prearchive_uri TEXT, archive_uri TEXT, target TEXT, final_path TEXT
);
CREATE UNIQUE INDEX drops_active ON drops(project, label)
    WHERE state NOT IN ('done', 'quarantined');
CREATE INDEX drops_state ON drops(state, next_attempt);
CREATE TABLE history (
    id INTEGER PRIMARY KEY, drop_id INTEGER NOT NULL REFERENCES drops(id), at REAL NOT NULL,
    event TEXT NOT NULL, step TEXT NOT NULL, state_before TEXT NOT NULL,
    state_after TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO drops (project, label, source, work, state, created, updated)
    VALUES ('SPN01', 'SPN01_0001', '/drop/SPN01_0001', '', 'quarantined', 1, 1);
"""


def test_a_ledger_of_an_older_xnatdrop_is_read_as_is_and_migrated_on_write(
    tmp_path: Path,
) -> None:
    """`status` opens the ledger read-only and must cope with one written before the circuit
    breaker's tables existed (no breaker, no answers); the daemon's write-mode open adds them
    and migrates the index, so a requeued drop and a new drop of its label can coexist."""
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / ledger.FILENAME) as conn:
        conn.executescript(OLD_SCHEMA)
    with ledger.Ledger(state, readonly=True) as old:
        assert old.breaker() is None and old.answers() == []
        assert old.counts() == {"quarantined": 1}
    with ledger.Ledger(state) as book:
        assert book._conn.execute("PRAGMA user_version").fetchone()[0] == ledger.SCHEMA_VERSION
        book.record_answer(1, "HTTP 400 unable to read DICOM object")
        assert [a.answer for a in book.answers()] == ["HTTP 400 unable to read DICOM object"]
        assert book.breaker() is None
        book.requeue(book.get(1), Path("/drop/SPN01_0001"), "SPN01_0001")
        assert register(book).state == "new"  # the migrated index leaves `requeued` out
