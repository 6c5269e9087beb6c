"""Discovery and settle decisions (`xnatdrop.watch`), on real folders with a controlled clock.

The clock is injected, so "15 quiet seconds" pass without sleeping; the files, their sizes,
mtimes and ctimes are real.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnatdrop import config, watch

OLD = 978_307_200  # 2001-01-01: what robocopy /COPY:DAT or Explorer leave on copied files

QUIET = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settle_settings(**overrides: object) -> config.SettleSettings:
    return config.SettleSettings(**{"quiet_seconds": QUIET, **overrides})


def write(path: Path, size: int = 100, old_mtime: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if old_mtime:
        os.utime(path, (OLD, OLD))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "drop"
    path.mkdir()
    return path


def scan_until_settled(watcher: watch.Watcher, clock: Clock, limit: int = 20) -> list[str]:
    """Scan every poll interval until something settles; return the names that settled."""
    for _ in range(limit):
        settled = [f.name for f in watcher.scan().settled]
        if settled:
            return settled
        clock.advance(watcher.settle.poll_interval)
    return []


def test_fingerprint_sees_count_size_and_names_not_age(root: Path) -> None:
    """Copies that keep old mtimes still change the fingerprint through count, size and names."""
    settle = settle_settings()
    folder = root / "SUBJ01"
    write(folder / "s1" / "a.dcm")
    first = watch.fingerprint(folder, settle)
    assert (first.files, first.bytes) == (1, 100)

    write(folder / "s1" / "b.dcm")
    second = watch.fingerprint(folder, settle)
    assert second.files == 2 and second != first

    write(folder / "s1" / "b.dcm", size=150)  # grew in place, mtime forced back to 2001
    third = watch.fingerprint(folder, settle)
    assert third.bytes == 250 and third != second

    (folder / "s1" / "b.dcm").rename(folder / "s1" / "c.dcm")
    fourth = watch.fingerprint(folder, settle)
    assert (fourth.files, fourth.bytes) == (third.files, third.bytes)
    assert fourth.names_digest != third.names_digest

    assert watch.fingerprint(folder, settle) == fourth


def test_settles_only_after_quiet_period_and_several_scans(root: Path, clock: Clock) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert watcher.settle.poll_interval == QUIET / 3

    seen = []
    for _ in range(4):
        seen.append([f.name for f in watcher.scan().settled])
        clock.advance(QUIET / 3)
    # Observations at 0, 5, 10 and 15 s: only the fourth spans the quiet period.
    assert seen == [[], [], [], ["SUBJ01"]]
    assert [f.name for f in watcher.settled()] == ["SUBJ01"]


def test_scan_due_at_the_end_of_the_quiet_period_settles_even_if_it_reads_the_clock_early(
    root: Path, clock: Clock
) -> None:
    """Scans come every poll, but each reads the clock after a little work of varying length:
    the one due quiet_seconds after the first observation may measure a few ms short. It must
    settle the folder then, not one poll later (the benchmark's +9.6 s at quiet 30 s); a scan
    a real fraction of a poll early (a hinted one) must not."""
    write(root / "SUBJ01" / "s1" / "a.dcm")
    write(root / "SUBJ02" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    start = clock.now
    seen = []
    for offset in (0.004, 5.002, 10.003, 15.001):  # first observation read 4 ms late
        clock.now = start + offset
        seen.append(sorted(f.name for f in watcher.scan().settled))
    assert seen == [[], [], [], ["SUBJ01", "SUBJ02"]]

    write(root / "SUBJ03" / "s1" / "a.dcm")
    start = clock.now
    for offset in (0.0, 5.0, 10.0, 14.0):  # the last one a fifth of a poll early: not yet
        clock.now = start + offset
        assert watcher.scan().settled == []
    clock.now = start + 15.0
    assert [f.name for f in watcher.scan().settled] == ["SUBJ03"]


def test_marker_settles_at_once_but_not_over_a_temp_file(root: Path, clock: Clock) -> None:
    folder = root / "SUBJ01"
    write(folder / "s1" / "a.dcm")
    write(folder / "s1" / "b.dcm.part")
    write(folder / "READY", size=0)
    watcher = watch.Watcher([root], settle_settings(marker_name="READY"), clock)
    assert watcher.scan().settled == []

    (folder / "s1" / "b.dcm.part").rename(folder / "s1" / "b.dcm")
    assert [f.name for f in watcher.scan().settled] == ["SUBJ01"]


@pytest.mark.parametrize(
    "name", ["b.dcm.part", "copy.TMP", "~$notes.docx", ".~lock.log.csv#", "x.filepart"]
)
def test_temporary_names_hold_a_folder_back(root: Path, clock: Clock, name: str) -> None:
    folder = root / "SUBJ01"
    write(folder / "s1" / "a.dcm")
    write(folder / "behav" / name)
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert scan_until_settled(watcher, clock, limit=10) == []
    assert "temporary file" in watcher.find(folder).reason

    (folder / "behav" / name).unlink()
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]


def test_empty_folder_never_settles(root: Path, clock: Clock) -> None:
    (root / "SUBJ01" / "s1").mkdir(parents=True)
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert scan_until_settled(watcher, clock, limit=10) == []


@settings(max_examples=25, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0.0, max_value=QUIET - 1), min_size=1, max_size=8))
def test_slow_writer_with_old_mtimes_never_settles_early(
    tmp_path_factory: pytest.TempPathFactory, gaps: list[float]
) -> None:
    """A writer pausing up to quiet−1 s between files, keeping 2001 mtimes, never settles early.

    Scenario: files appear one at a time, the clock moves by each gap while the watcher scans
    every poll interval. Result: nothing settles until the last file is written, and the
    folder settles with every file present.
    """
    root = tmp_path_factory.mktemp("drop")
    clock = Clock()
    watcher = watch.Watcher([root], settle_settings(), clock)
    poll = watcher.settle.poll_interval
    folder = root / "SUBJ01"
    next_scan = clock.now
    for index, gap in enumerate(gaps):
        write(folder / "s1" / f"{index:03d}.dcm")
        until = clock.now + gap
        while next_scan <= until:
            clock.now = next_scan
            assert watcher.scan().settled == [], f"settled after {index + 1}/{len(gaps)} files"
            next_scan += poll
        clock.now = until
    clock.now = next_scan
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]
    assert watcher.find(folder).fingerprint.files == len(gaps)


def test_settled_folder_is_not_walked_again_until_it_changes(root: Path, clock: Clock) -> None:
    """Cheap scans: a settled folder costs a listing and a few stats, not a walk of its files."""
    for i in range(3):
        write(root / "SUBJ01" / f"s{i}" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]

    clock.advance(5)
    result = watcher.scan()
    assert (result.folders, result.fingerprinted) == (1, 0)

    write(root / "SUBJ01" / "s1" / "late.dcm")  # a late file one level down
    clock.advance(5)
    result = watcher.scan()
    assert result.fingerprinted == 1
    assert watcher.find(root / "SUBJ01").state is watch.State.SETTLING
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]
    assert watcher.find(root / "SUBJ01").fingerprint.files == 4


def test_settled_folder_sees_a_new_series_folder(root: Path, clock: Clock) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]
    clock.advance(5)
    assert watcher.scan().fingerprinted == 0
    write(root / "SUBJ01" / "s2" / "b.dcm")
    clock.advance(5)
    assert watcher.scan().fingerprinted == 1
    assert watcher.find(root / "SUBJ01").state is watch.State.SETTLING


def test_confirm_catches_a_rewrite_the_shallow_check_misses(root: Path, clock: Clock) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    scan_until_settled(watcher, clock)
    folder = watcher.find(root / "SUBJ01")
    assert watcher.confirm(folder)

    with open(root / "SUBJ01" / "s1" / "a.dcm", "ab") as handle:  # grows in place
        handle.write(b"more")
    assert not watcher.confirm(folder)
    assert folder.state is watch.State.SETTLING
    assert watcher.settled() == []


def test_root_renamed_away_and_back_pauses_and_keeps_state(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """An unmounted share must never read as "everything was deleted"."""
    write(root / "SUBJ01" / "s1" / "a.dcm")
    write(root / "SUBJ02" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert sorted(scan_until_settled(watcher, clock)) == ["SUBJ01", "SUBJ02"]

    away = root.with_name("drop-away")
    root.rename(away)
    with caplog.at_level(logging.ERROR, logger="xnatdrop.watch"):
        result = watcher.scan()
        watcher.scan()
    assert list(result.paused) == [root]
    assert watcher.settled() == []  # nothing handed over from a paused root
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "ALERT" in caplog.records[0].message and "paused" in caplog.records[0].message

    away.rename(root)
    clock.advance(5)
    result = watcher.scan()
    assert result.paused == {}
    assert sorted(f.name for f in watcher.settled()) == ["SUBJ01", "SUBJ02"]


def test_root_reading_empty_pauses_unless_its_folders_were_handed_over(
    root: Path, clock: Clock, tmp_path: Path
) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    write(root / "SUBJ02" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    scan_until_settled(watcher, clock)

    # An empty mount point where the share used to be: pause, remember both folders.
    hidden = tmp_path / "elsewhere"
    hidden.mkdir()
    for name in ("SUBJ01", "SUBJ02"):
        (root / name).rename(hidden / name)
    assert root in watcher.scan().paused
    for name in ("SUBJ01", "SUBJ02"):
        (hidden / name).rename(root / name)
    assert watcher.scan().paused == {}
    # Remembered, not rediscovered (renaming touched their ctimes, so they settle again).
    assert all(watcher.find(root / n).first_seen == 1000.0 for n in ("SUBJ01", "SUBJ02"))
    clock.advance(5)
    assert sorted(scan_until_settled(watcher, clock)) == ["SUBJ01", "SUBJ02"]

    # The pipeline took both (froze them by rename): an empty root is then expected.
    for folder in watcher.settled():
        watcher.hand_over(folder)
        shutil.move(folder.path, hidden / folder.name)
    assert watcher.scan().paused == {}
    assert watcher.counts() == {}


def test_missing_root_at_start_is_paused_then_picked_up(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "not-mounted-yet"
    watcher = watch.Watcher([root], settle_settings(), clock)
    assert root in watcher.scan().paused
    write(root / "SUBJ01" / "s1" / "a.dcm")
    clock.advance(5)
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]


def test_single_folder_removed_is_forgotten_without_pausing(root: Path, clock: Clock) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    write(root / "SUBJ02" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    watcher.scan()
    shutil.rmtree(root / "SUBJ02")
    assert watcher.scan().paused == {}
    assert watcher.find(root / "SUBJ02") is None


def test_look_again_waits_then_settles_afresh(root: Path, clock: Clock) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    scan_until_settled(watcher, clock)
    folder = watcher.find(root / "SUBJ01")
    watcher.hand_over(folder)
    watcher.look_again(folder, 60, "truncated DICOM, still copying")
    assert scan_until_settled(watcher, clock, limit=11) == []  # 11 × 5 s < 60 s
    assert scan_until_settled(watcher, clock) == ["SUBJ01"]


def test_loose_files_and_hidden_entries_are_not_sessions(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    write(root / "notes.txt")
    write(root / ".snapshot" / "x")
    write(root / "SUBJ01" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    with caplog.at_level(logging.WARNING, logger="xnatdrop.watch"):
        watcher.scan()
        watcher.scan()
    assert [f.name for r in watcher.roots.values() for f in r.folders.values()] == ["SUBJ01"]
    assert sum("notes.txt" in r.message for r in caplog.records) == 1


def test_folder_that_never_settles_alerts_once_after_max_wait(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm.part")
    watcher = watch.Watcher([root], settle_settings(max_wait_seconds=60), clock)
    with caplog.at_level(logging.ERROR, logger="xnatdrop.watch"):
        for _ in range(30):
            watcher.scan()
            clock.advance(5)
    alerts = [r.message for r in caplog.records if "not settled" in r.message]
    assert len(alerts) == 1 and "SUBJ01" in alerts[0]


def test_event_hint_wakes_on_a_new_top_level_folder(root: Path) -> None:
    import threading

    woke = threading.Event()
    hint = watch.EventHint([root], woke.set)
    hint.start()
    try:
        (root / "SUBJ01").mkdir()
        assert woke.wait(10)
    finally:
        hint.stop()


def test_event_hint_spaces_its_wakes_and_never_drops_the_last_event(root: Path) -> None:
    """A burst of events (five folders created at once) brings one wake at once and one at
    the end of the gap, which sees the whole burst: not one wake per event, and not a last
    event dropped (a copy's closing event, which issue 13 found lost for a whole poll)."""
    import threading

    seen: list[list[str]] = []
    complete = threading.Event()
    names = [f"SUBJ0{index}" for index in range(5)]

    def wake() -> None:
        seen.append(sorted(p.name for p in root.iterdir()))
        if len(seen) >= 2 and seen[-1] == names:  # the gap's end wake, whatever the first saw
            complete.set()

    hint = watch.EventHint([root], wake, gap=2.0)  # far longer than the burst, even under load
    hint.start()
    try:
        for name in names:
            (root / name).mkdir()
        assert complete.wait(10), seen
    finally:
        hint.stop()
    assert len(seen) <= 3, seen  # the first event's wake, then the gap's end (3: a slow burst)


LATIN1 = b"Mu\xf1oz"  # "Muñoz" as an SMB/USB copy with a latin-1 code page writes it


def test_a_file_name_that_is_not_utf8_costs_no_other_folder_its_settle(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A latin-1 file name in one series folder once made the fingerprint raise on every scan,
    which aborted the scan of every folder after it. Result now: all five folders settle (the
    rules then block the one with the bad name, naming the file), with no error logged."""
    for index in range(1, 6):
        write(root / f"SUBJ0{index}" / "s1" / "a.dcm")
    bad = os.path.join(os.fsencode(root / "SUBJ01" / "s1"), LATIN1 + b".dcm")
    with open(bad, "wb") as handle:
        handle.write(b"x" * 10)
    watcher = watch.Watcher([root], settle_settings(), clock)
    settled: list[str] = []
    with caplog.at_level(logging.WARNING, logger="xnatdrop.watch"):
        for _ in range(10):
            settled += [f.name for f in watcher.scan().settled]
            clock.advance(watcher.settle.poll_interval)
    assert sorted(settled) == [f"SUBJ0{i}" for i in range(1, 6)]
    assert caplog.records == []


def test_a_subject_folder_named_in_latin1_is_reported_once_and_never_handed_over(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    write(root / "SUBJ02" / "s1" / "a.dcm")
    bad = os.path.join(os.fsencode(root), LATIN1)
    os.makedirs(os.path.join(bad, b"s1"))
    with open(os.path.join(bad, b"s1", b"a.dcm"), "wb") as handle:
        handle.write(b"x" * 10)
    watcher = watch.Watcher([root], settle_settings(), clock)
    with caplog.at_level(logging.ERROR, logger="xnatdrop.watch"):
        assert scan_until_settled(watcher, clock) == ["SUBJ02"]
        for _ in range(5):
            assert watcher.scan().settled == []
            clock.advance(5)
    alerts = [r.getMessage() for r in caplog.records]
    assert alerts == [
        f"ALERT {root}: the name Mu\\xf1oz is not valid UTF-8 (copied from a share or USB stick "
        "with another character set?); it is not uploaded: rename it using letters, digits, "
        "'_' and '-' only"
    ]
    assert watcher.troubles() == [("Mu\\xf1oz", "its name is not valid UTF-8")]
    assert [f.name for f in watcher.settled()] == ["SUBJ02"]


def _too_deep(folder: Path) -> None:
    """Nest folders (created through directory descriptors) until the path passes PATH_MAX,
    so that listing the deepest one by path fails with ENAMETOOLONG: a real folder that
    cannot be read, even by root."""
    descriptor = os.open(folder, os.O_RDONLY)
    for _ in range(20):
        os.mkdir("d" * 250, dir_fd=descriptor)
        deeper = os.open("d" * 250, os.O_RDONLY, dir_fd=descriptor)
        os.close(descriptor)
        descriptor = deeper
    os.close(descriptor)


def test_a_folder_that_cannot_be_read_costs_only_its_own_settle(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    write(root / "SUBJ01" / "s1" / "a.dcm")
    _too_deep(root / "SUBJ01")
    write(root / "SUBJ02" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    with caplog.at_level(logging.ERROR, logger="xnatdrop.watch"):
        assert scan_until_settled(watcher, clock) == ["SUBJ02"]
        for _ in range(5):
            assert watcher.scan().settled == []
            clock.advance(5)
    alerts = [r.getMessage() for r in caplog.records]
    assert len(alerts) == 1 and alerts[0].startswith("ALERT SUBJ01: cannot read ")
    assert "File name too long" in alerts[0] and "the other folders go on" in alerts[0]
    assert all(r.exc_info is None for r in caplog.records)
    ((name, why),) = watcher.troubles()
    assert name == "SUBJ01" and "File name too long" in why


def test_event_hints_start_with_a_root_missing_and_watch_it_once_it_appears(
    tmp_path: Path,
) -> None:
    """watchdog raised FileNotFoundError at start for a missing root, which stopped the daemon.
    Result now: the hint starts, and `refresh` watches the root once it is there."""
    import threading

    present, missing = tmp_path / "present", tmp_path / "missing"
    present.mkdir()
    woke = threading.Event()
    hint = watch.EventHint([present, missing], woke.set)
    hint.start()
    try:
        assert set(hint.watches) == {present}
        missing.mkdir()
        hint.refresh({present, missing})
        assert set(hint.watches) == {present, missing}
        (missing / "SUBJ01").mkdir()
        assert woke.wait(10)
    finally:
        hint.stop()


def test_a_folder_that_never_settles_is_a_trouble_status_shows(root: Path, clock: Clock) -> None:
    """Found by the campaign (bad/hostile, empty-folder): an empty subject folder waited forever
    with one ALERT in the log and nothing in `xnatdrop status`. Result: once it has been settling
    for settle.max_wait_seconds it is listed with its reason; a file at the top of the root is
    listed too; a folder that settles is not."""
    (root / "EMPTY01" / "s1").mkdir(parents=True)
    write(root / "GOOD01" / "s1" / "a.dcm")
    write(root / "notes.txt")
    watcher = watch.Watcher([root], settle_settings(max_wait_seconds=60), clock)
    for _ in range(10):
        watcher.scan()
        clock.advance(watcher.settle.poll_interval)
    assert [name for name, _ in watcher.troubles()] == ["notes.txt"]
    clock.advance(60)
    watcher.scan()
    troubles = dict(watcher.troubles())
    assert set(troubles) == {"EMPTY01", "notes.txt"}
    expected = "not settled 110 s after it appeared (no files yet); check the copy"
    assert troubles["EMPTY01"] == expected
    assert "never uploaded" in troubles["notes.txt"]


def test_the_status_file_is_neither_a_session_nor_a_loose_file(
    root: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """xnatdrop's own `_XNATDROP_STATUS.txt` at the top of the root (issue 11): not listed,
    not reported as a file that is never uploaded, and it does not keep a root unsettled."""
    from xnatdrop.notify import sharestatus

    sharestatus.StatusFile(root, "SPN01").update([])
    write(root / "SUBJ01" / "s1" / "a.dcm")
    watcher = watch.Watcher([root], settle_settings(), clock)
    with caplog.at_level(logging.WARNING, logger="xnatdrop.watch"):
        assert scan_until_settled(watcher, clock) == ["SUBJ01"]
    assert (root / sharestatus.FILE_NAME).is_file()
    assert watcher.troubles() == []
    assert not [r for r in caplog.records if sharestatus.FILE_NAME in r.message]


def test_status_file_writes_do_not_bring_a_scan_forward(root: Path) -> None:
    """The kernel events of the status file's atomic write (a hidden `.part` created, written,
    renamed over the file) are not hints; a new folder still is. Checked on watchdog's own
    event objects, then live: every wake-up comes after the folder appeared, although the
    status file was written first (one observer thread delivers events in order)."""
    import threading

    from watchdog import events

    from xnatdrop.notify import sharestatus
    from xnatdrop.watch.events import ours

    name, part = root / sharestatus.FILE_NAME, root / f".{sharestatus.FILE_NAME}.part"
    roots = {str(root)}
    assert ours(events.FileCreatedEvent(str(part)), roots)
    assert ours(events.FileModifiedEvent(str(part)), roots)
    assert ours(events.FileMovedEvent(str(part), str(name)), roots)
    assert ours(events.FileModifiedEvent(str(name)), roots)
    assert ours(events.DirModifiedEvent(str(root)), roots)  # comes with each entry's event
    assert not ours(events.DirCreatedEvent(str(root / "SUBJ01")), roots)
    assert not ours(events.DirModifiedEvent(str(root / "SUBJ01")), roots)
    assert not ours(events.FileMovedEvent(str(root / "x.part"), str(root / "SUBJ01")), roots)

    woke: list[bool] = []
    done = threading.Event()

    def wake() -> None:
        woke.append((root / "SUBJ01").exists())
        done.set()

    hint = watch.EventHint([root], wake)
    hint.start()
    try:
        for _ in range(3):
            sharestatus.StatusFile(root, "SPN01").update([])
        (root / "SUBJ01").mkdir()
        assert done.wait(10)
    finally:
        hint.stop()
    assert woke and all(woke)


def test_shallow_signature_sees_changes_one_level_down(tmp_path: Path) -> None:
    """The re-scan of a settled folder (stats relative to the open folder, no listing) still
    sees a file added to a series folder, and a series folder removed."""
    folder = tmp_path / "SUBJ01"
    for series in ("01_t1", "02_fmri"):
        (folder / series).mkdir(parents=True)
        (folder / series / "IM1.dcm").write_bytes(b"x")
    first = watch.shallow_signature(folder)
    assert watch.shallow_signature(folder, first) == first
    (folder / "02_fmri" / "IM2.dcm").write_bytes(b"x")
    os.utime(folder / "02_fmri", ns=(1, 1))  # a new mtime even on a coarse clock
    added = watch.shallow_signature(folder, first)
    assert added != first
    shutil.rmtree(folder / "01_t1")
    os.utime(folder, ns=(2, 2))
    removed = watch.shallow_signature(folder, added)
    assert [part[0] for part in removed[2:] if isinstance(part, tuple)] == ["02_fmri"]
