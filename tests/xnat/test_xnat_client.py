"""The REST client (`xnatdrop.xnat`) against a real sandbox over sockets.

Each test sets up one situation on the sandbox (a fault, a conflict, a permission) and checks
that the client sorts it into the right error family: Transient (retry later), Permanent
(quarantine) or Authentication (stop and tell someone).
"""

from __future__ import annotations

import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from conftest import Dicom
from tls_front import TlsFront
from xnat_sandbox import Sandbox, tables
from xnatdrop import config, xnat
from xnatdrop.errors import AuthenticationError, PermanentError, TransientError
from xnatdrop.xnat import answers, archive


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


def site_anonymisation(client: xnat.XnatClient, enable: bool) -> None:
    """Switch XNAT's site-wide script through XNAT's own endpoint (AnonymizeApi, admin only)."""
    client.request(
        "PUT",
        "/xapi/anonymize/site/enabled",
        params={"enable": str(enable).lower()},
        headers={"Content-Type": "application/json"},
    )


def test_import_verify_archive_and_read_back(
    client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    """Byte for byte: the site script (on in a fresh XNAT) is switched off first."""
    site_anonymisation(client, False)
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


def test_project_roles_as_xnat_names_them(sandbox: Sandbox) -> None:
    """`role` is the group's display name (RoleHolder); the site admin has no project row but
    is in ALL_DATA_ADMIN, which doctor counts as writable."""
    access = {}
    for user in ("svc", "reader", "outsider"):
        with xnat.XnatClient(settings_for(sandbox, user), "pw") as session:
            access[user] = (session.project_access("SPN01"), session.project_role("NOPE"))
    assert access["svc"] == ((None, frozenset({xnat.ALL_DATA_ADMIN})), None)
    assert access["reader"] == (("Collaborators", frozenset()), None)
    assert access["outsider"] == ((None, frozenset()), None)


# -- answers sorted by status and XNAT's fixed wording, never by a label ---------------------


def archived_upload(client: xnat.XnatClient, tmp_path: Path, dicom: Dicom, label: str) -> str:
    return client.import_zip(
        series_zip(tmp_path, dicom), project="SPN01", subject=label, session=label
    )


def test_a_slow_archive_of_a_label_saying_duplicate_is_not_a_conflict(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    """Issue 9: the archive outlasts XNAT's sessionArchiveTimeoutInterval (500 "The session
    …/SPN01_duplicate_conflict did not complete within the configured timeout interval.").
    The message holds the label, which holds "duplicate" and "conflict"; the answer is still
    transient, and the archive completes."""
    label = "SPN01_duplicate_conflict"
    uri = archived_upload(client, tmp_path, dicom, label)
    sandbox.apply_settings(archive_timeout=0.2)
    sandbox.slow_archive(0.2)
    with pytest.raises(TransientError, match="did not complete") as caught:
        client.archive(uri, project="SPN01", subject=label, session=label)
    assert not isinstance(caught.value, PermanentError)
    assert client.find_session("SPN01", label) is not None


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        ("Session already exists, retry with overwrite enabled", "XNAT_CONFLICT"),
        ("Invalid modification of session subject via archive process.: S Already Exists "
         "for another Subject", "XNAT_CONFLICT"),
        ("Session processing may already be in progress: AutoRun.  Concurrent modification is "
         "discouraged.", "transient"),
        ("Session processing in progress:AutoRun", "transient"),
        ("Duplicate archive attempt. Prearchive session already archiving.", "transient"),
        ("Duplicate archive attempt.  Destination session in use.", "transient"),
        ("Unable to write the catalog: conflict with a duplicate", "transient"),
    ],
)  # fmt: skip
def test_archive_failures_are_read_from_xnat_wording(
    sandbox: Sandbox,
    client: xnat.XnatClient,
    tmp_path: Path,
    dicom: Dicom,
    cause: str,
    expected: str,
) -> None:
    """500 "FAILED: Unable to archive {folder}: {cause}" (QueueBasedImageCommit): the cause is
    matched at its start against PrearcSessionArchiver's fixed texts. The label here contains
    "conflict" and "duplicate"; only XNAT's wording decides."""
    label = "SPN01_conflict_duplicate"
    uri = archived_upload(client, tmp_path, dicom, label)
    page = tables.error_page(500, f"FAILED: Unable to archive {label}: Operation Failed: {cause}")
    sandbox.fail("^/data/services/archive$", status=500, count=1, body=page.decode())
    if expected == "transient":
        with pytest.raises(TransientError):
            client.archive(uri, project="SPN01", subject=label, session=label)
    else:
        with pytest.raises(PermanentError) as caught:
            client.archive(uri, project="SPN01", subject=label, session=label)
        assert caught.value.code == expected


def test_session_document_locked_is_transient(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    """409 "session document locked" (PrearcSessionResource.postActionBuild): XNAT holds the
    session in a `_` status; ask again later, never quarantine."""
    uri = archived_upload(client, tmp_path, dicom, "SPN01_0010")
    page = tables.error_page(409, "session document locked")
    sandbox.fail(uri.removeprefix("/data"), status=409, count=1, method="POST", body=page.decode())
    with pytest.raises(TransientError, match="busy with the prearchive session"):
        client.build(uri)
    client.build(uri)  # once XNAT is done with it


def test_proxy_413_names_the_size_and_the_fix(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    upload = series_zip(tmp_path, dicom)
    page = (
        "<html><head><title>413 Request Entity Too Large</title></head><body><center><h1>413 "
        "Request Entity Too Large</h1></center><hr><center>nginx</center></body></html>"
    )
    sandbox.fail("^/data/services/import$", status=413, count=1, body=page)
    with pytest.raises(xnat.XnatAnswer) as caught:
        client.import_zip(upload, project="SPN01", subject="S", session="S")
    size = upload.stat().st_size / 1e9
    assert caught.value.code == "XNAT_TOO_LARGE" and not caught.value.suspect
    assert f"({size:.2f} GB)" in str(caught.value)
    assert "client_max_body_size" in caught.value.fix


def test_a_400_carries_xnat_fixed_wording_without_the_file_name(
    sandbox: Sandbox, client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    """What the circuit breaker compares: status and fixed wording, not the entry's name."""
    answers = set()
    for name in ("series/0001.dcm", "series/0002.dcm"):
        page = tables.error_page(400, f"unable to read DICOM object {name}")
        sandbox.fail("^/data/services/import$", status=400, count=1, body=page.decode())
        with pytest.raises(xnat.XnatAnswer) as caught:
            client.import_zip(
                series_zip(tmp_path, dicom), project="SPN01", subject="S", session="S"
            )
        assert name in str(caught.value) and caught.value.suspect
        answers.add(caught.value.answer)
    assert answers == {"HTTP 400 unable to read DICOM object"}


# -- TLS, unreachable servers, credentials in the URL -------------------------------------------


@pytest.fixture
def tls(sandbox: Sandbox, tmp_path: Path) -> Iterator[TlsFront]:
    front = TlsFront(sandbox.port, tmp_path / "tls")
    yield front
    front.close()


def test_verify_tls_false_means_exactly_that_whatever_the_environment(
    tls: TlsFront, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests lets REQUESTS_CA_BUNDLE override a session's verify=False; xnatdrop passes
    verify on every call, so the setting wins (issue 9 point 8)."""
    other_ca = TlsFront(1, tmp_path / "other")  # another private CA, not the front's
    other_ca.close()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca.certificate))
    settings = config.XnatSettings(url=tls.url, username="svc", verify_tls=False)
    with xnat.XnatClient(settings, "pw") as session:
        assert session.whoami() == "svc"


def test_ca_bundle_trusts_a_private_ca_and_a_missing_one_is_one_sentence(tls: TlsFront) -> None:
    trusted = config.XnatSettings(url=tls.url, username="svc", ca_bundle=tls.certificate)
    with xnat.XnatClient(trusted, "pw") as session:
        assert session.whoami() == "svc"
    strict = config.XnatSettings(url=tls.url, username="svc")
    with xnat.XnatClient(strict, "pw") as session, pytest.raises(TransientError) as caught:
        session.whoami()
    assert str(caught.value) == (
        f"the TLS certificate of 127.0.0.1:{tls.port} could not be verified — if XNAT uses a "
        "private certificate authority, set xnat.ca_bundle to its PEM file"
    )


def test_ca_bundle_is_checked_by_the_config() -> None:
    with pytest.raises(ValueError, match="ca_bundle is ignored when verify_tls = false"):
        config.XnatSettings(url="https://x", ca_bundle=Path(__file__), verify_tls=False)
    with pytest.raises(ValueError, match="is not a file"):
        config.XnatSettings(url="https://x", ca_bundle=Path("/nonexistent.pem"))


def test_unreachable_xnat_is_one_sentence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the port: one sentence, no urllib3 text, no URL with credentials."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    # The config check refuses credentials in the URL (test_config); a settings object built
    # past it must not leak them either.
    settings = config.XnatSettings(url=f"http://127.0.0.1:{port}", username="svc")
    settings = settings.model_copy(update={"url": f"http://svc:s3cret@127.0.0.1:{port}"})
    with xnat.XnatClient(settings, "pw") as session, pytest.raises(TransientError) as caught:
        session.whoami()
    assert str(caught.value) == (
        f"cannot connect to 127.0.0.1:{port} — is the URL right, is XNAT up?"
    )
    assert session.base == f"http://127.0.0.1:{port}"
    assert "s3cret" not in caplog.text


# -- password expiry (XnatExpiredPasswordFilter) -----------------------------------------------


def test_expired_password_is_an_authentication_alert_quoting_xnat(sandbox: Sandbox) -> None:
    """XNAT 1.8.11 redirects an authenticated request with an expired password to the
    change-password page (302); earlier releases answer a Basic request 403 with a text. Both
    stop uploads with an alert naming the page, never a quarantine."""
    sandbox.expire_password("svc")
    with (
        xnat.XnatClient(settings_for(sandbox), "pw") as session,
        pytest.raises(AuthenticationError) as caught,
    ):
        session.whoami()
    assert "has expired" in str(caught.value) and xnat.CHANGE_PASSWORD_PAGE in str(caught.value)
    assert "302" in str(caught.value)
    sandbox.apply_settings(password_filter_before_basic=True)
    with (
        xnat.XnatClient(settings_for(sandbox), "pw") as session,
        pytest.raises(AuthenticationError) as caught,
    ):
        session.whoami()
    assert '"Your password has expired. Please try again after changing your password."' in str(
        caught.value
    )


def test_scan_catalog_gives_every_sop_instance_uid(
    client: xnat.XnatClient, tmp_path: Path, dicom: Dicom
) -> None:
    files = dicom.study(Dicom.files("1", 3))
    upload = tmp_path / "one.zip"
    upload.write_bytes(Dicom.zip(files))
    label = "SPN01_0011"
    uri = client.import_zip(upload, project="SPN01", subject=label, session=label)
    client.archive(uri, project="SPN01", subject=label, session=label)
    listing = client.session_files("SPN01", label, label)
    (scan,) = {f.scan for f in listing}
    catalog = client.scan_catalog("SPN01", label, label, scan)
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {entry.uid for entry in catalog} == expected
    assert {entry.path for entry in catalog} == {f.path for f in listing}


def test_http_url_for_an_https_site_is_named_at_login(sandbox: Sandbox) -> None:
    """XNAT marks JSESSIONID Secure when its site URL is https (SecurityConfig.configure):
    over http the cookie is never sent back. The login says so and gives the fix, instead of
    every later request failing with 401."""
    sandbox.apply_settings(site_url="https://xnat.example.org")
    with (
        xnat.XnatClient(settings_for(sandbox), "pw") as session,
        pytest.raises(AuthenticationError, match="marks its session cookie Secure") as caught,
    ):
        session.whoami()
    assert f"set xnat.url to https://127.0.0.1:{sandbox.port}" in str(caught.value)


def test_login_refused_at_the_session_cap_quotes_xnat(sandbox: Sandbox) -> None:
    """An account with XNAT's maximum of open sessions gets the wrong-password 401; the alert
    quotes XNAT's text, which names both causes."""
    sandbox.apply_settings(concurrent_max_sessions=1)
    with xnat.XnatClient(settings_for(sandbox), "pw") as first:
        assert first.whoami() == "svc"
        with (
            xnat.XnatClient(settings_for(sandbox), "pw") as second,
            pytest.raises(AuthenticationError, match="maximum number of user sessions") as caught,
        ):
            second.whoami()
    assert "too many XNAT sessions open" in str(caught.value)
    assert "<" not in str(caught.value)


def test_a_url_that_does_not_lead_to_xnat_is_an_alert_not_a_drop_problem(
    sandbox: Sandbox,
) -> None:
    """A wrong context path answers the login with 404: no drop can cause that, so it stops
    every push with an alert (never a quarantine) and says what to check."""
    settings = config.XnatSettings(url=f"{sandbox.url}/xnat", username="svc")
    with (
        xnat.XnatClient(settings, "pw") as session,
        pytest.raises(AuthenticationError, match=r"answered the login with HTTP 404") as caught,
    ):
        session.whoami()
    assert "with its context path if it has one" in str(caught.value)


def test_a_file_listing_is_decoded_a_row_at_a_time_from_any_cut(
    client: xnat.XnatClient, tmp_path: Path, dicom: Dicom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`session_files` decodes the listing's rows as the answer arrives (a listing of 50,000
    files is never held as text and dicts). Read in pieces of a few bytes, which cut rows,
    names and numbers anywhere, it gives what the whole table gives."""
    uri = client.import_zip(series_zip(tmp_path, dicom, count=4), project="SPN01",
                            subject="S7", session="S7")  # fmt: skip
    client.archive(uri, project="SPN01", subject="S7", session="S7")
    path = "/data/projects/SPN01/subjects/S7/experiments/S7/scans/ALL/files"
    whole = [answers.remote_file(row) for row in client._get_table(path)]
    assert len(whole) == 4
    for piece in (1, 7, 1 << 16):
        monkeypatch.setattr(archive, "TABLE_PIECE", piece)
        assert client.session_files("SPN01", "S7", "S7") == whole


def test_a_listing_without_its_result_list_or_cut_short_is_unreadable() -> None:
    """A listing without its Result list, or cut short inside it, is not a listing."""

    class Answer:
        def __init__(self, text: str) -> None:
            self.data = text.encode()

        def iter_content(self, size: int) -> Iterator[bytes]:
            for start in range(0, len(self.data), 3):
                yield self.data[start : start + 3]

    good = '{"ResultSet": {"totalRecords": "1", "Result": [{"Name": "é"}, {"Name": "b"}]}}'
    assert list(archive._table_rows(Answer(good))) == [{"Name": "é"}, {"Name": "b"}]
    assert list(archive._table_rows(Answer('{"ResultSet": {"Result": []}}'))) == []
    for bad in ('{"ResultSet": {}}', '{"ResultSet": {"Result": [{"Name": "a"}, {"Na'):
        with pytest.raises(ValueError):
            list(archive._table_rows(Answer(bad)))
