"""Where XNAT is: its REST API and how to log in (`[xnat]`), its DICOM receiver (`[dicom]`)."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from xnatdrop.config import credentials
from xnatdrop.config.section import Section
from xnatdrop.errors import ConfigError


class XnatSettings(Section):
    """Where XNAT is and how to log in. Defaults point at a local `xnatdrop sandbox`."""

    url: str = Field(
        "http://127.0.0.1:8080",
        description="Base URL of the XNAT server, without /data.",
    )
    username: str = Field("admin", description="XNAT account that uploads and archives.")
    password_file: Path | None = Field(
        None,
        description="File holding the password (mode 0600 or stricter). Alternatives: "
        "$CREDENTIALS_DIRECTORY/xnat-password (systemd LoadCredential=) or the "
        "XNATDROP_XNAT_PASSWORD environment variable.",
    )
    password: SecretStr | None = Field(
        None, description="Literal password; works, but is warned about: use password_file."
    )
    verify_tls: bool = Field(
        True,
        description="Verify the server's TLS certificate. false means exactly that, whatever "
        "REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE say; only for a test server.",
    )
    ca_bundle: Path | None = Field(
        None,
        description="PEM file of the certificate authority (or authorities) to trust for XNAT, "
        "for a server whose certificate comes from a private CA. Default: the system's store "
        "(or REQUESTS_CA_BUNDLE when set).",
    )
    timeout_seconds: float = Field(
        120.0, gt=0, description="Timeout for connecting and for each read from XNAT."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must start with http:// or https:// and name a host")
        # https://user:pw@host once worked, and the password then showed in log lines, in
        # doctor's output and in every RECEIPT on the share. The message never repeats it.
        if "@" in urllib.parse.urlsplit(value).netloc:
            raise ValueError(
                "must not contain a user name or password (they would end up in logs and "
                "receipts): remove them from the URL, set xnat.username, and put the password "
                "in the file named by xnat.password_file (mode 0600)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls(self) -> XnatSettings:
        if self.ca_bundle is not None:
            if not self.verify_tls:
                raise ValueError(
                    "ca_bundle is ignored when verify_tls = false; set verify_tls = true to "
                    "trust the CA in ca_bundle"
                )
            if not self.ca_bundle.is_file():
                raise ValueError(f"ca_bundle {self.ca_bundle} is not a file")
        return self

    def verify(self) -> bool | str:
        """What `requests` gets as `verify`: the CA bundle's path, or True/False."""
        return str(self.ca_bundle) if self.ca_bundle is not None else self.verify_tls

    def resolve_password(self, source: str = "config") -> str:
        """Return the password from the first place that has one.

        Order: password_file, systemd credential, environment, literal `password`. Raise
        ConfigError naming the place (never the value) when a file is unusable.
        """
        found = credentials.find_secret(
            self.password_file,
            "xnat.password_file",
            credentials.CREDENTIAL_NAME,
            credentials.PASSWORD_ENV,
            source,
        )
        if found is not None:
            return found
        if self.password is not None:
            return self.password.get_secret_value()
        raise ConfigError(
            source,
            [
                "at 'xnat.password_file': no password configured; set password_file, "
                f"systemd's LoadCredential={credentials.CREDENTIAL_NAME}:…, or "
                f"{credentials.PASSWORD_ENV}"
            ],
        )


def _ae_title(value: str) -> str:
    # DICOM VR "AE" (PS3.5 table 6.2-1): at most 16 characters of the default repertoire, no
    # backslash or control characters; leading and trailing spaces are not significant.
    title = value.strip(" ")
    if not 1 <= len(title) <= 16 or not title.isascii() or "\\" in title:
        raise ValueError("must be 1-16 ASCII characters without backslashes (a DICOM AE title)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in title):
        raise ValueError("must not contain control characters (a DICOM AE title)")
    return title


AeTitle = Annotated[str, AfterValidator(_ae_title)]


class DicomSettings(Section):
    """XNAT's DICOM C-STORE receiver, for drops with `transport = "dicom"` (see `xnatdrop.dimse`).

    The defaults are those of a stock XNAT receiver and of the site's instructions: AE title
    XNAT on port 8104, calling and called title both XNAT (reference xnat-rest.md §9).
    """

    host: str | None = Field(
        None,
        min_length=1,
        description="Host name or address of the receiver; default: the host of xnat.url.",
    )
    port: int = Field(8104, ge=1, le=65535, description="TCP port of the receiver.")
    called_aet: AeTitle = Field(
        "XNAT", description="The receiver's AE title (XNAT routes by it; stock XNAT: XNAT)."
    )
    calling_aet: AeTitle = Field(
        "XNAT", description="Our AE title, as the receiver must know it (site instructions: XNAT)."
    )
    connect_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the TCP connection to the receiver."
    )
    acse_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the receiver to accept or release an association."
    )
    dimse_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Longest wait for the answer to one C-STORE or C-ECHO. XNAT files (and may "
        "anonymise) each instance before it answers, so allow for a busy server.",
    )
    network_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest silence on an open connection before it is dropped."
    )
    max_pdu: int = Field(
        16382,
        ge=0,
        description="Largest PDU we accept from the receiver, in bytes (0: no limit). What we "
        "send is cut to the receiver's own limit, which it states when it accepts.",
    )
    attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Tries per instance the receiver fails, and per lost association, before the "
        "push stops and is retried later (or the drop is quarantined, if retrying cannot help).",
    )
    retry_wait_seconds: float = Field(
        5.0,
        ge=0,
        description="Wait before the first retry inside a push; it doubles with each further one.",
    )

    @field_validator("host")
    @classmethod
    def _bare_host(cls, value: str | None) -> str | None:
        # An IPv6 address has several colons; one colon means a port was given here.
        if value is not None and ("/" in value or value.count(":") == 1 or value != value.strip()):
            raise ValueError(
                "must be a host name or address only (no scheme, port or path; the port is "
                "dicom.port)"
            )
        return value
