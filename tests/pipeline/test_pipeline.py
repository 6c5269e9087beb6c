"""The push pipeline end to end against the sandbox XNAT, over real HTTP, on real GE series.

Each test stages a subject folder in tmp_path/drop, runs `pipeline.process` (or `xnatdrop push`
in-process) and checks XNAT, the ledger and the file system.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import zipfile
from pathlib import Path

import pydicom
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
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import cli, config, ledger, pipeline, xnat
from xnatdrop.commands import push as push_command
from xnatdrop.pipeline import run

LABEL = "SPN01_0001"


@pytest.fixture
def settings(tmp_path: Path, server: Sandbox) -> config.Config:
    return load(write_config(tmp_path, server.url))


def server_url(settings: config.Config) -> str:
    return settings.xnat.url


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


def other_study(folder: Path) -> None:
    """Give every DICOM file under `folder` a new StudyInstanceUID (another session)."""
    study = pydicom.uid.generate_uid()
    for path in folder.rglob("*"):
        if path.is_file():
            dataset = pydicom.dcmread(path)
            dataset.StudyInstanceUID = study
            dataset.save_as(path)


def test_label_conflict_is_quarantined(tmp_path: Path, settings: config.Config) -> None:
    """1. LABEL is archived with one series. 2. Another folder with the same label but another
    study (other series, another StudyInstanceUID) is dropped. Result: the second is
    quarantined as LABEL_EXISTS; XNAT keeps the first. (The same study would be late files,
    appended: test_late_files.)"""
    first = stage(tmp_path / "drop", LABEL, SMALL)
    first_files = snapshot(first)
    assert push(settings, first).kind == "archived"
    second = stage(tmp_path / "drop", LABEL, ("02_Ax_fMRI_FF_I11.1_S15.9",), sidecars=False)
    other_study(second)
    original = snapshot(second)
    outcome = push(settings, second)
    assert outcome.kind == "quarantined" and outcome.code == "LABEL_EXISTS", outcome
    assert outcome.path is not None
    assert {k: v for k, v in snapshot(outcome.path).items() if "QUARANTINE" not in k} == original
    text = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert "already exists" in text and "rename the folder" in text
    assert "XNAT already holds a session with this label and other data." in text
    assert f"The session in XNAT: {server_url(settings)}/data/projects/{PROJECT}/experiments/" in (
        text
    )
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
    with run.drop_lock(settings.paths.state, PROJECT, LABEL) as holder:
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


def test_a_proxy_timeout_during_a_slow_build_ends_with_one_archived_session(
    tmp_path: Path, server: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """1. XNAT builds the session before it answers the import (DicomZipImporter, stock row 4)
    and the build is slow. 2. A proxy in front times out: 504 after the whole body was sent,
    while XNAT goes on building. Result: the retry asks the prearchive first, finds the copy
    BUILDING, waits for it instead of deleting it and sending again, and archives it once."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    original = snapshot(folder)
    server.slow_build(1.5)
    server.proxy_timeout("^/data/services/import$", seconds=0.3)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert server.requests["POST /data/services/import"] == 1
    assert not [k for k in server.requests if k.startswith("DELETE /data/prearchive/")]
    assert "XNAT is still building an earlier upload" in caplog.text
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        failed = [e for e in book.history(drop) if e.event == "failed"]
    assert [(e.step, e.detail["code"]) for e in failed] == [("import", "TRANSIENT")]
    assert "504" in failed[0].detail["message"]
    assert_archived_once(settings, LABEL, original, dicom_count=21)


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


@pytest.mark.parametrize("who", ["admin", "reader"])
def test_an_import_routed_to_unassigned_is_cleaned_up_by_xnatdrop(tmp_path: Path, who: str) -> None:
    """XNAT files an upload for a project the account may not write to (a read-only account)
    or that does not exist under Unassigned, with HTTP 200 (pitfall 17). xnatdrop removes that
    copy, which it caused, and says so; where XNAT lets only an administrator delete from
    Unassigned (PrearcUtils.canModify), the reason file names the copy for the administrator."""
    server = Sandbox(
        data=tmp_path / "xnat", port=0, users=["svc:pw", "reader:pw:read"], projects=[PROJECT]
    )
    server.start()
    try:
        path = write_config(tmp_path, server.url)
        text = path.read_text(encoding="utf-8")
        if who == "reader":
            text = text.replace('username = "svc"', 'username = "reader"')
        else:
            text = text.replace(f'project = "{PROJECT}"', 'project = "SPN09"')
        path.write_text(text, encoding="utf-8")
        settings = load(path)
        label = "SPN09_0001" if who == "admin" else LABEL
        folder = stage(tmp_path / "drop", label, SMALL, sidecars=False)
        with ledger.Ledger(settings.paths.state) as book:
            outcome = pipeline.process(
                folder, settings, book, lambda: xnat.XnatClient(settings.xnat, "pw")
            )
        assert outcome.kind == "transient" and outcome.code == ledger.SUSPECT, outcome
        assert "/data/prearchive/projects/Unassigned/" in outcome.message
        with xnat.XnatClient(config.XnatSettings(url=server.url, username="svc"), "pw") as admin:
            left = admin.prearchive_entries("Unassigned")
    finally:
        server.stop()
    if who == "admin":
        assert "xnatdrop removed that copy" in outcome.message
        assert left == []
    else:
        assert "ask the XNAT administrator to delete /data/prearchive/projects/Unassigned/" in (
            outcome.message
        )
        assert len(left) == 1


def test_a_slow_archive_of_a_label_saying_duplicate_ends_archived(
    tmp_path: Path, server: Sandbox
) -> None:
    """Issue 9: the archive outlasts XNAT's timeout (500 "…SPN01_duplicate… did not complete
    within the configured timeout interval.") but completes. Before, the word in the label made
    it XNAT_CONFLICT and quarantined an archived session; now it is transient, and the retry
    finds the session archived with every instance."""
    label = "SPN01_duplicate"
    settings = load(write_config(tmp_path, server.url))
    server.apply_settings(archive_timeout=0.2)
    server.slow_archive(0.2)
    outcome = push(settings, stage(tmp_path / "drop", label, SMALL, sidecars=False))
    assert outcome.kind == "archived", outcome
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, label)
        failures = [e for e in book.history(drop) if e.event == "failed"]
    assert [e.detail["code"] for e in failures] == ["TRANSIENT"]
    assert "did not complete" in failures[0].detail["message"]
    assert server.requests["POST /data/services/archive"] == 1


class RacingClient(xnat.XnatClient):
    """Our client, with another uploader archiving into the same label just before our archive
    request: the race window of xnat-stock row 14 (single-session archive always merges)."""

    def __init__(self, settings: config.Config, other: Path) -> None:
        super().__init__(settings.xnat, "pw")
        self.other = other

    def archive(self, uri: str, *, project: str, subject: str, session: str) -> str:
        if self.other.is_file():
            with xnat.XnatClient(self.config, "pw") as someone:
                # Their own prearchive session (another label), archived under ours.
                theirs = someone.import_zip(
                    self.other, project=project, subject=subject, session="SOMEONE_ELSE"
                )
                someone.archive(theirs, project=project, subject=subject, session=session)
            self.other.unlink()
        return super().archive(uri, project=project, subject=subject, session=session)

    @property
    def config(self) -> config.XnatSettings:
        return config.XnatSettings(url=self.base, username="svc", timeout_seconds=30)


def test_a_session_that_differs_after_archiving_is_reported_and_reconciled_after_the_fix(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """1. Just before our archive, someone else archives another series into the same label;
    XNAT merges ours into it. 2. The check after archiving finds an instance that is not ours:
    quarantine as ARCHIVE_MISMATCH, the reason file saying the session IS in XNAT, with its
    page, and what differs. 3. The XNAT administrator removes the other scan. 4. The folder is
    resubmitted: xnatdrop finds exactly its instances archived, sends nothing, attaches the
    sidecars and finishes. It never meets LABEL_EXISTS."""
    other = stage(tmp_path / "other", LABEL, ("05_3_Plane_Localizer_HF",), sidecars=False)
    bundle = tmp_path / "other.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        for path in sorted((other / "05_3_Plane_Localizer_HF").iterdir())[:2]:
            archive.write(path, f"series/{path.name}")
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    original = snapshot(folder)
    with ledger.Ledger(settings.paths.state) as book:
        outcome = pipeline.process(folder, settings, book, lambda: RacingClient(settings, bundle))
    assert outcome.kind == "quarantined" and outcome.code == "ARCHIVE_MISMATCH", outcome
    assert outcome.path is not None
    note = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert "the session IS in XNAT" in note
    assert f"{server.url}/data/projects/{PROJECT}/experiments/XNAT_E" in note
    assert "2 instance(s) are not from this upload: scan 5" in note
    reason = json.loads((outcome.path / "QUARANTINE.json").read_text(encoding="utf-8"))
    assert reason["in_xnat"].startswith(f"{server.url}/data/projects/{PROJECT}/experiments/")
    with client(settings) as admin:
        admin.request(
            "DELETE", f"/data/projects/{PROJECT}/subjects/{LABEL}/experiments/{LABEL}/scans/5"
        )
    for name in ("QUARANTINE.txt", "QUARANTINE.json"):
        (outcome.path / name).unlink()
    outcome.path.rename(tmp_path / "drop" / LABEL)
    imports = server.requests["POST /data/services/import"]
    again = push(settings, tmp_path / "drop" / LABEL)
    assert again.kind == "archived", again
    assert server.requests["POST /data/services/import"] == imports
    assert_archived_once(settings, LABEL, original, dicom_count=21)
    receipt_json = json.loads((again.path / "RECEIPT.json").read_text(encoding="utf-8"))
    assert receipt_json["verification"]["instance_uids"] == "all matched"
    assert [r["name"] for r in receipt_json["resources"]] == ["behav", "physio"]


def test_an_expired_password_is_an_authentication_alert_not_a_quarantine(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """XNAT redirects an account whose password expired (one year by default) to its
    change-password page: the push stops as auth_failed with the page named, the drop waits
    in the ledger, nothing is quarantined or sent."""
    server.expire_password("svc")
    folder = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    outcome = push(settings, folder)
    assert outcome.kind == "auth_failed" and outcome.code == "AUTHENTICATION", outcome
    assert "has expired" in outcome.message and "XDATScreen_UpdateUser.vm" in outcome.message
    assert not (tmp_path / "quarantine").exists()
    assert server.requests.get("POST /data/services/import", 0) == 0


def test_credentials_in_the_xnat_url_are_never_logged_or_written(
    tmp_path: Path, server: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9: a password written into xnat.url (the config refuses it; the client is safe
    anyway) never appears in a log line, the receipt or a reason file."""
    caplog.set_level(logging.DEBUG, logger="xnatdrop")
    url = server.url.replace("http://", "http://svc:s3cret-in-url@")
    with pytest.raises(config.ConfigError, match="must not contain a user name or password"):
        load(write_config(tmp_path, url))
    # Past the config check (a settings object built by other means), the client is safe too.
    settings = load(write_config(tmp_path, server.url))
    unchecked = settings.xnat.model_copy(update={"url": url})  # model_copy does not validate
    settings = settings.model_copy(update={"xnat": unchecked})
    assert settings.xnat.url == url
    outcome = push(settings, stage(tmp_path / "drop", LABEL, SMALL))
    assert outcome.kind == "archived", outcome
    assert outcome.path is not None
    receipts = [
        (outcome.path / n).read_text(encoding="utf-8") for n in ("RECEIPT.txt", "RECEIPT.json")
    ]
    assert all(server.url in text for text in receipts)
    assert not any("s3cret-in-url" in text for text in [*receipts, caplog.text])


# -- a stock XNAT: what it does to the files, and what the push verifies -----------------------


def xapi_put(settings: config.Config, path: str, body: str = "", **params: str) -> None:
    """Change XNAT's anonymisation settings through its own API (AnonymizeApi)."""
    with client(settings) as admin:
        admin.request(
            "PUT",
            path,
            params=params,
            data=body.encode(),
            headers={"Content-Type": "text/plain" if body else "application/json"},
        )


def project_script(settings: config.Config, script: str) -> None:
    xapi_put(settings, f"/xapi/anonymize/projects/{PROJECT}", script)
    xapi_put(settings, f"/xapi/anonymize/projects/{PROJECT}/enabled", enable="true")


def receipt_of(outcome: pipeline.Outcome) -> tuple[dict[str, object], str]:
    assert outcome.path is not None
    text = (outcome.path / "RECEIPT.txt").read_text(encoding="utf-8")
    return json.loads((outcome.path / "RECEIPT.json").read_text(encoding="utf-8")), text


def archived_file(settings: config.Config, label: str, scan: str) -> pydicom.Dataset:
    """One file of a scan as XNAT stores it, downloaded."""
    with client(settings) as xnat_client:
        files = xnat_client.session_files(PROJECT, label, label)
        uri = next(f.uri for f in files if f.scan == scan and f.resource == "DICOM")
        return pydicom.dcmread(io.BytesIO(xnat_client.download(uri)))


def test_on_a_stock_xnat_every_file_is_rewritten_and_the_push_verifies_what_survives(
    tmp_path: Path, settings: config.Config
) -> None:
    """Issue 8: a fresh XNAT's site script rewrites PatientName, PatientID and StudyDescription
    of every file, so no size or MD5 matches. The session is archived and verified by instance
    UIDs, counts and one file's pixel data per scan, and the receipt says exactly that."""
    folder = stage(tmp_path / "drop", LABEL, MEDIUM)
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert_archived_once(settings, LABEL, original, dicom_count=92)
    stored = archived_file(settings, LABEL, "2")
    assert (str(stored.PatientName), stored.PatientID, stored.StudyDescription) == (
        LABEL,
        LABEL,
        PROJECT,
    )
    with client(settings) as xnat_client:
        digests = {f.digest for f in xnat_client.session_files(PROJECT, LABEL, LABEL)}
    assert not digests & set(original.values()), "XNAT kept some bytes: nothing was rewritten?"
    facts, text = receipt_of(outcome)
    summary = (
        "instance UIDs and counts of all 92 files; pixel data of 1 file per scan (3 scans); "
        "headers rewritten by XNAT's site anonymisation script, so sizes and MD5s were not "
        "compared"
    )
    assert facts["verification"]["summary"] == summary  # type: ignore[index]
    assert facts["checksums_verified"] is False
    assert f"Verified against XNAT: {summary}." in text
    pixels = facts["verification"]["pixel_data"]  # type: ignore[index]
    assert [(p["scan"], p["result"]) for p in pixels] == [
        ("1", "identical"),
        ("2", "identical"),
        ("5", "identical"),
    ]


@pytest.mark.parametrize("how", ["prevent_anon", "site script off"])
def test_where_xnat_keeps_the_bytes_sizes_and_md5s_are_compared_too(
    tmp_path: Path, server: Sandbox, how: str
) -> None:
    """push.anonymization = "prevent" sends prevent_anon=true; or the site switched its script
    off (read from /xapi/anonymize at push time). Either way XNAT stores the files as sent and
    the receipt says sizes and MD5s were compared."""
    extra = {"anonymization": "prevent"} if how == "prevent_anon" else {}
    settings = load(write_config(tmp_path, server.url, **extra))
    if how == "site script off":
        xapi_put(settings, "/xapi/anonymize/site/enabled", enable="false")
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    with client(settings) as xnat_client:
        digests = {f.digest for f in xnat_client.session_files(PROJECT, LABEL, LABEL)}
    assert digests == {md5 for path, md5 in original.items() if path.startswith(SMALL[0])}
    facts, _ = receipt_of(outcome)
    assert facts["verification"]["summary"] == (  # type: ignore[index]
        "instance UIDs and counts of all 21 files; pixel data of 1 file per scan (1 scans); "
        "sizes and MD5s of every file"
    )
    assert facts["checksums_verified"] is True


def test_a_project_script_that_removes_a_tag_is_verified_and_explained(
    tmp_path: Path, settings: config.Config
) -> None:
    """The project's script runs at archive time (MergePrearcToArchiveSession): ProtocolName is
    removed from every archived file. The push archives, the pixel data is intact, and the
    receipt names both scripts as the reason sizes and MD5s were not compared."""
    project_script(settings, 'version "6.1"\n-(0018,1030)\n')
    outcome = push(settings, stage(tmp_path / "drop", LABEL, SMALL))
    assert outcome.kind == "archived", outcome
    assert "ProtocolName" not in archived_file(settings, LABEL, "1")
    facts, text = receipt_of(outcome)
    assert (
        "headers rewritten by XNAT's site anonymisation script and the project's anonymisation "
        "script, so sizes and MD5s were not compared" in text
    )
    assert facts["verification"]["rewriting"]["project"] is True  # type: ignore[index]


def test_a_project_script_that_rejects_a_series_archives_the_rest_and_lists_it(
    tmp_path: Path, settings: config.Config, caplog: pytest.LogCaptureFixture
) -> None:
    """The project's script rejects series 5 at archive time. The site configured that on
    purpose, and the technologist cannot change it: the rest is archived and verified, series
    5 is listed in the receipt as not archived with the reason, and a warning says so once."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    project_script(settings, 'version "6.1"\n(0020,0011) = "5" ? reject[]\n')
    outcome = push(settings, stage(tmp_path / "drop", LABEL, MEDIUM, sidecars=False))
    assert outcome.kind == "archived", outcome
    with client(settings) as xnat_client:
        scans = {f.scan for f in xnat_client.session_files(PROJECT, LABEL, LABEL)}
    assert scans == {"1", "2"}
    facts, text = receipt_of(outcome)
    (left,) = facts["not_archived"]  # type: ignore[misc]
    assert (left["number"], left["files"], left["stage"]) == ("5", 21, "archive")
    assert left["reason"] == "a reject statement in the project's anonymisation script"
    assert "Not archived, because XNAT's own configuration left them out:" in text
    assert "series 5 3-Plane Localizer (05_3_Plane_Localizer_HF, 21 files)" in text
    assert facts["file_count"] == 71
    assert caplog.text.count("XNAT left out series 5") == 1


def test_a_project_script_that_rejects_everything_is_explained(
    tmp_path: Path, settings: config.Config
) -> None:
    """XNAT does not archive a session its project script emptied (500, row ERROR; RT
    testArchiveEmptySessionAfterProjectAnonRejection): the drop waits with the reason, which
    names the script, and would be quarantined once XNAT is seen to accept other drops."""
    project_script(settings, 'version "6.1"\nreject[]\n')
    outcome = push(settings, stage(tmp_path / "drop", LABEL, SMALL, sidecars=False))
    assert outcome.kind == "transient" and outcome.code == ledger.SUSPECT, outcome
    assert "XNAT could not archive SPN01_0001" in outcome.message
    assert "project's anonymisation script may have rejected every file" in outcome.message


def test_without_xnat_checksums_sizes_are_compared_and_the_receipt_says_so(
    tmp_path: Path, server: Sandbox
) -> None:
    """The `checksums` site preference off: XNAT records no MD5 of archived files (stock row
    10). With prevent_anon the sizes are still compared; the receipt does not claim MD5s."""
    settings = load(write_config(tmp_path, server.url, anonymization="prevent"))
    with client(settings) as admin:
        admin.request(
            "POST",
            "/xapi/siteConfig/checksums",
            data=b"false",
            headers={"Content-Type": "text/plain"},
        )
    outcome = push(settings, stage(tmp_path / "drop", LABEL, SMALL, sidecars=False))
    assert outcome.kind == "archived", outcome
    facts, text = receipt_of(outcome)
    assert facts["checksums_verified"] is False
    assert "sizes of every file (XNAT recorded no MD5s: its checksums preference is off)" in text


def test_a_resubmission_after_the_session_was_viewed_is_reconciled(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """The archived session got SNAPSHOTS (someone viewed it) and automation NIFTI; the same
    folder dropped again is recognised by its instance UIDs: nothing sent, finished."""
    first = stage(tmp_path / "drop", LABEL, SMALL, sidecars=False)
    original = snapshot(first)
    assert push(settings, first).kind == "archived"
    server.view_session(LABEL, PROJECT)
    server.add_scan_resource(LABEL, "1", "NIFTI", {"1.nii.gz": b"\x1f\x8b"}, PROJECT)
    imports = server.requests["POST /data/services/import"]
    again = push(settings, stage(tmp_path / "drop", LABEL, SMALL, sidecars=False))
    assert again.kind == "archived", again
    assert server.requests["POST /data/services/import"] == imports
    assert_archived_once(settings, LABEL, original, dicom_count=21)


def series_filter(settings: config.Config, mode: str, patterns: str) -> None:
    """A project series import filter, set as XNAT's project settings page sets it
    (settingsManager.js: PUT …/config/seriesImportFilter/config?inbody=true&status=enabled)."""
    with client(settings) as admin:
        admin.request(
            "PUT",
            f"/data/projects/{PROJECT}/config/seriesImportFilter/config",
            params={"inbody": "true", "status": "enabled"},
            data=json.dumps({"mode": mode, "list": patterns}).encode(),
            headers={"Content-Type": "text/plain"},
        )


def test_series_dropped_by_an_import_filter_are_reported_once_not_resent(
    tmp_path: Path, settings: config.Config, server: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """The project filters out localizers; XNAT drops both localizer series at import without a
    word (stock row 6). Before, the short prearchive was deleted and sent again, then retried
    forever. Now the push reads the filter at push time, archives what XNAT kept, warns once
    and lists the dropped series in the receipt with the reason."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    series_filter(settings, "blacklist", "Localizer")
    outcome = push(settings, stage(tmp_path / "drop", LABEL, MEDIUM, sidecars=False))
    assert outcome.kind == "archived", outcome
    assert server.requests["POST /data/services/import"] == 1
    with client(settings) as xnat_client:
        scans = {f.scan for f in xnat_client.session_files(PROJECT, LABEL, LABEL)}
    assert scans == {"2"}
    facts, text = receipt_of(outcome)
    left = facts["not_archived"]
    assert [(d["number"], d["files"], d["stage"]) for d in left] == [  # type: ignore[union-attr]
        ("1", 21, "import"),
        ("5", 21, "import"),
    ]
    assert {d["reason"] for d in left} == {  # type: ignore[union-attr]
        "the series import filter (project: blacklist)"
    }
    assert "series 1 3-Plane Localizer (01_3_Plane_Localizer_FF, 21 files)" in text
    assert caplog.text.count("XNAT left out series 1") == 1
    assert facts["verification"]["summary"].startswith(  # type: ignore[index]
        "instance UIDs and counts of all 50 files"
    )


def test_a_folder_the_filter_drops_entirely_is_quarantined_with_the_reason(
    tmp_path: Path, settings: config.Config
) -> None:
    """Every series filtered: XNAT answers 200 with no session. That is the site's
    configuration, not an XNAT failure: quarantined at once, saying which filter."""
    series_filter(settings, "whitelist", "T1w")
    outcome = push(settings, stage(tmp_path / "drop", LABEL, SMALL, sidecars=False))
    assert outcome.kind == "quarantined" and outcome.code == "XNAT_NOTHING_IMPORTED", outcome
    assert "every series was left out by the series import filter (project: whitelist)" in (
        outcome.message
    )


def test_a_setting_xnat_will_not_show_counts_as_possible_rewriting_and_says_so(
    tmp_path: Path, settings: config.Config, server: Sandbox
) -> None:
    """The site script is off, but XNAT will not tell this account whether the project's is on
    (403 on /xapi/anonymize/projects/P/enabled). Rewriting is then assumed possible: sizes and
    MD5s are not compared, and the receipt says why, never claiming more than was checked."""
    xapi_put(settings, "/xapi/anonymize/site/enabled", enable="false")
    server.fail(f"^/xapi/anonymize/projects/{PROJECT}", status=403, count=None, method="GET")
    outcome = push(settings, stage(tmp_path / "drop", LABEL, SMALL, sidecars=False))
    assert outcome.kind == "archived", outcome
    facts, _ = receipt_of(outcome)
    assert facts["verification"]["summary"].endswith(  # type: ignore[index]
        "headers possibly rewritten by the project's anonymisation script (XNAT would not say "
        "whether it is on), so sizes and MD5s were not compared"
    )
    assert facts["checksums_verified"] is False


def test_a_sidecar_file_xnat_never_catalogues_is_reported_not_retried_forever(
    tmp_path: Path, settings: config.Config
) -> None:
    """XNAT stores but never catalogues extracted files named *_catalog.xml (CatalogUtils
    XNAT_CATALOGABLE_FILE_FILTER), so they never show in the resource: attach would retry
    "resource lacks 1 file(s)" forever. It is not sent, the push finishes and the receipt says
    where the file is."""
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    (folder / "behav" / "task_catalog.xml").write_text("<catalog/>\n", encoding="utf-8")
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    with client(settings) as xnat_client:
        behav = xnat_client.resource_files(PROJECT, LABEL, LABEL, "behav")
    assert behav is not None
    assert sorted(f.path for f in behav) == ["responses.csv", "run2/responses.csv"]
    facts, text = receipt_of(outcome)
    (resource,) = [r for r in facts["resources"] if r["name"] == "behav"]  # type: ignore[union-attr]
    assert resource["not_uploaded"] == ["task_catalog.xml"]
    assert "not uploaded: task_catalog.xml" in text
    assert (outcome.path / "behav" / "task_catalog.xml").is_file()  # type: ignore[operator]


def test_an_empty_sidecar_file_is_sent_and_catalogued(
    tmp_path: Path, settings: config.Config
) -> None:
    """An empty file in a sidecar folder (an unused log, a placeholder) is never judged as
    DICOM, so it reaches the streamed zip. Its data piece was b"", which a body reader takes
    for the end: the upload stopped short of its Content-Length. It is sent now, and XNAT
    lists it with 0 bytes."""
    folder = stage(tmp_path / "drop", LABEL, SMALL)
    (folder / "behav" / "run2" / "notes.txt").write_bytes(b"")
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    with client(settings) as xnat_client:
        behav = xnat_client.resource_files(PROJECT, LABEL, LABEL, "behav")
    assert behav is not None
    assert sorted(f.path for f in behav) == [
        "responses.csv",
        "run2/notes.txt",
        "run2/responses.csv",
    ]
    assert [f.size for f in behav if f.path == "run2/notes.txt"] == [0]
