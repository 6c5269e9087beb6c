"""The check of a large folder, and the plan of its zip, run in a child process (`apart`,
`pipeline.check`, `pipeline.send`), so that the memory they leave behind in CPython's allocator
is not carried through the upload (issue 13, "memory flat": an 8 GB push held 15 MB more after
its check than before it, and 3 MB more after reading the check record's files for the plan).

What must hold: the same verdict, record and quarantine as in this process; the child's
errors come back with their type and message (an unmounted share stays FolderGone, a
TransientError, and is never a verdict); a child that dies is a TransientError; and the
daemon's way (threads running: a forkserver child, everything pickled) works too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from push_helpers import (
    add_converted_file,
    assert_archived_once,
    client,
    load,
    snapshot,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import apart, config, ledger, pipeline, rules
from xnatdrop.errors import ConfigError, PermanentError, StateError, TransientError
from xnatdrop.pipeline import check, send, spool, subject


@pytest.fixture
def threads_running() -> Iterator[None]:
    """Another thread alive, as in the daemon: `apart` then takes a forkserver child."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.fixture
def calls_apart(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every folder is checked and planned apart (not only those of APART_MIN_FILES files); the
    names of the functions `apart.call` ran are listed."""
    ran: list[str] = []
    call = apart.call

    def counted(function: Callable[..., Any], *args: object) -> Any:
        ran.append(function.__name__)
        return call(function, *args)

    monkeypatch.setattr(check, "APART_MIN_FILES", 1)
    monkeypatch.setattr(apart, "call", counted)
    return ran


def push(settings: config.Config, folder: Path) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings))


def test_a_folder_checked_apart_is_archived_as_one_checked_here(
    tmp_path: Path, server: Sandbox, calls_apart: list[str]
) -> None:
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", "SPN01_0001")
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert calls_apart == ["_save_apart", "_plan"]
    dicom = sum(1 for name in original if not name.startswith(("behav", "physio", "logs")))
    assert_archived_once(settings, "SPN01_0001", original, dicom)


def test_a_blocked_folder_checked_apart_is_quarantined_naming_the_file(
    tmp_path: Path, server: Sandbox, calls_apart: list[str]
) -> None:
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", "SPN01_0002", sidecars=False)
    converted = add_converted_file(folder)
    outcome = push(settings, folder)
    assert outcome.kind == "quarantined", outcome
    assert calls_apart == ["_save_apart"]
    assert outcome.path is not None
    reason = json.loads((outcome.path / "QUARANTINE.json").read_text(encoding="utf-8"))
    assert reason["code"] == "RULES_BLOCKED"
    blocks = [f for f in reason["findings"] if f["action"] == "block"]
    assert [(f["code"], f["path"]) for f in blocks] == [("CONVERTED_FILE", converted)]


def test_the_record_saved_apart_is_the_record_saved_here(tmp_path: Path) -> None:
    folder = stage(tmp_path / "drop", "SPN01_0003")
    walk = rules.walk_folder(folder)
    push_settings = config.PushSettings()
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    check._save_record(walk, push_settings, here)
    assert apart.call(check._save_apart, walk, push_settings, there) == ""
    assert (here / "check.json").read_bytes() == (there / "check.json").read_bytes()


def test_the_plan_made_apart_is_the_plan_made_here(tmp_path: Path) -> None:
    folder = stage(tmp_path / "drop", "SPN01_0003")
    here, there = tmp_path / "here", tmp_path / "there"
    for spooled in (here, there):
        spooled.mkdir()
        check._save_record(rules.walk_folder(folder), config.PushSettings(), spooled)
    made_here = send._plan(here, folder, 1)
    assert apart.call(send._plan, there, folder, 1) == made_here
    assert (here / "plan.json").read_bytes() == (there / "plan.json").read_bytes()
    count, total, _ = made_here
    assert count > 10 and total > 0


def test_the_record_head_counts_the_files_to_upload_as_its_files(tmp_path: Path) -> None:
    """The check step and the pack step count the files from the series: neither reads the
    record's files (a row per file) in the pushing process."""
    folder = stage(tmp_path / "drop", "SPN01_0003")
    check._save_record(rules.walk_folder(folder), config.PushSettings(), tmp_path)
    head = spool.check_record(tmp_path, 1, files=False)
    assert head.files == ()
    assert check.upload_count(head) == len(spool.check_record(tmp_path, 1).files) > 10


def test_a_call_apart_runs_in_another_process() -> None:
    assert apart.call(os.getpid) != os.getpid()


@pytest.mark.usefixtures("threads_running")
def test_with_threads_running_the_child_comes_from_the_forkserver(tmp_path: Path) -> None:
    """The daemon's case: the walk and the settings are pickled to the child, the record is
    the same as the one made here."""
    folder = stage(tmp_path / "drop", "SPN01_0004")
    walk = rules.walk_folder(folder)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    check._save_record(walk, config.PushSettings(), here)
    assert apart.call(os.getpid) != os.getpid()
    apart.call(check._save_apart, walk, config.PushSettings(), there)
    assert (here / "check.json").read_bytes() == (there / "check.json").read_bytes()


@pytest.mark.parametrize("threads", [False, True], ids=["fork", "forkserver"])
def test_a_folder_gone_while_checked_apart_is_folder_gone_here(
    tmp_path: Path, threads: bool, request: pytest.FixtureRequest
) -> None:
    """The share went away while the child read it (its identity changed): the child's
    FolderGone comes back as FolderGone, a TransientError with its message, not a verdict."""
    if threads:
        request.getfixturevalue("threads_running")
    folder = stage(tmp_path / "drop", "SPN01_0005", sidecars=False)
    walk = dataclasses.replace(rules.walk_folder(folder), before=(0, 0))
    with pytest.raises(rules.FolderGone) as raised:
        apart.call(rules.Walk.verdict, walk)
    assert isinstance(raised.value, TransientError)
    assert str(raised.value) == str(rules.FolderGone(folder))


def test_a_missing_folder_checked_apart_raises_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        apart.call(rules.walk_folder, tmp_path / "missing")


def test_a_child_that_dies_without_an_answer_is_a_transient_error() -> None:
    with pytest.raises(apart.ChildDied, match="ended without an answer") as raised:
        apart.call(os._exit, 9)
    assert isinstance(raised.value, TransientError)


@pytest.mark.parametrize(
    "error",
    [
        rules.FolderGone(Path("/drop/SPN01_0001")),
        PermanentError("RULES_BLOCKED", "2 problem(s) in the folder stop the upload", "fix it"),
        PermanentError("LABEL_EXISTS", "the session exists"),
        StateError(Path("/state"), "No space left on device"),
        ConfigError("xnatdrop.toml", ["[xnat] url: missing", "[paths] state: missing"]),
        apart.ChildDied("the process ended"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_xnatdrop_errors_pickle_as_they_are(error: Exception) -> None:
    """By default pickle calls `__init__` again with the message alone: FolderGone then named
    its own message as the folder, and the others raised TypeError when unpickled."""
    error.in_xnat = "http://xnat/data/experiments/XNAT_E00001"  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)


def test_a_header_without_subject_fields_is_handed_back_to_log_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The one line the check logged itself (a first file pydicom cannot read for the subject's
    fields) is returned for the caller to log, in this process, so that it reaches the daemon's
    log when the check ran apart."""
    broken = tmp_path / "IM0001.dcm"
    broken.write_bytes(b"not a DICOM file at all")
    push_settings = config.PushSettings(subject_from_dicom=True)
    with caplog.at_level("DEBUG"):
        found = subject.fields(tmp_path, push_settings, broken)
    assert found == ({}, "IM0001.dcm: no subject fields from its header (InvalidDicomError)")
    assert not caplog.records
