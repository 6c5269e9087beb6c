"""Issue 9 on the pipeline's side: a copy that paused is held back, never half-archived; our own
reason files in a resubmitted folder are set aside; `subject.toml` values are checked; what the
push writes under the state folder is private.

Real sandbox over HTTP, real GE series (`ge_signa_premier_table`, GE SIGNA Premier RX29,
BSD-2-Clause; see its README.md in ../shared/dicom) copied into tmp_path.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import (
    DaemonProcess,
    done_labels,
    imports,
    settle_config,
    start,
    wait_for,
    xnatdrop,
)
from push_helpers import (
    EXAM,
    MEDIUM,
    PROJECT,
    assert_archived_once,
    client,
    load,
    snapshot,
    stage,
    write_config,
)
from shared_data import dataset
from xnat_sandbox import Sandbox
from xnatdrop import config, ledger, pipeline, reasonfiles
from xnatdrop.errors import PermanentError
from xnatdrop.pipeline import subject

LABEL = "SPN01_0101"


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def push(settings: config.Config, folder: Path, **kwargs: object) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings), **kwargs)


def copy_in_name_order(sources: list[Path], target: Path, count: int) -> list[Path]:
    """Copy the first `count` files of the series folders in `sources`, folder by folder and
    file by file in name order, as Explorer and robocopy do; return what is still to copy."""
    pending = [f for s in sources for f in sorted(p for p in s.iterdir() if p.is_file())]
    for path in pending[:count]:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.parent.name / path.name)
    return pending[count:]


def test_a_copy_paused_half_way_is_held_then_archived_whole(
    tmp_path: Path, server: Sandbox, daemons: list[DaemonProcess]
) -> None:
    """The reported case: a copy that paused longer than quiet_seconds (here 1 s; the pause is
    6 s) with 46 of 92 files there. It settled, and half a session was archived; the rest was
    quarantined as LABEL_EXISTS. Result now: the folder is held back as still copying, nothing
    is sent, and once the copy resumes and ends, the whole session is archived from one
    upload."""
    config_path = settle_config(tmp_path, server.url)
    daemon = start(daemons, config_path, tmp_path)
    sources = [dataset("ge_signa_premier_table") / EXAM / name for name in MEDIUM]
    target = tmp_path / "drop" / LABEL
    rest = copy_in_name_order(sources, target, 46)  # localizer (21) and 25 of the fMRI's 50

    wait_for(lambda: "still being copied" in daemon.log(), what=daemon.log())
    status: list[str] = []

    def explains_the_wait() -> bool:
        status[:] = [xnatdrop("status", "--config", str(config_path)).stdout]
        return (
            f"waiting:       {LABEL}: INCOMPLETE: still being copied (INCOMPLETE_SERIES"
            in (status[0])
        )

    wait_for(explains_the_wait, what=str(status))
    pause = threading.Event()
    pause.wait(5)  # the copy's own pause, long past quiet_seconds (not a wait for the daemon)
    assert imports(server) == 0 and done_labels(tmp_path) == []
    assert "INCOMPLETE" in daemon.log()
    # Resume right after a hand-back, while the folder settles again (quiet_seconds), so the
    # copy never meets it in the work area (that race is a case of its own).
    thaws = daemon.log().count("back in the drop root to settle again")
    wait_for(lambda: daemon.log().count("back in the drop root to settle again") > thaws)
    for path in rest:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.parent.name / path.name)
    original = snapshot(target)

    wait_for(lambda: done_labels(tmp_path) == [LABEL], what=daemon.log())
    assert daemon.stop() == 0
    assert imports(server) == 1
    assert_archived_once(load(config_path), LABEL, original, dicom_count=92)


def test_a_copy_that_never_resumed_is_quarantined_with_the_reason(
    tmp_path: Path, server: Sandbox
) -> None:
    """Past settle.max_wait_seconds the half copy is quarantined, untouched, naming the series
    and what the scanner announced."""
    settings = load(
        write_config(tmp_path, server.url, extra="[settle]\nmax_wait_seconds = 0.001\n")
    )
    sources = [dataset("ge_signa_premier_table") / EXAM / name for name in MEDIUM]
    folder = tmp_path / "drop" / LABEL
    copy_in_name_order(sources, folder, 46)
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined" and outcome.code == "RULES_BLOCKED", outcome
    assert outcome.path is not None
    text = (outcome.path / reasonfiles.TEXT_NAME).read_text(encoding="utf-8")
    assert "rule: INCOMPLETE_SERIES" in text
    assert "ImagesInAcquisition announce 50 images, 25 are here" in text
    assert {k: v for k, v in snapshot(outcome.path).items() if "QUARANTINE" not in k} == original
    assert imports(server) == 0


def test_a_fresh_half_copy_goes_back_to_settle(tmp_path: Path, server: Sandbox) -> None:
    settings = load(write_config(tmp_path, server.url))
    sources = [dataset("ge_signa_premier_table") / EXAM / name for name in MEDIUM]
    folder = tmp_path / "drop" / LABEL
    copy_in_name_order(sources, folder, 46)
    outcome = push(settings, folder)
    assert outcome.kind == "incomplete", outcome
    assert folder.is_dir() and imports(server) == 0


def test_reason_files_of_an_earlier_quarantine_are_set_aside(
    tmp_path: Path, server: Sandbox
) -> None:
    """A technologist fixed a quarantined folder and copied it back with QUARANTINE.txt/.json.
    Result: archived; the reason files are not in done/ but kept under the state folder."""
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    original = snapshot(folder)
    reasonfiles.write(
        folder,
        {
            "label": LABEL,
            "project": PROJECT,
            "code": "RULES_BLOCKED",
            "message": "a NIfTI file",
            "fix": "remove it",
            "findings": [],
            "drop_root": str(tmp_path / "drop"),
            "time": "2026-01-01 12:00:00",
        },
    )
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert outcome.path is not None
    assert not (outcome.path / reasonfiles.TEXT_NAME).exists()
    assert not (outcome.path / reasonfiles.JSON_NAME).exists()
    kept = settings.paths.state / "requeued" / f"{LABEL}__drop1"
    assert sorted(p.name for p in kept.iterdir()) == ["QUARANTINE.json", "QUARANTINE.txt"]
    assert_archived_once(settings, LABEL, original, dicom_count=21)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dob = 1990-04-01T10:30:00\n", "dob must be a date like 1990-04-01"),
        ("dob = {tomorrow}\n", "is in the future or before 1900"),
        ("dob = 1850-01-01\n", "is in the future or before 1900"),
        ('dob = "1990-04-01"\n', "dob must be a date like 1990-04-01"),
        ("yob = {next_year}\n", "yob must be a year from 1900 to this year"),
        ("yob = true\n", "yob must be a year from 1900 to this year"),
    ],
)
def test_subject_file_values_are_checked(tmp_path: Path, text: str, message: str) -> None:
    # Dates relative to today are filled in as the test runs, not when it is collected: a run
    # that crosses midnight would otherwise send "tomorrow" as today.
    today = datetime.date.today()
    tomorrow = today + datetime.timedelta(days=1)
    path = tmp_path / "subject.toml"
    path.write_text(text.format(tomorrow=tomorrow, next_year=today.year + 1), encoding="utf-8")
    with pytest.raises(PermanentError, match=message) as caught:
        subject.parse(path, "subject.toml")
    assert caught.value.code == "SUBJECT_FILE_INVALID"


def test_a_valid_date_of_birth_is_sent_as_a_date(tmp_path: Path) -> None:
    today = datetime.date.today()
    path = tmp_path / "subject.toml"
    path.write_text(f'sex = "F"\ndob = {today}\n', encoding="utf-8")
    assert subject.parse(path, "subject.toml") == {
        "gender": "female",
        "dob": today.isoformat(),
    }


def assert_private(state: Path) -> list[Path]:
    """Every folder under `state` is 0700 and every file 0600; return the files seen."""
    files = []
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        else:
            assert mode == 0o600, (path, oct(mode))
            files.append(path.relative_to(state))
    return files


def test_everything_written_under_the_state_folder_is_private(
    tmp_path: Path, server: Sandbox
) -> None:
    """Spool folders and files were created 0755/0644. Checked where the spool is fullest:
    a push stopped after pack (check.json, plan.json), one whose sidecar upload keeps failing
    (the sidecar zip is streamed: none is ever written under the state folder), a quarantine,
    and reason files set aside."""
    settings = load(write_config(tmp_path, server.url, inline_attempts=1))
    stopping = threading.Event()

    def stop_after_pack(step: str, done: int, total: int) -> None:
        if step == "pack" and done == total:
            stopping.set()

    first = stage(tmp_path / "drop", "SPN01_0102", sidecars=False)
    assert push(settings, first, stopping=stopping, progress=stop_after_pack).kind == "stopped"
    server.fail(r"/resources/behav/files/behav\.zip", status=500, count=None)
    second = stage(tmp_path / "drop", "SPN01_0103")
    assert push(settings, second).kind == "transient"
    blocked = stage(tmp_path / "drop", "SPN01_0104", sidecars=False)
    (blocked / "notes.txt").write_text("a loose file\n", encoding="utf-8")
    assert push(settings, blocked).kind == "quarantined"

    files = {p.as_posix() for p in assert_private(settings.paths.state)}
    assert {"spool/1/check.json", "spool/1/plan.json", "spool/2/check.json"} <= files
    assert not [name for name in files if name.endswith(".zip")]
    assert "ledger.sqlite3" in files and "locks/SPN01__SPN01_0104.lock" in files


@pytest.mark.parametrize("where", ["01_3_Plane_Localizer_FF", "behav"])
def test_a_latin1_file_name_is_quarantined_before_anything_is_sent(
    tmp_path: Path, server: Sandbox, where: str
) -> None:
    """A file name that is not UTF-8 in a series folder (the drop was never sent, retried as
    INTERNAL) or in a sidecar (archived, then stuck at attach). Result now: quarantined at the
    check, before any upload, with the file named (bytes escaped) in QUARANTINE.txt/.json."""
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", LABEL)
    with open(os.path.join(os.fsencode(folder / where), b"Mu\xf1oz.txt"), "wb") as handle:
        handle.write(b"latin-1 name\n")
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined" and outcome.code == "RULES_BLOCKED", outcome
    assert outcome.path is not None
    text = (outcome.path / reasonfiles.TEXT_NAME).read_text(encoding="utf-8")
    assert f"{where}/Mu\\xf1oz.txt: file name Mu\\xf1oz.txt is not valid UTF-8" in text
    assert "rule: BAD_NAME" in text
    assert os.path.exists(os.path.join(os.fsencode(outcome.path / where), b"Mu\xf1oz.txt"))
    assert imports(server) == 0
