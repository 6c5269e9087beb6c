"""Telling people: the SMTP server (`[mail]`), what is told and when (`[notify]`), Prometheus
metrics (`[metrics]`). See `xnatdrop.notify`; nothing here can fail a push."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from xnatdrop.config import credentials
from xnatdrop.config.section import Section, email_address
from xnatdrop.errors import ConfigError

MAIL_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


def _clock(value: str | None) -> str | None:
    if value is None or value.strip().lower() == "off":
        return None
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError("must be a local time 'HH:MM' (for example '07:00') or 'off'")
    return f"{int(match[1]):02d}:{match[2]}"


def _plain_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must start with http:// or https:// and name a host")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password (they would end up in logs)")
    return value.rstrip("/")


class MailSettings(Section):
    """The SMTP server alerts and the digest are sent through (see `xnatdrop.notify.mail`).

    E-mail is on when `host` is set. The password never goes in this file: `password_file`
    (mode 0600), systemd's `LoadCredential=smtp-password:…`, or XNATDROP_SMTP_PASSWORD.
    """

    host: str | None = Field(
        None, description="SMTP server host name; unset: no e-mail (alerts stay in the log)."
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="SMTP port; default by security: 465 (ssl), 587 (starttls), 25 (none).",
    )
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls",
        description="'starttls' (plain connection upgraded with STARTTLS, refused if the server "
        "does not offer it), 'ssl' (TLS from the first byte, 'SMTPS') or 'none' (a local relay "
        "only: the password, if any, would travel unencrypted).",
    )
    username: str | None = Field(
        None, description="Account to log in with (AUTH); unset: send without logging in."
    )
    password_file: Path | None = Field(
        None,
        description="File holding the SMTP password (mode 0600 or stricter). Alternatives: "
        "$CREDENTIALS_DIRECTORY/smtp-password (systemd LoadCredential=) or the "
        "XNATDROP_SMTP_PASSWORD environment variable.",
    )
    sender: str | None = Field(
        None, description="The From address, e.g. xnatdrop@example.org (required with host)."
    )
    to: list[str] = Field(
        default_factory=list,
        description="Site addresses: every alert and the nightly digest go here.",
    )
    timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the SMTP server, per connection and answer."
    )
    verify_tls: bool = Field(
        True, description="Verify the SMTP server's certificate (ssl and starttls)."
    )
    ca_bundle: Path | None = Field(
        None, description="PEM file of a private CA to trust for the SMTP server."
    )

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        return None if value is None else email_address(value)

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [email_address(v) for v in value]

    @model_validator(mode="after")
    def _tls(self) -> MailSettings:
        if self.ca_bundle is not None:
            if not self.verify_tls:
                raise ValueError("mail.ca_bundle is ignored when mail.verify_tls = false")
            if not self.ca_bundle.is_file():
                raise ValueError(f"mail.ca_bundle {self.ca_bundle} is not a file")
        return self

    @property
    def enabled(self) -> bool:
        return self.host is not None

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else MAIL_PORTS[self.security]

    def resolve_password(self, source: str = "config") -> str | None:
        """The SMTP password, or None when no `username` is set (send without AUTH).

        Order: password_file, systemd credential, environment. Raise ConfigError naming the
        place (never the value) when a file is unusable or no password is found.
        """
        if self.username is None:
            return None
        found = credentials.find_secret(
            self.password_file,
            "mail.password_file",
            credentials.MAIL_CREDENTIAL_NAME,
            credentials.MAIL_PASSWORD_ENV,
            source,
        )
        if found is not None:
            return found
        raise ConfigError(
            source,
            [
                "at 'mail.password_file': mail.username is set but no SMTP password is "
                "configured; set password_file, systemd's "
                f"LoadCredential={credentials.MAIL_CREDENTIAL_NAME}:…, or "
                f"{credentials.MAIL_PASSWORD_ENV}"
            ],
        )


class NotifySettings(Section):
    """What xnatdrop tells, and when (see `xnatdrop.notify`). Nothing here can fail a push."""

    repeat_minutes: float = Field(
        60.0,
        ge=1,
        description="The same alert (same kind, same folder or drop root) is e-mailed at most "
        "once in this many minutes; repeats in between are counted in the next one.",
    )
    send_resolved: bool = Field(
        True, description="E-mail a short 'resolved' note when an alerted problem clears."
    )
    xnat_unreachable_minutes: float = Field(
        30.0,
        gt=0,
        description="Alert when XNAT has not answered for this long (shorter outages are only "
        "logged).",
    )
    min_free_gb: float = Field(
        10.0,
        ge=0,
        description="Alert when the file system of paths.state, the drop roots' work areas or "
        "paths.quarantine has less free space than this, in GB (0: never).",
    )
    digest_at: Annotated[str | None, AfterValidator(_clock)] = Field(
        "07:00",
        description="Local time of the daily digest e-mail (archived, quarantined, waiting, "
        "errors since the last one), 'HH:MM', or 'off'.",
    )
    digest_when_empty: bool = Field(
        False, description="Send the digest even when there is nothing to report."
    )
    status_file: bool = Field(
        False,
        description="Keep a _XNATDROP_STATUS.txt in each drop root telling technologists, in "
        "plain words, where each of their folders is.",
    )
    ping_url: Annotated[str | None, AfterValidator(_plain_url)] = Field(
        None,
        description="Dead-man's switch: a URL (healthchecks.io style) fetched after each good "
        "cycle, with /fail appended on errors, so an outside monitor notices when xnatdrop "
        "stops. Treat it as a secret: it is never logged, only its host.",
    )
    ping_start: bool = Field(
        False, description="Also fetch ping_url + '/start' when a cycle begins."
    )


class MetricsSettings(Section):
    """Prometheus metrics over HTTP (see `xnatdrop.notify.metrics`); off unless `port` is set."""

    port: int | None = Field(
        None, ge=1, le=65535, description="Port of the /metrics endpoint; unset: no endpoint."
    )
    address: str = Field(
        "127.0.0.1",
        description="Address to listen on; the default keeps the endpoint local to this "
        "machine (metrics carry labels of quarantine codes, never patient data).",
    )
