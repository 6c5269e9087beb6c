"""`GET …/resources/{label|ID}`: the catalog document of a resource, over real HTTP.

XNAT's `CatalogResource.represent` writes the resource's catalog bean itself: for a scan's DICOM
resource a `cat:DCMCatalog` with one `cat:dcmEntry` per file carrying its SOPInstanceUID and
InstanceNumber, for anything else a `cat:Catalog` of plain entries. The prearchive has no such
per-scan document. Data: the GE localizer series of `ge_signa_premier_table` (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import io
import re
import xml.etree.ElementTree as ET

import pydicom
import pytest

NS = {"cat": "http://nrg.wustl.edu/catalog", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
EXPERIMENT = "/data/projects/SPN01/subjects/C01/experiments/C01_MR1"


def h3(response) -> str:
    return re.search(r"<h3>(.*)</h3>", response.text, re.S).group(1)


@pytest.fixture
def session(svc, dicom):
    """C01_MR1 archived: 3 files of series 1 and 2 of series 5, sent as the scanner wrote them."""
    files = dicom.files("1", count=3) + dicom.files("5", count=2)
    response = svc.import_zip(
        dicom.zip(files),
        project="SPN01",
        subject="C01",
        session="C01_MR1",
        dest="/archive/projects/SPN01",
        prevent_anon="true",
    )
    assert response.status_code == 200, response.text
    return files


def headers_of(paths) -> dict[str, pydicom.Dataset]:
    out = {}
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(header.SOPInstanceUID)] = header
    return out


def test_scan_catalog_lists_every_sop_instance_uid_with_its_instance_number(svc, session):
    expected = headers_of(session[:3])
    response = svc.get(EXPERIMENT + "/scans/1/resources/DICOM")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://nrg.wustl.edu/catalog}DCMCatalog"
    assert root.get("UID") == str(next(iter(expected.values())).SeriesInstanceUID)
    project = root.find("cat:metaFields/cat:metaField[@name='PROJECT']", NS)
    assert project is not None and project.text == "SPN01"
    entries = root.findall("cat:entries/cat:entry", NS)
    assert {e.get("UID") for e in entries} == set(expected)
    for entry in entries:
        assert entry.get(XSI_TYPE) == "cat:dcmEntry"
        assert entry.get("format") == "DICOM"
        assert entry.get("ID") == entry.get("URI")
        assert entry.get("instanceNumber") == str(expected[entry.get("UID")].InstanceNumber)
    numbers = [int(e.get("instanceNumber")) for e in entries]
    assert numbers == sorted(numbers)


def test_catalog_uri_and_digest_point_at_the_stored_file(svc, session):
    root = ET.fromstring(svc.get(EXPERIMENT + "/scans/5/resources/DICOM").content)
    entries = root.findall("cat:entries/cat:entry", NS)
    assert len(entries) == 2
    for entry in entries:
        data = svc.get(EXPERIMENT + "/scans/5/resources/DICOM/files/" + entry.get("URI")).content
        assert hashlib.md5(data).hexdigest() == entry.get("digest")
        stored = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        assert str(stored.SOPInstanceUID) == entry.get("UID")


@pytest.mark.parametrize(
    "form",
    [
        "/data/archive/projects/SPN01/subjects/C01/experiments/C01_MR1/scans/1/resources/DICOM",
        "/data/projects/SPN01/experiments/C01_MR1/scans/1/resources/DICOM",
        "/REST/experiments/{id}/scans/1/resources/DICOM",
        "/data/experiments/{id}/scans/1/resources/{resource}",
        "/data/experiments/{id}/scans/1/resources/DICOM?format=json",
    ],
)
def test_every_archive_uri_form_and_the_resource_id_give_the_same_document(svc, session, form):
    """Label or numeric ID, any archive URI form; `format` does not change the answer
    (`CatalogResource` offers only TEXT_XML)."""
    experiment = svc.json_rows("/data/projects/SPN01/experiments")[0]["ID"]
    resource = svc.json_rows(f"/data/experiments/{experiment}/scans/1/resources")[0]
    reference = svc.get(EXPERIMENT + "/scans/1/resources/DICOM").content
    url = form.format(id=experiment, resource=resource["xnat_abstractresource_id"])
    response = svc.get(url)
    assert response.status_code == 200
    assert response.content == reference


def test_other_resources_are_plain_catalogs(svc, session):
    target = EXPERIMENT + "/resources/behav/files/run1/events.tsv"
    body = b"onset\tduration\n0\t1\n"
    assert svc.put(target, data=body, params={"format": "TSV", "content": "behav"}).ok
    response = svc.get(EXPERIMENT + "/resources/behav")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://nrg.wustl.edu/catalog}Catalog"
    assert root.get("UID") is None
    [entry] = root.findall("cat:entries/cat:entry", NS)
    assert entry.get(XSI_TYPE) is None
    assert entry.get("URI") == entry.get("ID") == "run1/events.tsv"
    assert entry.get("name") == "events.tsv"
    assert entry.get("digest") == hashlib.md5(body).hexdigest()
    size = entry.find("cat:metaFields/cat:metaField[@name='SIZE']", NS)
    assert size is not None and size.text == str(len(body))


def test_unknown_resource_is_404(svc, session):
    response = svc.get(EXPERIMENT + "/scans/1/resources/NIFTI")
    assert (response.status_code, h3(response)) == (404, "Unable to find the specified catalog.")


def test_prearchive_has_no_per_scan_catalog(svc, dicom):
    """`…/scans/{id}/resources/{R}` falls on `PrearcScanResourceList` (Restlet prefix routing);
    `…/{session}/resources/{R}` (`PrearcSessionResourceCatalog`) serves only zips."""
    response = svc.import_zip(
        dicom.zip(dicom.files("1", count=2)),
        project="SPN01",
        subject="C02",
        session="C02_MR1",
        dest="/prearchive/projects/SPN01",
    )
    session = response.text.strip()
    rows = svc.json_rows(session + "/scans/1/resources/DICOM")
    assert rows == [{"label": "DICOM", "file_count": "2", "file_size": rows[0]["file_size"]}]
    refused = svc.get(session + "/resources/DICOM", params={"format": "json"})
    assert refused.status_code == 400
    assert h3(refused) == "Requested type application/json is not supported"


def test_a_request_for_one_scan_reads_only_that_scans_row(svc, sandbox, session):
    """XNAT looks up the one scan a catalog or file request names. The sandbox did read every
    scan of the session for each, so a read-back of a session of N scans (a catalog and a file
    per scan) cost N² rows and made the read-back of large sessions slow on the server side."""
    statements: list[str] = []
    sandbox.store._db.set_trace_callback(statements.append)
    try:
        assert svc.get(EXPERIMENT + "/scans/5/resources/DICOM").status_code == 200
        assert svc.get(EXPERIMENT + "/scans/ALL/files?format=json").status_code == 200
    finally:
        sandbox.store._db.set_trace_callback(None)
    scan_queries = [s for s in statements if "FROM scans" in s]
    assert any("scan_id = '5'" in s for s in scan_queries), scan_queries
    whole = [s for s in scan_queries if "scan_id" not in s]
    assert len(whole) == 1, scan_queries  # only the ALL listing reads every scan
