"""The prearchive copy against the manifest (`verify.check_prearchive`) from a tally of XNAT's
listing (`verify.PrearchiveTally`): the same findings as from the listing itself, while the
listing's files are never all held (a `RemoteFile` per file was the push's peak at 50,000)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from xnatdrop import pack, packrecords, verify, xnat


def entry(n: int, scan: str) -> packrecords.Entry:
    return packrecords.Entry(
        f"{scan}_series/IM{n:04d}.dcm", 1000 + n, f"2.25.{n}", "1.2.840.10008.5.1.4.1.1.4",
        f"2.25.9{scan}", scan, "2.25.1", "1.2.840.10008.1.2.1", md5=f"{n:032x}",
    )  # fmt: skip


def listing(sizes: dict[str, list[int]]) -> Iterator[xnat.RemoteFile]:
    """XNAT's listing of a prearchive copy: `sizes[scan]` the size of each of its files."""
    for scan, each in sizes.items():
        for n, size in enumerate(each):
            uri = f"/prearchive/projects/P/20260101_000000/S/scans/{scan}/resources/DICOM/IM{n}"
            yield xnat.RemoteFile(scan, "DICOM", f"IM{n}", f"IM{n}", size, "", uri)


MANIFEST = pack.Manifest(1, tuple(entry(n, scan) for scan in ("1", "2") for n in range(3)))
SENT = {"1": [1000, 1001, 1002], "2": [1000, 1001, 1002]}


SCAN_2 = verify.series_of(MANIFEST.files[3:])  # the series of scan 2


@pytest.mark.parametrize(
    ("arrived", "missing", "incomplete", "changed_when_sizes_compared"),
    [
        (SENT, [], "", ""),
        ({"1": [1000, 1001, 1002]}, SCAN_2, "", ""),
        ({"1": [1000, 1001], "2": [1000, 1001, 1002]}, [], "scan 1: 2 of 3 files", ""),
        (
            {"1": [1000, 1001, 1002], "2": [1000, 1001, 9]},
            [],
            "",
            "file sizes in XNAT differ from the upload",
        ),
    ],
)
def test_the_tally_finds_what_the_listing_holds(
    arrived: dict[str, list[int]], missing: list, incomplete: str, changed_when_sizes_compared: str
) -> None:
    """A missing scan, a scan short of files, a changed size (only when sizes are compared)."""
    tally = verify.PrearchiveTally.of(listing(arrived))
    assert tally.file_count == sum(map(len, arrived.values()))
    for sizes in (False, True):
        check = verify.check_prearchive(MANIFEST, tally, sizes)
        changed = changed_when_sizes_compared if sizes else ""
        assert (check.missing, check.incomplete, check.changed) == (missing, incomplete, changed)


@pytest.mark.alone
def test_a_tally_keeps_nothing_per_file() -> None:
    """Tallying a listing of 20,000 files of 40 scans (sizes repeating within a scan, as the
    files of a classic series) keeps a few bytes per file, not the listing's ~370."""
    arrived = {str(s): [40_000 + s] * 500 for s in range(40)}
    tracemalloc.start()
    try:
        tally = verify.PrearchiveTally.of(listing(arrived))
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert tally.file_count == 20_000
    assert kept / 20_000 < 2, f"{kept / 20_000:.1f} bytes a file"
