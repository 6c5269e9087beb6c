"""Fault injection (Python methods and the `/_sandbox/` admin API), state, restart persistence
and the `xnatdrop sandbox` command."""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest
import requests

USERS = ["svc:pw", "reader:pw:read", "outsider:pw:none"]

ARCHIVE_DEST = "/archive/projects/SPN01/subjects/F1/experiments/F1_MR1"


def test_fail_answers_the_next_n_matching_requests(sandbox, svc, dicom):
    sandbox.fail("/data/services/import", status=503, count=2, method="POST")
    data = dicom.zip(dicom.files(count=1))
    assert svc.get("/data/projects").status_code == 200  # does not match
    assert [svc.import_zip(data, project="SPN01").status_code for _ in range(3)] == [503, 503, 200]
    assert sandbox.faults.describe()["rules"] == []
    assert sandbox.requests["POST /data/services/import"] == 3


def test_proxy_pages_and_the_admin_api(sandbox, svc, reader):
    admin = f"{sandbox.url}/_sandbox"
    assert requests.post(admin + "/fail", json={"path": "x"}).status_code == 401
    assert (
        requests.post(admin + "/fail", json={"path": "x"}, auth=("reader", "pw")).status_code == 401
    )
    rules = svc.post(admin + "/fail", json={"path": "^/data/projects$", "status": 502, "count": 1})
    assert rules.json()["rules"][0]["status"] == 502
    page = reader.get("/data/projects")
    assert page.status_code == 502 and "<h1>502 Bad Gateway</h1>" in page.text
    assert reader.get("/data/projects").status_code == 200
    svc.post(admin + "/fail", json={"path": "projects", "status": 504, "count": None})
    assert [reader.get("/data/projects").status_code for _ in range(2)] == [504, 504]
    assert svc.delete(admin + "/faults").json()["rules"] == []
    assert svc.post(admin + "/fail", json={"path": "("}).status_code == 400
    assert svc.post(admin + "/nothing", json={}).status_code == 404


def test_latency_rule_is_applied_and_consumed(sandbox, svc):
    sandbox.delay("/data/auth", seconds=0.01, count=1)
    assert len(sandbox.faults.describe()["rules"]) == 1
    assert svc.get("/data/auth").status_code == 200
    assert sandbox.faults.describe()["rules"] == []


def test_drop_cuts_the_upload_and_nothing_is_imported(sandbox, svc, dicom):
    sandbox.drop("/data/services/import", after_bytes=100_000)
    data = dicom.zip(dicom.files(count=2))
    with pytest.raises(requests.exceptions.ConnectionError):
        svc.import_zip(data, project="SPN01")
    assert sandbox.state()["prearchive"] == []
    assert svc.import_zip(data, project="SPN01").status_code == 200  # count=1: the next passes


def test_expire_sessions_through_the_admin_api(sandbox, svc):
    sid = svc.get("/data/JSESSION").text
    expired = svc.post(f"{sandbox.url}/_sandbox/expire-sessions", json={})
    assert expired.json()["expired"] >= 1
    response = requests.get(sandbox.url + "/data/auth", cookies={"JSESSIONID": sid})
    assert response.status_code == 401


def test_tick_and_state_through_the_admin_api(sandbox, svc, dicom):
    uri = svc.import_zip(dicom.zip(dicom.files(count=1)), project="SPN01").text.strip()
    result = svc.post(f"{sandbox.url}/_sandbox/tick", json={"seconds": 301}).json()
    assert result["built"] == [uri]
    state = svc.get(f"{sandbox.url}/_sandbox/state").json()
    assert [(r["status"], r["files"]) for r in state["prearchive"]] == [("READY", 1)]
    settings = svc.post(f"{sandbox.url}/_sandbox/settings", json={"rebuild_idle": 10}).json()
    assert settings["rebuild_idle"] == 10.0


def test_anonymize_alias_switches_the_site_script(sandbox, svc):
    """`POST /_sandbox/anonymize` and `Sandbox.anonymize` are aliases of XNAT's
    `PUT /xapi/anonymize/site/enabled` (kept for older tests); the script is on by default."""
    assert svc.get("/xapi/anonymize/site/enabled").json() is True
    assert svc.post(f"{sandbox.url}/_sandbox/anonymize", json={"enabled": False}).ok
    assert svc.get("/xapi/anonymize/site/enabled").json() is False
    sandbox.anonymize(True)
    assert svc.get("/xapi/anonymize/site/enabled").json() is True


def test_state_survives_a_restart(tmp_path, dicom, sandbox_factory):
    data = tmp_path / "persist"
    first = sandbox_factory(data=data, users=USERS, projects=["SPN01"])
    with requests.Session() as svc:
        svc.auth = ("svc", "pw")
        url = first.url
        svc.post(
            f"{url}/data/services/import",
            params={"dest": ARCHIVE_DEST},
            data=dicom.zip(dicom.files(count=2)),
            headers={"Content-Type": "application/zip"},
        )
        svc.post(
            f"{url}/data/services/import",
            params={"project": "SPN01", "session": "K"},
            data=dicom.zip(dicom.study(dicom.files("5", 1))),
            headers={"Content-Type": "application/zip"},
        )
        svc.put(f"{url}/data/projects/SPN01/prearchive_code/4")
        before = svc.get(
            f"{url}/data/archive/projects/SPN01/experiments/F1_MR1/scans/ALL/files",
            params={"format": "json"},
        ).json()
    first.stop()
    second = sandbox_factory(data=data, users=USERS, projects=[])
    with requests.Session() as svc:
        svc.auth = ("svc", "pw")
        url = second.url
        after = svc.get(
            f"{url}/data/archive/projects/SPN01/experiments/F1_MR1/scans/ALL/files",
            params={"format": "json"},
        ).json()
        assert after == before
        assert svc.get(f"{url}/data/projects/SPN01/prearchive_code").text == "4"
        prearchived = svc.get(f"{url}/data/prearchive", params={"format": "json"}).json()
        assert [r["name"] for r in prearchived["ResultSet"]["Result"]] == ["K"]
        new = svc.put(f"{url}/data/projects/SPN01/subjects/NEXT")
        assert new.text == "XNAT_S00002"  # the ID counters survived too
        assert svc.get(url + after["ResultSet"]["Result"][0]["URI"]).ok


def test_the_command_serves_until_sigint(tmp_path):
    command = [
        sys.executable,
        "-m",
        "xnatdrop",
        "sandbox",
        "--port",
        "0",
        "--data",
        str(tmp_path / "cli"),
        "--user",
        "site:secret",
        "--project",
        "P1",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        url = process.stdout.readline().strip()  # printed once the socket is bound
        assert url.startswith("http://127.0.0.1:")
        projects = requests.get(
            url + "/data/projects", params={"format": "json"}, auth=("site", "secret")
        ).json()
        assert [p["ID"] for p in projects["ResultSet"]["Result"]] == ["P1"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        log = process.stderr.read()
    # The sandbox's own log lines reach the command's stderr (xnatdrop configures its logger).
    assert f"xnat_sandbox.server: sandbox XNAT serving {url}" in log
    assert "xnat_sandbox.server: sandbox XNAT stopped" in log


def test_the_command_refuses_a_bad_user(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "xnatdrop", "sandbox", "--data", str(tmp_path), "--user", "nopw"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "expected NAME:PASSWORD[:ACCESS]" in result.stderr


def test_a_client_that_resets_its_connection_costs_no_traceback(sandbox, caplog, capfd):
    """1. A client reads an answer on a keep-alive connection. 2. It is killed: the kernel
    resets the connection. Result: the sandbox notes it at debug level, with no traceback on
    stderr (the campaign kills clients by the hundred; Tomcat reports none of them)."""
    caplog.set_level(logging.DEBUG, logger="xnat_sandbox.transport")
    client = socket.create_connection((sandbox.host, sandbox.port))
    client.sendall(b"GET /data/JSESSION HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert client.recv(65536).startswith(b"HTTP/1.1 ")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # SO_LINGER 0: RST, as for a process killed with -9
    # The reset meets the server either between requests ("went away") or while the rest of
    # the answer is still being written ("answer not delivered"): a debug line either way.
    noted = ("went away (ConnectionResetError)", "answer not delivered: [Errno 104]")
    pause = threading.Event()
    for _ in range(600):
        if any(note in caplog.text for note in noted):
            break
        pause.wait(0.05)
    assert any(note in caplog.text for note in noted), caplog.text
    assert "Traceback" not in capfd.readouterr().err
