"""`_XNATDROP_STATUS.txt`: one folder through every stage of its life, as the technologist
reads the file; plain words, local time, no codes; the atomic writer and its failure."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xnatdrop.notify import sharestatus
from xnatdrop.notify.sharestatus import FolderStatus, Stage, StatusFile

LABEL = "SPN01_0042"


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's zone is Europe/Berlin for this test (and put back after)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def moment(text: str) -> float:
    """Epoch seconds of a local 'YYYY-mm-dd HH:MM' in the current zone."""
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M"))


def section(text: str, heading: str) -> str:
    """The lines under one heading (up to the blank line)."""
    start = text.index(heading)
    return text[start : (text + "\n").index("\n\n", start)]


def test_one_folder_through_every_stage(tmp_path: Path, berlin: None) -> None:
    """1. SPN01_0042 is copied in at 18:00 (still changing).
    2. It settles while the upload window (20:00-06:00) is closed.
    3. The window opens; another upload runs first.
    4. It uploads: 0 %, then 63 %.
    5. XNAT stops answering; the next try is at 20:40.
    6. It is archived at 20:52.
    Result: after each step the file lists the folder once, under the right heading, in plain
    words and local times (Europe/Berlin, CET), and says what happens next."""
    root = tmp_path / "SPN01"
    root.mkdir()
    writer = StatusFile(root, "SPN01")
    url = "https://xnat.example.org/data/projects/SPN01/experiments/XNAT_E00042?format=html"
    at = moment
    copying = FolderStatus(LABEL, Stage.COPYING, since=at("2026-01-15 17:58"))
    window = FolderStatus(LABEL, Stage.WAITING_WINDOW, next_time=at("2026-01-15 20:00"))
    queued = FolderStatus(LABEL, Stage.QUEUED)
    started = FolderStatus(LABEL, Stage.UPLOADING, percent=0)
    halfway = FolderStatus(LABEL, Stage.UPLOADING, percent=63)
    paused = FolderStatus(
        LABEL, Stage.RETRYING, next_time=at("2026-01-15 20:40"), reason="XNAT did not answer"
    )
    archived = FolderStatus(LABEL, Stage.ARCHIVED, since=at("2026-01-15 20:52"), url=url)
    stages = [
        ("18:00", copying, "Still being copied", "picked up once nothing has changed"),
        ("18:10", window, "waiting for the upload window", "uploads start at 20:00 today"),
        ("20:00", queued, "waiting for their turn", "uploaded after the ones before it"),
        ("20:05", started, "Uploading now", "uploading: 0% sent"),
        ("20:20", halfway, "Uploading now", "uploading: 63% sent"),
        ("20:30", paused, "tries again by itself", "XNAT did not answer; next try at 20:40 today"),
        ("20:52", archived, "Archived in XNAT today", f"at 20:52 today\n      in XNAT: {url}"),
    ]
    for clock, record, heading, words in stages:
        now = at(f"2026-01-15 {clock}")
        assert writer.update([record], now=now)
        text = (root / sharestatus.FILE_NAME).read_text(encoding="utf-8")
        assert text.count(LABEL) == 1, text
        assert words in section(text, heading), text
        assert f"Updated Thursday 15 January 2026 at {clock} (CET)." in text
        assert f"in {root} (XNAT project SPN01)" in text.splitlines()[0]


def test_quarantined_folder_says_why_what_to_do_and_where_without_codes(
    tmp_path: Path, berlin: None
) -> None:
    """A QUARANTINE.json as the pipeline writes it for a NIfTI file and a bad label: the
    status file gives the rules' summaries and fixes, where the folder went, and no rule code,
    no reference to the rules document and no regular expression."""
    reason = {
        "code": "RULES_BLOCKED",
        "message": "2 problems: CONVERTED_FILE (t1/anat.nii); LABEL_PATTERN: label spn1_42: it "
        "does not match the project pattern '^SPN01_[0-9]{4}$'",
        "findings": [
            {
                "code": "CONVERTED_FILE",
                "action": "block",
                "path": "t1/anat.nii",
                "summary": "a converted (non-DICOM) image file [B2]",
                "fix": "remove converted files; drop only the raw DICOM export",
            },
            {
                "code": "LABEL_PATTERN",
                "action": "block",
                "path": ".",
                "summary": "the label does not follow the project's naming convention [D4]",
                "fix": "rename the folder to match the pattern",
            },
            {"code": "LOCALIZER", "action": "ignore", "path": "loc", "summary": "a localizer"},
        ],
    }
    what, fix = sharestatus.plain_reason(reason)
    record = FolderStatus(
        "spn1_42",
        Stage.QUARANTINED,
        since=moment("2026-07-01 02:13"),
        reason=what,
        fix=fix,
        where="/srv/xnat-drop/_quarantine/spn1_42__20260701-021300",
    )
    text = sharestatus.render(
        Path("/srv/xnat-drop/SPN01"), "SPN01", [record], moment("2026-07-01 08:00")
    )
    part = section(text, "NOT archived: these need you (1):")
    assert (
        "not archived at 02:13 today: a converted (non-DICOM) image file; the label does not "
        "follow the project's naming convention" in part
    )
    assert (
        "what to do: remove converted files; drop only the raw DICOM export; rename the "
        "folder to match the pattern (QUARANTINE.txt lists the files)" in part
    )
    assert "the folder is now in /srv/xnat-drop/_quarantine/spn1_42__20260701-021300" in part
    assert "(CEST)" in text
    for code in ("CONVERTED_FILE", "LABEL_PATTERN", "RULES_BLOCKED", "[B2]", "[D4]", "^SPN01"):
        assert code not in text
    assert sharestatus.plain_reason({"code": "LABEL_EXISTS", "message": "HTTP 409"})[0] == (
        "XNAT already has a session with this name, holding other scans"
    )
    assert "HTTP" not in " ".join(sharestatus.plain_reason({"code": "XNAT_REJECTED"}))


def test_empty_root_and_notice(tmp_path: Path) -> None:
    text = sharestatus.render(tmp_path, "P", [], notice="uploads are held: XNAT is not answering")
    assert "NOTE: uploads are held: XNAT is not answering" in text
    assert "There are no folders here right now" in text


def test_writer_is_atomic_readable_by_all_and_writes_only_on_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Written 0644 even under the service's UMask=0077; unchanged records are not rewritten
    until the refresh time (the updated line shows the daemon is alive); no temporary file is
    left; a file that cannot be written costs one warning and no exception."""
    root = tmp_path / "root"
    root.mkdir()
    writer = StatusFile(root, "P", refresh_seconds=600)
    folders = [FolderStatus("A_1", Stage.COPYING)]
    old = os.umask(0o077)
    try:
        assert writer.update(folders, now=1000.0)
    finally:
        os.umask(old)
    path = root / sharestatus.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in root.iterdir()) == [sharestatus.FILE_NAME]
    assert not writer.update(list(folders), now=1300.0)
    assert writer.update(list(folders), now=1700.0)  # refresh
    assert writer.update([FolderStatus("A_1", Stage.QUEUED)], now=1701.0)  # changed
    # Something in the way that even root cannot write over (the tests may run as root): a
    # folder of that name, holding a file.
    path.unlink()
    (path / "in-the-way").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="xnatdrop"):
        assert not writer.update([FolderStatus("A_1", Stage.UPLOADING)], now=1800.0)
        assert not writer.update([FolderStatus("A_1", Stage.UPLOADING, percent=5)], now=1801.0)
    assert sorted(p.name for p in root.iterdir()) == [sharestatus.FILE_NAME]  # no .part left
    (path / "in-the-way").rmdir()
    path.rmdir()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot write it" in warnings[0], warnings
    assert writer.update([FolderStatus("A_1", Stage.UPLOADING)], now=1802.0)
    assert "uploading: being checked and sent" in path.read_text(encoding="utf-8")
