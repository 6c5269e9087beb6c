"""Late sidecars (issue 11, point 6): a second folder of an archived session's label holding
only `behav/`, `physio/` (and `subject.toml`) is attached to that session, verified, and gets
its own receipt; a sidecar file XNAT holds with other content is explained in the reason file.

Against the sandbox XNAT over real HTTP, with the real GE localizer series for the first drop.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from push_helpers import (
    PROJECT,
    SMALL,
    archived_sessions,
    client,
    load,
    push_process,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import config, ledger, pipeline

LABEL = "SPN01_0001"
LATE = {
    "behav/responses_day2.csv": "trial,rt\n1,0.611\n2,0.402\n",
    "physio/pulse_001.log": "0 71\n1 72\n" * 40,
}


@pytest.fixture
def config_path(tmp_path: Path, server: Sandbox) -> Path:
    return write_config(tmp_path, server.url)


@pytest.fixture
def settings(config_path: Path) -> config.Config:
    return load(config_path)


def push(settings: config.Config, folder: Path) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings))


def late_folder(root: Path, files: dict[str, str], subject_toml: bool = False) -> Path:
    folder = root / LABEL
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")
    if subject_toml:
        (folder / "subject.toml").write_text('handedness = "right"\n', encoding="utf-8")
    return folder


def remote(settings: config.Config, resource: str) -> dict[str, tuple[int, str]]:
    with client(settings) as xnat:
        files = xnat.resource_files(PROJECT, LABEL, LABEL, resource) or []
    return {f.path: (f.size, (f.digest or "").lower()) for f in files}


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def steps_of(settings: config.Config, drop_id: int | None) -> list[str]:
    with ledger.Ledger(settings.paths.state) as book:
        return [e.step for e in book.history(book.get(drop_id)) if e.event == "done"]


def test_late_sidecars_are_attached_verified_and_receipted(
    tmp_path: Path, settings: config.Config
) -> None:
    """1. The session is archived from its DICOM folder (with behav/ and physio/).
    2. A day later a folder of the same label arrives holding only more behav/ and physio/
    files and subject.toml.
    Result: archived (not NO_DICOM): the new files are in the session's resources with the
    local sizes and MD5s, next to the first ones; XNAT still holds one session with its 21
    files; the drop skipped the upload steps (ledger step "sidecars") and has its own
    receipt in done/ saying what was added."""
    first = push(settings, stage(tmp_path / "drop", LABEL, SMALL))
    assert first.kind == "archived", first
    folder = late_folder(tmp_path / "drop", LATE, subject_toml=True)
    outcome = push(settings, folder)
    assert outcome.kind == "archived", outcome
    assert remote(settings, "behav")["responses_day2.csv"] == (
        len(LATE["behav/responses_day2.csv"]),
        md5(LATE["behav/responses_day2.csv"]),
    )
    assert "responses.csv" in remote(settings, "behav")  # the first drop's are still there
    assert remote(settings, "physio")["pulse_001.log"] == (
        len(LATE["physio/pulse_001.log"]),
        md5(LATE["physio/pulse_001.log"]),
    )
    sessions = archived_sessions(settings)
    assert [s["label"] for s in sessions] == [LABEL]
    assert steps_of(settings, outcome.drop_id) == ["freeze", "check", "sidecars", "attach",
                                                   "finish"]  # fmt: skip
    assert outcome.path is not None and outcome.path != first.path
    receipt = json.loads((outcome.path / "RECEIPT.json").read_text(encoding="utf-8"))
    assert receipt["late_sidecars"] is True and receipt["file_count"] == 0
    assert {r["name"]: r["file_count"] for r in receipt["resources"]} == {
        "behav": 1,
        "physio": 1,
    }
    assert f"/data/projects/{PROJECT}/experiments/{receipt['session_id']}" in receipt["xnat_url"]
    text = (outcome.path / "RECEIPT.txt").read_text(encoding="utf-8")
    assert f"Added to session {LABEL}" in text and "archived earlier" in text
    assert "behav: 1 files" in text and "Scans (0)" not in text
    assert (outcome.path / "behav" / "responses_day2.csv").is_file()  # kept as dropped


def test_late_sidecars_survive_a_kill_after_the_skip(tmp_path: Path, config_path: Path) -> None:
    """The push is killed (SIGKILL) just before `attach`, after the ledger took the drop from
    `checked` to `archived`; the next push attaches and finishes it, once."""
    settings = load(config_path)
    assert push(settings, stage(tmp_path / "drop", LABEL, SMALL)).kind == "archived"
    folder = late_folder(tmp_path / "drop", LATE)
    killed = push_process(config_path, folder, crash_at="attach:before")
    assert killed.returncode == -9, killed.stderr
    with ledger.Ledger(settings.paths.state) as book:
        (pending,) = [d for d in book.drops() if not d.final]
    assert pending.state == "archived"
    again = push_process(config_path, folder)
    assert again.returncode == 0, again.stderr
    assert "responses_day2.csv" in remote(settings, "behav")
    assert [s["label"] for s in archived_sessions(settings)] == [LABEL]


def test_sidecars_without_an_archived_session_are_explained(
    tmp_path: Path, settings: config.Config
) -> None:
    """Only sidecar folders, and XNAT has no session of that label: quarantined, and the
    reason says so and what to check (not only "no DICOM")."""
    outcome = push(settings, late_folder(tmp_path / "drop", LATE))
    assert outcome.kind == "quarantined", outcome
    assert outcome.path is not None
    text = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert f"has no session {LABEL} to add them to" in text
    assert "named exactly as the session archived in XNAT" in text


def test_a_late_sidecar_file_with_other_content_is_a_conflict_explained(
    tmp_path: Path, settings: config.Config
) -> None:
    """The late folder holds behav/responses.csv, which XNAT already holds with other content:
    quarantined, and QUARANTINE.txt names the file, says it differs from XNAT's, and what to
    do (rename it, or ask the XNAT administrator to remove the old one). Nothing is
    overwritten in XNAT."""
    assert push(settings, stage(tmp_path / "drop", LABEL, SMALL)).kind == "archived"
    before = remote(settings, "behav")
    edited = {"behav/responses.csv": "trial,rt\n1,9.999\n"}
    outcome = push(settings, late_folder(tmp_path / "drop", edited))
    assert outcome.kind == "quarantined" and outcome.code == "RESOURCE_CONFLICT", outcome
    assert outcome.path is not None
    text = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert "behav/responses.csv" in text
    assert "with other content" in text and "differs from the file here" in text
    assert "rename it and resubmit" in text
    assert "ask the XNAT administrator to remove the old file from resource behav" in text
    assert remote(settings, "behav") == before
