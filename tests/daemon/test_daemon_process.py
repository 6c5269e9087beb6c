"""`xnatdrop run` as a real process against the sandbox XNAT (issue 5, "Done when").

Each test starts the daemon with `python -m xnatdrop run`, a real NOTIFY_SOCKET (a datagram
socket bound by the test, as systemd's would be) and a sandbox on a free port, then checks the
outcome on the sandbox's side: what XNAT received and archived. Quiet periods are 1–2 s through
the config; every wait polls a condition with a deadline.

Data: `ge_signa_premier_table` (GE SIGNA Premier RX29, BSD-2-Clause; see its README.md in
../shared/dicom): series 01_3_Plane_Localizer_FF, 21 files, copied into tmp_path.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from daemon_helpers import (  # the fixtures `sandbox` and `daemons` too
    OLD,
    DaemonProcess,
    daemons,
    done_labels,
    imports,
    sandbox,
    settle_config,
    start,
    wait_for,
)
from push_helpers import (
    EXAM,
    PROJECT,
    archived_sessions,
    assert_archived_once,
    load,
    snapshot,
    stage,
)
from shared_data import dataset
from xnat_sandbox import Sandbox
from xnatdrop import ledger

__all__ = ["daemons", "sandbox"]  # fixtures, imported for pytest

pytestmark = pytest.mark.slow


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
