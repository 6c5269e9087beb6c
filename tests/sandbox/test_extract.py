"""What XNAT stores from an upload, name by name, over real HTTP.

A DICOM-zip entry is stored under its whole entry path made file-name safe
(`GradualDicomImporter.getSafeFile` → `Files.toFileNameChars`, `[^\\w.-]` → `_`), and an
extracted resource archive's `*_catalog.xml` is written to disk but never catalogued
(`CatalogUtils.XNAT_CATALOGABLE_FILE_FILTER`), so no listing shows it. Data: the GE localizer
series of `ge_signa_premier_table` (tests/conftest.py).
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zipfile

EXPERIMENT = "/data/projects/SPN01/subjects/X01/experiments/X01_MR1"
CAT = {"cat": "http://nrg.wustl.edu/catalog"}


def test_dicom_file_names_come_from_the_whole_entry_path(sandbox, svc, dicom):
    first, second = dicom.files("1", count=2)
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(first, "t1_mpr/00000070.dcm")
        archive.write(second, "my series/IM 1+2.dcm")
    response = svc.import_zip(
        bundle.getvalue(),
        project="SPN01",
        subject="X01",
        session="X01_MR1",
        dest="/prearchive/projects/SPN01",
    )
    assert response.status_code == 200, response.text
    listing = svc.json_rows(response.text.strip() + "/scans/1/resources/DICOM/files")
    assert sorted(r["Name"] for r in listing) == ["my_series_IM_1_2.dcm", "t1_mpr_00000070.dcm"]
    assert svc.post("/data/services/archive", data={"src": response.text.strip()}).ok
    catalog = ET.fromstring(svc.get(EXPERIMENT + "/scans/1/resources/DICOM").content)
    uris = sorted(e.get("URI") for e in catalog.findall("cat:entries/cat:entry", CAT))
    assert uris == ["my_series_IM_1_2.dcm", "t1_mpr_00000070.dcm"]
    folder = sandbox.data / "archive/SPN01/arc001/X01_MR1/SCANS/1/DICOM"
    assert sorted(p.name for p in folder.iterdir()) == uris


def test_an_extracted_catalog_xml_is_stored_but_never_listed(sandbox, svc):
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("run1/events.tsv", "onset\tduration\n0\t1\n")
        archive.writestr("run1/behav_catalog.xml", "<cat:Catalog/>\n")
    session = "/data/projects/SPN01/subjects/X02/experiments/X02"
    assert svc.put(session, params={"xsiType": "xnat:mrSessionData"}).status_code == 201
    target = session + "/resources/behav/files/behav.zip"
    assert svc.put(target, params={"extract": "true"}, data=bundle.getvalue()).ok
    rows = svc.json_rows(session + "/resources/behav/files")
    assert [r["Name"] for r in rows] == ["events.tsv"]
    [resource] = svc.json_rows(session + "/resources")
    assert resource["file_count"] == "1"
    catalog = ET.fromstring(svc.get(session + "/resources/behav").content)
    assert [e.get("URI") for e in catalog.findall("cat:entries/cat:entry", CAT)] == [
        "run1/events.tsv"
    ]
    stored = sandbox.data / "archive/SPN01/arc001/X02/RESOURCES/behav/run1/behav_catalog.xml"
    assert stored.read_text() == "<cat:Catalog/>\n"
    again = svc.put(target, params={"extract": "true"}, data=bundle.getvalue())
    assert sorted(again.json()["duplicates"]) == ["run1/behav_catalog.xml", "run1/events.tsv"]


def test_a_name_taken_earlier_in_the_same_import_gets_the_namer_even_after_a_commit(svc, dicom):
    """Two instances whose entry paths become the same safe name: the second is stored under
    the namer's name (`GradualDicomImporter.getSafeFile` finds the name taken by another
    SOPInstanceUID), also when the first was committed many entries before (the importer
    records files in batches, and skips the database for names it never stored)."""
    first, second = dicom.files("1", count=2)
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(first, "a b/x.dcm")
        for k in range(300):  # more than one commit batch between the two
            archive.write(first, f"filler/{k}.dcm")
        archive.write(second, "a_b/x.dcm")
    response = svc.import_zip(
        bundle.getvalue(), project="SPN01", subject="X01", session="X01_MR1",
        dest="/prearchive/projects/SPN01",
    )  # fmt: skip
    assert response.status_code == 200, response.text
    names = {
        r["Name"] for r in svc.json_rows(response.text.strip() + "/scans/1/resources/DICOM/files")
    }
    assert len(names) == 302
    assert "a_b_x.dcm" in names
    [renamed] = names - {"a_b_x.dcm"} - {f"filler_{k}.dcm" for k in range(300)}
    assert renamed.endswith(".dcm") and renamed.count("-") >= 3  # Study-Series-Instance-hash
