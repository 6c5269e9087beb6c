"""The rows the ledger hands out: a drop, an event of its history, a streak of failures."""

from __future__ import annotations

import dataclasses
from typing import Any

from xnatdrop.ledger.states import FINAL, STEP_FROM

COLUMNS = (
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
