"""One traceback per distinct error and hour in the daemon's log (`quiet_repeats`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator


class RepeatedTracebacks(logging.Filter):
    """Let each distinct traceback through once an hour; repeats keep their line, not the trace.

    An unexpected error keeps its traceback, because it is a bug (STYLE.md): once. A drop that
    hits the same bug on every attempt once filled the journal with the same 40 lines each
    scan. Records are the same when logger, message and exception (type and text) match.
    """

    def __init__(self, every: float = 3600.0) -> None:
        super().__init__()
        self.every = every
        self.seen: dict[tuple[str, str, str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        error = record.exc_info[1]
        key = (record.name, record.getMessage(), type(error).__name__, str(error))
        now = time.monotonic()
        first = self.seen.get(key)
        if first is None or now - first >= self.every:
            self.seen[key] = now
            return True
        record.msg = f"{record.getMessage()} ({type(error).__name__}: {error}; the same "
        record.msg += "error as before, traceback not repeated)"
        record.args = None
        record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def quiet_repeats(logger: logging.Logger) -> Iterator[None]:
    """Install `RepeatedTracebacks` on the handlers of `logger` for the daemon's life."""
    repeats = RepeatedTracebacks()
    handlers = list(logger.handlers)
    for handler in handlers:
        handler.addFilter(repeats)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(repeats)
