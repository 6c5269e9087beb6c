"""Issue 9 inside the pipeline: every path that ended in INTERNAL (a traceback, retried forever)
now ends in done, quarantine, or a wait that says what to do.

Each test stages the case that used to loop: a kill -9 between the move back to the drop root
and the ledger write; a kill -9 during freeze followed by the technologist copying the folder
again; very long file names; a 255-byte folder name; a state file system that fills up while
the upload is planned or sent; a sidecar larger than the state folder's free space; a full
share when the receipt is written; an error XNAT gives on every attempt; a refused login, and
done/ or quarantine/ paths that an operator corrects while a drop is under way.

Real sandbox over HTTP, real processes for kill -9 (the `XNATDROP_TEST_CRASH_AT` hook), real
tmpfs mounts for full file systems (`fs_helpers`, needs root as CI has). Data: GE SIGNA Premier
RX29 `ge_signa_premier_table` (BSD-2-Clause; see its README.md in ../shared/dicom), series
01_3_Plane_Localizer_FF, 21 files, copied into tmp_path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import DaemonProcess, imports, settle_config, start, wait_for, xnatdrop
from fs_helpers import fill, tmpfs
from push_helpers import (
    PROJECT,
    SMALL,
    assert_archived_once,
    client,
    load,
    push_process,
    snapshot,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import config, ledger, names, pack, pipeline, xnat

LABEL = "SPN01_0201"
SERIES = SMALL[0]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def push(settings: config.Config, folder: Path, **kwargs: object) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings), **kwargs)


def drops(settings: config.Config) -> list[ledger.Drop]:
    with ledger.Ledger(settings.paths.state) as book:
        return book.drops()


def history(settings: config.Config, drop_id: int) -> list[ledger.Event]:
    with ledger.Ledger(settings.paths.state) as book:
        return book.history(book.get(drop_id))


def truncate_one(folder: Path) -> tuple[Path, bytes]:
    """Cut the first file of the series in half, as a copy still under way leaves it; return
    the path and its whole content (to finish the copy later)."""
    path = sorted((folder / SERIES).iterdir())[0]
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path, whole


# -- the move back to the drop root (thaw) -----------------------------------------------------


def test_a_kill_between_the_move_back_and_the_ledger_write_resumes_and_archives(
    tmp_path: Path, server: Sandbox
) -> None:
    """1. The check finds a file still being copied and moves the folder back to the drop root;
    the process is killed right after that rename, before the ledger records it. Result: the
    folder is back in the drop root, whole. 2. The copy finishes; push again. Result: archived
    once. (The ledger used to point at a work folder that no longer existed: "is not a
    directory" on every attempt, as INTERNAL.)"""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    path, whole = truncate_one(folder)
    killed = push_process(config_path, folder, crash_at="thaw:after")
    assert killed.returncode == -9, killed.stderr
    settings = load(config_path)
    (drop,) = drops(settings)
    assert (drop.state, drop.running) == ("frozen", "thaw")
    assert folder.is_dir() and not Path(drop.work).exists()

    path.write_bytes(whole)  # the copy finishes
    original = snapshot(folder)
    assert push(settings, folder).kind == "incomplete"  # the thaw completes: settle again
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert_archived_once(settings, LABEL, original, dicom_count=21)
    assert [e.event for e in history(settings, drop.id)].count("thaw") == 1


def test_a_ledger_left_by_an_interrupted_thaw_of_an_older_version_recovers(
    tmp_path: Path, server: Sandbox
) -> None:
    """An older xnatdrop renamed the folder back and was killed before writing anything: its
    ledger says `frozen`, running `check`, with a work folder that no longer exists. Result: the
    thaw is completed (state `new`) and the folder is archived when pushed again."""
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    original = snapshot(folder)
    work = tmp_path / "drop" / settings.push.work_folder / "1" / LABEL
    with ledger.Ledger(settings.paths.state) as book:
        drop = book.register(PROJECT, LABEL, folder, Path(""))
        drop = book.begin(drop, "freeze", work=work)
        drop = book.advance(drop, "freeze", work=work)
        book.begin(drop, "check")
    assert push(settings, folder).kind == "incomplete"
    (drop,) = drops(settings)
    assert (drop.state, drop.running) == ("new", None)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert_archived_once(settings, LABEL, original, dicom_count=21)


# -- freeze, and the technologist copying again --------------------------------------------------


def test_a_kill_during_freeze_then_a_second_copy_archives_each_once(
    tmp_path: Path, server: Sandbox
) -> None:
    """1. Killed right after the folder was renamed into the work area, before the ledger
    recorded it. 2. The technologist sees the folder gone and copies it again. Result: the
    frozen copy is archived and the new one is left in the drop root; pushed in turn, it finds
    every instance already archived and goes to done/ with its own receipt. XNAT holds one
    session. ("Directory not empty" on every attempt, as INTERNAL, before.)"""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at="freeze:after")
    assert killed.returncode == -9, killed.stderr
    assert not folder.exists()
    stage(tmp_path / "drop", LABEL, sidecars=False)  # copied again

    settings = load(config_path)
    first = push(settings, folder)
    assert first.kind == "archived", first
    assert folder.is_dir() and snapshot(folder) == original  # the new copy, untouched
    second = push(settings, folder)
    assert second.kind == "archived", second
    assert second.drop_id != first.drop_id and second.path != first.path
    for outcome in (first, second):
        assert outcome.path is not None
        kept = snapshot(outcome.path)
        assert {k: v for k, v in kept.items() if not k.startswith("RECEIPT")} == original
    assert_archived_once(settings, LABEL, original, dicom_count=21)


# -- names too long ---------------------------------------------------------------------------


def test_very_long_file_names_are_sent_under_shorter_zip_entry_names(
    tmp_path: Path, server: Sandbox
) -> None:
    """Files named with 240 characters: XNAT stores each under its whole zip entry name, which
    no longer fit a file name there, and answered 500 to every import (58 attempts before).
    Result: archived on the first call; the files keep their names in done/."""
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    for number, path in enumerate(sorted((folder / SERIES).iterdir())):
        path.rename(path.with_name("x" * 240 + f"_{number:03d}.dcm"))
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert_archived_once(settings, LABEL, original, dicom_count=21)
    (drop,) = drops(settings)
    assert not [e for e in history(settings, drop.id) if e.event == "failed"]


def test_upload_names_fit_and_stay_apart() -> None:
    short = f"{SERIES}/00000001.dcm"
    assert pack.upload_name(short) == short
    long_a, long_b = (f"{SERIES}/{'y' * 240}_{n}.dcm" for n in (1, 2))
    name_a, name_b = pack.upload_name(long_a), pack.upload_name(long_b)
    assert name_a != name_b and name_a.endswith(".dcm") and name_a.startswith(SERIES)
    assert max(len(name_a.encode()), len(name_b.encode())) <= pack.ZIP_NAME_MAX
    assert len(os.fsencode(names.fit("é" * 200, "__20261125-120000__2"))) <= names.NAME_MAX


def test_a_255_byte_folder_name_is_quarantined_with_a_name_that_fits(
    tmp_path: Path, server: Sandbox
) -> None:
    """A folder whose name is 255 bytes: the per-drop lock file name was too long for the
    kernel, so it was never processed and nothing said why. XNAT could not store it either (a
    prearchive session keeps `<label>.xml` beside its folder). Result: quarantined at once with
    the label rule naming the length, in a quarantine folder whose name fits, files untouched."""
    settings = load(write_config(tmp_path, server.url))
    label = "S" * 255
    folder = stage(tmp_path / "drop", label, sidecars=False)
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined", outcome
    assert outcome.path is not None and len(outcome.path.name.encode()) <= names.NAME_MAX
    reason = json.loads((outcome.path / "QUARANTINE.json").read_text(encoding="utf-8"))
    (finding,) = [f for f in reason["findings"] if f["action"] == "block"]
    assert finding["code"] == "LABEL_PATTERN"
    assert (
        "(255 characters): it is 255 characters long; XNAT can store labels of at most 251"
        in (finding["message"])
    )
    kept = snapshot(outcome.path)
    assert {k: v for k, v in kept.items() if not k.startswith("QUARANTINE")} == original
    assert imports(server) == 0


# -- full file systems ------------------------------------------------------------------------


@pytest.mark.parametrize("stage_at", ["pack:before", "import:before"])
def test_a_full_state_file_system_while_planning_or_sending_waits_without_a_traceback(
    tmp_path: Path, server: Sandbox, stage_at: str
) -> None:
    """The spool of the drop (a small tmpfs) fills up after the check: writing the zip's plan
    (pack) or the manifest at the end of the upload (import) fails with ENOSPC. Result: the
    push stops with the state folder's one sentence (exit 3), no traceback, nothing lost; once
    space is freed the session is archived once. (INTERNAL with a traceback before.)"""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    original = snapshot(folder)
    state = tmp_path / "state"
    with tmpfs(state / "spool" / "1", size="1m") as spool:
        killed = push_process(config_path, folder, crash_at=stage_at)
        assert killed.returncode == -9, killed.stderr
        filler = fill(spool)
        full = xnatdrop("push", str(folder), "--config", str(config_path))
        assert full.returncode == 3, full.stderr
        assert "Traceback" not in full.stderr and "INTERNAL" not in full.stdout + full.stderr
        assert full.stderr.startswith(f"cannot write the state folder {state} (No space left")
        assert full.stderr.rstrip().endswith("xnatdrop carries on once it can write again")
        settings = load(config_path)
        (drop,) = drops(settings)
        assert drop.last_error_code == "STATE" and Path(drop.work).is_dir()

        filler.unlink()
        resumed = xnatdrop("push", str(folder), "--config", str(config_path))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_archived_once(settings, LABEL, original, dicom_count=21)


def test_a_sidecar_larger_than_the_state_folder_s_free_space_is_attached(
    tmp_path: Path, server: Sandbox
) -> None:
    """The state folder is a 2 MiB tmpfs and the behav sidecar holds 3 MB that do not
    compress. Its zip was built in the state folder, so the drop stuck at attach after its
    session was archived. Result: streamed, archived with the sidecar, nothing written to the
    state folder but small files."""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    (folder / "behav").mkdir()
    (folder / "behav" / "eyetracker.raw").write_bytes(os.urandom(3_000_000))
    original = snapshot(folder)
    with tmpfs(tmp_path / "state", size="2m"):
        settings = load(config_path)
        outcome = push(settings, folder)
        assert outcome.kind == "archived", outcome
    with client(settings) as xnat_client:
        (remote,) = xnat_client.resource_files(PROJECT, LABEL, LABEL, "behav") or []
    assert (remote.path, remote.size) == ("eyetracker.raw", 3_000_000)
    assert_archived_once(settings, LABEL, original, dicom_count=21)


def test_a_full_share_when_the_receipt_is_written_waits_and_names_the_file(
    tmp_path: Path, server: Sandbox
) -> None:
    """The share (drop root, done/, quarantine/ on one small tmpfs) fills up once the session
    is archived, before the receipt is written. Result: exit 3 with one line naming the
    receipt file and the fix (code FILESYSTEM, no traceback); once space is freed, finished."""
    share = tmp_path / "share"
    with tmpfs(share, size="8m"):
        config_path = write_config(tmp_path, server.url)
        text = config_path.read_text(encoding="utf-8")
        for name in ("drop", "done", "quarantine"):
            text = text.replace(f'"{tmp_path / name}"', f'"{share / name}"')
        config_path.write_text(text, encoding="utf-8")
        folder = stage(share / "drop", LABEL, sidecars=False)
        original = snapshot(folder)
        killed = push_process(config_path, folder, crash_at="finish:before")
        assert killed.returncode == -9, killed.stderr
        filler = fill(share)
        full = xnatdrop("push", str(folder), "--config", str(config_path))
        assert full.returncode == 3, full.stderr
        assert "Traceback" not in full.stderr
        assert "FILESYSTEM: " in full.stdout and "RECEIPT" in full.stdout
        assert "No space left on device; its file system is full: free space there" in full.stdout
        filler.unlink()
        resumed = xnatdrop("push", str(folder), "--config", str(config_path))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert_archived_once(load(config_path), LABEL, original, dicom_count=21)


# -- the same failure, again and again --------------------------------------------------------


def test_an_error_xnat_gives_every_time_raises_one_alert_and_status_exit_1(
    tmp_path: Path, server: Sandbox, daemons: list[DaemonProcess]
) -> None:
    """XNAT answers every import with 500. Result: retried with backoff, one ALERT line once
    it has failed 3 times in a row the same way (not one per attempt), and `status` exits 1
    naming the drop, the step and the answer."""
    server.fail(r"/services/import", status=500, count=None)
    config_path = settle_config(tmp_path, server.url)
    daemon = start(daemons, config_path, tmp_path)
    staged = stage(tmp_path / "staging", LABEL, sidecars=False)
    staged.rename(tmp_path / "drop" / LABEL)
    wait_for(lambda: "times in a row" in daemon.log(), what=daemon.log())
    settings = load(config_path)
    wait_for(lambda: drops(settings)[0].attempts >= 8, what=daemon.log())
    status = xnatdrop("status", "--config", str(config_path))
    assert daemon.stop() == 0
    log = daemon.log()
    (alert,) = [line for line in log.splitlines() if "times in a row" in line]
    assert f"ERROR   xnatdrop.daemon: ALERT {LABEL}: failed " in alert
    assert "at import (TRANSIENT: POST /data/services/import: HTTP 500" in alert
    assert "Traceback" not in log
    assert status.returncode == 1
    assert f"ATTENTION: {LABEL} failed" in status.stdout and "at import (TRANSIENT" in status.stdout


# -- credentials ------------------------------------------------------------------------------


def test_a_refused_login_is_recorded_at_the_step_that_met_it(
    tmp_path: Path, server: Sandbox
) -> None:
    """The first request to XNAT (import) meets a wrong password. `status` showed the failure
    at "freeze", where the call began. Result: recorded, and shown, at import."""
    config_path = write_config(tmp_path, server.url)
    (tmp_path / "secret").write_text("wrong\n", encoding="utf-8")
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    settings = load(config_path)
    password = settings.xnat.resolve_password("test")
    with ledger.Ledger(settings.paths.state) as book:
        outcome = pipeline.process(
            folder, settings, book, lambda: xnat.XnatClient(settings.xnat, password)
        )
    assert outcome.kind == "auth_failed", outcome
    (drop,) = drops(settings)
    (failed,) = [e for e in history(settings, drop.id) if e.event == "failed"]
    assert (failed.step, failed.detail["code"]) == ("import", "AUTHENTICATION")
    status = xnatdrop("status", "--config", str(config_path))
    (line,) = [x for x in status.stdout.splitlines() if "AUTHENTICATION" in x]
    assert f"{LABEL}  import  AUTHENTICATION" in line


# -- an operator corrects done/ or quarantine/ -------------------------------------------------


def retarget(config_path: Path, name: str, path: Path) -> None:
    text = config_path.read_text(encoding="utf-8")
    text = "\n".join(
        f'{name} = "{path}"' if line.startswith(f"{name} = ") else line
        for line in text.splitlines()
    )
    config_path.write_text(text + "\n", encoding="utf-8")


@pytest.mark.parametrize("name", ["done", "quarantine"])
def test_a_corrected_done_or_quarantine_path_applies_to_a_drop_under_way(
    tmp_path: Path, server: Sandbox, name: str
) -> None:
    """1. paths.done (or paths.quarantine) is on another file system than the drop root: the
    drop stops at its last move with a transient error, the target stored in the ledger.
    2. The operator points the path at the share. Result: the next attempt moves the folder
    to the new path (it used to retry the old one from the work folder forever)."""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    if name == "quarantine":
        (folder / "notes.txt").write_text("a loose file\n", encoding="utf-8")
    original = snapshot(folder)
    with tmpfs(tmp_path / "elsewhere", size="1m") as elsewhere:
        retarget(config_path, name, elsewhere / name)
        first = push(load(config_path), folder)
        assert (first.kind, first.code) == ("transient", "TRANSIENT"), first
        assert "on another file system than the drop root" in first.message
        (drop,) = drops(load(config_path))
        assert drop.target is not None and drop.target.startswith(str(elsewhere))
        retarget(config_path, name, tmp_path / f"fixed-{name}")
        second = push(load(config_path), folder)
    assert second.kind == ("archived" if name == "done" else "quarantined"), second
    assert second.path is not None and second.path.is_relative_to(tmp_path / f"fixed-{name}")
    kept = snapshot(second.path)
    assert {k: v for k, v in kept.items() if not k.startswith(("RECEIPT", "QUARANTINE"))} == (
        original
    )


def test_run_refuses_a_done_path_that_is_a_file(tmp_path: Path, server: Sandbox) -> None:
    """paths.done names an existing file: no folder can ever be made there, yet os.access calls
    it writable. Result: `run` (and doctor) refuse it at start, exit 2, naming the file."""
    config_path = write_config(tmp_path, server.url)
    blocker = tmp_path / "done-is-a-file"
    blocker.write_text("", encoding="utf-8")
    blocker.chmod(0o755)
    retarget(config_path, "done", blocker)
    started = xnatdrop("run", "--config", str(config_path), timeout=30)
    assert started.returncode == 2
    assert f"paths.done {blocker}: {blocker} is a file, not a folder; point it at a folder" in (
        started.stderr
    )


def test_a_folder_moved_back_by_hand_while_under_way_is_taken_back_and_archived(
    tmp_path: Path, server: Sandbox
) -> None:
    """The drop stopped after its check (killed); someone moved the folder from the hidden
    work area back into the drop root. Result: the next push takes it back and archives it
    (the check step used to fail on the missing work folder forever)."""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at="pack:before")
    assert killed.returncode == -9, killed.stderr
    settings = load(config_path)
    (drop,) = drops(settings)
    Path(drop.work).rename(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert_archived_once(settings, LABEL, original, dicom_count=21)


def test_a_kill_after_the_move_to_quarantine_leaves_a_new_copy_alone(
    tmp_path: Path, server: Sandbox
) -> None:
    """Killed right after the folder was moved to quarantine/, before the ledger recorded it;
    meanwhile the technologist copied a fixed folder of that label into the drop root. Result:
    the quarantine is completed without touching the new copy, which is pushed as a new drop."""
    config_path = write_config(tmp_path, server.url)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    (folder / "notes.txt").write_text("a loose file\n", encoding="utf-8")
    killed = push_process(config_path, folder, crash_at="quarantine:after")
    assert killed.returncode == -9, killed.stderr
    fixed = stage(tmp_path / "drop", LABEL, sidecars=False)
    original = snapshot(fixed)
    settings = load(config_path)
    first = push(settings, fixed)
    assert (first.kind, first.code) == ("quarantined", "RULES_BLOCKED"), first
    assert first.path is not None and (first.path / "notes.txt").is_file()
    assert snapshot(fixed) == original
    second = push(settings, fixed)
    assert second.kind == "archived", second
    assert_archived_once(settings, LABEL, original, dicom_count=21)
