"""`signals.capture`: the one signal helper of the daemon, `push` and the demo."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from xnatdrop import cli, signals


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


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT at Python's default for the test, whatever the suite's own: run as a background
    job of a script (`pytest … &`, or `.ci/run &`), the suite has SIGINT ignored (POSIX XCU
    2.11), and a process that ignores SIGINT rightly never sees these tests' Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_a_ctrl_c_while_deferred_arrives_when_the_block_ends() -> None:
    """1. SIGINT arrives inside `signals.deferred`. Result: the block runs to its end and the
    KeyboardInterrupt is raised where it ends, and SIGINT is no longer held after it."""
    finished = False
    with pytest.raises(KeyboardInterrupt), signals.deferred():
        _ctrl_c()
        for _ in range(1000):  # bytecodes at which an undeferred Ctrl-C would be raised
            pass
        finished = True
    assert finished
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


@pytest.mark.usefixtures("default_sigint")
def test_a_ctrl_c_while_the_command_starts_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. SIGINT arrives while `xnatdrop` imports its command (the first ~0.3 s of a run).
    Result: exit 130 and one sentence, no traceback; the import was not cut off half way."""
    real = cli.build_parser
    built: list[str | None] = []

    def interrupted_while_importing(command: str | None = None) -> argparse.ArgumentParser:
        _ctrl_c()
        parser = real(command)
        built.append(command)
        return parser

    monkeypatch.setattr(cli, "build_parser", interrupted_while_importing)
    assert cli.main(["check", "/nonexistent"]) == signals.INTERRUPTED
    assert built == ["check"]
    assert capsys.readouterr().err == signals.STOPPED_WHILE_STARTING + "\n"


def _ctrl_c() -> None:
    """SIGINT to the main thread: `xnatdrop` starts with no other thread, but pytest's process
    may have some, and the kernel hands a process-wide signal to one that does not hold it."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


CTRL_C_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys
class CtrlCAtPydantic(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pydantic":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlCAtPydantic())
sys.argv = ["xnatdrop", "--version"]
from xnatdrop import entry
code = entry.main()
assert "pydantic" in sys.modules and "xnatdrop.cli" in sys.modules
sys.exit(code)
"""


def test_the_console_script_holds_a_ctrl_c_until_its_imports_are_whole() -> None:
    """1. A fresh interpreter runs the console script's entry point; SIGINT arrives while it
    imports `cli` (at pydantic, half way). Result: the import completes, then exit 130 with
    one sentence on stderr and no traceback."""
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING],
        capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    stopped = signals.STOPPED_WHILE_STARTING + "\n"
    assert (done.returncode, done.stderr, done.stdout) == (130, stopped, "")
