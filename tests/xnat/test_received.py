"""`xnatdrop.received`: finding the prearchive session XNAT's receiver built from a C-STORE push,
waiting for it, and building it, against the sandbox's receiver with xnatdrop's own sender."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from conftest import Dicom
from push_helpers import PASSWORD, PROJECT, USER
from xnat_sandbox import Sandbox
from xnatdrop import dimse, received
from xnatdrop.config import DicomSettings, XnatSettings
from xnatdrop.errors import TransientError
from xnatdrop.xnat import XnatClient

ROUTE = f"Project: {PROJECT} Subject: S01 Session: S01_MR1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(
        data=tmp_path / "xnat", port=0, users=[f"{USER}:{PASSWORD}"], projects=[PROJECT, "OTHER"],
        dicom_port=0,
    )  # fmt: skip
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def client(server: Sandbox, tmp_path: Path) -> Iterator[XnatClient]:
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD, encoding="utf-8")
    settings = XnatSettings(url=server.url, username=USER, password_file=secret)
    with XnatClient(settings, PASSWORD) as xnat:
        yield xnat


def push(server: Sandbox, files: list[Path], tmp_path: Path) -> str:
    """Send `files` with xnatdrop's sender; return their StudyInstanceUID."""
    settings = DicomSettings(host="127.0.0.1", port=server.dicom_port, attempts=1)
    report = dimse.send_series(files, settings, tmp_path / f"journal-{len(files)}.jsonl")
    assert report.complete
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_the_pushed_study_is_found_in_its_project_and_built(server, client, tmp_path):
    dicom = Dicom(tmp_path)
    study = push(server, dicom.study(dicom.files("1", count=4), PatientComments=ROUTE), tmp_path)
    found = received.wait_for_session(client, PROJECT, study, label="S01_MR1", timeout=5)
    [entry] = found.entries
    assert not found.elsewhere
    assert (entry.project, entry.subject, entry.name, entry.status) == (
        PROJECT, "S01", "S01_MR1", "RECEIVING",
    )  # fmt: skip
    assert received.find_sessions(client, PROJECT, study, label="OTHER_LABEL").entries == []
    built = received.build(client, entry)
    assert built.status == "READY" and built.uri == entry.uri
    assert len(client.prearchive_files(built.uri)) == 4


def test_a_study_routed_elsewhere_is_found_there(server, client, tmp_path):
    dicom = Dicom(tmp_path)
    other = "Project: OTHER Subject: S01 Session: S01_MR1"
    study = push(server, dicom.study(dicom.files("1", count=1), PatientComments=other), tmp_path)
    found = received.find_sessions(client, PROJECT, study)
    assert found.elsewhere and [e.project for e in found.entries] == ["OTHER"]


def test_waiting_for_a_status_xnat_never_reaches_ends_with_a_transient_error(
    server, client, tmp_path
):
    dicom = Dicom(tmp_path)
    study = push(server, dicom.study(dicom.files("1", count=1), PatientComments=ROUTE), tmp_path)
    with pytest.raises(TransientError, match=r"RECEIVING for the study sent to project SPN01"):
        received.wait_for_session(client, PROJECT, study, timeout=0, statuses=frozenset({"READY"}))
    server.tick(server.settings.rebuild_idle)  # the rebuilder builds it after the idle time
    found = received.wait_for_session(
        client, PROJECT, study, timeout=5, statuses=frozenset({"READY"})
    )
    assert found.entries[0].status == "READY"


def test_a_session_the_receiver_named_from_the_header_is_never_named_in_a_message(
    server, client, tmp_path
):
    """1. A study without routing comments: XNAT's receiver names the prearchive session from
    the header's PatientID. 2. Waiting for a status it never reaches fails. Result: the message
    names project and timestamp, never that folder name (no patient data in logs)."""
    dicom = Dicom(tmp_path)
    files = dicom.study(dicom.files("1", count=1), PatientID="PID_7731_SECRET")
    study = push(server, files, tmp_path)
    [entry] = received.find_sessions(client, "Unassigned", study).entries
    assert "PID_7731_SECRET" in entry.folder  # the receiver did name it from the header
    with pytest.raises(TransientError) as raised:
        received.wait_for_session(
            client, "Unassigned", study, timeout=0, statuses=frozenset({"READY"})
        )
    assert f"prearchive Unassigned/{entry.timestamp} RECEIVING" in str(raised.value)
    assert "PID_7731_SECRET" not in str(raised.value)
