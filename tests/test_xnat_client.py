"""The REST client (`xnatdrop.xnat`) against a real sandbox over sockets.

Each test sets up one situation on the sandbox (a fault, a conflict, a permission) and checks
that the client sorts it into the right error family: Transient (retry later), Permanent
(quarantine) or Authentication (stop and tell someone).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Dicom
from xnatdrop import config, xnat
from xnatdrop.errors import AuthenticationError, PermanentError, TransientError
from xnatdrop.sandbox import Sandbox


def settings_for(sandbox: Sandbox, user: str = "svc", **extra: object) -> config.XnatSettings:
    return config.XnatSettings(url=sandbox.url, username=user, timeout_seconds=30, **extra)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[xnat.XnatClient]:
    with xnat.XnatClient(settings_for(sandbox), "pw") as session:
        yield session


def series_zip(tmp_path: Path, dicom: Dicom, count: int = 3, **tags: object) -> Path:
    files = dicom.study(Dicom.files("1", count), **tags)
    path = tmp_path / f"upload-{len(list(tmp_path.glob('upload-*.zip')))}.zip"
    path.write_bytes(Dicom.zip(files))
    return path


def test_login_and_whoami(client: xnat.XnatClient) -> None:
    assert client.whoami() == "svc"
    assert client.project_exists("SPN01")
    assert not client.project_exists("NOPE")
    assert client.prearchive_code("SPN01") == 0


def test_wrong_password_is_an_authentication_error(sandbox: Sandbox) -> None:
    with (
        xnat.XnatClient(settings_for(sandbox), "wrong") as session,
        pytest.raises(AuthenticationError, match="refused the login of user 'svc'") as caught,
    ):
        session.whoami()
    assert "wrong" not in str(caught.value)


def test_import_verify_archive_and_read_back(
    client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    upload = series_zip(tmp_path, dicom)
    sent: list[int] = []
    uri = client.import_zip(
        upload, project="SPN01", subject="SPN01_0001", session="SPN01_0001", progress=sent.append
    )
    assert uri.startswith("/data/prearchive/projects/SPN01/")
    assert sent[-1] == upload.stat().st_size

    entry = client.prearchive_entry(uri)
    assert entry is not None
    assert (entry.status, entry.name, entry.subject) == ("READY", "SPN01_0001", "SPN01_0001")
    assert [e.uri for e in client.prearchive_entries("SPN01")] == [uri]
    assert len(client.prearchive_files(uri)) == 3

    archived = client.archive(uri, project="SPN01", subject="SPN01_0001", session="SPN01_0001")
    assert archived.startswith("/data/archive/projects/SPN01/subjects/SPN01_0001/experiments/")
    assert client.prearchive_entry(uri) is None

    found = client.find_session("SPN01", "SPN01_0001")
    assert found is not None
    assert (found.label, found.subject) == ("SPN01_0001", "SPN01_0001")
    files = client.session_files("SPN01", "SPN01_0001", "SPN01_0001")
    with zipfile.ZipFile(upload) as bundle:
        sizes = sorted(info.file_size for info in bundle.infolist())
    assert sorted(f.size for f in files) == sizes
    assert all(len(f.digest) == 32 and f.scan for f in files)
    assert client.find_session("SPN01", "SPN01_9999") is None


def test_second_session_with_same_label_is_a_conflict(
    client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    for attempt in (1, 2):
        uri = client.import_zip(
            series_zip(tmp_path, dicom),
            project="SPN01",
            subject="SPN01_0002",
            session="SPN01_0002",
        )
        if attempt == 1:
            client.archive(uri, project="SPN01", subject="SPN01_0002", session="SPN01_0002")
    with pytest.raises(PermanentError) as caught:
        client.archive(uri, project="SPN01", subject="SPN01_0002", session="SPN01_0002")
    assert caught.value.code == "XNAT_CONFLICT"
    assert "rename the folder" in caught.value.fix
    entry = client.prearchive_entry(uri)
    assert entry is not None and entry.status == "CONFLICT"


def test_unwritable_project_is_routed_elsewhere_and_refused(
    sandbox: Sandbox, tmp_path: Path, dicom: Dicom
) -> None:
    with (
        xnat.XnatClient(settings_for(sandbox, "reader"), "pw") as session,
        pytest.raises(PermanentError) as caught,
    ):
        session.import_zip(series_zip(tmp_path, dicom), project="SPN01", subject="S1", session="S1")
    assert caught.value.code == "XNAT_ROUTED_ELSEWHERE"
    assert "may write to it" in caught.value.fix


def test_read_only_user_writes_are_forbidden(sandbox: Sandbox) -> None:
    with (
        xnat.XnatClient(settings_for(sandbox, "reader"), "pw") as session,
        pytest.raises(PermanentError) as caught,
    ):
        session.set_subject_fields("SPN01", "SPN01_0003", {"gender": "female"})
    assert caught.value.code == "XNAT_FORBIDDEN"


def test_503_burst_on_reads_is_retried(sandbox: Sandbox, client: xnat.XnatClient) -> None:
    client.whoami()
    sandbox.fail("/data/prearchive/projects/SPN01$", status=503, count=3, method="GET")
    assert client.prearchive_entries("SPN01") == []
    assert sandbox.requests["GET /data/prearchive/projects/SPN01"] == 4


def test_endless_5xx_becomes_transient(sandbox: Sandbox, client: xnat.XnatClient) -> None:
    client.whoami()
    sandbox.fail("/data/prearchive/projects/SPN01$", status=502, count=None)
    with pytest.raises(TransientError):
        client.prearchive_entries("SPN01")


def test_failed_write_is_transient_and_not_repeated(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    """Writes are never retried blindly: the caller must first ask XNAT what arrived."""
    client.whoami()
    sandbox.fail("^/data/services/import$", status=503, count=1)
    with pytest.raises(TransientError, match="503"):
        client.import_zip(series_zip(tmp_path, dicom), project="SPN01", subject="S", session="S")
    assert sandbox.requests["POST /data/services/import"] == 1


def test_connection_dropped_mid_upload_is_transient(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    upload = series_zip(tmp_path, dicom, count=6)
    sandbox.drop("^/data/services/import$", after_bytes=upload.stat().st_size // 2)
    with pytest.raises(TransientError):
        client.import_zip(upload, project="SPN01", subject="S4", session="S4")
    # The next attempt on the same client goes through.
    assert client.import_zip(upload, project="SPN01", subject="S4", session="S4")


def test_expired_session_is_renewed_once(sandbox: Sandbox, client: xnat.XnatClient) -> None:
    client.whoami()
    logins = sandbox.requests["POST /data/JSESSION"]
    sandbox.expire_sessions()
    assert client.whoami() == "svc"
    assert sandbox.requests["POST /data/JSESSION"] == logins + 1


def test_expired_session_answered_with_login_page_is_renewed(
    sandbox: Sandbox, client: xnat.XnatClient
) -> None:
    client.whoami()
    sandbox.settings.login_page_on_expiry = True
    sandbox.expire_sessions()
    assert client.prearchive_entries("SPN01") == []


def test_upload_after_expiry_reopens_the_body(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    client.whoami()
    sandbox.expire_sessions()
    uri = client.import_zip(
        series_zip(tmp_path, dicom), project="SPN01", subject="S5", session="S5"
    )
    assert len(client.prearchive_files(uri)) == 3


def test_resources_create_upload_and_duplicates(
    client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    uri = client.import_zip(
        series_zip(tmp_path, dicom), project="SPN01", subject="SPN01_0006", session="SPN01_0006"
    )
    client.archive(uri, project="SPN01", subject="SPN01_0006", session="SPN01_0006")
    labels = ("SPN01", "SPN01_0006", "SPN01_0006")
    assert client.resource_files(*labels, "behav") is None
    client.create_resource(*labels, "behav")
    client.create_resource(*labels, "behav")  # exists: fine
    assert client.resource_files(*labels, "behav") == []

    sidecar = tmp_path / "behav.zip"
    with zipfile.ZipFile(sidecar, "w") as bundle:
        bundle.writestr("run1/events.tsv", "onset\tduration\n0\t1\n")
        bundle.writestr("notes.txt", "ok\n")
    assert client.upload_resource_zip(*labels, "behav", sidecar) == []
    files = client.resource_files(*labels, "behav")
    assert files is not None
    assert sorted(f.path for f in files) == ["notes.txt", "run1/events.tsv"]
    assert sorted(client.upload_resource_zip(*labels, "behav", sidecar)) == [
        "notes.txt",
        "run1/events.tsv",
    ]


def test_subject_fields_are_set(client: xnat.XnatClient, sandbox: Sandbox) -> None:
    client.set_subject_fields("SPN01", "SPN01_0007", {"gender": "female", "handedness": "left"})
    response = client.request(
        "GET", "/data/projects/SPN01/subjects/SPN01_0007", params={"format": "json"}
    )
    text = response.text
    assert "female" in text and "left" in text


def test_close_logs_out_once_and_never_raises(sandbox: Sandbox) -> None:
    """Logging out is best effort: one DELETE, and a server that is gone is no error."""
    session = xnat.XnatClient(settings_for(sandbox), "pw")
    session.whoami()
    logouts = sandbox.requests["DELETE /data/JSESSION"]
    session.close()
    assert sandbox.requests["DELETE /data/JSESSION"] == logouts + 1
    gone = xnat.XnatClient(settings_for(sandbox), "pw")
    gone.whoami()
    sandbox.stop()
    gone.close()


def test_project_roles_from_the_access_api(sandbox: Sandbox) -> None:
    roles = {}
    for user in ("svc", "reader", "outsider"):
        with xnat.XnatClient(settings_for(sandbox, user), "pw") as session:
            roles[user] = (session.project_role("SPN01"), session.project_role("NOPE"))
    assert roles == {
        "svc": ("owner", None),
        "reader": ("collaborator", None),
        "outsider": (None, None),
    }
