"""Logging configuration, done once by `cli.main` and never at import time.

Two formats (`xnatdrop --log-format …`):

- "text" (the default): under systemd (JOURNAL_STREAM set) each line gets a `<N>`
  syslog-priority prefix, which journald turns into the record's priority; journald adds the
  time and host itself. Elsewhere: time, level, logger, message.
- "json": one JSON object per line, for log shippers (Vector, Fluent Bit, Promtail): `time`
  (ISO 8601 with the local offset), `level`, `logger`, `label`, `step`, `code`, `message`, and
  `exception` when there is a traceback. `label`, `step` and `code` come from the record's
  attributes of those names (`log.info(..., extra={"label": ..., "step": ..., "code": ...})`,
  or a filter such as issue 10's `log_context(label)` that sets them), else null.

The message is the same text either way: what is safe in one format is safe in the other.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys

FORMATS = ("text", "json")

_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournaldFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    FIELDS = ("label", "step", "code")

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created).astimezone()
        data: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **{name: getattr(record, name, None) for name in self.FIELDS},
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure(verbosity: int = 0, log_format: str = "text") -> None:
    """Send records to stderr: -1 warnings only, 0 info, 1+ debug; `log_format` in FORMATS."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger("xnatdrop")
    root.handlers[:] = [handler]
    root.setLevel(level)
