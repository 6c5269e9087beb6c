"""The spool's large records (check record, plan, manifest: a row per file) are written a file a
line and read back a row at a time: the same records, never their whole text or a dict per file
in memory, and a record cut short is no record."""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import pytest

from xnatdrop import pack, packrecords, rules
from xnatdrop.pipeline import spool


def entries(count: int) -> tuple[packrecords.Entry, ...]:
    return tuple(
        packrecords.Entry(
            path=Path(f"{n // 200:04d}_series/IM{n:06d}.dcm"),
            size=40_000 + n,
            sop_instance_uid=f"2.25.{10**37 + n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            series_instance_uid=f"2.25.{10**36 + n // 200}",
            series_number=str(n // 200),
            study_instance_uid="2.25.1234567890",
            transfer_syntax="1.2.840.10008.1.2.1",
            md5=f"{n:032x}",
        )
        for n in range(count)
    )


def check_record(files: tuple[rules.FileEntry, ...]) -> spool.CheckRecord:
    return spool.CheckRecord(
        label="SPN01_0001",
        ok=True,
        findings=(),
        files=files,
        series=({"series_instance_uid": "2.25.1", "file_count": len(files), "note": "a\nb"},),
        sidecars={"behav": "behav"},
        subject_fields={"gender": "F"},
        upload_bytes=sum(f.size for f in files),
    )


@pytest.mark.parametrize("count", [0, 1, 3])
def test_records_read_back_equal(tmp_path: Path, count: int) -> None:
    files = entries(count)
    manifest = pack.Manifest(123, files)
    record = check_record(tuple(rules.FileEntry(f.path, f.size) for f in files))
    for made in (manifest, record):
        spool.save(tmp_path, made)
        assert spool.load(tmp_path, type(made)) == made


def test_a_record_cut_short_or_with_text_after_it_is_unreadable(tmp_path: Path) -> None:
    spool.save(tmp_path, pack.Manifest(123, entries(3)))
    path = tmp_path / spool.NAMES[pack.Manifest]
    text = path.read_text()
    for cut in (text[: text.index("\n") + 1], text[: text.rindex("]")], text[:-1] + "x"):
        path.write_text(cut)
        assert spool.load(tmp_path, pack.Manifest) is None, cut[-20:]
    path.write_text(text + "{}\n")
    assert spool.load(tmp_path, pack.Manifest) is None


@pytest.mark.alone
def test_a_large_record_is_read_without_its_text_or_a_dict_per_file(tmp_path: Path) -> None:
    """Reading a manifest of 20,000 files: beyond the entries it returns, the load needs a
    small fraction of their size. Parsed whole, its text and a dict per row came on top of
    the entries: more than they take themselves."""
    spool.save(tmp_path, pack.Manifest(123, entries(20_000)))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        loaded = spool.load(tmp_path, pack.Manifest)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded is not None and len(loaded.files) == 20_000
    kept -= base
    assert peak - base - kept < kept / 20, f"{(peak - base) >> 20} MiB peak, {kept >> 20} MiB kept"


@pytest.mark.alone
def test_a_check_record_read_without_its_files_makes_no_entry(tmp_path: Path) -> None:
    """1. Save a check record of 5,000 files.
    2. Read it with `files=False` (what the attach, finish and quarantine steps need).
    3. Result: the same record but for its files, which are not read: the load holds a small
       fraction of what the 5,000 entries take. Read in full, they are all made."""
    files = tuple(rules.FileEntry(f.path, f.size) for f in entries(5_000))
    record = check_record(files)
    spool.save(tmp_path, record)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        head = spool.check_record(tmp_path, 1, files=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = spool.check_record(tmp_path, 1)
        _, full = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert whole == record
    assert head.files == () and dataclasses.replace(head, files=files) == record
    # The files read back in columns take ~40 bytes each here (a FileEntry each: ~280), so
    # the head's own ~25 kB is a larger share of the whole than it was.
    assert peak - base < (full - base) / 5, f"{peak - base} bytes without files, {full - base}"


@pytest.mark.alone
def test_a_manifest_read_back_keeps_little_per_file(tmp_path: Path) -> None:
    """The verify step holds the manifest's entries, one per file of the session (55,000 at
    8 GB). Read back from the spool, an entry keeps under 700 bytes: no dict per entry, and
    the values a series or session shares (study, series, SOP class, transfer syntax) are one
    string each, not a copy per file. (Before: about 980 bytes an entry.)"""
    spool.save(tmp_path, pack.Manifest(123, entries(20_000)))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        loaded = spool.load(tmp_path, pack.Manifest)
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert loaded is not None and len(loaded.files) == 20_000
    assert not hasattr(loaded.files[0], "__dict__")
    assert kept / 20_000 < 700, f"{kept / 20_000:.0f} B an entry"


@pytest.mark.alone
def test_a_check_record_read_back_keeps_little_per_file(tmp_path: Path) -> None:
    """The push reads the check record's files back (the plan is made from them): one
    FileEntry per file of the session. Each keeps its path as text, not as a `Path` (an object,
    a list of parts and a string per part: ~230 bytes beside the text's ~70), and shares the
    values its series shares. About 300 bytes an entry here; with a `Path`, 462."""
    made = entries(20_000)
    files = tuple(
        rules.FileEntry(
            f.path, f.size, f.sop_instance_uid, f.sop_class_uid, f.series_instance_uid,
            f.series_number, f.study_instance_uid, f.transfer_syntax,
        )
        for f in made
    )  # fmt: skip
    spool.save(tmp_path, check_record(files))
    del made, files
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        loaded = spool.check_record(tmp_path, 1)
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(loaded.files) == 20_000
    assert kept / 20_000 < 330, f"{kept / 20_000:.0f} B an entry"
    assert loaded.files[0].path == "0000_series/IM000000.dcm"
