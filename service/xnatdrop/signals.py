"""Catching SIGINT and SIGTERM for the length of a block, the one way xnatdrop does it.

The daemon, `xnatdrop push` and the demo each need a stop request to set a flag and nothing
else (uvicorn `server.py::handle_exit`): the work then stops at its next checkpoint. Handlers
are installed with `signal.signal` and the previous ones put back afterwards (uvicorn's
`capture_signals`), so tests can run each of them in-process, and a handler does no I/O.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator
from types import FrameType

Handler = Callable[[int, FrameType | None], None]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE_FROM_SIGNAL = 128  # a shell reports 128 + N for a process ended by signal N
INTERRUPTED = EXIT_CODE_FROM_SIGNAL + signal.SIGINT  # 130, what a shell reports for Ctrl-C
STOPPED_WHILE_STARTING = "xnatdrop: stopped while starting; nothing was done"


@contextlib.contextmanager
def capture(handler: Handler, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Install `handler` for `signals` (SIGINT and SIGTERM) and put the previous ones back.

    Only the main thread may install handlers (Python's rule); `handler` runs between two
    bytecodes of the main thread, so it should only set a flag.
    """
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred(signals: Iterable[signal.Signals] = (signal.SIGINT,)) -> Iterator[None]:
    """Hold `signals` (Ctrl-C) back for the length of the block and let one that came meanwhile
    arrive when it ends, as a KeyboardInterrupt raised there.

    For the ~0.3 s in which a command imports what it needs: a KeyboardInterrupt raised inside
    an import leaves a traceback, or, inside pydantic-core's native code, a PanicException. Held
    back, it arrives at one known point that the caller handles. Main thread, before any other
    thread starts: the kernel hands a process-wide signal to a thread that does not hold it back.
    """
    held = set(signals)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        # CPython runs the handlers of what was pending before this call returns, so a
        # KeyboardInterrupt is raised from here, not some bytecodes later.
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
