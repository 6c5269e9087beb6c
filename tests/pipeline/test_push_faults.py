"""Push under faults: 503 bursts, dropped uploads, expired sessions, a restarted server, and
`kill -9` of the push process at every step boundary and in the middle of the upload.

Every scenario ends the same way, after re-running the push where needed: exactly one archived
session holding every DICOM file once with the right MD5s, an empty prearchive, and every
original file present and byte-identical in done/ (or quarantine/).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest

from push_helpers import (
    PROJECT,
    add_converted_file,
    assert_archived_once,
    client,
    done_folder,
    load,
    push_process,
    snapshot,
    stage,
    start_sandbox,
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import config, ledger, pack, pipeline
from xnatdrop.pipeline import spool

LABEL = "SPN01_0007"
DICOM_FILES = 21  # the one GE localizer series of SMALL


def push(settings: config.Config, folder: Path, **kwargs: object) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings), **kwargs)


def assert_done(tmp_path: Path, settings: config.Config, original: dict[str, str]) -> None:
    assert_archived_once(settings, LABEL, original, DICOM_FILES)
    kept = snapshot(done_folder(tmp_path, LABEL))
    assert {k: v for k, v in kept.items() if not k.startswith("RECEIPT")} == original
    assert not (tmp_path / "drop" / LABEL).exists()
    with ledger.Ledger(settings.paths.state) as book:
        assert [d.state for d in book.drops(PROJECT, LABEL)] == ["done"]


# -- in-process faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/data/services/import", "/data/services/archive", "/data/prearchive/", "/data/projects/"],
)
def test_503_bursts_are_retried_with_backoff(tmp_path: Path, server: Sandbox, path: str) -> None:
    """Two 503s in a row on each kind of call; the push retries and archives once."""
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    server.fail(path, status=503, count=2)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert server.faults.describe()["rules"] == [], "the 503s were never sent"
    assert_done(tmp_path, settings, original)


def test_a_long_outage_hands_back_and_the_next_run_resumes(tmp_path: Path, server: Sandbox) -> None:
    settings = load(write_config(tmp_path, server.url, inline_attempts=2))
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    server.fail("/data/services/import", status=503, count=None)
    outcome = push(settings, folder)
    assert outcome.kind == "transient" and "503" in outcome.message, outcome
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        assert (drop.state, drop.attempts, drop.last_error_code) == ("packed", 2, "TRANSIENT")
    server.clear_faults()
    assert push(settings, folder).kind == "archived"
    assert_done(tmp_path, settings, original)


def test_connection_dropped_mid_upload(tmp_path: Path, server: Sandbox) -> None:
    """The server cuts the upload after 200 kB; the retry cleans up and sends it again."""
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    server.drop("/data/services/import", after_bytes=200_000, count=1)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert server.faults.describe()["rules"] == [], "the connection was never dropped"
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        failed = [e for e in book.history(drop) if e.event == "failed"]
    assert [e.step for e in failed] == ["import"] and drop.attempts == 1
    assert_done(tmp_path, settings, original)


def test_session_expiry_mid_run(
    tmp_path: Path, server: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Every JSESSIONID is invalidated while the zip is being sent; the client logs in again."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    expired: list[int] = []

    def expire_halfway(step: str, done: int, total: int) -> None:
        if step == "import" and done >= total // 2 and not expired:
            expired.append(server.expire_sessions())

    outcome = push(settings, folder, progress=expire_halfway)
    assert outcome.kind == "archived", outcome
    assert expired and expired[0] >= 1
    assert "session expired; logging in again" in caplog.text
    assert_done(tmp_path, settings, original)


def test_sandbox_restarted_mid_run(tmp_path: Path, server: Sandbox) -> None:
    """1. The server goes down in the middle of the upload. 2. The push gives up (exit 3
    territory). 3. The server comes back on the same port and data. 4. The next run resumes.
    """
    settings = load(write_config(tmp_path, server.url, inline_attempts=1))
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)

    def stop_halfway(step: str, done: int, total: int) -> None:
        if step == "import" and done >= total // 2 and server._server is not None:
            server.stop()

    assert push(settings, folder, progress=stop_halfway).kind == "transient"
    again = start_sandbox(tmp_path / "xnat", port=server.port)
    try:
        outcome = push(settings, folder)
        assert outcome.kind == "archived", outcome
        assert_done(tmp_path, settings, original)
    finally:
        again.stop()


def test_a_file_changed_during_the_upload_is_transient_and_replanned(
    tmp_path: Path, server: Sandbox
) -> None:
    """1. A frozen file is cut short after the zip was planned. 2. The streamed upload stops
    with a transient error and the plan is dropped. 3. The file is put back; the next run plans
    again and archives once."""
    settings = load(write_config(tmp_path, server.url, inline_attempts=1))
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    changed: list[tuple[Path, bytes]] = []

    def cut_a_file(step: str, done: int, total: int) -> None:
        if step == "pack" and not changed:
            (plan,) = (settings.paths.state / "spool").rglob(spool.NAMES[pack.Plan])
            planned = spool.load(plan.parent, pack.Plan)
            assert planned is not None
            relative = f"/{LABEL}/{planned.files[0].entry.path}"
            (path,) = (p for p in (tmp_path / "drop").rglob("*") if str(p).endswith(relative))
            changed.append((path, path.read_bytes()))
            path.write_bytes(changed[0][1][:1000])

    outcome = push(settings, folder, progress=cut_a_file)
    assert outcome.kind == "transient" and "changed after planning" in outcome.message, outcome
    assert not list((settings.paths.state / "spool").rglob(spool.NAMES[pack.Plan]))
    path, data = changed[0]
    path.write_bytes(data)
    assert push(settings, folder).kind == "archived"
    assert_done(tmp_path, settings, original)


@pytest.mark.slow
def test_a_lost_manifest_is_rebuilt_by_hashing(tmp_path: Path, server: Sandbox) -> None:
    """1. The push is SIGKILLed once the upload is complete, before the ledger heard of it.
    2. The manifest is lost (as after a crash just before it was saved). 3. The re-run finds the
    upload READY in the prearchive, hashes the files to compare, and does not send them again."""
    config_path = write_config(tmp_path, server.url)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    killed = push_process(config_path, folder, "import:after")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (manifest,) = (settings.paths.state / "spool").rglob(spool.NAMES[pack.Manifest])
    manifest.unlink()
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 0, rerun.stderr
    assert "already in the prearchive; nothing sent" in rerun.stderr
    assert_done(tmp_path, settings, original)


# -- kill -9 of the push process ---------------------------------------------------------------

BOUNDARIES = [f"{step}:{when}" for step in ledger.STEPS for when in ("before", "after")]


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [*BOUNDARIES, "import:bytes=300000"])
def test_kill_9_then_rerun(tmp_path: Path, server: Sandbox, crash_at: str) -> None:
    """`xnatdrop push` is SIGKILLed at a step boundary (or 300 kB into the upload), then run
    again without the hook: it resumes from the ledger and archives exactly once."""
    config_path = write_config(tmp_path, server.url)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 0, rerun.stderr
    assert_done(tmp_path, settings, original)


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["check:before", "quarantine:before", "quarantine:after"])
def test_kill_9_while_quarantining(tmp_path: Path, server: Sandbox, crash_at: str) -> None:
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL)
    add_converted_file(folder)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 1, rerun.stderr
    (target,) = (tmp_path / "quarantine").iterdir()
    kept = snapshot(target)
    assert {k: v for k, v in kept.items() if not k.startswith("QUARANTINE")} == original
    assert (target / "QUARANTINE.txt").is_file() and (target / "QUARANTINE.json").is_file()
    with ledger.Ledger(load(config_path).paths.state) as book:
        assert [d.state for d in book.drops(PROJECT, LABEL)] == ["quarantined"]


@pytest.mark.slow
def test_snapshots_and_automation_output_added_before_a_crash_resume_cause_no_conflict(
    tmp_path: Path, server: Sandbox
) -> None:
    """1. The push is SIGKILLed right after XNAT archived the session, before the ledger heard
    of it. 2. Someone opens the session in XNAT (SNAPSHOTS on every scan) and automation adds a
    NIFTI resource. 3. The re-run finds the session archived: only DICOM resources count, so it
    is ours, and the push finishes; no LABEL_EXISTS, no ARCHIVE_MISMATCH."""
    config_path = write_config(tmp_path, server.url)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL)
    original = snapshot(folder)
    killed = push_process(config_path, folder, "archive:after")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert server.view_session(LABEL, PROJECT) == ["1"]
    server.add_scan_resource(LABEL, "1", "NIFTI", {"1.nii.gz": b"\x1f\x8b"}, PROJECT)
    with client(settings) as xnat_client:
        kinds = {f.resource for f in xnat_client.session_files(PROJECT, LABEL, LABEL)}
    assert kinds == {"DICOM", "SNAPSHOTS", "NIFTI"}
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 0, rerun.stderr
    assert "already archived" in rerun.stderr
    assert_done(tmp_path, settings, original)


def test_a_proxy_413_quarantines_at_once_naming_the_size_and_the_fix(
    tmp_path: Path, server: Sandbox
) -> None:
    """A proxy's body-size limit is about this session's size, not about XNAT: a clear
    permanent error with the size and the setting to raise, not a retry or a breaker wait."""
    settings = load(write_config(tmp_path, server.url))
    page = "<html><head><title>413 Request Entity Too Large</title></head></html>"
    server.fail("^/data/services/import$", status=413, count=None, body=page)
    outcome = push(settings, stage(tmp_path / "drop", LABEL, sidecars=False))
    assert outcome.kind == "quarantined" and outcome.code == "XNAT_TOO_LARGE", outcome
    assert "GB) was refused as too large (HTTP 413" in outcome.message
    assert outcome.path is not None
    note = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert "client_max_body_size" in note
