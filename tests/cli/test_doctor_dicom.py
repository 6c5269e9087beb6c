"""`xnatdrop doctor` and XNAT's DICOM receiver: a C-ECHO with the configured AE titles, and
`--test-push`, which sends a generated test instance, reports where XNAT filed it and deletes
it. The receiver is the sandbox's (XNAT's DicomSCP rules, reference §9), over real sockets."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from push_helpers import PASSWORD, PROJECT, USER, write_config
from xnat_sandbox import Sandbox
from xnatdrop import cli, dicom_checks, testpush
from xnatdrop.config import load

FAST = "connect_timeout_seconds = 2\nacse_timeout_seconds = 1\nattempts = 1\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(
        data=tmp_path / "xnat", port=0, users=[f"{USER}:{PASSWORD}"], projects=[PROJECT],
        dicom_port=0,
    )  # fmt: skip
    sandbox.start()
    yield sandbox
    sandbox.stop()


def config(tmp_path: Path, server: Sandbox, dicom: str | None = "", transport: str = "") -> Path:
    """A doctor-ready config; `dicom` is the `[dicom]` body (None: no section), `transport` the
    drop's transport line value (empty: not given)."""
    extra = "" if dicom is None else f'[dicom]\nhost = "127.0.0.1"\n{FAST}{dicom}'
    path = write_config(tmp_path, server.url, extra)
    if transport:
        text = path.read_text(encoding="utf-8")
        text = text.replace(
            f'project = "{PROJECT}"\n', f'project = "{PROJECT}"\ntransport = "{transport}"\n', 1
        )
        path.write_text(text, encoding="utf-8")
    for folder in ("drop", "quarantine", "done"):
        (tmp_path / folder).mkdir(exist_ok=True)
    return path


def doctor(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["doctor", "--config", str(path), *extra])
    return code, capsys.readouterr().out


def dicom_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "DICOM" in line or "test push" in line]


def test_a_dicom_drop_gets_a_c_echo_with_its_ae_titles(tmp_path, server, capsys):
    path = config(tmp_path, server, f"port = {server.dicom_port}\n", transport="dicom")
    code, out = doctor(path, capsys)
    assert code == 0, out
    [line] = dicom_lines(out)
    assert re.fullmatch(
        rf"PASS  DICOM receiver XNAT@127\.0\.0\.1:{server.dicom_port} \(we call as XNAT\): "
        rf"C-ECHO ok in \d+ ms \(XNAT@127\.0\.0\.1:{server.dicom_port}\)",
        line,
    )


def test_a_rest_only_config_without_a_dicom_section_gets_no_dicom_check(tmp_path, server, capsys):
    path = config(tmp_path, server, None)
    assert not dicom_checks.wanted(load(path))
    code, out = doctor(path, capsys)
    assert code == 0, out
    assert dicom_lines(out) == []


def test_a_dicom_section_alone_is_checked(tmp_path, server):
    assert dicom_checks.wanted(load(config(tmp_path, server, f"port = {server.dicom_port}\n")))


def test_a_refused_called_ae_title_is_a_fail_that_names_the_setting(tmp_path, server, capsys):
    body = f'port = {server.dicom_port}\ncalled_aet = "ARCHIVE"\n'
    code, out = doctor(config(tmp_path, server, body, transport="dicom"), capsys)
    assert code == 1
    [line] = dicom_lines(out)
    assert line.startswith("FAIL  DICOM receiver ARCHIVE@127.0.0.1")
    assert "refused the association: it is not AE title ARCHIVE" in line
    assert "set dicom.called_aet to the receiver's AE title" in line


def test_nothing_listening_is_a_fail_that_says_what_to_check(tmp_path, server, capsys):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out = doctor(config(tmp_path, server, f"port = {port}\n"), capsys)
    assert code == 1
    [line] = dicom_lines(out)
    assert f"C-ECHO failed: cannot connect to 127.0.0.1:{port} (connection refused)" in line
    assert "XNAT's DICOM receiver is enabled" in line


def test_a_receiver_that_never_answers_is_a_timeout_fail(tmp_path, server, capsys):
    with socket.socket() as silent:  # accepts TCP connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        code, out = doctor(config(tmp_path, server, f"port = {port}\n"), capsys)
    assert code == 1
    [line] = dicom_lines(out)
    assert "did not accept the association (no answer within 1 s" in line


def test_test_push_reports_where_xnat_filed_it_and_deletes_it(tmp_path, server, capsys):
    path = config(tmp_path, server, f"port = {server.dicom_port}\n", transport="dicom")
    code, out = doctor(path, capsys, "--test-push")
    assert code == 0, out
    echo, push = dicom_lines(out)
    assert echo.startswith("PASS  DICOM receiver XNAT@")
    match = re.fullmatch(
        r"PASS  test push: XNAT filed it in project SPN01, prearchive (\d{8}_\d{9})/"
        r"(xnatdrop_test_\d{8}T\d{6}) \(subject \2, session \2, RECEIVING\); deleted again",
        push,
    )
    assert match, push
    assert server.dicom is not None and server.dicom.stored == 1
    assert server.requests[f"DELETE /data/prearchive/projects/SPN01/{match[1]}/{match[2]}"] == 1
    assert server.state()["prearchive"] == []
    assert "XNATDROP^TEST" not in out and PASSWORD not in out


def test_test_push_to_a_project_xnat_lacks_is_a_fail_naming_unassigned(
    tmp_path, capsys, sandbox_factory
):
    server = sandbox_factory(users=[f"{USER}:{PASSWORD}"], projects=[], dicom_port=0)
    path = config(tmp_path, server, f"port = {server.dicom_port}\n", transport="dicom")
    code, out = doctor(path, capsys, "--test-push")
    assert code == 1
    push = dicom_lines(out)[-1]
    assert push.startswith("FAIL  test push: XNAT filed it in project Unassigned, prearchive ")
    assert f"not in project {PROJECT}: its receiver did not route by the comment fields" in push
    assert push.endswith("deleted again")
    assert server.state()["prearchive"] == []


def test_the_test_instance_carries_no_patient_data_and_routes_by_its_comments():
    label = testpush.label_for_now()
    instance = testpush.harmless_instance("SPN01", label)
    assert re.fullmatch(r"xnatdrop_test_\d{8}T\d{6}", label)
    assert (str(instance.PatientName), instance.PatientID) == ("XNATDROP^TEST", "XNATDROP_TEST")
    assert instance.PatientBirthDate == "" and instance.PatientSex == ""
    assert instance.PatientComments == f"Project: SPN01 Subject: {label} Session: {label} AA: false"
    assert "test" in instance.SeriesDescription and instance.PixelData == bytes(64)
    assert instance.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage


def test_a_test_push_the_receiver_refuses_is_a_fail_with_its_status(tmp_path, server, capsys):
    """XNAT answers an instance its importer cannot take with 0xC000 (CStoreService)."""
    refused = requests.put(
        server.url + "/xapi/anonymize/site",
        data='(0020,0013) := "not a number"',
        headers={"Content-Type": "text/plain"},
        auth=(USER, PASSWORD),
    )
    assert refused.status_code == 200
    path = config(tmp_path, server, f"port = {server.dicom_port}\n", transport="dicom")
    code, out = doctor(path, capsys, "--test-push")
    assert code == 1
    push = dicom_lines(out)[-1]
    assert push.startswith("FAIL  test push to SPN01: not stored: ")
    assert "0xC000" in push, push
