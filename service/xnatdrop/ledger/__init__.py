"""The ledger: xnatdrop's single source of truth for the progress of every drop.

One SQLite database under `[paths] state`. Table `drops` has one row per drop (one subject
folder handed to the pipeline once): its project, label, where it came from, where it sits now,
its state, the step running, attempts, timestamps, the last error and the time of the next
attempt. Table `history` has one row per event of every drop (a step started, finished or
failed, a resend, a quarantine), so `xnatdrop status` can tell what happened and when. A drop in
`done` or `quarantined` is final; a later folder with the same label is a new drop.

- `states`: the states and `NEXT`, the transition table (the one place that says where a drop
  can go);
- `records`: the rows handed out (`Drop`, `Event`, `Streak`);
- `database`: the file, its schema and migrations, transactions, `state_errors`;
- `drops`: registering drops and moving them along `NEXT`, one history row each;
- `queries`: what the daemon, `status` and `requeue` ask;
- `xnat_answers`: the circuit breaker's tables;
- `book`: `Ledger`, the one handle that puts them together.

Callers import the package: `ledger.Ledger(state)`, `ledger.NEXT`, `ledger.Drop`.
"""

from xnatdrop.ledger.book import Ledger
from xnatdrop.ledger.database import (
    FILENAME,
    PRIVATE_FOLDERS,
    SCHEMA_VERSION,
    STATE_ERRNOS,
    private_dir,
    state_errors,
)
from xnatdrop.ledger.drops import SETTABLE
from xnatdrop.ledger.records import Drop, Event, Streak
from xnatdrop.ledger.states import FINAL, NEXT, STATES, STEP_FROM, STEPS, InvalidTransition
from xnatdrop.ledger.xnat_answers import ANSWER_KEEP_SECONDS, HELD, SUSPECT, Answer, Breaker

__all__ = [
    "ANSWER_KEEP_SECONDS",
    "FILENAME",
    "FINAL",
    "HELD",
    "NEXT",
    "PRIVATE_FOLDERS",
    "SCHEMA_VERSION",
    "SETTABLE",
    "STATES",
    "STATE_ERRNOS",
    "STEPS",
    "STEP_FROM",
    "SUSPECT",
    "Answer",
    "Breaker",
    "Drop",
    "Event",
    "InvalidTransition",
    "Ledger",
    "Streak",
    "private_dir",
    "state_errors",
]
