"""What one call of `pipeline.process` came to: an `Outcome` of one `Kind`.

Each kind carries the exit code `xnatdrop push` gives it (`exitcodes.Exit`), and the daemon
decides what to do next from the kind alone:

- `archived`: archived, verified, sidecars attached, folder in done/ (exit 0);
- `quarantined`: a permanent failure, folder in quarantine/ with reason files (exit 1);
- `transient`: stopped on a retryable error (timeout, reset, 5xx, expired session that could
  not be renewed; a file or folder of the drop or the share that cannot be read or written,
  code FILESYSTEM, naming the path and the fix; or an unexpected exception, a bug, recorded as
  INTERNAL with its traceback); `retry_at` says when the ledger considers the drop due again
  (exit 3);
- `state`: xnatdrop's own state folder cannot be written (full, read-only): no drop is at
  fault; the caller holds every push and tries again with backoff (exit 3);
- `auth_failed`: XNAT refused our credentials; the drop is not due again for
  `push.retry_max_seconds`; the caller should stop all uploads and alert (exit 3);
- `busy`: another process holds this drop's lock (exit 3);
- `stopped`: a stop was requested; the drop stopped at a step boundary (exit 3);
- `incomplete`: the folder is still being copied; it was moved back to the drop root (ledger
  state `new`) to settle again (exit 3).
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from xnatdrop.exitcodes import Exit


class Kind(enum.StrEnum):
    """The kinds of outcome, each with the exit code `xnatdrop push` gives it."""

    exit_code: Exit

    def __new__(cls, value: str, exit_code: Exit) -> Kind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        return member

    ARCHIVED = "archived", Exit.OK
    QUARANTINED = "quarantined", Exit.BLOCKED
    TRANSIENT = "transient", Exit.TRANSIENT
    STATE = "state", Exit.TRANSIENT
    AUTH_FAILED = "auth_failed", Exit.TRANSIENT
    BUSY = "busy", Exit.TRANSIENT
    STOPPED = "stopped", Exit.TRANSIENT
    INCOMPLETE = "incomplete", Exit.TRANSIENT

    @property
    def final(self) -> bool:
        """The drop is finished: in done/ or in quarantine/."""
        return self in (Kind.ARCHIVED, Kind.QUARANTINED)

    @property
    def holds_pushes(self) -> bool:
        """Every push should wait: XNAT refused our login, or our state folder is unusable."""
        return self in (Kind.AUTH_FAILED, Kind.STATE)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one call of `process` achieved; see the module docstring for the kinds."""

    kind: Kind
    label: str
    drop_id: int | None = None
    message: str = ""
    code: str = ""
    retry_at: float | None = None
    path: Path | None = None

    @property
    def detail(self) -> str:
        """One line for logs and the daemon's status: the code and message, or the path."""
        if self.kind is Kind.ARCHIVED:
            return f"archived, now in {self.path}"
        return f"{self.code}: {self.message}" if self.code else self.message
