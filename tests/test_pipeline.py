"""The push pipeline end to end against the sandbox XNAT, over real HTTP, on real GE series.

Each test stages a subject folder in tmp_path/drop, runs `pipeline.process` (or `xnatdrop push`
in-process) and checks XNAT, the ledger and the file system.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from push_helpers import (
    MEDIUM,
    PROJECT,
    SMALL,
    add_converted_file,
    archived_sessions,
    assert_archived_once,
    client,
    done_folder,
    load,
    snapshot,
    stage,
    start_sandbox,
    write_config,
)
from xnatdrop import cli, config, ledger, pipeline, xnat
from xnatdrop.commands import push as push_command
from xnatdrop.sandbox.server import Sandbox

LABEL = "SPN01_0001"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = start_sandbox(tmp_path / "xnat")
    yield sandbox
    sandbox.stop()


@pytest.fixture
def settings(tmp_path: Path, server: Sandbox) -> config.Config:
    return load(write_config(tmp_path, server.url))


def push(settings: config.Config, folder: Path, **kwargs: object) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings), **kwargs)


def test_clean_session_is_archived_verified_attached_and_receipted(
    tmp_path: Path, settings: config.Config
) -> None:
    """1. A folder of three real series plus behav/ and physio/ is dropped.
    2. It is pushed once.
    Result: one archived session with the folder's label for subject and session, one scan per
    series with the right file counts and MD5s, the sidecars as resources, the untouched folder
    in done/<date>/<label>/ with RECEIPT.txt/.json, and a ledger history of every step.
    """
    folder = stage(tmp_path / "drop", LABEL, MEDIUM)
    original = snapshot(folder)
    seen: list[tuple[str, int, int]] = []
    outcome = push(settings, folder, progress=lambda *a: seen.append(a))
    assert (outcome.kind, outcome.label) == ("archived", LABEL), outcome
    assert_archived_once(settings, LABEL, original, dicom_count=92)
    with client(settings) as xnat_client:
        files = xnat_client.session_files(PROJECT, LABEL, LABEL)
        assert {f.scan: 0 for f in files}.keys() == {"1", "2", "5"}
        assert sum(f.scan == "2" for f in files) == 50
        behav = xnat_client.resource_files(PROJECT, LABEL, LABEL, "behav")
        physio = xnat_client.resource_files(PROJECT, LABEL, LABEL, "physio")
        assert behav is not None and physio is not None
        assert sorted(f.path for f in behav) == ["responses.csv", "run2/responses.csv"]
        assert [f.path for f in physio] == ["resp_001.log"]
        assert xnat_client.resource_files(PROJECT, LABEL, LABEL, "logs") is None
    done = done_folder(tmp_path, LABEL)
    assert outcome.path == done
    kept = snapshot(done)
    assert {k: v for k, v in kept.items() if not k.startswith("RECEIPT")} == original
    receipt_text = (done / "RECEIPT.txt").read_text(encoding="utf-8")
    assert f"as session {LABEL}" in receipt_text and "92 files" in receipt_text
    assert not folder.exists()
    assert {step for step, _, _ in seen} == {"pack", "import"}
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        assert drop.state == "done" and drop.final_path == str(done)
        steps = [e.step for e in book.history(drop) if e.event == "done"]
        assert steps == list(ledger.STEPS)
    assert not any((tmp_path / "drop" / ".xnatdrop-work").rglob("*")), "work area not empty"
    assert not any((tmp_path / "state" / "spool").rglob("*.zip")), "spool not cleaned"


def test_blocked_folder_is_quarantined_untouched_with_both_reason_files(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """A NIfTI file in a series folder (a converted file, rule B1) blocks the upload."""
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    converted = add_converted_file(folder)
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined" and outcome.code == "RULES_BLOCKED", outcome
    target = outcome.path
    assert target is not None and target.parent == tmp_path / "quarantine"
    assert target.name.startswith(f"{LABEL}__")
    kept = snapshot(target)
    assert {k: v for k, v in kept.items() if not k.startswith("QUARANTINE")} == original
    text = (target / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert converted in text and "To resubmit" in text and "CONVERTED_FILE" in text
    reason = (target / "QUARANTINE.json").read_text(encoding="utf-8")
    assert '"RULES_BLOCKED"' in reason
    assert archived_sessions(settings) == []
    assert server.requests.get("POST /data/services/import", 0) == 0


def test_label_conflict_is_quarantined(tmp_path: Path, settings: config.Config) -> None:
    """1. LABEL is archived with one series. 2. Another folder with the same label but other
    series is dropped. Result: the second is quarantined as LABEL_EXISTS; XNAT keeps the first."""
    first = stage(tmp_path / "drop", LABEL, SMALL)
    first_files = snapshot(first)
    assert push(settings, first).kind == "archived"
    second = stage(tmp_path / "drop", LABEL, ("02_Ax_fMRI_FF_I11.1_S15.9",), sidecars=False)
    original = snapshot(second)
    outcome = push(settings, second)
    assert outcome.kind == "quarantined" and outcome.code == "LABEL_EXISTS", outcome
    assert outcome.path is not None
    assert {k: v for k, v in snapshot(outcome.path).items() if "QUARANTINE" not in k} == original
    text = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert "already exists" in text and "rename the folder" in text
    assert_archived_once(settings, LABEL, first_files, dicom_count=21)


def test_identical_resubmission_is_not_sent_again(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """The same session dropped twice: the second push finds every file archived and sends
    nothing, and the second folder lands in done/ beside the first."""
    first = stage(tmp_path / "drop", LABEL, SMALL)
    original = snapshot(first)
    assert push(settings, first).kind == "archived"
    imports = server.requests.get("POST /data/services/import", 0)
    again = stage(tmp_path / "drop", LABEL, SMALL)
    outcome = push(settings, again)
    assert outcome.kind == "archived", outcome
    assert server.requests.get("POST /data/services/import", 0) == imports
    assert_archived_once(settings, LABEL, original, dicom_count=21)
    assert outcome.path is not None and outcome.path.name == f"{LABEL}__2"


def test_subject_metadata_from_subject_toml(tmp_path: Path, settings: config.Config) -> None:
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    (folder / "subject.toml").write_text('sex = "F"\nhandedness = "left"\nyob = 1990\n')
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    with client(settings) as xnat_client:
        response = xnat_client.request(
            "GET", f"/data/projects/{PROJECT}/subjects/{LABEL}", params={"format": "json"}
        )
    # XNAT keeps them in the subject's demographics child (xnat:demographicData).
    children = response.json()["items"][0]["children"]
    (demographics,) = [c for c in children if c["field"] == "demographics"]
    fields = demographics["items"][0]["data_fields"]
    assert (fields.get("gender"), fields.get("handedness"), str(fields.get("yob"))) == (
        "female",
        "left",
        "1990",
    )


def test_bad_subject_toml_quarantines_before_upload(
    tmp_path: Path, settings: config.Config
) -> None:
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    (folder / "subject.toml").write_text('sex = "maybe"\n')
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined" and outcome.code == "SUBJECT_FILE_INVALID", outcome
    assert archived_sessions(settings) == []


def test_refused_login_stops_without_retrying(tmp_path: Path, server: Sandbox) -> None:
    path = write_config(tmp_path, server.url)
    settings = load(path)
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    before = time.time()
    with ledger.Ledger(settings.paths.state) as book:
        outcome = pipeline.process(
            folder, settings, book, lambda: xnat.XnatClient(settings.xnat, "wrong")
        )
        (drop,) = book.drops(PROJECT, LABEL)
    assert outcome.kind == "auth_failed", outcome
    # Not retried in a loop: due again only after the longest backoff.
    assert drop.attempts == 1 and drop.next_attempt == outcome.retry_at
    assert outcome.retry_at is not None
    assert outcome.retry_at >= before + settings.push.retry_max_seconds
    assert drop.state == "packed"  # nothing was lost: the next run resumes from here
    assert server.requests.get("POST /data/services/import", 0) == 0


def test_second_process_on_the_same_drop_is_busy(tmp_path: Path, settings: config.Config) -> None:
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    with pipeline._drop_lock(settings.paths.state, PROJECT, LABEL) as holder:
        assert holder is None  # we hold it
        outcome = push(settings, folder)
    assert outcome.kind == "busy"
    assert f"xnatdrop push (pid {os.getpid()})" in outcome.message  # who holds it
    assert folder.is_dir()


def test_stop_request_ends_at_a_step_boundary(tmp_path: Path, settings: config.Config) -> None:
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    stopping = threading.Event()

    def stop_after_pack(step: str, done: int, total: int) -> None:
        if step == "pack" and done == total:
            stopping.set()

    outcome = push(settings, folder, stopping=stopping, progress=stop_after_pack)
    assert outcome.kind == "stopped"
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        # A stop is not a failure: no attempt is counted.
        assert (drop.state, drop.running, drop.attempts) == ("packed", None, 0)
    assert push(settings, folder).kind == "archived"


def test_push_command_exit_codes(
    tmp_path: Path, server: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    assert cli.main(["push", str(folder), "--config", str(path)]) == 0
    assert "archived and verified" in capsys.readouterr().out
    blocked = stage(tmp_path / "drop", "SPN01_0002", SMALL, sidecars=False)
    add_converted_file(blocked)
    assert cli.main(["push", str(blocked), "--config", str(path)]) == 1
    assert "QUARANTINE.txt" in capsys.readouterr().out
    assert cli.main(["push", str(tmp_path / "elsewhere"), "--config", str(path)]) == 2
    assert cli.main(["push", str(tmp_path / "drop" / "nothing"), "--config", str(path)]) == 2
    server.fail("/data/services/import", status=503, count=None)
    later = stage(tmp_path / "drop", "SPN01_0003", SMALL, sidecars=False)
    assert cli.main(["push", str(later), "--config", str(path)]) == 3
    assert "resume" in capsys.readouterr().out


def test_a_folder_still_being_copied_goes_back_to_settle(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """A fresh zero-byte file (a copy still running, rule A1) sends the folder back to the drop
    root with ledger state `new`, for the daemon to settle again; nothing is uploaded."""
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    (folder / SMALL[0] / "i_being_written.dcm").write_bytes(b"")
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "incomplete", outcome
    assert snapshot(folder) == original
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        assert (drop.state, drop.running) == ("new", None)
        assert book.history(drop)[-1].event == "thaw"
    assert server.requests.get("POST /data/services/import", 0) == 0
    # Once the copy has finished, the same drop goes through.
    (folder / SMALL[0] / "i_being_written.dcm").unlink()
    assert push(settings, folder).kind == "archived"


def test_a_copy_that_died_long_ago_is_quarantined(tmp_path: Path, server: Sandbox) -> None:
    settings = load(
        write_config(tmp_path, server.url, extra="[settle]\nmax_wait_seconds = 0.001\n")
    )
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    (folder / SMALL[0] / "i_cut_short.dcm").write_bytes(b"")
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined" and outcome.code == "RULES_BLOCKED", outcome
    assert outcome.path is not None
    assert "EMPTY_FILE" in (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")


def test_anonymising_xnat_is_caught_unless_checksums_are_off(
    tmp_path: Path, server: Sandbox
) -> None:
    """XNAT's site anonymisation rewrites every file (reference §10 pitfall 15). With checksums
    on, that is a permanent XNAT_CHANGED_FILES; with them off, counts are compared instead."""
    server.anonymize(True)
    strict = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    outcome = push(strict, folder)
    assert outcome.kind == "quarantined" and outcome.code == "XNAT_CHANGED_FILES", outcome
    relaxed = load(write_config(tmp_path, server.url, verify_checksums=False))
    again = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    assert push(relaxed, again).kind == "archived"


def test_progress_bar_shows_bytes_rate_and_eta() -> None:
    stream = io.StringIO()
    bar = push_command.ProgressBar(stream)
    bar("import", 0, 4_000_000)
    bar("import", 4_000_000, 4_000_000)
    text = stream.getvalue()
    assert "import" in text and "4.0/4.0 MB" in text and "MB/s ETA" in text
    assert text.endswith("\n")


def test_sidecars_only_missing_files_are_sent_and_changed_ones_quarantine(
    tmp_path: Path, settings: config.Config, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A session with behav/ is archived. 2. The same session comes again with one more
    behav file: only that file is sent. 3. It comes a third time with an edited behav file:
    XNAT already holds another version, so it is quarantined as RESOURCE_CONFLICT."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    assert push(settings, stage(tmp_path / "drop", LABEL, SMALL)).kind == "archived"
    more = stage(tmp_path / "drop", LABEL, SMALL)
    (more / "behav" / "extra.csv").write_text("trial,rt\n3,0.333\n", encoding="utf-8")
    assert push(settings, more).kind == "archived"
    with client(settings) as xnat_client:
        behav = xnat_client.resource_files(PROJECT, LABEL, LABEL, "behav")
    assert behav is not None
    assert sorted(f.path for f in behav) == [
        "extra.csv",
        "responses.csv",
        "run2/responses.csv",
    ]
    assert "attach: behav 3 files (1 sent)" in caplog.text
    edited = stage(tmp_path / "drop", LABEL, SMALL)
    (edited / "behav" / "responses.csv").write_text("trial,rt\n1,9.999\n", encoding="utf-8")
    outcome = push(settings, edited)
    assert outcome.kind == "quarantined" and outcome.code == "RESOURCE_CONFLICT", outcome
    assert outcome.path is not None
    assert "responses.csv" in (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
