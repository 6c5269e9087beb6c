"""Issue 9 point 4: files that arrive for a label already archived with the same StudyInstanceUID
are appended to that session (new instances only, verified by instance UID, a second receipt),
never quarantined as LABEL_EXISTS; other content for an archived instance stays a conflict.

XNAT merges an archive into an existing session with `overwrite=none` (Archiver →
QueueBasedImageCommit with allowSessionMerge), but refuses it when an incoming instance's UID
or file name is already catalogued in the scan (MergeSessionsA.checkForConflict); the sandbox
does both. Real sandbox over HTTP; data: GE SIGNA Premier RX29 `ge_signa_premier_table`
(BSD-2-Clause; see its README.md in ../shared/dicom), copied into tmp_path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom

from push_helpers import (
    EXAM,
    MEDIUM,
    PROJECT,
    archived_sessions,
    client,
    load,
    local_uids,
    snapshot,
    stage,
    write_config,
)
from shared_data import dataset
from xnat_sandbox import Sandbox
from xnatdrop import config, ledger, pipeline, xnat

LABEL = "SPN01_0301"
LOCALIZER, FMRI = MEDIUM[0], MEDIUM[1]
# A site that archives series whose files are visibly incomplete (scans stopped on purpose):
# the first half of a series is archived, the rest arrives later.
WARN_INCOMPLETE = '[rules.actions]\nINCOMPLETE_SERIES = "warn"\n'


def push(settings: config.Config, folder: Path) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings))


def archived_uids(settings: config.Config) -> dict[str, list[str]]:
    """SOPInstanceUIDs per scan of the archived session, from XNAT's DICOM catalogs."""
    with client(settings) as xnat_client:
        session = xnat_client.find_session(PROJECT, LABEL)
        assert session is not None
        files = xnat_client.session_files(PROJECT, session.subject, LABEL)
        scans = sorted({f.scan for f in files if f.resource in xnat.DICOM_RESOURCES})
        return {
            scan: sorted(
                e.uid for e in xnat_client.scan_catalog(PROJECT, session.subject, LABEL, scan)
            )
            for scan in scans
        }


def receipt_of(outcome: pipeline.Outcome) -> dict[str, object]:
    assert outcome.path is not None
    return dict(json.loads((outcome.path / "RECEIPT.json").read_text(encoding="utf-8")))


def split(root: Path, series: str, names: list[str]) -> Path:
    """A subject folder LABEL under `root` holding only the files `names` of `series`."""
    folder = root / LABEL / series
    folder.mkdir(parents=True)
    source = dataset("ge_signa_premier_table") / EXAM / series
    for name in names:
        shutil.copyfile(source / name, folder / name)
    return root / LABEL


def test_a_series_that_arrives_later_is_appended_to_the_archived_session(
    tmp_path: Path, server: Sandbox
) -> None:
    """1. LABEL is archived with the localizer. 2. The fMRI series of the same study arrives
    later in a folder of the same name (the copy paused between series). Result: the fMRI
    instances are added to the archived session (not LABEL_EXISTS), one session in XNAT holds
    both series, and the second folder gets its own receipt saying what was added."""
    settings = load(write_config(tmp_path, server.url))
    first = push(settings, stage(tmp_path / "drop", LABEL, (LOCALIZER,), sidecars=False))
    assert first.kind == "archived", first
    late = stage(tmp_path / "drop", LABEL, (FMRI,), sidecars=False)
    late_uids, original = local_uids(late), snapshot(late)

    second = push(settings, late)
    assert second.kind == "archived", second
    assert second.path is not None and second.path != first.path
    assert {k: v for k, v in snapshot(second.path).items() if "RECEIPT" not in k} == original
    assert [row["label"] for row in archived_sessions(settings)] == [LABEL]
    assert first.path is not None
    scans = archived_uids(settings)
    assert sorted(u for uids in scans.values() for u in uids) == sorted(
        local_uids(first.path) | late_uids
    )
    receipt = receipt_of(second)
    assert receipt["appended"] == {"session_held": 21, "new": len(late_uids), "already_there": 0}
    text = (second.path / "RECEIPT.txt").read_text(encoding="utf-8")
    assert f"This session was already in XNAT with 21 files: {len(late_uids)} files of this" in text
    assert "added to a session that already held 21 instance(s)" in text
    with client(settings) as xnat_client:
        assert not xnat_client.prearchive_entries(PROJECT), "prearchive left behind"


def test_the_rest_of_a_series_is_appended_and_what_is_there_is_not_sent_again(
    tmp_path: Path, server: Sandbox
) -> None:
    """1. The first 10 files of the localizer are archived (the site archives incomplete
    series). 2. The whole series is copied again: 10 files XNAT holds, 11 it lacks. Result:
    only the 11 are sent, into the same scan (XNAT would refuse the merge if an archived
    instance came again), and the scan holds all 21 instances once."""
    settings = load(write_config(tmp_path, server.url, extra=WARN_INCOMPLETE))
    names = sorted(p.name for p in (dataset("ge_signa_premier_table") / EXAM / LOCALIZER).iterdir())
    first = push(settings, split(tmp_path / "drop", LOCALIZER, names[:10]))
    assert first.kind == "archived", first
    whole = stage(tmp_path / "drop", LABEL, (LOCALIZER,), sidecars=False)
    every = local_uids(whole)

    second = push(settings, whole)
    assert second.kind == "archived", second
    (scan,) = archived_uids(settings).values()
    assert sorted(scan) == sorted(every)
    assert receipt_of(second)["appended"] == {"session_held": 10, "new": 11, "already_there": 10}


def test_new_files_named_like_archived_ones_are_sent_under_other_names(
    tmp_path: Path, server: Sandbox
) -> None:
    """The rest of a series arrives with the same file names as the archived part (the export
    numbered each part from 1). XNAT stores a file under its zip entry name and refuses a
    merge whose names are taken in the scan. Result: the new instances go under other names;
    the scan holds all 21; the folder keeps its own names."""
    settings = load(write_config(tmp_path, server.url, extra=WARN_INCOMPLETE))
    names = sorted(p.name for p in (dataset("ge_signa_premier_table") / EXAM / LOCALIZER).iterdir())
    first_folder = split(tmp_path / "drop", LOCALIZER, names[:10])
    for number, path in enumerate(sorted((first_folder / LOCALIZER).iterdir()), 1):
        path.rename(path.with_name(f"IM{number:04d}.dcm"))
    first_uids = local_uids(first_folder)
    assert push(settings, first_folder).kind == "archived"
    rest = split(tmp_path / "drop", LOCALIZER, names[10:])
    for number, path in enumerate(sorted((rest / LOCALIZER).iterdir()), 1):
        path.rename(path.with_name(f"IM{number:04d}.dcm"))
    rest_uids, original = local_uids(rest), snapshot(rest)

    second = push(settings, rest)
    assert second.kind == "archived", second
    (scan,) = archived_uids(settings).values()
    assert sorted(scan) == sorted(first_uids | rest_uids)
    assert second.path is not None
    assert {k: v for k, v in snapshot(second.path).items() if "RECEIPT" not in k} == original


def test_an_archived_instance_with_other_content_is_a_conflict(
    tmp_path: Path, server: Sandbox
) -> None:
    """The late folder holds new instances and one the session already has, but with other
    pixel data. Result: quarantined as LABEL_EXISTS saying which file differs and where the
    session is; nothing is added to XNAT."""
    settings = load(write_config(tmp_path, server.url))
    first = push(settings, stage(tmp_path / "drop", LABEL, (LOCALIZER,), sidecars=False))
    assert first.kind == "archived"
    before = archived_uids(settings)
    late = stage(tmp_path / "drop", LABEL, (LOCALIZER, FMRI), sidecars=False)
    # The smallest file of the scan is the one whose pixel data is compared: change them all.
    for path in sorted((late / LOCALIZER).iterdir()):
        data = pydicom.dcmread(path)
        pixels = bytearray(data.PixelData)
        pixels[0] ^= 0xFF
        data.PixelData = bytes(pixels)
        data.save_as(path)

    outcome = push(settings, late)
    assert (outcome.kind, outcome.code) == ("quarantined", "LABEL_EXISTS"), outcome
    assert "instances of this folder are in it with other content: pixel data of" in (
        outcome.message
    )
    assert outcome.path is not None
    text = (outcome.path / "QUARANTINE.txt").read_text(encoding="utf-8")
    assert f"The session in XNAT: {settings.xnat.url}/data/projects/{PROJECT}/experiments/" in text
    assert archived_uids(settings) == before


def test_the_same_label_with_another_study_is_still_label_exists(
    tmp_path: Path, server: Sandbox
) -> None:
    """A folder of the same label but another StudyInstanceUID is another session: it is
    never merged into the archived one (XNAT itself would refuse: "Invalid modification of
    session UID via archive process.")."""
    settings = load(write_config(tmp_path, server.url))
    assert push(settings, stage(tmp_path / "drop", LABEL, (LOCALIZER,), sidecars=False)).kind == (
        "archived"
    )
    before = archived_uids(settings)
    other = stage(tmp_path / "drop", LABEL, (FMRI,), sidecars=False)
    study = pydicom.uid.generate_uid()
    for path in sorted((other / FMRI).iterdir()):
        data = pydicom.dcmread(path)
        data.StudyInstanceUID = study
        data.save_as(path)
    outcome = push(settings, other)
    assert (outcome.kind, outcome.code) == ("quarantined", "LABEL_EXISTS"), outcome
    assert "it is another study (StudyInstanceUID " in outcome.message
    assert archived_uids(settings) == before
