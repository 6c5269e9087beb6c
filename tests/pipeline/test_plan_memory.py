"""What the pack and import steps hold per file (issue 13, "memory flat"): the check record
read back from the spool, the pack step planning from it, and the import step sending the plan
it reads back, each traced with `tracemalloc` over real files on disk of a realistic naming
(series folders of 200 files, 43-character UIDs).

Before: the check record read back made a `rules.FileEntry` per file (~290 bytes a file), the
plan a `Planned` beside it (~380 with both, read back), and the pack step a dict of zip names
of every file (~100); the pack step peaked at ~420 bytes a file and the import step held the
plan's ~380 while it sent. The bounds below fail on that code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from memory_helpers import traced
from xnatdrop import filecolumns, pack, rules
from xnatdrop.pipeline import spool

COUNT = 20_000
PER_SERIES = 200
SIZE = 1000  # bytes a file: 20 MB in all, more than the body's read-ahead window


def entry(n: int) -> rules.FileEntry:
    return rules.FileEntry(
        f"{n // PER_SERIES:04d}_ge_02_Ax_fMRI_FF_I11.1_S15.9/IM{n:06d}.dcm",
        SIZE,
        f"2.25.{10**37 + n}",
        "1.2.840.10008.5.1.4.1.1.4",
        f"2.25.{10**36 + n // PER_SERIES}",
        str(n // PER_SERIES + 1),
        "2.25.1234567890",
        "1.2.840.10008.1.2.1",
    )


def content(n: int) -> bytes:
    return n.to_bytes(8, "big") * (SIZE // 8)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COUNT files of SIZE bytes, each its own content, in series folders."""
    folder = tmp_path_factory.mktemp("session")
    for n in range(COUNT):
        path = folder / entry(n).path
        if n % PER_SERIES == 0:
            path.parent.mkdir()
        path.write_bytes(content(n))
    return folder


def record(count: int = COUNT) -> spool.CheckRecord:
    files = tuple(entry(n) for n in range(count))
    return spool.CheckRecord("L", True, (), files, (), {}, {}, SIZE * count)


@pytest.mark.alone
def test_a_check_record_read_back_holds_under_150_bytes_a_file(tmp_path: Path) -> None:
    """Its files in columns (`filecolumns.Files`): ~100 bytes a file (a `FileEntry` per file:
    ~290). The same entries come out, and the record writes back the same text."""
    spool.save(tmp_path, record())
    text = (tmp_path / "check.json").read_text()
    loaded, held, _ = traced(lambda: spool.load(tmp_path, spool.CheckRecord))
    assert isinstance(loaded, spool.CheckRecord) and isinstance(loaded.files, filecolumns.Files)
    assert held / COUNT < 150, f"{held / COUNT:.0f} B a file"
    assert loaded.files == record().files and loaded == record()
    assert loaded.files[-1] == entry(COUNT - 1) and loaded.files[3:5] == (entry(3), entry(4))
    spool.save(tmp_path, loaded)
    assert (tmp_path / "check.json").read_text() == text


def test_a_record_of_an_older_version_still_reads(tmp_path: Path) -> None:
    """A check record written with a `FileEntry` per row, some fields missing and an unknown one
    (an older or newer xnatdrop), reads back as `FileEntry.from_json` reads each row."""
    rows = [{**entry(n).to_json(), "extra": 1} for n in range(3)]
    del rows[1]["transfer_syntax"], rows[2]["sop_instance_uid"]
    head = json.dumps(record(0)._head())[:-1] + ', "files": ['
    body = ",\n".join(json.dumps(r) for r in rows)
    (tmp_path / "check.json").write_text(f"{head}\n{body}\n]}}\n")
    loaded = spool.load(tmp_path, spool.CheckRecord)
    assert loaded is not None
    assert list(loaded.files) == [rules.FileEntry.from_json(r) for r in rows]


@pytest.mark.alone
def test_the_pack_step_peaks_under_250_bytes_a_file(session: Path, tmp_path: Path) -> None:
    """The check record read back and the plan made from it: ~180 bytes a file at the peak,
    ~100 held after (a `FileEntry` and `Planned` per file and a dict of every zip name: ~420
    at the peak). The plan is what the files on disk are."""
    spool.save(tmp_path, record())

    def pack_step() -> pack.Plan:
        spool.discard(tmp_path, pack.Plan)
        return spool.plan_for(tmp_path, session, 1)

    planned, held, peak = traced(pack_step)
    assert peak / COUNT < 250, f"{peak / COUNT:.0f} B a file"
    assert held / COUNT < 150, f"{held / COUNT:.0f} B a file"
    assert [p.entry for p in planned.files] == list(record().files)
    assert planned.total_bytes == SIZE * COUNT == sum(p.size for p in planned.files)
    assert spool.load(tmp_path, pack.Plan) == planned


@pytest.mark.alone
def test_the_import_step_sends_holding_under_250_bytes_a_file(
    session: Path, tmp_path: Path
) -> None:
    """The plan read back and the whole zip sent (its manifest written as it goes): what grows
    with the files is ~100 bytes a file (the plan read back as `Planned`s: ~380 more). Measured
    as the peak's growth from half the files to all of them, so that the body's buffers (a
    fixed 10 MB or so) do not count. Every file is in the zip, and its MD5 in the manifest."""
    half = COUNT // 2

    def sending(count: int) -> int:
        folder = tmp_path / str(count)
        spool.save(folder, record(count))
        spool.plan_for(folder, session, 1)

        def send() -> None:
            planned = spool.load(folder, pack.Plan)
            assert planned is not None
            with pack.Body(session, planned, manifest_file=spool.ManifestWriter(folder)) as body:
                while body.read(1 << 20):
                    pass

        return traced(send)[2]

    sending(half)  # the first run's imports and caches
    growth = sending(COUNT) - sending(half)
    assert growth / (COUNT - half) < 250, f"{growth / (COUNT - half):.0f} B a file"
    manifest = spool.load(tmp_path / str(COUNT), pack.Manifest)
    assert manifest is not None and manifest.file_count == COUNT
    for n in (0, 7_777, COUNT - 1):
        assert manifest.md5(n) == hashlib.md5(content(n)).hexdigest()
        assert manifest.entry(n).sop_instance_uid == entry(n).sop_instance_uid
