"""A background sender: jobs queued by the daemon run one at a time on a thread of their own.

Why: an SMTP server or a ping endpoint that is slow or down must never hold up a scan or a push
(STYLE.md, "monitoring never fails the job"). The caller's `submit` only puts the job on a
bounded queue and returns at once; the thread runs it. Each job handles the failures it
expects (a refused connection, a timeout) itself and reports them through `Channel`, which logs
the first failure of a streak as one warning and the recovery once, so a dead mail server costs
one line, not one per alert.

A job that raises something unexpected is a bug: the thread dies with its traceback (Python's
threading excepthook prints it) and the next `submit` starts a new thread, saying so once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

QUEUE_SIZE = 200  # alerts are rate-limited per key; hundreds pending means the server is down


class Channel:
    """The health of one way of telling people ("e-mail", "ping"): warn once per failure streak.

    `failed(reason)` logs a warning only when the channel was working (or never tried);
    `worked()` logs once that it works again. `reason` must be our own words (host, port, what
    went wrong), never a password or a full URL.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing: str | None = None
        self.failures = 0
        self.successes = 0
        self._lock = threading.Lock()

    def failed(self, reason: str) -> None:
        with self._lock:
            first = self.failing is None
            self.failing = reason
            self.failures += 1
        if first:
            log.warning(
                "%s does not work (%s); xnatdrop goes on, and says so here once it works again",
                self.name,
                reason,
            )

    def worked(self) -> None:
        with self._lock:
            was = self.failing
            self.failing = None
            self.successes += 1
        if was is not None:
            log.warning("%s works again", self.name)


class Outbox:
    """A bounded queue of jobs and the daemon thread that runs them, in order.

    A class because it has a lifetime: `close(timeout)` lets queued jobs finish within the
    timeout (the daemon's shutdown) and returns how many were left unsent.
    """

    def __init__(self, name: str, size: int = QUEUE_SIZE) -> None:
        self.name = name
        self._queue: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue(size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._full_warned = False
        self._closed = False
        self.idle = threading.Event()  # set while nothing is queued or running (tests wait on it)
        self.idle.set()

    def submit(self, what: str, job: Callable[[], None]) -> bool:
        """Queue `job` (described by `what`, for messages); False if it had to be dropped."""
        if self._closed:
            log.warning("%s: closed; not sending %s", self.name, what)
            return False
        self._ensure_thread()
        self.idle.clear()
        try:
            self._queue.put_nowait((what, job))
        except queue.Full:
            if not self._full_warned:
                log.warning(
                    "%s: %d messages are waiting to be sent; dropping new ones (%s) until the "
                    "queue drains",
                    self.name,
                    self._queue.qsize(),
                    what,
                )
                self._full_warned = True
            return False
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._thread is not None:
                log.error(
                    "%s: its sender thread ended on an unexpected error (traceback above); "
                    "starting a new one",
                    self.name,
                )
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            _what, job = item
            try:
                job()
            finally:
                self._queue.task_done()
                if self._queue.unfinished_tasks == 0:
                    self._full_warned = False
                    self.idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued job has run (or `timeout` passed); True if idle."""
        return self.idle.wait(timeout)

    def close(self, timeout: float) -> int:
        """Let queued jobs run for at most `timeout` seconds; return how many were left."""
        self._closed = True
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._queue.qsize()
        self.idle.wait(max(0.0, deadline - time.monotonic()))
        left = self._queue.qsize()
        # When the queue is full the thread is still busy; it is a daemon thread and ends with
        # the process.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        thread.join(max(0.0, deadline - time.monotonic()))
        if left:
            log.warning("%s: %d message(s) not sent before the stop", self.name, left)
        return left
