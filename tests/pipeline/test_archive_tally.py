"""The archived session's catalogs compared with the manifest scan by scan
(`archivecheck.ArchiveTally`, fed by `archivecheck.dicom_listing`): the same findings whatever
order the scans arrive in, from a listing kept as sizes, MD5s and a shared URI prefix."""

from __future__ import annotations

import itertools
from pathlib import Path

from xnatdrop import archivecheck, pack, packrecords, xnat

PREFIX = "/data/experiments/XNAT_E00001/scans/{scan}/resources/DICOM/files/"


def entry(n: int, scan: str) -> packrecords.Entry:
    return packrecords.Entry(
        path=Path(f"{scan}_series/IM{n:04d}.dcm"),
        size=1000 + n,
        sop_instance_uid=f"2.25.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid=f"2.25.9{scan}",
        series_number=scan,
        study_instance_uid="2.25.1",
        transfer_syntax="1.2.840.10008.1.2.1",
        md5=f"{n:032x}",
    )


def listed(scan: str, name: str, size: int, digest: str, uri: str = "") -> xnat.RemoteFile:
    uri = uri or PREFIX.format(scan=scan) + name
    return xnat.RemoteFile(scan, "DICOM", name, name, size, digest, uri)


def catalogued(scan: str, name: str, uid: str, digest: str = "") -> xnat.CatalogEntry:
    return xnat.CatalogEntry(scan, "DICOM", uid, name, digest)


def session() -> tuple[pack.Manifest, list[xnat.RemoteFile], dict[str, list[xnat.CatalogEntry]]]:
    """Scan 1: three files, one with another size, the smallest's name escaped in its URI;
    scan 2: two files, one MD5 known only from the listing and differing, plus an instance
    not in the manifest and a SNAPSHOTS file; entry 6 of the manifest is not catalogued."""
    entries = [entry(1, "1"), entry(2, "1"), entry(3, "1"), entry(4, "2"), entry(5, "2")]
    entries.append(entry(6, "2"))
    files = [
        listed("1", "a b.dcm", 1001, f"{1:032x}", PREFIX.format(scan="1") + "a%20b.dcm"),
        listed("1", "c.dcm", 1002, f"{2:032x}"),
        listed("1", "d.dcm", 9999, f"{3:032x}"),
        listed("2", "e.dcm", 1004, ""),
        listed("2", "f.dcm", 1005, "f" * 32),
        listed("2", "x.dcm", 5, ""),
        xnat.RemoteFile("2", "SNAPSHOTS", "s.gif", "s.gif", 7, "", "/x/files/s.gif"),
    ]
    catalogs = {
        "1": [
            catalogued("1", "a b.dcm", "2.25.1", f"{1:032x}"),
            catalogued("1", "c.dcm", "2.25.2", f"{2:032x}"),
            catalogued("1", "d.dcm", "2.25.3", f"{3:032x}"),
        ],
        "2": [
            catalogued("2", "e.dcm", "2.25.4", f"{4:032x}"),
            catalogued("2", "f.dcm", "2.25.5"),
            catalogued("2", "x.dcm", "2.25.77"),
        ],
    }
    return pack.Manifest(0, tuple(entries)), files, catalogs


def test_scans_in_any_order_give_the_same_findings() -> None:
    manifest, files, catalogs = session()
    results = []
    for order in itertools.permutations(catalogs):
        listing = archivecheck.dicom_listing(files)
        tally = archivecheck.ArchiveTally(manifest, listing, compare_bytes=True)
        for scan in order:
            tally.add(scan, "DICOM", catalogs[scan])
        results.append(tally.result(watch=["2.25.1", "2.25.6"]))
    check = results[0]
    assert all(r == check for r in results)
    assert [e.sop_instance_uid for e in check.missing] == ["2.25.6"]
    assert [c.uid for c in check.extra] == ["2.25.77"]
    assert check.changed == [
        "1_series/IM0003.dcm (9999 bytes in XNAT, 1003 sent)",
        "2_series/IM0005.dcm (MD5 differs)",
    ]
    assert (check.matched, check.matched_bytes) == (5, sum(1000 + n for n in range(1, 6)))
    assert check.md5_compared
    assert check.found == {"2.25.1"}
    samples = [(e.sop_instance_uid, f.uri, f.size) for e, f in check.samples]
    assert samples == [
        ("2.25.1", PREFIX.format(scan="1") + "a%20b.dcm", 1001),
        ("2.25.4", PREFIX.format(scan="2") + "e.dcm", 1004),
    ]
    assert check.describe() == (
        "1 instance(s) of the upload are missing: 2_series/IM0006.dcm; "
        "1 instance(s) are not from this upload: scan 2 x.dcm (UID 2.25.77); "
        "2 file(s) have other bytes: 1_series/IM0003.dcm (9999 bytes in XNAT, 1003 sent), "
        "2_series/IM0005.dcm (MD5 differs)"
    )


def test_expected_instances_are_not_extra_and_the_catalog_is_kept_when_asked() -> None:
    """Appending: what the session held before is expected; `late.join` keeps every UID and
    each scan's file names."""
    manifest, files, catalogs = session()
    tally = archivecheck.ArchiveTally(
        manifest, archivecheck.dicom_listing(files), False, expected=["2.25.77"], keep_catalog=True
    )
    for scan, entries in catalogs.items():
        tally.add(scan, "DICOM", entries)
    check = tally.result()
    assert check.extra == [] and check.changed == [] and not check.md5_compared
    assert "2.25.77" in check.catalog_uids and len(check.catalog_uids) == 6
    assert check.names == {"1": {"a b.dcm", "c.dcm", "d.dcm"}, "2": {"e.dcm", "f.dcm", "x.dcm"}}


def test_a_catalogued_file_without_an_md5_anywhere_means_md5s_were_not_compared() -> None:
    manifest, files, catalogs = session()
    files = [f for f in files if f.path != "e.dcm"] + [listed("2", "e.dcm", 1004, "")]
    catalogs["2"][0] = catalogued("2", "e.dcm", "2.25.4")
    tally = archivecheck.ArchiveTally(manifest, archivecheck.dicom_listing(files), True)
    for scan, entries in catalogs.items():
        tally.add(scan, "DICOM", entries)
    check = tally.result()
    assert not check.md5_compared
