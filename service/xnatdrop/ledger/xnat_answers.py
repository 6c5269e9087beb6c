"""The circuit breaker's tables: XNAT's answers per drop, and whether pushes are held.

Table `xnat_answers` holds XNAT's permanent-looking answers per drop and its successes; the
one-row table `breaker` says whether pushes are held, since when and until when (see
`xnatdrop.breaker`, which decides). They live in the ledger so that the daemon, `xnatdrop push`
and `xnatdrop status` all see them.
"""

from __future__ import annotations

import dataclasses
import time

from xnatdrop.ledger.database import Database
from xnatdrop.ledger.states import UNFINISHED

HELD = "HELD"  # last_error_code of a drop held by the open circuit breaker
SUSPECT = "XNAT_SUSPECT"  # … of a drop waiting to see whether XNAT answers other drops alike
_WAITING_ON_XNAT = (HELD, SUSPECT)
ANSWER_KEEP_SECONDS = 7 * 86400.0


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


class XnatAnswers(Database):
    """Reading and writing the breaker's tables (part of `Ledger`)."""

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
                f"AND {UNFINISHED}",
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
                f"AND {UNFINISHED}",
                _WAITING_ON_XNAT,
            )
            return cursor.rowcount

    def try_breaker_now(self) -> Breaker | None:
        """Make the open breaker due for a try at once (a restart after a fix)."""
        with self._transaction() as conn:
            conn.execute("UPDATE breaker SET retry_at = MIN(retry_at, ?)", (time.time(),))
        return self.breaker()
