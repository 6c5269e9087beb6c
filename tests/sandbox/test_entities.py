"""Archive entities and resources over raw HTTP: exact columns, string cells, real sizes and
MD5s compared with the source files (§7), resource creation, uploads and duplicates (§8)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile

import pytest

SCAN_COLUMNS = {
    "xnat_imagescandata_id",
    "ID",
    "type",
    "quality",
    "xsiType",
    "note",
    "series_description",
    "URI",
}
FILE_COLUMNS = {
    "Name",
    "Size",
    "URI",
    "collection",
    "file_tags",
    "file_format",
    "file_content",
    "cat_ID",
    "digest",
}
SESSION = "/data/projects/SPN01/subjects/E1/experiments/E1_MR1"


def h3(response) -> str:
    return re.search(r"<h3>(.*)</h3>", response.text, re.S).group(1)


@pytest.fixture
def archived(svc, dicom):
    """An archived session E1_MR1 with scans 1 and 5 (3 + 2 real GE files), stored as sent
    (`prevent_anon=true`: the site script would rewrite every header)."""
    files = dicom.files("1", 3) + dicom.files("5", 2)
    response = svc.import_zip(
        dicom.zip(files), dest=f"/archive{SESSION.removeprefix('/data')}", prevent_anon="true"
    )
    assert response.status_code == 200, response.text
    return files


def test_projects_list_item_and_create(svc, reader, outsider):
    response = svc.get("/data/projects", params={"format": "json"})
    result_set = response.json()["ResultSet"]
    assert result_set["totalRecords"] == "2"
    assert [p["ID"] for p in result_set["Result"]] == ["SPN01", "SPN02"]
    assert set(result_set["Result"][0]) == {
        "ID",
        "secondary_ID",
        "name",
        "description",
        "pi_firstname",
        "pi_lastname",
        "URI",
    }
    item = svc.get("/data/archive/projects/SPN01", params={"format": "json"}).json()
    assert item["items"][0]["data_fields"]["ID"] == "SPN01"
    assert item["items"][0]["meta"]["xsi:type"] == "xnat:projectData"
    assert svc.put("/data/projects/NEW_1", params={"name": "New"}).status_code == 201
    assert "NEW_1" in [p["ID"] for p in reader.json_rows("/data/projects")]
    bad = svc.put("/data/projects/bad.id")
    assert (bad.status_code, h3(bad)) == (417, "Invalid character in project ID.")
    assert outsider.json_rows("/data/projects") == []
    hidden = outsider.get("/data/projects/SPN01", params={"format": "json"})
    assert (hidden.status_code, h3(hidden)) == (404, "Unable to find the specified experiment.")
    assert reader.put("/data/projects/MINE").status_code == 403


def test_prearchive_code_get_and_put(svc, reader):
    assert svc.get("/data/projects/SPN01/prearchive_code").text == "0"
    assert svc.put("/data/projects/SPN01/prearchive_code/5").status_code == 200
    assert svc.get("/data/projects/SPN01/prearchive_code").text == "5"
    assert svc.put("/data/projects/SPN01/prearchive_code/3").status_code == 400
    assert reader.put("/data/projects/SPN01/prearchive_code/0").status_code == 403


def test_subjects_put_201_then_200_with_fields(svc, reader):
    first = svc.put(
        "/data/projects/SPN01/subjects/SUBJ1",
        params={"gender": "female", "handedness": "right", "yob": "1990"},
    )
    assert (first.status_code, first.text) == (201, "XNAT_S00001")
    again = svc.put("/data/projects/SPN01/subjects/SUBJ1", params={"dob": "1990-02-03"})
    assert (again.status_code, again.text) == (200, "XNAT_S00001")
    rows = svc.json_rows("/data/projects/SPN01/subjects")
    assert [(r["ID"], r["label"], r["URI"]) for r in rows] == [
        ("XNAT_S00001", "SUBJ1", "/data/subjects/XNAT_S00001")
    ]
    item = svc.get("/data/subjects/XNAT_S00001", params={"format": "json"}).json()["items"][0]
    [demographics] = [c for c in item["children"] if c["field"] == "demographics"]
    assert demographics["items"][0]["data_fields"] == {
        "gender": "female",
        "handedness": "right",
        "yob": 1990,
        "dob": "1990-02-03",
    }
    denied = reader.put("/data/projects/SPN01/subjects/SUBJ2")
    assert denied.status_code == 403


def test_experiments_put_list_and_query(svc):
    need = svc.put("/data/projects/SPN01/subjects/S1/experiments/S1_MR1")
    assert (need.status_code, h3(need)) == (417, "Need PUT Contents")
    made = svc.put(
        "/data/projects/SPN01/subjects/S1/experiments/S1_MR1",
        params={"xsiType": "xnat:mrSessionData", "date": "2024-08-01"},
    )
    assert (made.status_code, made.text) == (201, "XNAT_E00001")
    rows = svc.json_rows("/data/projects/SPN01/experiments")
    assert rows == [
        {
            "ID": "XNAT_E00001",
            "project": "SPN01",
            "date": "2024-08-01",
            "xsiType": "xnat:mrSessionData",
            "label": "S1_MR1",
            "insert_date": rows[0]["insert_date"],
            "URI": "/data/experiments/XNAT_E00001",
        }
    ]
    found = svc.json_rows(
        "/data/experiments", project="SPN01", label="S1_MR1", xsiType="xnat:mrSessionData"
    )
    assert [(r["ID"], r["subject_label"]) for r in found] == [("XNAT_E00001", "S1")]
    assert svc.json_rows("/data/experiments", project="SPN02") == []


def test_experiment_item_has_scans_as_children(svc, archived):
    item = svc.get(SESSION, params={"format": "json"}).json()["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData"
    fields = item["data_fields"]
    assert (fields["label"], fields["project"], fields["modality"]) == ("E1_MR1", "SPN01", "MR")
    [scans] = [c for c in item["children"] if c["field"] == "scans/scan"]
    assert [s["data_fields"]["ID"] for s in scans["items"]] == ["1", "5"]
    assert scans["items"][0]["children"][0]["items"][0]["data_fields"]["file_count"] == 3


def test_scans_listing_has_the_exact_columns(svc, archived):
    response = svc.get(SESSION + "/scans", params={"format": "json"})
    rows = response.json()["ResultSet"]["Result"]
    assert response.json()["ResultSet"]["totalRecords"] == "2"
    assert all(set(r) == SCAN_COLUMNS for r in rows)
    assert rows[0]["xsiType"] == "xnat:mrScanData"
    assert rows[0]["URI"].startswith("/data/experiments/XNAT_E")


def test_files_have_real_sizes_and_md5s_and_download(svc, dicom, archived):
    response = svc.get(SESSION + "/scans/ALL/files", params={"format": "json"})
    result_set = response.json()["ResultSet"]
    assert result_set["title"] == "Files"
    rows = result_set["Result"]
    assert all(set(r) == FILE_COLUMNS for r in rows)
    assert all(isinstance(v, str) for r in rows for v in r.values())
    expected = {f"series_{p.name}": (str(p.stat().st_size), dicom.md5(p)) for p in archived}
    assert {r["Name"]: (r["Size"], r["digest"]) for r in rows} == expected
    first = rows[0]
    assert first["collection"] == "DICOM" and first["file_format"] == "DICOM"
    download = svc.get(first["URI"])
    source = next(p for p in archived if f"series_{p.name}" == first["Name"])
    assert download.content == source.read_bytes()
    one_scan = svc.json_rows(SESSION + "/scans/5/resources/DICOM/files")
    assert len(one_scan) == 2
    [resource] = svc.json_rows(SESSION + "/scans/1/resources")
    assert (resource["label"], resource["file_count"]) == ("DICOM", "3")
    bundle = zipfile.ZipFile(
        io.BytesIO(svc.get(SESSION + "/scans/ALL/files", params={"format": "zip"}).content)
    )
    assert len(bundle.namelist()) == 5


def test_resource_create_409_upload_duplicates_overwrite(svc):
    base = SESSION.replace("E1_MR1", "R1")
    svc.put(
        "/data/projects/SPN01/subjects/E1/experiments/R1", params={"xsiType": "xnat:mrSessionData"}
    )
    assert svc.put(base + "/resources/behav", params={"format": "TSV"}).status_code == 200
    again = svc.put(base + "/resources/behav")
    assert (again.status_code, h3(again)) == (409, "Specified resource already exists.")
    raw = svc.put(
        base + "/resources/behav/files/run1/events.tsv",
        data=b"onset\n0\n",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert (raw.status_code, raw.text) == (200, "")
    duplicate = svc.put(
        base + "/resources/behav/files/run1/events.tsv",
        data=b"other\n",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert duplicate.status_code == 200
    assert duplicate.headers["Content-Type"].startswith("text/html")
    assert json.loads(duplicate.text) == {"duplicates": ["run1/events.tsv"]}
    assert svc.get(base + "/resources/behav/files/run1/events.tsv").content == b"onset\n0\n"
    replaced = svc.put(
        base + "/resources/behav/files/run1/events.tsv",
        data=b"other\n",
        params={"overwrite": "true"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert replaced.status_code == 200 and replaced.text == ""
    [row] = svc.json_rows(base + "/resources/behav/files")
    assert (row["Name"], row["Size"], row["digest"]) == (
        "events.tsv",
        "6",
        hashlib.md5(b"other\n").hexdigest(),
    )
    assert row["URI"].endswith("/files/run1/events.tsv")


def test_upload_auto_creates_the_resource_and_extracts_archives(svc, archived):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.writestr("run1/a.txt", "a\n")
        bundle.writestr("b.txt", "bb\n")
    response = svc.post(
        SESSION + "/resources/physio/files",
        params={"extract": "true"},
        files={"file": ("physio.zip", zipped.getvalue())},
    )
    assert response.status_code == 200, response.text
    rows = svc.json_rows(SESSION + "/resources/physio/files")
    assert sorted(r["URI"].split("/files/")[1] for r in rows) == ["b.txt", "run1/a.txt"]
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w:gz") as bundle:
        info = tarfile.TarInfo("c.log")
        info.size = 3
        bundle.addfile(info, io.BytesIO(b"ccc"))
    svc.put(
        SESSION + "/resources/physio/files/c.tar.gz",
        params={"extract": "true"},
        data=tarred.getvalue(),
        headers={"Content-Type": "application/x-gzip"},
    )
    again = svc.post(
        SESSION + "/resources/physio/files",
        params={"extract": "true"},
        files={"file": ("physio.zip", zipped.getvalue())},
    )
    assert json.loads(again.text) == {"duplicates": ["run1/a.txt", "b.txt"]}
    listing = svc.get(SESSION + "/resources", params={"format": "json"}).json()["ResultSet"]
    assert listing["title"] == "Resources"
    physio = next(r for r in listing["Result"] if r["label"] == "physio")
    assert (physio["file_count"], physio["file_size"]) == ("3", "8")


def test_resource_permissions_and_delete(svc, reader, outsider, archived):
    assert reader.put(SESSION + "/resources/notes").status_code == 403
    assert outsider.get(SESSION, params={"format": "json"}).status_code == 404
    assert reader.get(SESSION, params={"format": "json"}).status_code == 200
    svc.put(
        SESSION + "/resources/notes/files/n.txt", data=b"n", headers={"Content-Type": "text/plain"}
    )
    assert svc.delete(SESSION + "/resources/notes/files/n.txt").status_code == 200
    assert svc.json_rows(SESSION + "/resources/notes/files") == []
    assert svc.delete(SESSION + "/resources/notes").status_code == 200
    assert svc.get(SESSION + "/resources/notes", params={"format": "json"}).status_code == 404
    bad = svc.put(SESSION + "/resources/notes/extra")
    assert bad.status_code == 400
    assert h3(bad).startswith("This resource works at the catalog level only")
    empty = svc.put(
        SESSION + "/resources/notes/files/e.txt", headers={"Content-Type": "text/plain"}
    )
    assert empty.status_code == 400


def test_project_and_subject_resources(svc):
    svc.put("/data/projects/SPN01/subjects/S9")
    for owner in ("/data/projects/SPN01", "/data/projects/SPN01/subjects/S9"):
        response = svc.put(
            owner + "/resources/docs/files/readme.txt",
            data=b"hello",
            headers={"Content-Type": "text/plain"},
        )
        assert response.status_code == 200
        [row] = svc.json_rows(owner + "/resources/docs/files")
        assert (row["Size"], row["digest"]) == ("5", "5d41402abc4b2a76b9719d911017c592")


def test_a_reader_may_not_edit_an_experiment_or_its_scans(svc, reader, archived):
    """A collaborator reads but never changes an archived session: 403 with XNAT's text for the
    experiment and for each scan (a PUT under the subject is refused as a create), and the
    session stays as it was."""
    edit = (
        "Specified user account has insufficient edit privileges for experiments in this project."
    )
    create = (
        "Specified user account has insufficient create privileges for experiments in this project."
    )
    for method, path, refused in (
        ("DELETE", SESSION, edit),
        ("PUT", SESSION + "?note=changed", create),
        ("DELETE", SESSION + "/scans/1", edit),
        ("PUT", SESSION + "/scans/1?quality=unusable", edit),
    ):
        response = reader.request(method, path)
        assert response.status_code == 403, (method, path)
        assert h3(response) == refused, (method, path)
    scans = svc.json_rows(SESSION + "/scans")
    assert [(s["ID"], s["quality"]) for s in scans] == [("1", "usable"), ("5", "usable")]


def test_resource_listings_name_the_scan_or_session_in_cat_id(svc, archived):
    """`XNATTemplate` (XW `restlet/resources/files/XNATTemplate.java` l.488, l.602): a scan's
    resources carry the scan ID in `cat_id`, a session's own resources the experiment ID."""
    svc.put(SESSION + "/resources/notes")
    experiment_id = svc.json_rows("/data/experiments", label="E1_MR1")[0]["ID"]
    [notes] = svc.json_rows(SESSION + "/resources")
    assert (notes["label"], notes["category"], notes["cat_id"]) == (
        "notes",
        "resources",
        experiment_id,
    )
    [dicom] = svc.json_rows(SESSION + "/scans/5/resources")
    assert (dicom["label"], dicom["category"], dicom["cat_id"]) == ("DICOM", "scans", "5")
