"""`xnatdrop doctor` checks the notification settings: it logs in to a real SMTP server
(STARTTLS, aiosmtpd) without sending anything, and resolves the ping URL's host without
pinging; a wrong SMTP password is a FAIL line that names the setting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from push_helpers import write_config
from smtp_server import SmtpServer
from xnat_sandbox import Sandbox
from xnatdrop import cli


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp", "starttls", {"xnatdrop": "smtp-pw"})
    server.start()
    yield server
    server.stop()


def doctor_config(tmp_path: Path, server: Sandbox, smtp: SmtpServer, password: str) -> Path:
    secret = tmp_path / "smtp-secret"
    secret.write_text(password + "\n", encoding="utf-8")
    secret.chmod(0o600)
    extra = (
        "[mail]\n"
        f'host = "127.0.0.1"\nport = {smtp.port}\nsecurity = "starttls"\n'
        f'username = "xnatdrop"\npassword_file = "{secret}"\n'
        f'ca_bundle = "{smtp.certificate}"\n'
        'sender = "xnatdrop@example.org"\nto = ["admin@example.org"]\n'
        "[notify]\n"
        'ping_url = "http://localhost:9/ping/secret-uuid"\n'
    )
    path = write_config(tmp_path, server.url, extra)
    (tmp_path / "quarantine").mkdir(exist_ok=True)
    (tmp_path / "done").mkdir(exist_ok=True)
    return path


def test_doctor_logs_in_to_smtp_and_resolves_the_ping_host(
    tmp_path: Path, server: Sandbox, smtp: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = doctor_config(tmp_path, server, smtp, "smtp-pw")
    code = cli.main(["doctor", "--config", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (
        f"PASS  SMTP server 127.0.0.1:{smtp.port}: connected (STARTTLS, logged in as "
        "'xnatdrop'); nothing was sent" in out
    )
    assert "PASS  ping URL host localhost:9 resolves" in out
    assert "secret-uuid" not in out and "smtp-pw" not in out
    assert smtp.logins == ["xnatdrop"] and smtp.messages == []


def test_doctor_fails_a_wrong_smtp_password(
    tmp_path: Path, server: Sandbox, smtp: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = doctor_config(tmp_path, server, smtp, "Wr0ng-Passw0rd")
    assert cli.main(["doctor", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  the SMTP server 127.0.0.1" in out
    assert "refused the login of 'xnatdrop' (code 535); check mail.username" in out
    assert "Wr0ng-Passw0rd" not in out
