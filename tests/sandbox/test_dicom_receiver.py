"""The sandbox's DICOM receiver (XNAT's DicomSCP, reference §9) with pynetdicom as the sender.

Two whole real series (GE 3-Plane Localizers, 21 instances each) go in by C-STORE; the
prearchive session they make is read back over REST the way xnatdrop reads it. The receiver is
started by the `sandbox` fixture's `dicom_port=0` (a free port, `sandbox.dicom_port`).
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification

from conftest import Client, Dicom
from xnat_sandbox.dicom_receiver import Receiver

pytestmark = pytest.mark.sandbox(dicom_port=0)

PREARC = "/data/prearchive/projects/SPN01"
ROUTE = "Project: SPN01 Subject: S01 Session: S01_MR1"
TEXT = {"Content-Type": "text/plain"}


def associate(sandbox, called: str = "XNAT", calling: str = "XNATDROP") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    return ae.associate("127.0.0.1", sandbox.dicom_port, ae_title=called)


def send(sandbox, files: list[Path], **kwargs: str) -> list[int]:
    """C-STORE each file over one association; the statuses, in order."""
    assoc = associate(sandbox, **kwargs)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


@pytest.fixture
def two_series(dicom) -> list[Path]:
    """Series 1 and 5 of one study, whole, routed by PatientComments to SPN01/S01/S01_MR1."""
    return dicom.study(
        dicom.files("1", count=21) + dicom.files("5", count=21), PatientComments=ROUTE
    )


def prearchived(svc, project_path: str = PREARC) -> Iterator[tuple[str, pydicom.Dataset]]:
    """(scan ID, header) of every file of the one session under `project_path`."""
    [row] = svc.json_rows(project_path)
    for scan in svc.json_rows("/data" + row["url"] + "/scans"):
        listing = f"/data{row['url']}/scans/{scan['ID']}/resources/DICOM/files"
        for entry in svc.json_rows(listing):
            data = svc.get(entry["URI"])
            assert data.status_code == 200
            yield scan["ID"], pydicom.dcmread(io.BytesIO(data.content), stop_before_pixels=True)


def uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_c_echo_is_answered(sandbox):
    assoc = associate(sandbox)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()


def test_two_series_become_one_session_receiving_then_ready_after_the_idle_time(
    sandbox, svc, two_series
):
    assert send(sandbox, two_series) == [0x0000] * 42
    [row] = svc.json_rows(PREARC)
    assert (row["subject"], row["name"], row["status"]) == ("S01", "S01_MR1", "RECEIVING")
    sandbox.tick(sandbox.settings.rebuild_idle - 1)
    assert svc.json_rows(PREARC)[0]["status"] == "RECEIVING"  # not idle long enough yet
    sandbox.tick(1)
    [row] = svc.json_rows(PREARC)
    assert row["status"] == "READY"
    files = list(prearchived(svc))
    assert sorted({scan for scan, _ in files}) == ["1", "5"]
    assert {str(h.SOPInstanceUID) for _, h in files} == uids(two_series)
    assert len(files) == 42


def test_the_site_script_is_applied_as_on_the_rest_path(sandbox, svc, two_series):
    """The stock script (on by default) writes project, subject and session into the header."""
    send(sandbox, two_series[:2])
    headers = [h for _, h in prearchived(svc)]
    assert {(str(h.PatientName), h.PatientID, h.StudyDescription) for h in headers} == {
        ("S01", "S01_MR1", "SPN01")
    }


def receivers(*given: Receiver) -> pytest.MarkDecorator:
    """Start the `sandbox` fixture with these receivers on a free DICOM port."""
    options = {"dicom_port": 0, "dicom_receivers": list(given)}
    return pytest.mark.parametrize("sandbox", [options], indirect=True)


@receivers(Receiver(anonymization=False))
def test_a_receiver_without_anonymisation_keeps_the_header(sandbox, svc, two_series):
    send(sandbox, two_series[:1])
    [(_, header)] = list(prearchived(svc))
    original = pydicom.dcmread(two_series[0], stop_before_pixels=True)
    assert str(header.PatientName) == str(original.PatientName)


def test_without_routing_fields_the_instance_lands_in_unassigned(sandbox, svc, dicom):
    files = dicom.study(dicom.files("1", count=2), StudyDescription="", AccessionNumber="")
    assert send(sandbox, files) == [0, 0]
    [row] = svc.json_rows("/data/prearchive/projects/Unassigned")
    assert row["status"] == "RECEIVING"
    assert svc.json_rows(PREARC) == []


@receivers(Receiver(), Receiver("SPN02RX", project="SPN02"))
def test_a_receiver_bound_to_a_project_files_there_whatever_the_header_says(
    sandbox, svc, two_series
):
    """A receiver whose identifier is a FixedDicomProjectIdentifier: AE title → project."""
    client = svc
    assert send(sandbox, two_series[:2], called="SPN02RX") == [0, 0]
    [row] = client.json_rows("/data/prearchive/projects/SPN02")
    assert (row["subject"], row["name"]) == ("S01", "S01_MR1")  # still from the comments
    assert client.json_rows(PREARC) == []
    assert send(sandbox, two_series[2:3], called="XNAT") == [0]  # the default one routes by §6
    assert len(client.json_rows(PREARC)) == 1


def test_an_unknown_calling_ae_title_is_accepted(sandbox):
    """XNAT's receivers accept any caller unless their whitelist is enabled."""
    assoc = associate(sandbox, calling="SOMEONE_ELSE")
    assert assoc.is_established
    assoc.release()


@receivers(Receiver(whitelist=("SCANNER@127.0.0.0/8", "10.1.2.3")))
def test_a_whitelist_refuses_other_callers(sandbox):
    refused = associate(sandbox, calling="XNATDROP")
    assert refused.is_rejected
    reply = refused.acceptor.primitive
    assert (reply.result, reply.result_source, reply.diagnostic) == (1, 1, 3)  # calling AE
    accepted = associate(sandbox, calling="SCANNER")
    assert accepted.is_established
    accepted.release()


def test_an_association_for_an_unknown_called_ae_title_is_refused(sandbox):
    assoc = associate(sandbox, called="NOT_XNAT")
    assert assoc.is_rejected
    reply = assoc.acceptor.primitive
    assert (reply.result, reply.result_source, reply.diagnostic) == (1, 1, 7)  # called AE


def test_an_instance_the_importer_cannot_take_is_refused_with_cannot_understand(
    sandbox, svc, two_series
):
    """GradualDicomImporter's ClientException → 0xC000 with its message (CStoreService)."""
    script = '(0020,0013) := "not a number"'  # a value the header cannot hold
    assert svc.put("/xapi/anonymize/site", data=script, headers=TEXT).status_code == 200
    assoc = associate(sandbox)
    status = assoc.send_c_store(pydicom.dcmread(two_series[0]))
    assoc.release()
    assert int(status.Status) == 0xC000
    assert status.ErrorComment == "unable to read DICOM object null"


def test_a_context_outside_xnats_list_is_refused(sandbox):
    """Deflated explicit VR little endian is not in DicomSCP.TSUIDS."""
    ae = AE(ae_title="XNATDROP")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1.99")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", sandbox.dicom_port, ae_title="XNAT")
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.rejected_contexts] == [MRImageStorage]
    assoc.release()


def test_receiver_stops_with_the_sandbox(sandbox_factory):
    sandbox = sandbox_factory(dicom_port=0)
    port = sandbox.dicom_port
    sandbox.stop()
    ae = AE(ae_title="XNATDROP")
    ae.add_requested_context(Verification)
    ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="XNAT")
    assert not assoc.is_established


def test_the_command_starts_the_receiver_with_dicom_port(tmp_path):
    """`xnatdrop sandbox --dicom-port 0 --dicom-ae XNAT --dicom-ae RX2:P1` prints where."""
    command = [
        *(sys.executable, "-m", "xnatdrop", "sandbox", "--port", "0"),
        *("--data", str(tmp_path / "cli"), "--user", "site:secret", "--project", "P1"),
        *("--dicom-port", "0", "--dicom-ae", "XNAT", "--dicom-ae", "RX2:P1"),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        url = process.stdout.readline().strip()
        line = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        match = re.fullmatch(r"DICOM receiver XNAT, RX2 on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        ae = AE(ae_title="XNATDROP")
        ae.add_requested_context(Verification)
        for title in ("XNAT", "RX2"):
            assoc = ae.associate("127.0.0.1", int(match.group(1)), ae_title=title)
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_the_command_refuses_a_bad_ae_title(tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, "-m", "xnatdrop", "sandbox", "--data", str(tmp_path)),
            *("--dicom-port", "0", "--dicom-ae", "A_TITLE_LONGER_THAN_16"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "1-16 printable characters" in result.stderr


def session_summary(client) -> dict[str, object]:
    """What a prearchive session is, as xnatdrop reads it: its row, scans, and per instance
    the header fields the site script writes."""
    [row] = client.json_rows(PREARC)
    scans = client.json_rows("/data" + row["url"] + "/scans")
    instances = {
        str(h.SOPInstanceUID): (scan, str(h.PatientName), h.PatientID, h.StudyDescription)
        for scan, h in prearchived(client)
    }
    return {
        "row": {k: row[k] for k in ("project", "subject", "name", "tag", "status")},
        "scans": sorted((s["ID"], s["xsiType"], s["series_description"]) for s in scans),
        "instances": instances,
    }


@pytest.mark.parametrize("handler", ["DICOM-zip", "gradual-DICOM"])
def test_c_store_builds_the_same_prearchive_session_as_the_rest_import(
    sandbox, svc, sandbox_factory, two_series, handler
):
    """The receiver path and the REST import, each into a fresh sandbox, for the same two
    series: same project, subject, label, study, scans and instances, headers rewritten alike."""
    assert send(sandbox, two_series) == [0] * 42
    other = sandbox_factory()
    params = {"PROJECT_ID": "SPN01", "SUBJECT_ID": "S01", "EXPT_LABEL": "S01_MR1"}
    with Client(other.url, ("svc", "pw")) as rest:
        if handler == "DICOM-zip":
            answer = rest.import_zip(Dicom.zip(two_series), **params)
            assert answer.status_code == 200, answer.text
        else:
            for path in two_series:
                answer = rest.post(
                    "/data/services/import",
                    params=params,
                    data=path.read_bytes(),
                    headers={"Content-Type": "application/dicom"},
                )
                assert answer.status_code == 200, answer.text
        for server in (sandbox, other):
            server.tick(server.settings.rebuild_idle)
        by_rest = session_summary(rest)
    by_c_store = session_summary(svc)
    assert by_c_store["row"]["status"] == "READY"
    assert len(by_c_store["instances"]) == 42
    assert by_c_store == by_rest


def test_no_writer_thread_outlives_the_instances_it_stored(sandbox, two_series):
    """Each instance is written by the importer's writer thread, which ends with it."""
    assert send(sandbox, two_series[:3]) == [0x0000] * 3
    assert [t for t in threading.enumerate() if t.name == "sandbox-entry-writer"] == []
