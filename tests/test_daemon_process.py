"""`xnatdrop run` as a real process against the sandbox XNAT (issue 5, "Done when").

Each test starts the daemon with `python -m xnatdrop run`, a real NOTIFY_SOCKET (a datagram
socket bound by the test, as systemd's would be) and a sandbox on a free port, then checks the
outcome on the sandbox's side: what XNAT received and archived. Quiet periods are 1–2 s through
the config; every wait polls a condition with a deadline.

Data: `ge_signa_premier_table` (GE SIGNA Premier RX29, BSD-2-Clause; see its README.md in
../shared/dicom): series 01_3_Plane_Localizer_FF, 21 files, copied into tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from push_helpers import (
    EXAM,
    PROJECT,
    archived_sessions,
    assert_archived_once,
    load,
    snapshot,
    stage,
    start_sandbox,
    write_config,
)
from shared_data import dataset
from xnatdrop import ledger
from xnatdrop.sandbox.server import Sandbox

pytestmark = pytest.mark.slow

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


def test_session_archived_and_systemd_notified_in_order(
    tmp_path: Path, sandbox: Sandbox, daemons: list[DaemonProcess]
) -> None:
    """1. The daemon starts (READY=1). 2. A session is dropped, settles and is archived.
    3. SIGTERM. Result: exit 0; READY=1, then WATCHDOG=1 pings with STATUS=, then STOPPING=1."""
    config_path = settle_config(tmp_path, sandbox.url)
    daemon = start(daemons, config_path, tmp_path)
    folder = stage(tmp_path / "staging", "SPN01_0001")
    original = snapshot(folder)
    folder.rename(tmp_path / "drop" / "SPN01_0001")
    wait_for(lambda: done_labels(tmp_path) == ["SPN01_0001"], what=daemon.log())
    daemon.receive_until(lambda m: m.startswith("WATCHDOG=1"))

    assert daemon.stop() == 0
    kinds = [m.split("\n")[0] for m in daemon.messages]
    assert kinds[0] == "READY=1"
    assert kinds[-1] == "STOPPING=1"
    assert set(kinds[1:-1]) == {"WATCHDOG=1"} and len(kinds) >= 3
    assert all("\nSTATUS=" in m for m in daemon.messages)
    assert_archived_once(load(config_path), "SPN01_0001", original, dicom_count=21)


def test_slow_writer_with_old_mtimes_never_uploads_a_partial_session(
    tmp_path: Path, sandbox: Sandbox, daemons: list[DaemonProcess]
) -> None:
    """A copy that pauses up to quiet−1 s between files and keeps 2001 mtimes.

    Result: XNAT receives one import, after the last file, holding all 21 files.
    """
    quiet = 2
    config_path = settle_config(tmp_path, sandbox.url, quiet=quiet)
    daemon = start(daemons, config_path, tmp_path)
    source = dataset("ge_signa_premier_table") / EXAM / "01_3_Plane_Localizer_FF"
    files = sorted(p for p in source.iterdir() if p.is_file())
    target = tmp_path / "drop" / "SPN01_0002" / source.name
    pauses = [quiet - 1, 0.1, 0.6, quiet - 1, 0.3]  # up to quiet−1 s, in a fixed pattern
    pause = threading.Event()
    target.mkdir(parents=True)
    for index, path in enumerate(files):
        shutil.copyfile(path, target / path.name)
        os.utime(target / path.name, (OLD, OLD))
        os.utime(target, (OLD, OLD))
        assert imports(sandbox) == 0, f"an upload started after {index + 1}/{len(files)} files"
        pause.wait(pauses[index % len(pauses)])  # the writer's own pace, not a wait for us
    assert imports(sandbox) == 0
    wait_for(lambda: done_labels(tmp_path) == ["SPN01_0002"], what=daemon.log())
    assert daemon.stop() == 0
    assert imports(sandbox) == 1
    original = {f"{source.name}/{p.name}": md5 for p, md5 in _md5s(files).items()}
    assert_archived_once(load(config_path), "SPN01_0002", original, dicom_count=len(files))


def _md5s(files: list[Path]) -> dict[Path, str]:
    import hashlib

    return {p: hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_fifty_folders_dropped_at_once_are_all_archived(
    tmp_path: Path, sandbox: Sandbox, daemons: list[DaemonProcess]
) -> None:
    config_path = settle_config(tmp_path, sandbox.url, max_concurrent_pushes=4)
    first = stage(tmp_path / "staging", "SPN01_1000", sidecars=False)
    labels = [f"SPN01_{1000 + i}" for i in range(50)]
    for label in labels[1:]:
        shutil.copytree(first, tmp_path / "staging" / label)
    daemon = start(daemons, config_path, tmp_path)
    for label in labels:
        (tmp_path / "staging" / label).rename(tmp_path / "drop" / label)

    wait_for(lambda: len(done_labels(tmp_path)) == 50, timeout=400, what=daemon.log())
    assert daemon.stop() == 0
    assert done_labels(tmp_path) == labels
    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())
    archived = archived_sessions(load(config_path))
    assert sorted(row["label"] for row in archived) == labels
    assert imports(sandbox) == 50


def test_drop_root_renamed_away_and_back_causes_no_quarantine(
    tmp_path: Path, sandbox: Sandbox, daemons: list[DaemonProcess]
) -> None:
    """1. A session is dropped. 2. The whole drop root disappears (an unmounted share), the
    daemon reports it paused. 3. It comes back. Result: the session is archived, nothing is
    quarantined, and the pause was reported in the log and in the status file."""
    config_path = settle_config(tmp_path, sandbox.url)
    daemon = start(daemons, config_path, tmp_path)
    drop = tmp_path / "drop"
    folder = stage(tmp_path / "staging", "SPN01_0003")
    original = snapshot(folder)
    folder.rename(drop / "SPN01_0003")
    drop.rename(tmp_path / "drop-away")
    state = tmp_path / "state"
    wait_for(lambda: daemon.status(state).get("paused_roots") == [str(drop)], what=daemon.log())
    (tmp_path / "drop-away").rename(drop)
    wait_for(lambda: done_labels(tmp_path) == ["SPN01_0003"], what=daemon.log())
    assert daemon.stop() == 0

    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())
    assert "ALERT" in daemon.log() and "paused" in daemon.log()
    assert_archived_once(load(config_path), "SPN01_0003", original, dicom_count=21)


def test_sigterm_mid_push_then_restart_archives_exactly_once(
    tmp_path: Path, sandbox: Sandbox, daemons: list[DaemonProcess]
) -> None:
    """1. A push is inside its upload (the sandbox holds the import 3 s). 2. SIGTERM.
    3. The daemon checkpoints and exits 0 with the drop unfinished in the ledger. 4. Restart.
    Result: the session is archived exactly once, from a single upload."""
    config_path = settle_config(tmp_path, sandbox.url)
    sandbox.delay("/data/services/import", seconds=3, count=1)
    first = start(daemons, config_path, tmp_path)
    folder = stage(tmp_path / "staging", "SPN01_0004")
    original = snapshot(folder)
    folder.rename(tmp_path / "drop" / "SPN01_0004")
    wait_for(lambda: imports(sandbox) >= 1, what=first.log())

    assert first.stop() == 0
    with ledger.Ledger(tmp_path / "state") as book:
        (drop,) = book.drops(PROJECT, "SPN01_0004")
    assert drop.state not in ("done", "quarantined"), "the push should have been cut short"
    assert done_labels(tmp_path) == []

    second = start(daemons, config_path, tmp_path)
    wait_for(lambda: done_labels(tmp_path) == ["SPN01_0004"], what=second.log())
    assert second.stop() == 0
    assert imports(sandbox) == 1
    assert_archived_once(load(config_path), "SPN01_0004", original, dicom_count=21)
