"""Scan resources other than DICOM in scan file listings, over real HTTP.

`scans/ALL/files` and `scans/{S}/files` list every resource of the scans (XNATTemplate
`loadCatalogs`, FileList), each row with its `collection`. XNAT adds a SNAPSHOTS resource to a
scan the first time someone views the session (the scan table asks `SnapshotGenerationApi` for
each scan's snapshot and thumbnail), and automation adds others (NIFTI). Data: the GE localizer
series of `ge_signa_premier_table` (tests/conftest.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

EXPERIMENT = "/data/projects/SPN01/subjects/V01/experiments/V01_MR1"
CAT = {"cat": "http://nrg.wustl.edu/catalog"}


@pytest.fixture
def session_id(svc, dicom) -> str:
    """V01_MR1 archived with scans 1 (2 files) and 5 (1 file); its experiment ID."""
    files = dicom.files("1", count=2) + dicom.files("5", count=1)
    response = svc.import_zip(
        dicom.zip(files),
        project="SPN01",
        subject="V01",
        session="V01_MR1",
        dest="/archive/projects/SPN01",
    )
    assert response.status_code == 200, response.text
    return svc.json_rows("/data/projects/SPN01/experiments")[0]["ID"]


def collections(svc, path: str) -> list[tuple[str, str]]:
    return sorted((r["collection"], r["Name"]) for r in svc.json_rows(path))


def test_a_viewed_scan_gets_snapshots_listed_with_their_collection(svc, reader, session_id):
    before = collections(svc, EXPERIMENT + "/scans/ALL/files")
    assert {c for c, _ in before} == {"DICOM"}
    snapshot = f"/xapi/projects/SPN01/experiments/{session_id}/scan/1/snapshot"
    assert reader.head(snapshot).status_code == 200  # scanTable.js probes with HEAD first
    thumbnail = reader.get(snapshot.replace("/snapshot", "/thumbnail"))
    assert thumbnail.headers["Content-Type"] == "image/gif"
    assert thumbnail.content.startswith(b"GIF89a")
    rows = svc.json_rows(EXPERIMENT + "/scans/ALL/files")
    added = sorted(
        (r["Name"], r["file_format"], r["file_content"])
        for r in rows
        if r["collection"] == "SNAPSHOTS"
    )
    assert added == [
        (f"{session_id}_1_qc.gif", "GIF", "ORIGINAL"),
        (f"{session_id}_1_qc_t.gif", "GIF", "THUMBNAIL"),
    ]
    assert len(rows) == len(before) + 2
    # scan 5 was not viewed: still its single DICOM file
    assert [c for c, _ in collections(svc, EXPERIMENT + "/scans/5/files")] == ["DICOM"]
    [resource] = [
        r for r in svc.json_rows(EXPERIMENT + "/scans/1/resources") if r["label"] == "SNAPSHOTS"
    ]
    assert (resource["format"], resource["content"], resource["file_count"]) == (
        "GIF",
        "SNAPSHOTS",
        "2",
    )


def test_viewing_the_session_snapshots_every_scan_once(sandbox, svc, session_id):
    answer = svc.post(f"{sandbox.url}/_sandbox/view-session", json={"experiment": session_id})
    assert answer.json() == {"scans": ["1", "5"]}
    assert sandbox.view_session("V01_MR1", project="SPN01") == ["1", "5"]  # again: no new files
    rows = svc.json_rows(EXPERIMENT + "/scans/ALL/files")
    snapshots = sorted(r["Name"] for r in rows if r["collection"] == "SNAPSHOTS")
    assert snapshots == [
        f"{session_id}_{scan}_qc{suffix}.gif" for scan in ("1", "5") for suffix in ("", "_t")
    ]
    assert sum(r["collection"] == "DICOM" for r in rows) == 3
    montage = svc.get(f"/xapi/experiments/{session_id}/scan/5/snapshot/3X3")
    assert montage.status_code == 200
    [row] = [r for r in svc.json_rows(EXPERIMENT + "/scans/5/files") if "3x3" in r["Name"]]
    assert (row["Name"], row["file_content"]) == (f"{session_id}_5_3x3_qc.gif", "3X3")


def test_snapshot_errors(svc, outsider, session_id):
    missing = svc.get(f"/xapi/experiments/{session_id}/scan/99/snapshot")
    assert missing.status_code == 404
    assert svc.get("/xapi/experiments/XNAT_E99999/scan/1/snapshot").status_code == 404
    assert outsider.get(f"/xapi/experiments/{session_id}/scan/1/snapshot").status_code == 403


def test_automation_adds_a_nifti_resource_that_lists_but_is_not_dicom(sandbox, svc, session_id):
    added = svc.post(
        f"{sandbox.url}/_sandbox/scan-resource",
        json={"experiment": "V01_MR1", "project": "SPN01", "scan": "1", "label": "NIFTI"},
    )
    assert added.json() == {"files": ["1.nii.gz"]}
    rows = svc.json_rows(EXPERIMENT + "/scans/1/files")
    assert sorted(r["collection"] for r in rows) == ["DICOM", "DICOM", "NIFTI"]
    [nifti] = [r for r in rows if r["collection"] == "NIFTI"]
    assert nifti["file_format"] == "NIFTI"
    assert svc.get(nifti["URI"]).content == b"sandbox automation output\n"
    dicom_catalog = ET.fromstring(svc.get(EXPERIMENT + "/scans/1/resources/DICOM").content)
    assert len(dicom_catalog.findall("cat:entries/cat:entry", CAT)) == 2  # DICOM only
    refused = svc.post(
        f"{sandbox.url}/_sandbox/scan-resource", json={"experiment": session_id, "scan": "77"}
    )
    assert refused.status_code == 400 and "no scan" in refused.json()["error"]
