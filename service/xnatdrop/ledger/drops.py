"""The drops table and its transitions: register a drop, move it along `NEXT`, record failures.

Each step is written twice: `begin()` before the work (the row gets `running = step` and a
"start" history row) and `advance()` after it (the new state and a "done" history row in one
transaction). A process killed between the two leaves `running` set; the next run sees the same
state, repeats the step (every step is idempotent, see `pipeline`) and writes a fresh "start"
row. Every other move (quarantine, resend, thaw, requeue) is one transaction too, with one
history row, so `xnatdrop status` can tell what happened and when.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from xnatdrop.ledger.database import Database
from xnatdrop.ledger.records import Drop
from xnatdrop.ledger.states import NEXT, UNFINISHED, InvalidTransition

log = logging.getLogger(__name__)

# Fields the pipeline may set through begin()/advance()/update().
SETTABLE = frozenset({"work", "prearchive_uri", "archive_uri", "target", "final_path"})
_INTERNAL = frozenset(
    {"state", "running", "updated", "attempts", "next_attempt", "last_error_code", "last_error"}
)


def _public(fields: dict[str, Any]) -> dict[str, Any]:
    # History rows keep only plain values; paths become strings.
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}


class Drops(Database):
    """Writing the drops table (part of `Ledger`)."""

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

    def _check(self, drop: Drop, step: str) -> str:
        try:
            return NEXT[(drop.state, step)]
        except KeyError:
            raise InvalidTransition(
                f"drop {drop.id} ({drop.label}): no step {step!r} from state {drop.state!r}"
            ) from None

    def _move(
        self, drop: Drop, step: str, event: str, changes: dict[str, Any], detail: dict[str, Any]
    ) -> Drop:
        """Take `step` along NEXT in one transaction: the new state with `changes`, no step
        running, and one history row `event` with `detail`; return the updated drop."""
        now = time.time()
        with self._transaction() as conn:
            current = self._row(conn, drop.id)
            after = self._check(current, step)
            self._set(conn, drop.id, {**changes, "state": after, "running": None, "updated": now})
            self._history(conn, current, event, step, after, detail, now)
            return self._row(conn, drop.id)

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
        changes = {**fields, "last_error_code": None, "last_error": None, "next_attempt": 0}
        after = self._move(drop, step, "done", changes, _public(fields))
        log.debug("%s: %s -> %s", after.label, drop.state, after.state)
        return after

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

    def quarantine(self, drop: Drop, code: str, message: str, **fields: Any) -> Drop:
        """Move a drop to the final state `quarantined`, recording why."""
        changes = {**fields, "last_error_code": code, "last_error": message}
        detail = {"code": code, "message": message, **_public(fields)}
        return self._move(drop, "quarantine", "quarantined", changes, detail)

    def resend(self, drop: Drop, reason: str) -> Drop:
        """Go back to `packed` because XNAT no longer holds a usable prearchive copy."""
        return self._move(drop, "resend", "resend", {"prearchive_uri": None}, {"reason": reason})

    def thaw(self, drop: Drop, reason: str) -> Drop:
        """Go back to `new`: the folder was moved back to the drop root to settle again."""
        return self._move(drop, "thaw", "thaw", {}, {"reason": reason})

    def requeue(self, drop: Drop, to: Path, label: str) -> Drop:
        """Record that a quarantined drop's folder went back to `to` (as `label`): final state
        `requeued`, so it no longer counts as in quarantine; the folder will be a new drop."""
        return self._move(drop, "requeue", "requeued", {}, {"to": str(to), "label": label})

    def release(self, drop: Drop) -> Drop:
        """Make a drop that waits for a person (retry_at None) due again now."""
        with self._transaction() as conn:
            self._set(conn, drop.id, {"next_attempt": 0, "updated": time.time()})
            return self._row(conn, drop.id)

    def release_waiting_for(self, code: str) -> list[Drop]:
        """Make every unfinished drop whose last error is `code` due now; return them.

        After a refused login the drops wait `push.retry_max_seconds`; once a person fixed the
        password and restarted the service there is no reason to wait any longer.
        """
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT id FROM drops WHERE {UNFINISHED} AND last_error_code = ? "
                "AND next_attempt > ?",
                (code, now),
            ).fetchall()
            for row in rows:
                self._set(conn, row["id"], {"next_attempt": 0, "updated": now})
            return [self._row(conn, row["id"]) for row in rows]
