"""The prearchive over raw HTTP: listing columns and statuses (§4.1–4.3), per-session actions
and their codes (§4.5), batch services (§4.6) and the clock-driven rebuilder (§4.4)."""

from __future__ import annotations

import re

import pytest

COLUMNS = {
    "project",
    "timestamp",
    "lastmod",
    "uploaded",
    "scan_date",
    "scan_time",
    "subject",
    "folderName",
    "name",
    "tag",
    "status",
    "url",
    "autoarchive",
    "prevent_anon",
    "prevent_auto_commit",
    "SOURCE",
    "VISIT",
    "PROTOCOL",
    "TIMEZONE",
}


def upload(svc, dicom, label="P01_MR1", project="SPN01", **params) -> str:
    """Import 2 files of a fresh study without dest (RECEIVING); return the /data URI."""
    files = dicom.study(dicom.files(count=2))
    response = svc.import_zip(
        dicom.zip(files), project=project, subject=label.split("_")[0], session=label, **params
    )
    assert response.status_code == 200, response.text
    return response.text.strip()


def h3(response) -> str:
    return re.search(r"<h3>(.*)</h3>", response.text, re.S).group(1)


def test_listing_has_every_column_as_strings_and_url_without_data(svc, dicom):
    uri = upload(svc, dicom, VISIT="V1", SOURCE="script")
    response = svc.get("/data/prearchive/projects/SPN01", params={"format": "json"})
    result_set = response.json()["ResultSet"]
    assert "totalRecords" not in result_set
    [row] = result_set["Result"]
    assert set(row) == COLUMNS
    assert all(isinstance(v, str) for v in row.values())
    assert row["url"] == uri.removeprefix("/data")
    assert re.fullmatch(r"\d{8}_\d{9}", row["timestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+", row["lastmod"])
    assert (row["status"], row["VISIT"], row["SOURCE"]) == ("RECEIVING", "V1", "script")
    assert (row["autoarchive"], row["uploaded"]) == ("Manual", "")
    # the other spellings of the listing
    assert svc.json_rows("/data/prearchive") == [row]
    assert svc.json_rows("/REST/prearchive/projects/SPN01,SPN02") == [row]
    assert svc.json_rows(uri) == [row]


def test_scans_resources_files_and_download(svc, dicom):
    files = dicom.files(count=2)
    response = svc.import_zip(
        dicom.zip(files), project="SPN01", session="P02", dest="/prearchive", prevent_anon="true"
    )
    uri = response.text.strip()
    assert svc.json_rows(uri + "/scans") == [
        {"ID": "1", "xsiType": "xnat:mrScanData", "series_description": "3-Plane Localizer"}
    ]
    [resource] = svc.json_rows(uri + "/scans/1/resources")
    assert resource == {
        "label": "DICOM",
        "file_count": "2",
        "file_size": str(sum(f.stat().st_size for f in files)),
    }
    listing = svc.json_rows(uri + "/scans/1/resources/DICOM/files")
    assert [f["Name"] for f in listing] == sorted(f"series_{f.name}" for f in files)
    download = svc.get(listing[0]["URI"])
    assert download.content == sorted(files)[0].read_bytes()
    document = svc.get(uri)  # built (dest given): the session XML is there
    assert document.status_code == 200 and "<xnat:MRSession" in document.text


def test_the_session_resource_list_has_a_row_per_scan_resource_once_built(svc, dicom):
    """PrearcSessionResourcesList reads the session document: 404 before the build, then one
    row per scan resource (category `scans`, cat_id the scan ID)."""
    uri = upload(svc, dicom)
    before = svc.get(uri + "/resources", params={"format": "json"})
    assert before.status_code == 404
    assert svc.post(uri, params={"action": "build"}).status_code == 200
    [row] = svc.json_rows(uri + "/resources")
    [scan] = svc.json_rows(uri + "/scans/1/resources")
    assert row == {
        "category": "scans",
        "cat_id": "1",
        "label": "DICOM",
        "file_count": scan["file_count"],
        "file_size": scan["file_size"],
    }
    assert row["file_count"] == "2"


def test_session_xml_is_404_before_build(svc, dicom):
    uri = upload(svc, dicom)
    response = svc.get(uri)
    assert response.status_code == 404
    assert h3(response).startswith("The named session exists, but its XNAT session document")


def test_build_then_commit_in_a_manual_project_stays_in_prearchive(svc, dicom):
    uri = upload(svc, dicom)
    built = svc.post(uri, params={"action": "build"})
    assert (built.status_code, built.text) == (200, uri)  # returnString: no CRLF
    assert built.headers["Content-Type"] == "text/uri-list"
    assert svc.json_rows(uri)[0]["status"] == "READY"
    committed = svc.post(uri, params={"action": "commit"})
    assert (committed.status_code, committed.text) == (200, uri)
    assert committed.headers["Content-Type"] == "text/uri-list"


def test_commit_in_an_auto_archive_project_is_301_with_body_and_no_location(svc, dicom):
    assert svc.put("/data/projects/SPN01/prearchive_code/4").status_code == 200
    uri = upload(svc, dicom, label="P03_MR1")
    response = svc.post(uri, params={"action": "commit"}, allow_redirects=False)
    assert response.status_code == 301
    assert "Location" not in response.headers
    assert response.text == "/data/archive/projects/SPN01/subjects/P03/experiments/P03_MR1"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []


def test_move_is_301_and_needs_write_access_to_the_target(svc, reader, dicom):
    uri = upload(svc, dicom)
    moved = svc.post(uri, params={"action": "move", "newProject": "SPN02"}, allow_redirects=False)
    assert moved.status_code == 301
    assert moved.text == uri.replace("/SPN01/", "/SPN02/")
    assert [r["project"] for r in svc.json_rows("/data/prearchive")] == ["SPN02"]
    denied = reader.post(moved.text.strip(), params={"action": "move", "newProject": "SPN01"})
    assert denied.status_code == 403


@pytest.mark.parametrize(
    ("params", "status", "text"),
    [
        ({}, 400, "No action parameter was specified"),
        ({"action": "rebuild"}, 400, "User svc requested an unsupported action on prearchive"),
        (
            {"action": "set-status", "status": "NOPE"},
            400,
            "No enum constant org.nrg.xnat.helpers.prearchive.PrearcUtils.PrearcStatus.NOPE",
        ),
        ({"action": "set-status", "status": "_BUILDING"}, 400, "Cannot set session status to _"),
    ],
)
def test_bad_actions_are_400(svc, dicom, params, status, text):
    uri = upload(svc, dicom)
    response = svc.post(uri, params=params)
    assert response.status_code == status
    assert h3(response).startswith(text)


def test_set_status_and_reset_status(svc, dicom):
    uri = upload(svc, dicom)
    set_status = svc.post(uri, params={"action": "set-status", "status": "ERROR"})
    assert (set_status.status_code, set_status.content) == (200, b"")
    assert svc.json_rows(uri)[0]["status"] == "ERROR"
    reset = svc.post(uri, params={"action": "reset-status"})
    assert (reset.status_code, reset.text) == (200, uri)
    assert svc.json_rows(uri)[0]["status"] == "RECEIVING"  # never built


def test_delete_is_200_then_404(sandbox, svc, dicom):
    uri = upload(svc, dicom)
    assert svc.delete(uri).status_code == 200
    assert svc.delete(uri).status_code == 404
    assert sandbox.state()["prearchive"] == []
    assert not any((sandbox.data / "prearchive").iterdir())


def test_batch_services_answer_the_table_of_the_rows(svc, dicom):
    first, second = upload(svc, dicom, "B1_MR1"), upload(svc, dicom, "B2_MR1")
    rebuilt = svc.post(
        "/data/services/prearchive/rebuild", data={"src": [first, second], "format": "json"}
    )
    rows = rebuilt.json()["ResultSet"]["Result"]
    assert {r["status"] for r in rows} == {"QUEUED_BUILDING"}
    assert {r["status"] for r in svc.json_rows("/data/prearchive")} == {"READY"}
    moved = svc.post(
        "/data/services/prearchive/move",
        data={"src": first, "newProject": "SPN02"},
        params={"format": "json"},
    )
    assert moved.status_code == 200
    deleted = svc.post("/data/services/prearchive/delete", data={"src": second})
    assert deleted.status_code == 200 and "<ResultSet" in deleted.text  # default is XML
    assert [r["project"] for r in svc.json_rows("/data/prearchive")] == ["SPN02"]
    missing = svc.post(
        "/data/services/prearchive/delete", data={"src": "/prearchive/projects/NOPE/1/x"}
    )
    assert missing.status_code == 404


def test_rebuilder_builds_idle_sessions_only_when_the_clock_says_so(sandbox, svc, dicom):
    uri = upload(svc, dicom)
    held = upload(svc, dicom, "P04_MR1", prevent_auto_commit="true")
    uploader = upload(svc, dicom, "P05_MR1", SOURCE="uploader")
    assert sandbox.tick(299) == {"built": [], "archived": [], "failed": []}
    result = sandbox.tick(2)
    assert result["built"] == [uri] and result["archived"] == []
    statuses = {r["name"]: r["status"] for r in svc.json_rows("/data/prearchive")}
    assert statuses == {"P01_MR1": "READY", "P04_MR1": "RECEIVING", "P05_MR1": "RECEIVING"}
    assert held and uploader


def test_rebuilder_auto_archives_in_code_4_projects(sandbox, svc, dicom):
    svc.put("/data/projects/SPN02/prearchive_code/4")
    upload(svc, dicom, "P06_MR1", project="SPN02")
    result = sandbox.tick(300)
    assert result["archived"] == ["/data/archive/projects/SPN02/subjects/P06/experiments/P06_MR1"]
    assert [e["label"] for e in sandbox.state()["archive"]] == ["P06_MR1"]


def test_new_data_reopens_a_ready_session(svc, dicom):
    files = dicom.study(dicom.files(count=2))
    first = svc.import_zip(dicom.zip(files[:1]), project="SPN01", session="P07", dest="/prearchive")
    assert svc.json_rows(first.text.strip())[0]["status"] == "READY"
    svc.import_zip(dicom.zip(files[1:]), project="SPN01", session="P07")
    [row] = svc.json_rows("/data/prearchive/projects/SPN01")
    assert row["status"] == "RECEIVING"


def test_an_archiving_session_gets_a_new_session(svc, dicom):
    files = dicom.study(dicom.files(count=2))
    first = svc.import_zip(dicom.zip(files[:1]), project="SPN01", session="P08").text.strip()
    svc.post(first, params={"action": "set-status", "status": "ARCHIVING"})
    second = svc.import_zip(dicom.zip(files[1:]), project="SPN01", session="P08").text.strip()
    assert second != first
    assert second.endswith("/P08") or second.endswith("/P08_1")


def test_listing_permissions(svc, reader, outsider, dicom):
    upload(svc, dicom)
    assert len(reader.json_rows("/data/prearchive/projects/SPN01")) == 1
    assert reader.json_rows("/data/prearchive") == []  # only projects the user can edit
    denied = outsider.get("/data/prearchive/projects/SPN01", params={"format": "json"})
    assert denied.status_code == 403
    assert h3(denied) == "The current user does not have access to the requested project: SPN01"
