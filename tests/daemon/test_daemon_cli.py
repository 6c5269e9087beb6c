"""`xnatdrop status`, `requeue` and `doctor`, called in-process through `cli.main`.

The XNAT checks of `doctor` run against a real sandbox on a free port; the ledger and the
quarantined folder are real files made by the real modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs_helpers import fill, tmpfs
from push_helpers import PROJECT, stage, start_sandbox, write_config
from xnat_sandbox import Sandbox
from xnatdrop import cli, config, daemon, ledger, locks, reasonfiles, xnat


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    server = start_sandbox(tmp_path / "xnat")
    yield server
    server.stop()


@pytest.fixture
def config_path(tmp_path: Path, sandbox: Sandbox) -> Path:
    return write_config(tmp_path, sandbox.url)


def quarantined(tmp_path: Path, label: str, stamp: str = "20260101-120000") -> Path:
    folder = tmp_path / "quarantine" / f"{label}__{stamp}"
    (folder / "series1").mkdir(parents=True)
    (folder / "series1" / "a.dcm").write_bytes(b"DICM")
    reasonfiles.write(
        folder,
        {
            "label": label,
            "project": PROJECT,
            "drop_root": str(tmp_path / "drop"),
            "code": "RULES_BLOCKED",
            "message": "a NIfTI file",
            "fix": "remove it",
            "time": "2026-01-01 12:00:00",
            "findings": [],
        },
    )
    return folder


def test_status_reports_ledger_and_live_view(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config.load(config_path)
    with ledger.Ledger(settings.paths.state) as book:
        drop = book.register(PROJECT, "SPN01_0001", tmp_path / "drop" / "SPN01_0001", Path(""))
        book.fail(drop, "freeze", "TRANSIENT", "XNAT unreachable", time.time() + 60)
    live = {"pid": os.getpid(), "updated": time.time(), "status": "1 settling"}
    (settings.paths.state / daemon.STATUS_FILE).write_text(json.dumps(live), encoding="utf-8")
    lock = locks.acquire_state(settings.paths.state)  # what a running daemon holds
    try:
        assert cli.main(["status", "--config", str(config_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["drops"] == {"new": 1}
        assert report["places"]["unfinished"] == 1
        assert report["oldest_pending"]["label"] == "SPN01_0001"
        assert report["recent_failures"][0]["code"] == "TRANSIENT"
        assert report["daemon"]["running"] is True and report["daemon"]["pid"] == os.getpid()
        assert report["last_success"] is None

        live.update(paused_reasons={str(tmp_path / "drop"): "the drop root does not exist"})
        (settings.paths.state / daemon.STATUS_FILE).write_text(json.dumps(live), encoding="utf-8")
        assert cli.main(["status", "--config", str(config_path)]) == 1
        text = capsys.readouterr().out
        assert "ATTENTION: drop root paused" in text and "does not exist" in text
        assert "SPN01_0001" in text
    finally:
        lock.release()


def test_status_reads_a_daemon_without_its_lock_as_stopped_at_once(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The status file was written a second ago, but no process holds the state lock (the
    daemon crashed or was stopped): status says so now, not after a 300 s guess."""
    settings = config.load(config_path)
    settings.paths.state.mkdir(parents=True, exist_ok=True)
    fresh = {"pid": 1, "updated": time.time() - 1, "status": "x", "paused_roots": []}
    (settings.paths.state / daemon.STATUS_FILE).write_text(json.dumps(fresh), encoding="utf-8")
    assert cli.main(["status", "--config", str(config_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT RUNNING" in out and "ATTENTION: the daemon is not running" in out
    assert not (settings.paths.state / ledger.FILENAME).exists()  # status never creates one


def test_status_calls_a_locked_daemon_that_stopped_scanning_stuck(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config.load(config_path)
    lock = locks.acquire_state(settings.paths.state)
    try:
        old = {"pid": os.getpid(), "updated": time.time() - 3600, "status": "x"}
        (settings.paths.state / daemon.STATUS_FILE).write_text(json.dumps(old), encoding="utf-8")
        assert cli.main(["status", "--config", str(config_path)]) == 1
        assert "has not finished a scan since" in capsys.readouterr().out
    finally:
        lock.release()


def test_requeue_moves_the_folder_back_and_keeps_the_reason(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = quarantined(tmp_path, "SPN01_0007")
    assert cli.main(["requeue", "SPN01_0007", "--config", str(config_path)]) == 0
    back = tmp_path / "drop" / "SPN01_0007"
    assert (back / "series1" / "a.dcm").read_bytes() == b"DICM"
    assert not (back / reasonfiles.JSON_NAME).exists() and not folder.exists()
    kept = tmp_path / "state" / "requeued" / folder.name / reasonfiles.JSON_NAME
    assert json.loads(kept.read_text(encoding="utf-8"))["label"] == "SPN01_0007"
    assert "back in the drop folder" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setup", "name", "message"),
    [
        ("none", "SPN01_0008", "nothing called"),
        ("two", "SPN01_0008", "give the full name"),
        ("exists", "SPN01_0008", "already exists"),
        ("active", "SPN01_0008", "still new"),
    ],
)
def test_requeue_refusals(
    tmp_path: Path,
    config_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    name: str,
    message: str,
) -> None:
    if setup != "none":
        quarantined(tmp_path, "SPN01_0008")
    if setup == "two":
        quarantined(tmp_path, "SPN01_0008", "20260102-120000")
    if setup == "exists":
        (tmp_path / "drop" / "SPN01_0008").mkdir()
    if setup == "active":
        with ledger.Ledger(tmp_path / "state") as book:
            book.register(PROJECT, "SPN01_0008", tmp_path / "drop" / "SPN01_0008", Path(""))
    assert cli.main(["requeue", name, "--config", str(config_path)]) == 1
    assert message in capsys.readouterr().err


def test_doctor_passes_on_a_good_setup(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["doctor", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for expected in (
        "config",
        "password",
        "drop root",
        "same file system",
        "reachable",
        "login as 'svc': works",
        f"project {PROJECT}: visible",
    ):
        assert expected in out, expected


def test_doctor_names_each_failure(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, sandbox.url)
    (tmp_path / "secret").write_text("wrong\n", encoding="utf-8")
    text = path.read_text(encoding="utf-8").replace('project = "SPN01"', 'project = "NOPE"')
    path.write_text(text, encoding="utf-8")
    (tmp_path / "drop").rmdir()
    assert cli.main(["doctor", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  drop root" in out and "missing" in out
    assert "FAIL  login as 'svc': refused" in out

    (tmp_path / "secret").write_text("pw\n", encoding="utf-8")
    (tmp_path / "drop").mkdir()
    assert cli.main(["doctor", "--config", str(path)]) == 1
    assert "FAIL  project NOPE: not found" in capsys.readouterr().out


def test_doctor_when_xnat_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = start_sandbox(tmp_path / "xnat")
    url = server.url
    server.stop()  # nothing listens on that port any more
    path = write_config(tmp_path, url)
    assert cli.main(["doctor", "--config", str(path)]) == 1
    assert "not reachable" in capsys.readouterr().out


def test_doctor_fails_a_read_only_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A collaborator can see the project but not upload to it: doctor says so before a push."""
    server = Sandbox(
        data=tmp_path / "xnat", port=0, users=["svc:pw", "reader:pw:read"], projects=[PROJECT]
    )
    server.start()
    try:
        path = write_config(tmp_path, server.url)
        text = path.read_text(encoding="utf-8").replace('username = "svc"', 'username = "reader"')
        path.write_text(text, encoding="utf-8")
        assert cli.main(["doctor", "--config", str(path)]) == 1
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert f"PASS  project {PROJECT}: visible" in out
    assert f"FAIL  project {PROJECT}: not writable ('reader' is in Collaborators)" in out


def test_doctor_on_a_stock_xnat_says_what_xnat_does_to_uploads(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8 point 5 on the sandbox's stock defaults: the admin account may write (it has no
    per-project role), site anonymisation is on and what that means for verification, the
    checksums preference, no series import filter, and the password's expiry as far as XNAT
    tells it (one year after it was set, but not when that was)."""
    assert cli.main(["doctor", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    for line in (
        f"PASS  project {PROJECT}: writable ('svc' is a site administrator, with access to all "
        "data and no per-project role)",
        "PASS  site anonymisation script: on: XNAT rewrites PatientName, PatientID and "
        "StudyDescription of every file it imports",
        f"PASS  project {PROJECT}: anonymisation script off",
        f"PASS  project {PROJECT}: xnatdrop verifies instance UIDs, counts and pixel data; not "
        "sizes and MD5s, since XNAT rewrites the files",
        "PASS  XNAT records an MD5 of every archived file (checksums preference on)",
        f"PASS  project {PROJECT}: no series import filter",
        "WARN  password of 'svc': XNAT expires passwords 1 year after they are set",
    ):
        assert line in out, line


def test_doctor_names_an_http_url_for_an_https_site_and_an_expired_password(
    tmp_path: Path, sandbox: Sandbox, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.apply_settings(site_url="https://xnat.example.org")
    assert cli.main(["doctor", "--config", str(config_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  login as 'svc': refused (XNAT marks its session cookie Secure" in out
    sandbox.apply_settings(site_url="")
    sandbox.expire_password("svc")
    assert cli.main(["doctor", "--config", str(config_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  login as 'svc': refused (the password of XNAT user 'svc' has expired" in out
    assert "XDATScreen_UpdateUser.vm" in out


def test_doctor_warns_about_a_series_import_filter(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config.load(config_path)
    with xnat.XnatClient(settings.xnat, "pw") as admin:
        admin.request(
            "PUT",
            f"/data/projects/{PROJECT}/config/seriesImportFilter/config",
            params={"inbody": "true", "status": "enabled"},
            data=json.dumps({"mode": "blacklist", "list": "Localizer"}).encode(),
            headers={"Content-Type": "text/plain"},
        )
    assert cli.main(["doctor", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"WARN  project {PROJECT}: a series import filter is on (project blacklist): XNAT drops "
        "matching series without a word" in out
    )


def test_requeue_as_a_new_label_fixes_a_bad_label_and_status_counts_where_drops_are(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A folder named against the drop root's pattern is pushed and quarantined
    (LABEL_PATTERN). 2. `requeue NAME --as NEWLABEL`. Result: the folder is back in the drop
    root under the new label, the ledger says `requeued` and status counts nothing in
    quarantine. 3. Pushed again: archived under the new label."""
    path = write_config(tmp_path, sandbox.url)
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            f'project = "{PROJECT}"', f'project = "{PROJECT}"\nlabel_pattern = "SPN01_\\\\d{{4}}"'
        ),
        encoding="utf-8",
    )
    stage(tmp_path / "drop", "spn01-7", sidecars=False)
    assert cli.main(["push", str(tmp_path / "drop" / "spn01-7"), "--config", str(path)]) == 1
    capsys.readouterr()

    assert cli.main(["requeue", "spn01-7", "--as", "SPN01_7", "--config", str(path)]) == 2
    assert "does not match the label pattern 'SPN01_\\\\d{4}'" in capsys.readouterr().err
    assert cli.main(["requeue", "spn01-7", "--as", "SPN01 7", "--config", str(path)]) == 2
    assert "letters, digits, '_' and '-' only" in capsys.readouterr().err
    assert cli.main(["requeue", "spn01-7", "--as", "SPN01_0007", "--config", str(path)]) == 0
    assert "under the new label SPN01_0007" in capsys.readouterr().out
    back = tmp_path / "drop" / "SPN01_0007"
    assert (back / "01_3_Plane_Localizer_FF").is_dir() and not (back / "QUARANTINE.txt").exists()
    assert not any((tmp_path / "quarantine").iterdir())

    assert cli.main(["status", "--config", str(path), "--json"]) == 1  # no daemon runs
    report = json.loads(capsys.readouterr().out)
    assert report["drops"] == {"requeued": 1}
    assert report["places"]["in_quarantine"] == 0 and report["places"]["requeued"] == 1

    assert cli.main(["push", str(back), "--config", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--config", str(path), "--json"]) == 1
    places = json.loads(capsys.readouterr().out)["places"]
    assert (places["archived"], places["in_quarantine"], places["requeued"]) == (1, 0, 1)


def test_status_counts_a_folder_taken_out_of_quarantine_by_hand(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, sandbox.url)
    folder = stage(tmp_path / "drop", "SPN01_0011", sidecars=False)
    (folder / "notes.txt").write_text("a loose file\n", encoding="utf-8")
    assert cli.main(["push", str(folder), "--config", str(path)]) == 1
    (quarantined,) = (tmp_path / "quarantine").iterdir()
    quarantined.rename(tmp_path / "fixed-by-hand")
    capsys.readouterr()
    cli.main(["status", "--config", str(path)])
    assert "0 in quarantine, 1 taken out of quarantine by hand" in capsys.readouterr().out


def test_repeated_failures_make_status_exit_1_once_they_repeat(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config.load(config_path)
    with ledger.Ledger(settings.paths.state) as book:
        drop = book.register(PROJECT, "SPN01_0012", tmp_path / "drop" / "SPN01_0012", Path(""))
        for attempt in range(daemon.REPEATED_FAILURES):
            drop = book.begin(drop, "freeze") if attempt else drop
            drop = book.fail(drop, "freeze", "INTERNAL", f"OSError({attempt})", time.time() + 60)
    lock = locks.acquire_state(settings.paths.state)
    live = {"pid": os.getpid(), "updated": time.time(), "status": "ok"}
    (settings.paths.state / daemon.STATUS_FILE).write_text(json.dumps(live), encoding="utf-8")
    try:
        assert cli.main(["status", "--config", str(config_path)]) == 1
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert "ATTENTION: SPN01_0012 failed 3 times in a row at freeze (INTERNAL: OSError(2))" in out


def test_status_into_a_closed_pipe_ends_quietly(config_path: Path) -> None:
    """`xnatdrop status | head` ended in a BrokenPipeError traceback. The reader here goes away
    before status writes a byte. Result: no traceback, exit 141 (128 + SIGPIPE)."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "xnatdrop", "status", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    error = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert error == ""


def test_status_on_a_full_state_file_system_says_so_instead_of_a_traceback(
    tmp_path: Path, config_path: Path
) -> None:
    """Found by the campaign (local/state-disk-full): the state file system filled up while
    the daemon wrote its ledger, leaving the WAL index (`-shm`) 3 bytes long and no room to
    grow it. Every read by another process then fails with "disk I/O error", and `status` died
    with a traceback. Result: exit 1 and one ATTENTION line each for the ledger and the full
    disk. (The files are set as the campaign found them; `status` runs as its own process.)"""
    settings = config.load(config_path)
    state = settings.paths.state
    with tmpfs(state, "4m"):
        with ledger.Ledger(state) as book:
            book.register(PROJECT, "SPN01_0001", tmp_path / "drop" / "SPN01_0001", Path(""))
        (state / (ledger.FILENAME + "-shm")).write_bytes(b"\0\0\0")
        (state / (ledger.FILENAME + "-wal")).write_bytes(b"")
        fill(state)
        answer = subprocess.run(
            [sys.executable, "-m", "xnatdrop", "status", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert answer.returncode == 1 and "Traceback" not in answer.stderr, answer.stderr
    assert "ATTENTION: the ledger cannot be read (disk I/O error)" in answer.stdout
    assert "ATTENTION: the state folder's file system is full" in answer.stdout
