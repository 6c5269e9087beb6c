"""Helpers for tests that run `xnatdrop run` as a real process against the sandbox.

`DaemonProcess` starts `python -m xnatdrop run` with a real NOTIFY_SOCKET (a datagram socket the
test binds, as systemd's would be); every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from push_helpers import start_sandbox, write_config
from xnat_sandbox import Sandbox
from xnatdrop import daemon, signals

DEADLINE = 120.0
OLD = 978_307_200  # 2001-01-01: robocopy /COPY:DAT and Explorer keep the source's mtime


def wait_for(condition: Callable[[], object], timeout: float = DEADLINE, what: str = "") -> None:
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        pause.wait(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


class DaemonProcess:
    """`xnatdrop run` in its own process, with a notify socket the test reads."""

    def __init__(self, config_path: Path, workdir: Path) -> None:
        self.config_path = config_path
        self.log_path = workdir / "daemon.log"
        self.socket_path = workdir / "notify.sock"
        self.messages: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.socket_path), "WATCHDOG_USEC": "2000000"}
        env.pop("WATCHDOG_PID", None)
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "xnatdrop", "-v", "run", "--config", str(self.config_path)],
                env=env,
                stderr=log_file,
                stdout=log_file,
            )
        self.receive_until(lambda m: m.startswith("READY=1"))

    def receive_until(self, match: Callable[[str], bool], timeout: float = 60) -> None:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while True:
            message = self.sock.recv(4096).decode()
            self.messages.append(message)
            if match(message):
                return

    def stop(self) -> int:
        """SIGTERM, then the exit code (the daemon must stop within its stop timeout)."""
        assert self.process is not None and self.sock is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=90)
        self.sock.settimeout(0)
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self.sock.close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.sock is not None:
            self.sock.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def status(self, state: Path) -> dict[str, object]:
        try:
            return dict(json.loads((state / "daemon-status.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    server = start_sandbox(tmp_path / "xnat")
    yield server
    server.stop()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Every daemon a test starts is killed at the end, whatever happened."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def settle_config(tmp_path: Path, url: str, quiet: float = 1, **schedule: object) -> Path:
    lines = ["[settle]", f"quiet_seconds = {quiet}", "[schedule]"]
    lines += [f"{key} = {value}" for key, value in schedule.items()]
    return write_config(tmp_path, url, extra="\n".join(lines) + "\n")


def start(daemons: list[DaemonProcess], config_path: Path, tmp_path: Path) -> DaemonProcess:
    process = DaemonProcess(config_path, tmp_path)
    daemons.append(process)
    process.start()
    return process


def done_labels(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "done").glob("*/*") if p.is_dir())


def imports(sandbox: Sandbox) -> int:
    return sum(n for key, n in sandbox.requests.items() if "/services/import" in key)


def archives(sandbox: Sandbox) -> int:
    """Archive requests the sandbox has received (counted when they arrive)."""
    return sum(n for key, n in sandbox.requests.items() if "/services/archive" in key)


def xnatdrop(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Any:
    """Run one `xnatdrop` command as its own process; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "xnatdrop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def interruptible_xnatdrop(*args: str) -> subprocess.Popen[str]:
    """Start one `xnatdrop` command as a terminal would, for a test that sends it SIGINT:
    with SIGINT at its default action, whatever this process does with it; stdout and stderr
    piped, as text.

    Why: a child inherits an ignored SIGINT, and Python then leaves it ignored ("SIGINT is
    translated into a KeyboardInterrupt exception if the parent process has not changed it",
    `signal` docs), so a Ctrl-C the test sends would do nothing. A suite started as a background
    job of a non-interactive shell (`pytest … &` in a script or an agent's shell) runs with
    SIGINT ignored (POSIX XCU 2.11: "the commands in the list shall inherit … SIG_IGN for the
    SIGINT and SIGQUIT signals"). Handling SIGINT here while the child starts gives it the
    default action, since exec resets every handled signal to its default.
    """
    command = [sys.executable, "-m", "xnatdrop", *args]
    with signals.capture(signal.default_int_handler, (signal.SIGINT,)):
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def other_state_config(config_path: Path, name: str) -> Path:
    """A copy of `config_path` that uses another state folder (same drop root, same XNAT)."""
    text = config_path.read_text(encoding="utf-8")
    state = config_path.parent / "state"
    copy = config_path.parent / f"{name}.toml"
    copy.write_text(text.replace(f'"{state}"', f'"{config_path.parent / name}"'), "utf-8")
    return copy


def run_with(runner: daemon.Daemon, scenario: Callable[[], None]) -> int:
    """Run the daemon on this (main) thread; `scenario` runs beside it, then SIGTERM."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            assert runner.started.wait(DEADLINE), "daemon did not start"
            scenario()
        except BaseException as error:
            errors.append(error)
        finally:
            if runner.started.is_set():
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                runner.stopping.set()

    thread = threading.Thread(target=body)
    thread.start()
    code = runner.run()
    thread.join()
    if errors:
        raise errors[0]
    return code
