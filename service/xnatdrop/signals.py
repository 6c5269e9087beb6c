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
