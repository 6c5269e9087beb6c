"""Logging configuration, done once by `cli.main` and never at import time.

Under systemd (JOURNAL_STREAM set) each line gets a `<N>` syslog-priority prefix, which journald
turns into the record's priority; journald adds the time and host itself.
"""

from __future__ import annotations

import logging
import os
import sys

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


def configure(verbosity: int = 0) -> None:
    """Send records to stderr: -1 warnings only, 0 info, 1+ debug."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger("xnatdrop")
    root.handlers[:] = [handler]
    root.setLevel(level)
