"""The `checksums` site preference and `/xapi/siteConfig`, over real HTTP.

XNAT computes a catalog entry's `digest` when the file is catalogued (archive, resource upload)
and only while `checksums` is on (default true, `SiteConfigPreferences` l.682); with it off the
file listings show an empty `digest`. The prearchive listing never has a digest column.
Data: the GE localizer series of `ge_signa_premier_table` (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

EXPERIMENT = "/data/projects/SPN01/subjects/K01/experiments/K01_MR1"
CAT = {"cat": "http://nrg.wustl.edu/catalog"}


def archive(svc, dicom, files) -> None:
    response = svc.import_zip(
        dicom.zip(files),
        project="SPN01",
        subject="K01",
        session="K01_MR1",
        dest="/archive/projects/SPN01",
    )
    assert response.status_code == 200, response.text


def test_checksums_are_on_by_default_and_readable_by_any_user(svc, reader, dicom):
    answer = reader.get("/xapi/siteConfig/checksums")
    assert (answer.status_code, answer.json()) == (200, True)
    assert reader.get("/xapi/siteConfig/values/checksums,nonsense").json() == {"checksums": True}
    files = dicom.files("1", count=2)
    archive(svc, dicom, files)
    rows = svc.json_rows(EXPERIMENT + "/scans/ALL/files")
    for row in rows:
        assert row["digest"] == hashlib.md5(svc.get(row["URI"]).content).hexdigest()


def test_checksums_off_means_an_empty_digest_in_listings_and_catalogs(svc, reader, dicom):
    refused = reader.post(
        "/xapi/siteConfig/checksums", data="false", headers={"Content-Type": "text/plain"}
    )
    assert (refused.status_code, refused.content) == (403, b"")
    off = svc.post(
        "/xapi/siteConfig/checksums", data="false", headers={"Content-Type": "text/plain"}
    )
    assert off.status_code == 200
    assert reader.get("/xapi/siteConfig/checksums").json() is False
    files = dicom.files("1", count=2)
    archive(svc, dicom, files)
    rows = svc.json_rows(EXPERIMENT + "/scans/ALL/files")
    assert len(rows) == 2
    assert [row["digest"] for row in rows] == ["", ""]
    assert all(row["Size"] == str(len(svc.get(row["URI"]).content)) for row in rows)
    entries = ET.fromstring(svc.get(EXPERIMENT + "/scans/1/resources/DICOM").content).findall(
        "cat:entries/cat:entry", CAT
    )
    assert [e.get("digest") for e in entries] == [None, None]
    assert all(e.get("UID") for e in entries)  # the UIDs do not depend on checksums
    assert svc.put(EXPERIMENT + "/resources/notes/files/a.txt", data=b"note\n").ok
    [note] = svc.json_rows(EXPERIMENT + "/resources/notes/files")
    assert note["digest"] == ""


def test_the_prearchive_listing_never_has_a_digest(svc, dicom):
    response = svc.import_zip(
        dicom.zip(dicom.files("1", count=1)), project="SPN01", dest="/prearchive"
    )
    [row] = svc.json_rows(response.text.strip() + "/scans/1/resources/DICOM/files")
    assert set(row) == {"Name", "Size", "URI"}


def test_site_config_map_post_and_refusals(svc, dicom):
    assert svc.post("/xapi/siteConfig", json={"checksums": False}).status_code == 200
    assert svc.get("/xapi/siteConfig/checksums").json() is False
    unknown = svc.post("/xapi/siteConfig", json={"checksums": True, "siteUrl": "x"})
    assert unknown.status_code == 400 and "siteUrl" in unknown.text
    assert svc.get("/xapi/siteConfig/checksums").json() is False  # nothing was applied
    bad = svc.post(
        "/xapi/siteConfig/checksums", data="maybe", headers={"Content-Type": "text/plain"}
    )
    assert bad.status_code == 400
    on = svc.post("/xapi/siteConfig/checksums", json=True)
    assert on.status_code == 200 and svc.get("/xapi/siteConfig/checksums").json() is True
    assert svc.get("/xapi/siteConfig/buildInfo").json()["version"]  # still served by xapi.py


def test_the_digest_is_computed_at_archive_from_the_file_then(sandbox, svc, dicom):
    """XNAT's importer hashes nothing; `PrearcUtils.cleanupScans` → `calculateResourceChecksums`
    reads each file at archive. So a prearchive file changed after the import is catalogued
    with the digest of its bytes at archive (an importer that hashed would keep the old one)."""
    response = svc.import_zip(
        dicom.zip(dicom.files("1", count=2)), project="SPN01", subject="K01", session="K01_MR1",
        dest="/prearchive/projects/SPN01",
    )  # fmt: skip
    assert response.status_code == 200, response.text
    stored = sandbox.store.prearchive_root.glob("SPN01/*/*/SCANS/1/DICOM/*")
    [changed, *_] = sorted(p for p in stored if not p.name.endswith(".xml"))
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF  # the last pixel byte: same size, other bytes
    changed.write_bytes(bytes(data))
    src = response.text.strip().removeprefix("/data")
    assert svc.post("/data/services/archive", data={"src": src}).status_code == 200
    rows = svc.json_rows(EXPERIMENT + "/scans/ALL/files")
    digests = {row["Name"]: row["digest"] for row in rows}
    assert digests[changed.name] == hashlib.md5(data).hexdigest()
    for row in rows:
        assert row["digest"] == hashlib.md5(svc.get(row["URI"]).content).hexdigest()
