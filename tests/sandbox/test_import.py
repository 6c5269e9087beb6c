"""`POST /data/services/import` over raw HTTP: the body rules of §3.1, handlers, routing and
grouping (§3.4, §6), dest variants and the error contract (§3.5) of reference/xnat-rest.md."""

from __future__ import annotations

import re

import pydicom
import pytest

ERROR = re.compile(r"<h3>(.*)</h3>", re.S)
PREARC = re.compile(r"^/data/prearchive/projects/(\w+)/(\d{8}_\d{9})/([\w-]+)\r\n$")


def message(response) -> str:
    """The message Restlet puts in `<h3>`, as the Desktop Client scrapes it."""
    assert response.headers["Content-Type"].startswith("text/html")
    match = ERROR.search(response.text)
    assert match, response.text
    return match.group(1)


def test_zip_to_prearchive_answers_one_crlf_uri_and_stores_real_files(sandbox, svc, dicom):
    files = dicom.files("1") + dicom.files("5")
    response = svc.import_zip(
        dicom.zip(files),
        project="SPN01",
        subject="S01",
        session="S01_MR1",
        dest="/prearchive/projects/SPN01",
        prevent_anon="true",  # stored as sent: the site script would rewrite every header
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/uri-list"
    project, timestamp, folder = PREARC.match(response.text).groups()
    assert (project, folder) == ("SPN01", "S01_MR1")
    for scan, sources in (("1", files[:3]), ("5", files[3:])):
        stored = sandbox.data / "prearchive/SPN01" / timestamp / folder / "SCANS" / scan / "DICOM"
        names = [f"series_{p.name}" for p in sources]  # the whole entry path, `/` → `_`
        assert sorted(p.name for p in stored.iterdir()) == sorted(names)
        assert {dicom.md5(stored / n) for n in names} == {dicom.md5(p) for p in sources}
    row = svc.json_rows("/data/prearchive/projects/SPN01")[0]
    assert row["status"] == "READY"  # dest given: built at once, not archived


@pytest.mark.parametrize(
    ("content_type", "status", "text"),
    [
        ("application/octet-stream", 400, "Unsupported format UNKNOWN"),  # "upload"
        ("application/x-gzip", 400, "Unsupported format UNKNOWN"),  # "upload.gzip"
        ("image/png", 400, "Unsupported format UNKNOWN"),  # "upload.png": a known upload type
        ("application/x-zip-compressed", 400, "Unable to identify upload format."),
        ("application/gzip", 400, "Unable to identify upload format."),
        ("text/html", 400, "Unable to identify upload format."),
    ],
)
def test_content_type_decides_the_upload_name_and_format(svc, dicom, content_type, status, text):
    """RequestUtil.supported_upload_types: a type in it names the upload ("upload" + suffix),
    which then decides the format; a type outside it is no upload at all."""
    response = svc.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "SPN01"},
        data=dicom.zip(dicom.files(count=1)),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == status
    assert message(response) == text
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []


def test_no_upload_and_no_handler_is_restlets_500(svc, dicom):
    """Importer.handlePost takes `fw.get(0)` when no handler is named: nothing catches the
    IndexOutOfBoundsException, so Restlet answers 500."""
    response = svc.post(
        "/data/services/import",
        params={"project": "SPN01"},
        data=dicom.zip(dicom.files(count=1)),
        headers={"Content-Type": "application/x-zip-compressed"},
    )
    assert response.status_code == 500


def test_multipart_upload_uses_the_part_file_name(svc, dicom):
    response = svc.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip"},
        data={"project": "SPN01", "subject": "S02", "session": "S02_MR1"},
        files={"file": ("upload.zip", dicom.zip(dicom.files(count=2)), "application/zip")},
    )
    assert response.status_code == 200, response.text
    assert response.text.startswith("/data/prearchive/projects/SPN01/")
    assert response.text.endswith("/S02_MR1\r\n")


def test_multipart_errors(svc, dicom):
    data = dicom.zip(dicom.files(count=1))
    unnamed = svc.post(
        "/data/services/import",
        files={"file": ("", data, "application/zip")},
    )
    assert unnamed.status_code == 400
    two = svc.post(
        "/data/services/import",
        files={"a": ("a.zip", data, "application/zip"), "b": ("b.zip", data, "application/zip")},
    )
    assert two.status_code == 400
    assert message(two) == "Importer is limited to one uploaded resource at a time."
    inbody = svc.post(
        "/data/services/import?inbody=true",
        files={"file": ("a.zip", data, "application/zip")},
    )
    assert inbody.status_code == 406
    assert message(inbody).startswith("In-body File posts must include the file directly")


def test_unknown_handler_is_404(svc, dicom):
    response = svc.import_zip(dicom.zip(dicom.files(count=1)), **{"import-handler": "FOO"})
    assert response.status_code == 404
    assert message(response) == "Unknown importer implementation specified: FOO"


def test_unparsable_entry_is_400_and_keeps_the_entries_before_it(svc, dicom):
    good = dicom.files(count=2)
    data = dicom.zip(good, extra=[("series/notes.txt", b"not a DICOM file\n")])
    response = svc.import_zip(data, project="SPN01", subject="S03", session="S03_MR1")
    assert response.status_code == 400
    assert message(response) == "unable to read DICOM object series/notes.txt"
    uri = svc.json_rows("/data/prearchive/projects/SPN01")[0]["url"]
    files = svc.json_rows(f"/data{uri}/scans/1/resources/DICOM/files")
    assert sorted(f["Name"] for f in files) == sorted(f"series_{p.name}" for p in good)


def test_ignore_unparsable_skips_non_dicom_entries(svc, dicom):
    data = dicom.zip(dicom.files(count=2), extra=[("series/notes.txt", b"text\n")])
    response = svc.import_zip(data, project="SPN01", **{"Ignore-Unparsable": "true"})
    assert response.status_code == 200, response.text
    only_text = dicom.zip([], extra=[("notes.txt", b"text\n")])
    refused = svc.import_zip(only_text, project="SPN01", **{"Ignore-Unparsable": "true"})
    assert refused.status_code == 400
    assert message(refused) == "unable to read DICOM object notes.txt"


def test_unknown_or_unwritable_project_lands_in_unassigned_with_200(svc, reader, dicom):
    """Pitfall 17: a wrong project is not an error; the data goes to Unassigned."""
    data = dicom.zip(dicom.files(count=1))
    wrong = svc.import_zip(data, project="NOPE", subject="S04", session="S04_MR1")
    assert wrong.status_code == 200
    assert wrong.text.startswith("/data/prearchive/projects/Unassigned/")
    read_only = reader.import_zip(data, project="SPN01", subject="S05", session="S05_MR1")
    assert read_only.status_code == 200
    assert read_only.text.startswith("/data/prearchive/projects/Unassigned/")


def test_project_subject_session_from_dicom_comments(svc, dicom):
    """§6.1: `Project:`/`Subject:`/`Session:` in PatientComments route the file."""
    files = dicom.study(
        dicom.files(count=1), PatientComments="Project: SPN02; Subject: SUBJ9, Session: SUBJ9_MR"
    )
    response = svc.import_zip(dicom.zip(files))
    assert response.status_code == 200
    row = svc.json_rows("/data/prearchive/projects/SPN02")[0]
    assert (row["subject"], row["name"]) == ("SUBJ9", "SUBJ9_MR")


def test_labels_default_to_patient_fields_with_label_chars(svc, dicom):
    files = dicom.study(dicom.files(count=1), PatientName="DOE^JOHN", PatientID="ID 7.1")
    assert svc.import_zip(dicom.zip(files), project="SPN01").status_code == 200
    row = svc.json_rows("/data/prearchive/projects/SPN01")[0]
    assert (row["subject"], row["name"], row["folderName"]) == ("DOE_JOHN", "ID_7_1", "ID_7_1")


def test_grouping_by_study_and_label(svc, dicom):
    """Two studies in one zip with the same explicit label → two URIs, two sessions; a second
    upload of the same study joins its (reopened) session and answers the same URI."""
    first = dicom.study(dicom.files("1", 2))
    second = dicom.study(dicom.files("5", 2))
    response = svc.import_zip(
        dicom.zip(first + second), project="SPN01", subject="S6", session="S6_MR1"
    )
    uris = response.text.split("\r\n")[:-1]
    assert len(uris) == 2 and len(set(uris)) == 2
    rows = svc.json_rows("/data/prearchive/projects/SPN01")
    assert {r["name"] for r in rows} == {"S6_MR1"}
    assert len({r["tag"] for r in rows}) == 2
    again = svc.import_zip(
        dicom.zip(dicom.study(dicom.files("1", 1))), project="SPN01", subject="S7", session="S7_MR1"
    )
    more = svc.import_zip(dicom.zip(first[:1]), project="SPN01", subject="S6", session="S6_MR1")
    assert more.text == uris[0] + "\r\n"
    assert again.text not in uris


def test_reused_series_number_becomes_n_mr1(svc, dicom):
    files = dicom.study(dicom.files("1", 2))
    twin = [dicom.rewrite(files[0], SeriesInstanceUID="1.2.3.4.5.6.7", SOPInstanceUID="1.2.3.9")]
    response = svc.import_zip(dicom.zip(files), project="SPN01", session="S8_MR1")
    svc.import_zip(dicom.zip(twin, prefix="other/"), project="SPN01", session="S8_MR1")
    scans = svc.json_rows(response.text.strip() + "/scans")
    assert sorted(s["ID"] for s in scans) == ["1", "1-MR1"]


def test_scan_id_falls_back_to_the_series_uid(svc, dicom):
    files = [
        dicom.rewrite(dicom.files(count=1)[0], SeriesNumber=None, SeriesInstanceUID="1.2.840.99.1")
    ]
    response = svc.import_zip(dicom.zip(files), project="SPN01", session="S9")
    assert [s["ID"] for s in svc.json_rows(response.text.strip() + "/scans")] == ["1_2_840_99_1"]


def test_no_dest_leaves_the_session_receiving(svc, dicom):
    response = svc.import_zip(
        dicom.zip(dicom.files(count=1)), PROJECT_ID="SPN01", SUBJECT_ID="S10", EXPT_LABEL="S10_MR1"
    )
    assert response.status_code == 200
    row = svc.json_rows("/data/prearchive/projects/SPN01")[0]
    assert (row["status"], row["subject"], row["name"]) == ("RECEIVING", "S10", "S10_MR1")
    assert svc.get(response.text.strip()).status_code == 404  # no session document yet


def test_dest_archive_archives_synchronously(sandbox, svc, dicom):
    files = dicom.files(count=3)
    response = svc.import_zip(
        dicom.zip(files), dest="/archive/projects/SPN01/subjects/S11/experiments/S11_MR1"
    )
    assert response.status_code == 200, response.text
    assert response.text == "/data/archive/projects/SPN01/subjects/S11/experiments/S11_MR1\r\n"
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []
    assert [s["files"] for s in sandbox.state()["archive"]] == [3]


def test_dest_archive_for_unassigned_is_400_and_keeps_the_row(svc, dicom):
    response = svc.import_zip(dicom.zip(dicom.files(count=1)), dest="/archive", project="NOPE")
    assert response.status_code == 400
    assert message(response) == "unable to archive for the Prearchive session"
    rows = svc.json_rows("/data/prearchive/projects/Unassigned")
    assert [r["status"] for r in rows] == ["ERROR"]


def test_bad_dest_is_400(svc, dicom):
    response = svc.import_zip(dicom.zip(dicom.files(count=1)), dest="/elsewhere")
    assert response.status_code == 400
    assert message(response) == "Parameter dest format error"


def test_dest_with_timestamp_and_folder_names_the_session(svc, dicom):
    response = svc.import_zip(
        dicom.zip(dicom.files(count=1)), dest="/prearchive/projects/SPN01/20240101_120000000/F1"
    )
    assert response.text == "/data/prearchive/projects/SPN01/20240101_120000000/F1\r\n"


def test_gradual_dicom_is_chosen_for_application_dicom_and_ignores_lowercase_params(svc, dicom):
    source = dicom.files(count=1)[0]
    response = svc.post(
        "/data/services/import",
        params={
            "PROJECT_ID": "SPN01",
            "SUBJECT_ID": "S12",
            "EXPT_LABEL": "S12_MR1",
            "session": "ignored",
        },
        data=source.read_bytes(),
        headers={"Content-Type": "application/dicom"},
    )
    assert response.status_code == 200, response.text
    assert response.text.endswith("/S12_MR1\r\n")
    row = svc.json_rows("/data/prearchive/projects/SPN01")[0]
    assert row["status"] == "RECEIVING"
    lowercase = svc.post(
        "/data/services/import",
        params={"project": "SPN01", "import-handler": "gradual-DICOM"},
        data=source.read_bytes(),
        headers={"Content-Type": "application/dicom"},
    )
    assert lowercase.text.startswith("/data/prearchive/projects/Unassigned/")


def test_format_txt_with_one_uri_is_plain_text(svc, dicom):
    response = svc.import_zip(dicom.zip(dicom.files(count=1)), project="SPN01", format="txt")
    assert response.headers["Content-Type"].startswith("text/plain")
    assert not response.text.endswith("\r\n")


def test_import_is_post_only(svc):
    assert svc.get("/data/services/import").status_code == 405


def test_a_header_larger_than_the_first_read_is_parsed(svc, dicom):
    """A 300 kB private element before (0020,0011) makes the parser read past its first 64 KiB."""
    [source] = dicom.files(count=1)
    big = dicom.rewrite(source)
    data = pydicom.dcmread(big)
    data.private_block(0x0009, "XNATDROP TEST", create=True).add_new(0x10, "OB", b"\0" * 300_000)
    data.save_as(big)
    response = svc.import_zip(dicom.zip([big]), project="SPN01", session="BIG", prevent_anon="true")
    assert response.status_code == 200, response.text
    assert [s["ID"] for s in svc.json_rows(response.text.strip() + "/scans")] == ["1"]
    [row] = svc.json_rows(response.text.strip() + "/scans/1/resources/DICOM/files")
    assert row["Size"] == str(big.stat().st_size)
