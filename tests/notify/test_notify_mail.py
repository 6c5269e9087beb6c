"""E-mail through a real SMTP server (aiosmtpd on loopback): plain, STARTTLS and SSL, the
password's sources, and every failure turned into one sentence of our own.

The TLS modes use a throwaway self-signed certificate for 127.0.0.1 (see `smtp_server.py`);
the client trusts it through `mail.ca_bundle`, exactly as a site with a private CA would.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from smtp_server import SmtpServer, body
from xnatdrop import cli, config
from xnatdrop.errors import ConfigError
from xnatdrop.notify import mail

USER, PASSWORD = "xnatdrop", "smtp-s3cret"


def start(tmp_path: Path, mode: str, users: dict[str, str] | None = None) -> SmtpServer:
    server = SmtpServer(tmp_path / f"smtp-{mode}", mode, users)
    server.start()
    return server


def settings_for(server: SmtpServer, **changes: object) -> config.MailSettings:
    values: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "security": {"plain": "none"}.get(server.mode, server.mode),
        "sender": "xnatdrop@example.org",
        "to": ["mri-admin@example.org"],
        "ca_bundle": server.certificate if server.mode != "plain" else None,
        "timeout_seconds": 5,
    }
    if server.users:
        values["username"] = USER
    values.update(changes)
    return config.MailSettings.model_validate(values)


@pytest.mark.parametrize("mode", ["plain", "starttls", "ssl"])
def test_message_arrives_as_multipart_alternative(tmp_path: Path, mode: str) -> None:
    """1. A real SMTP server in each mode (TLS ones require a login).
    2. One message with a plain-text and an HTML part is sent.
    Result: it arrives once, from mail.sender to the recipient, as multipart/alternative with
    both parts intact, marked auto-generated; the TLS servers saw our login."""
    users = None if mode == "plain" else {USER: PASSWORD}
    server = start(tmp_path, mode, users)
    try:
        settings = settings_for(server)
        message = mail.build(
            settings, ["a@example.org"], "digest", "plain words ü", "<p>html words</p>"
        )
        mail.send(settings, PASSWORD, message)
        (received,) = server.wait_for(1)
    finally:
        server.stop()
    assert server.envelopes == [("xnatdrop@example.org", ["a@example.org"])]
    assert received.get_content_type() == "multipart/alternative"
    assert received["Auto-Submitted"] == "auto-generated"
    assert body(received).strip() == "plain words ü"
    assert "<p>html words</p>" in body(received, "html")
    assert server.logins == ([] if users is None else [USER])


def test_starttls_refuses_to_log_in_without_tls(tmp_path: Path) -> None:
    """A server that does not offer STARTTLS while mail.security = "starttls": we stop before
    sending the password, and say which setting to change."""
    server = start(tmp_path, "plain")
    try:
        settings = settings_for(server, security="starttls", username=USER, ca_bundle=None)
        with pytest.raises(mail.DeliveryError, match=r"does not offer STARTTLS; set mail.security"):
            mail.send(settings, PASSWORD, mail.build(settings, ["a@example.org"], "s", "t"))
    finally:
        server.stop()
    assert server.messages == []


FAILURES = [
    ("wrong password", {}, "wrong", r"refused the login of 'xnatdrop' \(code 535\)"),
    ("unknown CA", {"ca_bundle": None}, PASSWORD, r"could not be verified .*mail.ca_bundle"),
    (
        "ssl against starttls",
        {"security": "ssl"},
        PASSWORD,
        r"TLS with the SMTP server .* failed .*check mail.security",
    ),
]


@pytest.mark.parametrize(("case", "changes", "password", "expected"), FAILURES)
def test_failures_are_one_sentence_naming_the_setting(
    tmp_path: Path, case: str, changes: dict[str, object], password: str, expected: str
) -> None:
    server = start(tmp_path, "starttls", {USER: PASSWORD})
    try:
        settings = settings_for(server, **changes)
        with pytest.raises(mail.DeliveryError, match=expected) as caught:
            mail.send(settings, password, mail.build(settings, ["a@example.org"], "s", "t"))
    finally:
        server.stop()
    assert PASSWORD not in str(caught.value) and "\n" not in str(caught.value)
    assert server.messages == []


def test_closed_port_and_unknown_host() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        settings = config.MailSettings(
            host="127.0.0.1", port=port, security="none", sender="x@example.org", to=["a@b.org"]
        )
        with pytest.raises(mail.DeliveryError, match=r"refused the connection; check mail.host"):
            mail.check_connection(settings, None)
    unknown = settings.model_copy(update={"host": "no-such-host.invalid"})
    with pytest.raises(mail.DeliveryError, match=r"does not resolve; check mail.host"):
        mail.check_connection(unknown, None)


def test_check_connection_logs_in_and_sends_nothing(tmp_path: Path) -> None:
    """What doctor runs: connect, STARTTLS, log in, quit."""
    server = start(tmp_path, "starttls", {USER: PASSWORD})
    try:
        line = mail.check_connection(settings_for(server), PASSWORD)
    finally:
        server.stop()
    assert "STARTTLS, logged in as 'xnatdrop'" in line and "nothing was sent" in line
    assert server.logins == [USER] and server.messages == []


# -- configuration -------------------------------------------------------------------------


def mail_config(tmp_path: Path, **mail_keys: object) -> dict[str, object]:
    return {
        "mail": {
            "host": "smtp.example.org",
            "sender": "xnatdrop@example.org",
            "to": ["a@example.org"],
            **mail_keys,
        }
    }


def test_smtp_password_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File (0600), then systemd credential, then environment; nothing without a username."""
    monkeypatch.delenv(config.MAIL_PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.parse(mail_config(tmp_path), "t").mail.resolve_password() is None
    with_user = config.parse(mail_config(tmp_path, username="u"), "t").mail
    with pytest.raises(ConfigError, match=r"LoadCredential=smtp-password"):
        with_user.resolve_password()
    monkeypatch.setenv(config.MAIL_PASSWORD_ENV, "from-env")
    assert with_user.resolve_password() == "from-env"
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "smtp-password").write_text("from-systemd\n", encoding="utf-8")
    (credentials / "smtp-password").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert with_user.resolve_password() == "from-systemd"
    secret = tmp_path / "smtp-secret"
    secret.write_text("from-file\n", encoding="utf-8")
    secret.chmod(0o644)
    from_file = config.parse(mail_config(tmp_path, username="u", password_file=str(secret)), "t")
    with pytest.raises(ConfigError, match=r"chmod 600"):
        from_file.mail.resolve_password()
    secret.chmod(0o600)
    assert from_file.mail.resolve_password() == "from-file"


BAD_MAIL = [
    ({"mail": {"password": "x"}}, r"at 'mail.password': unknown key"),
    ({"mail": {"to": ["a@example.org"]}}, r"mail.host is not"),
    ({"mail": {"host": "h", "to": ["a@example.org"]}}, r"also set mail.sender"),
    ({"mail": {"host": "h", "sender": "x@example.org"}}, r"also set mail.to"),
    ({"mail": {"to": ["not an address"]}}, r"'not an address' is not an e-mail address"),
    ({"mail": {"to": ["a@example.org\nBcc: x@evil.org"]}}, r"is not an e-mail address"),
    ({"mail": {"security": "tls"}}, r"at 'mail.security'"),
    ({"notify": {"digest_at": "25:00"}}, r"at 'notify.digest_at': .*'HH:MM'"),
    ({"notify": {"ping_url": "https://u:p@hc.example.org/x"}}, r"must not contain a user name"),
    ({"notify": {"ping_url": "hc.example.org/x"}}, r"must start with http"),
    ({"metrics": {"port": 70000}}, r"at 'metrics.port'"),
]


@pytest.mark.parametrize(("data", "expected"), BAD_MAIL)
def test_bad_notify_settings_name_the_key(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        config.parse(data, "t.toml")
    assert "p@" not in str(caught.value)


def test_drop_notify_email_takes_one_address_or_a_list() -> None:
    data = {
        "mail": {"host": "h", "sender": "x@example.org", "to": ["a@example.org"]},
        "drop": [
            {"path": "/srv/a", "project": "A", "notify_email": "techs@example.org"},
            {"path": "/srv/b", "project": "B", "notify_email": ["b1@example.org", "b2@ex.org"]},
        ],
    }
    settings = config.parse(data, "t")
    assert [d.notify_email for d in settings.drop] == [
        ["techs@example.org"],
        ["b1@example.org", "b2@ex.org"],
    ]
    assert config.parse({"notify": {"digest_at": "off"}}, "t").notify.digest_at is None
    assert config.parse({"notify": {"digest_at": "7:05"}}, "t").notify.digest_at == "07:05"


def test_config_check_accepts_the_mail_section(tmp_path: Path) -> None:
    secret = tmp_path / "xnat-secret"
    secret.write_text("pw\n", encoding="utf-8")
    secret.chmod(0o600)
    path = tmp_path / "x.toml"
    path.write_text(
        f'[xnat]\npassword_file = "{secret}"\n'
        '[mail]\nhost = "smtp.example.org"\nsender = "x@example.org"\nto = ["a@example.org"]\n',
        encoding="utf-8",
    )
    assert cli.main(["config", "check", "--config", str(path)]) == 0
