"""The local servers a run talks to, each a real process on a free loopback port.

- the sandbox XNAT (`xnatdrop sandbox`, stock settings: site anonymisation on, as a fresh XNAT);
- the null sink (`nullsink.py`): reads and discards request bodies;
- Orthanc, through the tests' own helper (`tests/orthanc.py`).

Each is a context manager that yields once the server listens and stops it on the way out, so a
failed measurement never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from harness import machine, product

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "dimse"))  # orthanc.py, beside the sender's tests
from orthanc import Orthanc  # noqa: E402  (the tests' Orthanc, reused as is)

USER, PASSWORD, PROJECT = "bench", "bench", "SPN01"


class Server:
    """A child process that printed its URL on the first line of its stdout."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.command = command
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as errors:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=errors, text=True
            )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError(f"{self.command[:4]} did not start; see {self.log}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_kb(self) -> int:
        return machine.peak_rss_kb(self.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def sandbox(data: Path) -> Iterator[Server]:
    """A fresh sandbox XNAT with project SPN01 and one owner account, in its own process."""
    server = Server(product.sandbox_command(data, USER, PASSWORD, PROJECT), data / "sandbox.log")
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def null_sink(log: Path) -> Iterator[Server]:
    server = Server([sys.executable, str(Path(__file__).with_name("nullsink.py"))], log)
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def orthanc(folder: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc (empty storage) with TCP_NODELAY, as bench/cstore_speed.py used it."""
    server = Orthanc(folder, count=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def env_without_notify() -> dict[str, str]:
    """This environment without systemd's variables, for daemons started by the benchmark."""
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env
