"""What the steps after the check hold per file of the upload (issue 13, "memory flat"): the
manifest read back from the spool, the prearchive check, the archive's read-back and the receipt,
each traced with `tracemalloc` over 20,000 files of a realistic shape (series of 200 files,
43-character UIDs, 32-character MD5s, listing rows as XNAT gives them).

Before: the manifest held an `Entry` per file (~420 bytes with its path, UID and hex MD5), the
prearchive check grouped every entry by scan, the read-back kept a dict of entries by UID and a
listing of a size and an MD5 text per name, and the receipt made every entry at once; at 50,000
files the push's read-back held ~750 bytes a file. The bounds below fail on that code."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_helpers import traced
from xnatdrop import archivecheck, pack, packrecords, receipt, rules, verify, xnat
from xnatdrop.pipeline import spool

COUNT = 20_000
PER_SERIES = 200
PREFIX = "/data/experiments/XNAT_E00001/scans/{scan}/resources/DICOM/files/"


def uid(n: int) -> str:
    return f"2.25.{10**37 + n}"


def name(n: int) -> str:
    return f"IM{n:06d}.dcm"


def scan(n: int) -> str:
    return str(n // PER_SERIES + 1)


def size(n: int) -> int:
    """Files of a series differ in size by a few bytes of header at most: 64 sizes in all."""
    return 40_000 + n % 64


def entries(count: int = COUNT) -> list[packrecords.Entry]:
    return [
        packrecords.Entry(
            path=f"{n // PER_SERIES:04d}_ge_02_Ax_fMRI_FF_I11.1_S15.9/{name(n)}",
            size=size(n),
            sop_instance_uid=uid(n),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            series_instance_uid=f"2.25.{10**36 + n // PER_SERIES}",
            series_number=scan(n),
            study_instance_uid="2.25.1234567890",
            transfer_syntax="1.2.840.10008.1.2.1",
            md5=f"{n * 7919:032x}",
        )
        for n in range(count)
    ]


@pytest.mark.alone
def test_a_manifest_read_back_keeps_under_200_bytes_a_file(tmp_path: Path) -> None:
    """Names in one buffer, sizes in an array, MD5s as 16 bytes, what a series shares once:
    about 115 bytes a file (an `Entry` per file: ~410). The same entries come out."""
    spool.save(tmp_path, pack.Manifest(123, entries()))
    loaded, held, _ = traced(lambda: spool.load(tmp_path, pack.Manifest))
    assert loaded is not None and loaded.file_count == COUNT
    assert held / COUNT < 200, f"{held / COUNT:.0f} B a file"
    assert list(loaded.entries()) == entries()
    assert loaded.position(uid(12_345)) == 12_345 and loaded.position("2.25.9") == -1


@pytest.mark.alone
def test_a_manifest_made_while_sending_keeps_under_200_bytes_a_file() -> None:
    planned = tuple(pack.Planned(e, e.size, 0.0, e.path) for e in entries())
    md5 = b"".join(bytes.fromhex(e.md5) for e in entries())
    made, held, _ = traced(lambda: pack.Manifest.sent(9, planned, md5))
    assert held / COUNT < 200, f"{held / COUNT:.0f} B a file"
    assert made.files == tuple(entries())


@pytest.mark.alone
def test_the_verify_step_holds_under_200_bytes_a_file(tmp_path: Path) -> None:
    """The manifest read back and compared with XNAT's prearchive listing (counted per scan,
    not a list of entries per scan): under 200 bytes a file at the peak (an `Entry` per file
    held: ~430; now ~115)."""
    spool.save(tmp_path, pack.Manifest(123, entries()))
    tally = verify.PrearchiveTally()
    for n in range(COUNT):
        tally.per_scan[scan(n)] += 1
        tally.sizes[size(n)] += 1

    def verify_step() -> verify.PrearchiveCheck:
        loaded = spool.load(tmp_path, pack.Manifest)
        assert loaded is not None
        return verify.check_prearchive(loaded, tally, compare_sizes=True)

    check, _, peak = traced(verify_step)
    assert not (check.missing or check.incomplete or check.changed)
    assert peak / COUNT < 200, f"{peak / COUNT:.0f} B a file"


def listing_rows() -> Iterator[xnat.RemoteFile]:
    """XNAT's listing of the session, each row made as it is read (as from the HTTP stream)."""
    return (
        xnat.RemoteFile(
            scan(n),
            "DICOM",
            name(n),
            name(n),
            size(n),
            f"{n * 7919:032x}",
            PREFIX.format(scan=scan(n)) + name(n),
        )
        for n in range(COUNT)
    )


@pytest.mark.alone
def test_the_archive_read_back_holds_under_250_bytes_a_file(tmp_path: Path) -> None:
    """The manifest read back, the archived session's listing kept (names, sizes, 16-byte
    MD5s) and every scan's catalog matched to the manifest by UID, sizes and MD5s compared:
    under 250 bytes a file at the peak (an `Entry` per file, a dict of them by UID and a dict
    of sizes and MD5 texts by name: ~680; now ~175). Every instance is matched, and a changed MD5 is
    still caught."""
    spool.save(tmp_path, pack.Manifest(123, entries()))

    def rows() -> Iterator[xnat.RemoteFile]:
        for row in listing_rows():
            yield dataclasses.replace(row, digest="f" * 32) if row.path == name(77) else row

    def catalog(number: str) -> Iterator[xnat.CatalogEntry]:
        first = (int(number) - 1) * PER_SERIES
        for n in range(first, min(first + PER_SERIES, COUNT)):
            yield xnat.CatalogEntry(number, "DICOM", uid(n), name(n), "")

    def read_back() -> archivecheck.ArchiveCheck:
        loaded = spool.load(tmp_path, pack.Manifest)
        assert loaded is not None
        tally = archivecheck.ArchiveTally(
            loaded, archivecheck.dicom_listing(rows()), compare_bytes=True
        )
        for number in sorted({scan(n) for n in range(COUNT)}, key=int):
            tally.add(number, "DICOM", catalog(number))
        return tally.result()

    check, _, peak = traced(read_back)
    assert check.matched == COUNT and not check.missing and not check.extra
    assert check.changed == [f"{entries()[77].path} (MD5 differs)"]
    assert len(check.samples) == COUNT // PER_SERIES
    assert peak / COUNT < 250, f"{peak / COUNT:.0f} B a file"


@pytest.mark.alone
def test_the_finish_step_holds_under_200_bytes_a_file(tmp_path: Path) -> None:
    """The manifest read back and RECEIPT.json written with a row per file, each made as it
    is written: under 200 bytes a file at the peak (every `Entry` made first: ~420; now
    ~130). The rows
    are the entries'."""
    spool.save(tmp_path, pack.Manifest(123, entries()))

    def finish() -> None:
        loaded = spool.load(tmp_path, pack.Manifest)
        assert loaded is not None
        content = {
            "label": "L", "project": "P", "subject": "S", "xnat_url": "u", "finished": "now",
            "file_count": COUNT, "bytes": 0, "scans": [], "resources": [], "excluded": [],
            "files": receipt.Rows(loaded.file_count, loaded.json_rows),
        }  # fmt: skip
        receipt.write(tmp_path, content)

    _, _, peak = traced(finish)
    assert peak / COUNT < 200, f"{peak / COUNT:.0f} B a file"
    rows = json.loads((tmp_path / receipt.JSON_NAME).read_text())["files"]
    assert rows == [e.to_json() for e in entries()]


@pytest.mark.alone
def test_a_plan_read_back_holds_under_150_bytes_a_file(tmp_path: Path) -> None:
    """The import step holds the plan read back while it sends. In columns (names and UIDs in
    one buffer each, sizes and times in arrays, what a series shares once, a zip name only where
    it is not the path): ~100 bytes a file (a `Planned` and `FileEntry` per file: ~408). A
    shortened zip name and a size that differs from the check's come back as they were."""
    files = tuple(
        pack.Planned(rules.FileEntry(**{k: v for k, v in e.to_json().items() if k != "md5"}),
                     e.size + (n == 5), 1.7e9 + n, e.path if n != 9 else "short~1.dcm")
        for n, e in enumerate(entries())
    )  # fmt: skip
    spool.save(tmp_path, pack.Plan(123, files))
    loaded, held, _ = traced(lambda: spool.load(tmp_path, pack.Plan))
    assert loaded is not None and loaded.files == files and loaded.zip_size == 123
    assert loaded.files[9].zip_name == "short~1.dcm"
    assert loaded.files[5].size == files[5].entry.size + 1
    assert held / COUNT < 150, f"{held / COUNT:.0f} B a file"
