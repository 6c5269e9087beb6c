"""Questions the daemon, `status` and `requeue` ask the ledger; nothing here writes.

- `counts()`: number of drops per state;
- `pending(now)`: unfinished drops whose next attempt is due, oldest first;
- `oldest_pending()`: the unfinished drop waiting longest;
- `recent_failures(limit)`: the latest "failed" history rows with their drop;
- `last_finished()`: the drop that most recently reached `done`;
- `active(project, label)`: the unfinished drop for a label, if any;
- `failure_streaks(minimum)`: drops failing the same way again and again (an alert).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from xnatdrop.ledger.database import Database
from xnatdrop.ledger.records import Drop, Event, Streak
from xnatdrop.ledger.states import UNFINISHED


class Queries(Database):
    """Reading the drops and history tables (part of `Ledger`)."""

    def active(self, project: str, label: str) -> Drop | None:
        """The unfinished drop for this label, if any (there is at most one)."""
        row = self._conn.execute(
            f"SELECT id FROM drops WHERE project = ? AND label = ? AND {UNFINISHED}",
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

    def quarantined_at(self, folder: Path) -> Drop | None:
        """The quarantined drop whose folder is `folder` (its `final_path`), if any."""
        row = self._conn.execute(
            "SELECT id FROM drops WHERE state = 'quarantined' AND final_path = ? "
            "ORDER BY id DESC LIMIT 1",
            (str(folder),),
        ).fetchone()
        return None if row is None else self.get(row["id"])

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
        rows = self._conn.execute(f"SELECT id FROM drops WHERE {UNFINISHED} ORDER BY created, id")
        return [self.get(r["id"]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of drops in each state (states with none are left out)."""
        rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM drops GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def pending(self, now: float | None = None) -> list[Drop]:
        """Unfinished drops whose next attempt is due at `now`, oldest first."""
        now = time.time() if now is None else now
        rows = self._conn.execute(
            f"SELECT id FROM drops WHERE {UNFINISHED} AND next_attempt <= ? ORDER BY created, id",
            (now,),
        )
        return [self.get(r["id"]) for r in rows]

    def oldest_pending(self) -> Drop | None:
        """The unfinished drop registered first, due or not."""
        row = self._conn.execute(
            f"SELECT id FROM drops WHERE {UNFINISHED} ORDER BY created, id LIMIT 1"
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
