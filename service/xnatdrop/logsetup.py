"""Logging configuration, done once by `cli.main` and never at import time.

Two formats (`xnatdrop --log-format …`):

- "text" (the default): under systemd (JOURNAL_STREAM set) each line gets a `<N>`
  syslog-priority prefix, which journald turns into the record's priority; journald adds the
  time and host itself. Elsewhere: time, level, logger, message.
- "json": one JSON object per line, for log shippers (Vector, Fluent Bit, Promtail): `time`
  (ISO 8601 with the local offset), `level`, `logger`, `label`, `step`, `code`, `message`, and
  `exception` when there is a traceback. `label`, `step` and `code` come from the record's
  attributes of those names (set by `log_context`, or `extra={"code": ...}`), else null.

The message is the same text either way: what is safe in one format is safe in the other.

`with log_context(label):` labels every line xnatdrop logs inside the block, in whichever
thread runs it (borgmatic's `Log_prefix`): the message gets the prefix `label: ` (unless it
begins with it already) and the record the attributes `label` and, with
`log_context(step=...)`, `step`. So the pipeline writes `log.info("import: %d files", n)` and
the journal reads `SPN01_0042: import: 212 files`. Inside a context, do not pass `label` or
`step` in `extra=` (logging refuses to overwrite an attribute the context has set).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

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


#: The packages whose records `configure` sends out: xnatdrop's, and the sandbox XNAT's, which
#: `xnatdrop sandbox` and `xnatdrop demo` run in-process under its own package name.
LOGGERS = ("xnatdrop", "xnat_sandbox")


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
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)


# (label, step) of the innermost `log_context` of this thread or task.
_CONTEXT: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "xnatdrop_log_context", default=(None, None)
)
_FACTORY_LOCK = threading.Lock()
_factory_installed = False


@contextlib.contextmanager
def log_context(label: str | None = None, step: str | None = None) -> Iterator[None]:
    """Label xnatdrop's log lines inside the block with `label` (and `step`); see above.

    Nested blocks inherit what they do not set: `log_context(step="import")` inside
    `log_context("SPN01_0042")` keeps the label. A new label starts without a step.
    """
    _install_factory()
    outer_label, outer_step = _CONTEXT.get()
    if label is None:
        label, step = outer_label, step if step is not None else outer_step
    token = _CONTEXT.set((label, step))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _install_factory() -> None:
    """Wrap the log record factory once, the first time a context is entered.

    A record factory, not a handler filter: the label must be in the message wherever the
    record goes (the journal, pytest's capture, any handler a library adds), and logging calls
    the factory in the thread that logs, where the context is known.
    """
    global _factory_installed
    with _FACTORY_LOCK:
        if not _factory_installed:
            logging.setLogRecordFactory(_labelling(logging.getLogRecordFactory()))
            _factory_installed = True


def _labelling(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        label, step = _CONTEXT.get()
        if label is None or not record.name.startswith("xnatdrop"):
            return record
        record.label = label
        if step is not None:
            record.step = step
        prefix = f"{label}: "
        if isinstance(record.msg, str) and not record.getMessage().startswith(prefix):
            # With arguments, the message is %-formatted: a % in a label must stay literal.
            record.msg = (prefix.replace("%", "%%") if record.args else prefix) + record.msg
        return record

    return make
