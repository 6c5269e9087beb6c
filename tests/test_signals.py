"""`signals.capture`: the one signal helper of the daemon, `push` and the demo."""

from __future__ import annotations

import os
import signal
import threading

from xnatdrop import signals


def test_a_captured_signal_sets_the_flag_and_the_old_handler_comes_back() -> None:
    """1. A handler that sets a flag is installed for SIGUSR1. 2. The signal arrives.
    Result: the flag is set; after the block the previous handler is in place again."""
    before = signal.getsignal(signal.SIGUSR1)
    stopping = threading.Event()
    with signals.capture(lambda sig, frame: stopping.set(), (signal.SIGUSR1,)):
        assert signal.getsignal(signal.SIGUSR1) is not before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stopping.wait(5)
    assert signal.getsignal(signal.SIGUSR1) == before


def test_both_stop_signals_by_default_and_restored_after_an_error() -> None:
    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    seen: list[int] = []
    try:
        with signals.capture(lambda sig, frame: seen.append(sig)):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("the block failed")
    except RuntimeError:
        pass
    assert seen == [signal.SIGTERM, signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS} == before
    assert signals.INTERRUPTED == 130
