"""`POST /data/services/archive` and the merge/conflict rules over raw HTTP (§5, §3.5 matrix)."""

from __future__ import annotations

import re

ARCHIVED = "/data/archive/projects/SPN01/subjects/{}/experiments/{}"


def h3(response) -> str:
    return re.search(r"<h3>(.*)</h3>", response.text, re.S).group(1)


def prearchive(svc, files, dicom, prefix="series/", **params) -> str:
    response = svc.import_zip(
        dicom.zip(files, prefix=prefix), project="SPN01", dest="/prearchive", **params
    )
    assert response.status_code == 200, response.text
    return response.text.strip()


def test_archive_success_is_200_uri_list_and_cleans_the_prearchive(sandbox, svc, dicom):
    files = dicom.files(count=3)
    src = prearchive(svc, files, dicom, subject="A1", session="A1_MR1")
    response = svc.post("/data/services/archive", data={"src": src}, allow_redirects=False)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/uri-list"
    assert response.text == ARCHIVED.format("A1", "A1_MR1") + "\r\n"
    assert svc.json_rows("/data/prearchive") == []
    assert not any((sandbox.data / "prearchive").iterdir())
    folder = sandbox.data / "archive/SPN01/arc001/A1_MR1/SCANS/1/DICOM"
    # stored under the whole zip entry path, `series/x` → `series_x` (GradualDicomImporter)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"series_{p.name}" for p in files)


def test_subject_and_label_params_are_cleaned(svc, dicom):
    src = prearchive(svc, dicom.files(count=1), dicom, session="X")
    response = svc.post(
        "/data/services/archive", data={"src": src, "subject": "Sub 1", "session": "Sess.1"}
    )
    assert response.text.strip() == ARCHIVED.format("Sub_1", "Sess_1")


def test_redirect_true_is_303_with_location(svc, dicom):
    src = prearchive(svc, dicom.files(count=1), dicom, subject="A2", session="A2_MR1")
    response = svc.post(
        "/data/services/archive", data={"src": src, "redirect": "true"}, allow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["Location"] == svc.base + ARCHIVED.format("A2", "A2_MR1")


def test_archive_errors(svc, dicom):
    unknown = svc.post("/data/services/archive")
    assert (unknown.status_code, h3(unknown)) == (404, "Unknown prearchive session.")
    missing = svc.post("/data/services/archive", data={"src": "/prearchive/projects/SPN01/1/x"})
    assert missing.status_code == 404
    wrong_src = svc.post("/data/services/archive", data={"src": "/archive/projects/SPN01"})
    assert wrong_src.status_code == 400
    unassigned = svc.import_zip(dicom.zip(dicom.files(count=1)), project="NOPE").text.strip()
    refused = svc.post("/data/services/archive", data={"src": unassigned})
    assert refused.status_code == 400
    assert h3(refused) == "Cannot archive sessions from the Unassigned folder."


def test_dest_project_mismatch_is_400(svc, dicom):
    src = prearchive(svc, dicom.files(count=1), dicom, session="A3")
    response = svc.post(
        "/data/services/archive", data={"src": src, "dest": "/archive/projects/SPN02"}
    )
    assert response.status_code == 400
    assert h3(response).startswith("Project mismatch: source and destination")


def test_read_only_user_cannot_archive(svc, reader, dicom):
    src = prearchive(svc, dicom.files(count=1), dicom, session="A4")
    response = reader.post("/data/services/archive", data={"src": src})
    assert (response.status_code, h3(response)) == (403, "Invalid permissions for new project.")


def test_duplicate_files_conflict_500_and_row_conflict(svc, dicom):
    """Re-archiving the same files into an existing session: merge is allowed by the archive
    service, but duplicate files are not (unless overwrite_files or overwrite=delete)."""
    files = dicom.files(count=2)
    svc.post(
        "/data/services/archive",
        data={"src": prearchive(svc, files, dicom, subject="D1", session="D1_MR1")},
    )
    again = prearchive(svc, files, dicom, subject="D1", session="D1_MR1")
    refused = svc.post("/data/services/archive", data={"src": again})
    assert refused.status_code == 500
    folder = again.rsplit("/", 1)[1]
    assert h3(refused) == (
        f"FAILED: Unable to archive {folder}: Operation Failed: Duplicate DICOM file uploaded."
    )
    assert svc.json_rows(again)[0]["status"] == "CONFLICT"
    ok = svc.post("/data/services/archive", data={"src": again, "overwrite_files": "true"})
    assert ok.status_code == 200, ok.text


def test_an_archived_instance_under_another_name_conflicts_unless_overwrite(sandbox, svc, dicom):
    """MergeSessionsA.checkForConflict → SessionOverwriteCheck: an incoming instance whose UID
    the destination scan already catalogues refuses the merge, whatever its file name; new
    instances beside it change nothing about that. overwrite=append overrides it."""
    files = dicom.files(count=3)
    first = prearchive(svc, files[:2], dicom, subject="D5", session="D5_MR1")
    assert svc.post("/data/services/archive", data={"src": first}).status_code == 200
    again = prearchive(svc, files[1:], dicom, subject="D5", session="D5_MR1", prefix="renamed/")
    refused = svc.post("/data/services/archive", data={"src": again})
    assert refused.status_code == 500
    folder = again.rsplit("/", 1)[1]
    assert h3(refused) == (
        f"FAILED: Unable to archive {folder}: Operation Failed: Session already exists with the "
        "same resources."
    )
    [experiment] = sandbox.state()["archive"]
    assert experiment["files"] == 2
    ok = svc.post("/data/services/archive", data={"src": again, "overwrite": "append"})
    assert ok.status_code == 200, ok.text


def test_disjoint_files_of_the_same_scan_are_merged(sandbox, svc, dicom):
    files = dicom.files(count=4)
    for part in (files[:2], files[2:]):
        src = prearchive(svc, part, dicom, subject="D2", session="D2_MR1")
        assert svc.post("/data/services/archive", data={"src": src}).status_code == 200
    [experiment] = sandbox.state()["archive"]
    assert (experiment["scans"], experiment["files"]) == (1, 4)


def test_different_subject_conflicts(svc, dicom):
    files = dicom.files(count=2)
    svc.post(
        "/data/services/archive",
        data={"src": prearchive(svc, files[:1], dicom, subject="D3", session="D3_MR1")},
    )
    other = prearchive(svc, files[1:], dicom, subject="D4", session="D3_MR1")
    response = svc.post("/data/services/archive", data={"src": other})
    assert response.status_code == 500
    assert h3(response).endswith(
        "Invalid modification of session subject via archive process.: D3_MR1 Already Exists "
        "for another Subject"
    )


def test_subject_match_is_case_insensitive(svc, dicom):
    files = dicom.files(count=2)
    svc.post(
        "/data/services/archive",
        data={"src": prearchive(svc, files[:1], dicom, subject="D5", session="D5_MR1")},
    )
    src = prearchive(svc, files[1:], dicom, subject="d5", session="D5_MR1")
    response = svc.post("/data/services/archive", data={"src": src})
    assert response.text.strip() == ARCHIVED.format("D5", "D5_MR1")


def test_different_study_uid_conflicts_unless_overwrite(svc, dicom):
    svc.post(
        "/data/services/archive",
        data={
            "src": prearchive(
                svc, dicom.study(dicom.files(count=1)), dicom, subject="D6", session="D6_MR1"
            )
        },
    )
    other = prearchive(svc, dicom.study(dicom.files("5", 1)), dicom, subject="D6", session="D6_MR1")
    refused = svc.post("/data/services/archive", data={"src": other})
    assert h3(refused).endswith("Invalid modification of session UID via archive process.")
    ok = svc.post("/data/services/archive", data={"src": other, "overwrite": "append"})
    assert ok.status_code == 200, ok.text


def test_different_modality_conflicts(svc, dicom):
    svc.post(
        "/data/services/archive",
        data={"src": prearchive(svc, dicom.files(count=1), dicom, subject="D7", session="D7_MR1")},
    )
    ct = dicom.study(dicom.files("5", 1), Modality="CT")
    src = prearchive(svc, ct, dicom, subject="D7", session="D7_MR1")
    response = svc.post("/data/services/archive", data={"src": src, "overwrite": "append"})
    assert response.status_code == 500
    assert h3(response).endswith(
        "Invalid modification of session modality via archive process.  Data may require a "
        "manual merge."
    )


def test_dicom_zip_archive_matrix(svc, dicom):
    """RT's import matrix with dest=/archive/.../experiments/E (§5.3)."""
    files = dicom.files(count=3)
    dest = "/archive/projects/SPN01/subjects/M1/experiments/M1_MR1"

    def send(part, **params):
        return svc.import_zip(dicom.zip(part), dest=dest, **params)

    assert send(files[:2]).status_code == 200
    again = send(files[:2])
    assert again.status_code == 400
    assert h3(again) == "unable to archive for the Prearchive session"
    assert [r["status"] for r in svc.json_rows("/data/prearchive")] == ["CONFLICT"]
    assert send(files[:2], overwrite="append").status_code == 400  # still duplicate files
    assert send(files[:2], overwrite="append", overwrite_files="true").status_code == 200
    assert send(files[2:], overwrite="append").status_code == 200  # disjoint: merged
    assert send(files[1:], overwrite="delete").status_code == 200
    assert svc.json_rows("/data/prearchive") == []  # each retry reopened the CONFLICT row
    listing = svc.json_rows("/data/archive/projects/SPN01/experiments/M1_MR1/scans/ALL/files")
    assert len(listing) == 3


def test_same_series_number_with_new_uid_is_archived_as_n_mr1(svc, dicom):
    first = dicom.files(count=1)
    svc.import_zip(dicom.zip(first), dest="/archive/projects/SPN01/subjects/M2/experiments/M2")
    twin = [dicom.rewrite(dicom.files(count=2)[1], SeriesInstanceUID="1.2.3.4.5.99")]
    response = svc.import_zip(
        dicom.zip(twin),
        overwrite="append",
        dest="/archive/projects/SPN01/subjects/M2/experiments/M2",
    )
    assert response.status_code == 200, response.text
    scans = svc.json_rows("/data/projects/SPN01/experiments/M2/scans")
    assert sorted(s["ID"] for s in scans) == ["1", "1-MR1"]


def test_slow_archive_beyond_the_timeout_is_500(sandbox, svc, dicom):
    sandbox.settings.archive_timeout = 0.2
    sandbox.slow_archive(0.5)
    src = prearchive(svc, dicom.files(count=1), dicom, subject="T1", session="T1_MR1")
    response = svc.post("/data/services/archive", data={"src": src})
    assert response.status_code == 500
    assert "did not complete within the configured timeout interval" in h3(response)
    assert [e["label"] for e in sandbox.state()["archive"]] == ["T1_MR1"]  # it finished anyway
