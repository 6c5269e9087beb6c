"""The xnatdrop configuration: one TOML file, read with tomllib, validated by pydantic.

Every model forbids unknown keys, so a typo is an error rather than a silent default. All
problems in a file are reported at once, each with its key (`drop[0].label_pattern`), and
`xnatdrop config check` uses exactly this loader.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from xnatdrop.errors import ConfigError

log = logging.getLogger(__name__)

PASSWORD_ENV = "XNATDROP_XNAT_PASSWORD"
CREDENTIAL_NAME = "xnat-password"  # the name used with systemd's LoadCredential=
XNAT_ID_PATTERN = r"^[A-Za-z0-9_-]+$"  # XNAT's rule for project IDs and safe labels


def _compile_pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression ({error})") from None
    return value


Regex = Annotated[str, AfterValidator(_compile_pattern)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        if self.password_file is not None:
            return read_secret_file(self.password_file, "xnat.password_file", source)
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
            return read_secret_file(Path(credentials) / CREDENTIAL_NAME, "credential", source)
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        if self.password is not None:
            return self.password.get_secret_value()
        raise ConfigError(
            source,
            [
                "at 'xnat.password_file': no password configured; set password_file, "
                f"systemd's LoadCredential={CREDENTIAL_NAME}:…, or {PASSWORD_ENV}"
            ],
        )


def read_secret_file(path: Path, key: str, source: str) -> str:
    """Read a one-line secret, refusing files that group or others may read."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                source,
                [
                    f"at '{key}': {path} is readable by group or others (mode "
                    f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                ],
            )
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(source, [f"at '{key}': cannot read {path}: {error.strerror}"]) from None


def _default_state() -> Path:
    # systemd's StateDirectory= sets STATE_DIRECTORY; honour it like borgmatic does.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/xnatdrop").split(":")[0])


class PathSettings(Section):
    """Where xnatdrop keeps its own state and where finished drops go."""

    state: Path = Field(
        default_factory=_default_state,
        description="Ledger and spool ($STATE_DIRECTORY when run by systemd).",
    )
    quarantine: Path = Field(
        Path("/srv/xnat-drop/_quarantine"),
        description="Permanently failed drops, each with QUARANTINE.txt/.json. Must be on the "
        "same file system as the drop roots (drops are moved by rename).",
    )
    done: Path = Field(
        Path("/srv/xnat-drop/_done"),
        description="Archived drops, as done/<date>/<label>/ with RECEIPT.txt/.json.",
    )


LabelSource = Literal["folder", "PatientName", "PatientID"]
RuleAction = Literal["block", "exclude", "warn", "ignore"]


class RulesSettings(Section):
    """Upload rules (see `xnatdrop.rules` and `xnatdrop check`).

    The same table is allowed at the top level (`[rules]`) and inside a drop
    (`[drop.rules]`); a drop's table overrides only the keys it sets, and its `actions` are
    merged code by code over the top-level ones. `Config.rules_for(drop)` does the merge.
    """

    actions: dict[str, RuleAction] = Field(
        default_factory=dict,
        description="Action per finding code, overriding the built-in default: 'block' (the "
        "folder is not uploaded), 'exclude' (those files are left out and reported), 'warn' "
        "(uploaded and reported) or 'ignore'. Example: DERIVED_SERIES = \"block\". "
        "Codes: see `xnatdrop check --codes`.",
    )
    label_source: LabelSource = Field(
        "folder",
        description="Where the subject/session label comes from: the subject folder's name "
        "('folder'), or the DICOM PatientName or PatientID.",
    )
    label_agree: list[LabelSource] = Field(
        default_factory=list,
        description="Other sources that must equal the label, else LABEL_MISMATCH; e.g. "
        "['PatientName'] with label_source 'folder' checks the scanner registration against "
        "the folder name.",
    )
    sidecars: list[str] | None = Field(
        None,
        description="Sub-folders of a subject folder that are session resources, not DICOM "
        "(default: push.sidecars).",
    )
    derived_allow: list[str] = Field(
        default_factory=lambda: ["UNI"],
        description="ImageType tokens that make a DERIVED-labelled image count as raw (default "
        "UNI: the MP2RAGE uniform image many sites treat as the primary anatomical).",
    )

    @field_validator("actions")
    @classmethod
    def _known_codes(cls, value: dict[str, str]) -> dict[str, str]:
        from xnatdrop import rules  # rules imports no config at run time; this avoids a cycle

        unknown = sorted(set(value) - set(rules.RULES))
        if unknown:
            raise ValueError(
                f"unknown finding code(s) {', '.join(unknown)}; known: {', '.join(rules.RULES)}"
            )
        pointless = sorted(c for c, a in value.items() if a == "exclude" and c in rules.NO_EXCLUDE)
        if pointless:
            raise ValueError(
                f"'exclude' has no files to leave out for {', '.join(pointless)}; "
                "use block, warn or ignore"
            )
        return value

    @field_validator("label_agree")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class DropSettings(Section):
    """One drop root, bound to one XNAT project."""

    path: Path = Field(description="The share folder technologists copy sessions into.")
    project: Annotated[str, Field(pattern=XNAT_ID_PATTERN)] = Field(
        description="XNAT project ID every session in this root goes to."
    )
    label_pattern: Regex | None = Field(
        None,
        description="Regular expression the folder name (= subject label = session label) "
        "must match in full.",
    )
    rules: RulesSettings | None = Field(
        None, description="Rule settings for this drop only, over the top-level [rules]."
    )
    transport: Literal["rest", "dicom"] = Field(
        "rest",
        description="How this drop's DICOM reaches XNAT: 'rest' (a zip to the import service) or "
        "'dicom' (C-STORE to XNAT's DICOM receiver, see [dicom]).",
    )
    notify_email: list[str] = Field(
        default_factory=list,
        description="Addresses told at once when a folder of this drop root is quarantined (the "
        "technologists who use it), besides mail.to; a single address may be given as a string. "
        "Needs [mail].",
    )

    @field_validator("notify_email", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("notify_email")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [_address(v) for v in value]


DEFAULT_TEMP_PATTERNS = (
    "*.part",
    "*.partial",
    "*.filepart",
    "*.tmp",
    "*.crdownload",
    "~$*",
    ".~lock*",
    ".fuse_hidden*",
)


class SettleSettings(Section):
    """When a subject folder counts as completely copied (see `xnatdrop.watch`).

    Settled = its fingerprint (file count, bytes, newest mtime and ctime, names with sizes) is
    unchanged over several polls spanning `quiet_seconds`. Size and count are compared, not age,
    so copies that keep old modification times (robocopy, Explorer) settle correctly.
    """

    quiet_seconds: float = Field(
        300.0, gt=0, description="How long a folder must stay unchanged before it is settled."
    )
    poll_seconds: float | None = Field(
        None,
        gt=0,
        description="Seconds between scans of the drop roots; default a third of quiet_seconds.",
    )
    max_wait_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="A folder still holding truncated DICOM this long after it first appeared is "
        "quarantined as incomplete; before that it is looked at again later.",
    )
    temp_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMP_PATTERNS),
        description="Name patterns (case-insensitive, fnmatch) of files still being written; "
        "any such file holds its folder back.",
    )
    marker_name: str | None = Field(
        None,
        description="Optional file name (e.g. 'READY') that, put at the top of a subject "
        "folder, declares it complete at once.",
    )

    @property
    def poll_interval(self) -> float:
        """Seconds between scans: `poll_seconds`, or a third of the quiet period."""
        return self.poll_seconds if self.poll_seconds is not None else self.quiet_seconds / 3


def _window(value: str) -> str:
    if value.strip().lower() == "always":
        return "always"
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", value)
    if not match or int(match[1]) > 23 or int(match[3]) > 24 or int(match[2]) > 59:
        raise ValueError("must be 'always' or 'HH:MM-HH:MM', for example '20:00-06:00'")
    if int(match[4]) > 59 or (int(match[3]) == 24 and int(match[4]) != 0):
        raise ValueError("must be 'always' or 'HH:MM-HH:MM', for example '20:00-06:00'")
    return value.strip()


class ScheduleSettings(Section):
    """When uploads run and how many at once (see `xnatdrop.daemon`). Scanning never stops."""

    upload_window: Annotated[str, AfterValidator(_window)] = Field(
        "always",
        description="Local time span in which pushes start, 'HH:MM-HH:MM' (may wrap midnight, "
        "e.g. '20:00-06:00') or 'always'. A push running when it closes finishes its session.",
    )
    max_concurrent_pushes: int = Field(
        1, ge=1, le=16, description="Sessions uploaded at the same time."
    )
    stop_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="On SIGTERM, how long running pushes may take to reach a checkpoint; keep "
        "below the unit's TimeoutStopSec.",
    )
    retry_seconds: float = Field(
        600.0, gt=0, description="Default wait before a transiently failed drop is tried again."
    )


class PushSettings(Section):
    """How one subject folder is pushed (see `xnatdrop.pipeline`)."""

    work_folder: str = Field(
        ".xnatdrop-work",
        description="Name of the working area inside each drop root, starting with '.' so that "
        "the watcher (and file browsers) skip it. A drop is frozen by renaming it there, which "
        "keeps it on the same file system; it also holds the drop root's lock file.",
    )

    @field_validator("work_folder")
    @classmethod
    def _hidden_name(cls, value: str) -> str:
        if not re.fullmatch(r"\.[^/\\]+", value) or value in (".", ".."):
            raise ValueError(
                "must be one folder name starting with '.' (e.g. '.xnatdrop-work'): the watcher "
                "skips hidden names, and would otherwise take the work area for a session"
            )
        return value

    sidecars: list[str] = Field(
        default_factory=lambda: ["behav", "physio", "logs"],
        description="Sub-folders of a subject folder uploaded as session resources of the same "
        "name, when the rules do not name the sidecars themselves.",
    )
    subject_file: str = Field(
        "subject.toml",
        description="Optional file in a subject folder with subject metadata (sex, handedness, "
        "yob or dob) to set on the XNAT subject.",
    )
    subject_from_dicom: bool = Field(
        False,
        description="Take sex and year of birth from the DICOM header when subject_file is "
        "absent (PatientSex, PatientBirthDate).",
    )
    ready_timeout_seconds: float = Field(
        900.0,
        gt=0,
        description="How long to wait for a prearchive session to become READY before asking "
        "XNAT to rebuild it and trying again later.",
    )
    poll_seconds: float = Field(
        2.0, gt=0, description="Seconds between looks at the prearchive while waiting."
    )
    anonymization: Literal["site", "prevent"] = Field(
        "site",
        description="'site': XNAT's anonymisation scripts run as the site configured them "
        "(a fresh XNAT rewrites PatientName, PatientID and StudyDescription of every file); "
        "xnatdrop reads whether they are on at push time and verifies instance UIDs, counts and "
        "pixel data, comparing sizes and MD5s only where XNAT keeps the bytes. 'prevent': send "
        "prevent_anon=true, so XNAT stores the files as sent (for sites that de-identify before "
        "the drop); sizes and MD5s are then compared too.",
    )
    verify_checksums: bool | None = Field(
        None,
        description="Deprecated and ignored: whether sizes and MD5s can be compared is now "
        "decided from XNAT's anonymisation settings at push time (see anonymization).",
    )
    breaker_drops: int = Field(
        3,
        ge=2,
        le=50,
        description="When this many different drops in a row get the same permanent-looking "
        "answer from XNAT (e.g. HTTP 400 'unable to read DICOM object' from a full disk), all "
        "pushes are held with an alert instead of quarantining each drop.",
    )
    breaker_hold_seconds: float = Field(
        600.0,
        gt=0,
        description="How long pushes are held before one drop is tried again to see whether "
        "XNAT has recovered; doubled after each failed try, up to retry_max_seconds. A restart "
        "of the daemon tries at once. Also how long a drop that got such an answer waits before "
        "it is tried again and, if XNAT answers it the same way while accepting other drops, "
        "quarantined.",
    )
    receiving_quiet_seconds: float = Field(
        60.0,
        gt=0,
        description="A prearchive copy of ours still RECEIVING is left alone while XNAT keeps "
        "writing to it; unchanged this long, it is a leftover of a cut upload and is deleted "
        "before sending again.",
    )
    # Backoff for transient failures (timeouts, resets, 5xx): exponential with jitter. The wait
    # before attempt n+1 is a random time between half and all of
    # min(retry_max_seconds, retry_base_seconds * 2**n), so drops failing together spread out.
    retry_base_seconds: float = Field(30.0, gt=0, description="First backoff step, in seconds.")
    retry_max_seconds: float = Field(3600.0, gt=0, description="Longest wait between two attempts.")
    inline_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Attempts within one push before it stops and leaves the rest to the next "
        "run (exit 3); waits between them are capped at inline_max_seconds.",
    )
    inline_max_seconds: float = Field(
        60.0, ge=0, description="Longest wait between attempts inside one push."
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


# ---- telling people: [mail], [notify], [metrics] (see `xnatdrop.notify`) ---------------------

MAIL_PASSWORD_ENV = "XNATDROP_SMTP_PASSWORD"
MAIL_CREDENTIAL_NAME = "smtp-password"  # systemd LoadCredential=smtp-password:…
MAIL_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


def _address(value: str) -> str:
    """One e-mail address, `name@host`: no display name, no spaces, no line breaks (a line
    break in a header would let a value add headers of its own)."""
    value = value.strip()
    if not re.fullmatch(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+", value):
        raise ValueError(f"{value!r} is not an e-mail address (write it as name@example.org)")
    return value


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
        return None if value is None else _address(value)

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_address(v) for v in value]

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
        if self.password_file is not None:
            return read_secret_file(self.password_file, "mail.password_file", source)
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / MAIL_CREDENTIAL_NAME).is_file():
            path = Path(credentials) / MAIL_CREDENTIAL_NAME
            return read_secret_file(path, "credential", source)
        if os.environ.get(MAIL_PASSWORD_ENV):
            return os.environ[MAIL_PASSWORD_ENV]
        raise ConfigError(
            source,
            [
                "at 'mail.password_file': mail.username is set but no SMTP password is "
                f"configured; set password_file, systemd's LoadCredential={MAIL_CREDENTIAL_NAME}"
                f":…, or {MAIL_PASSWORD_ENV}"
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


class Config(BaseModel):
    """The whole file. `source` records where it came from, for messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    xnat: XnatSettings = Field(default_factory=XnatSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    drop: list[DropSettings] = Field(default_factory=list)
    settle: SettleSettings = Field(default_factory=SettleSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    push: PushSettings = Field(default_factory=PushSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _dicom_host(self) -> Config:
        """Without `dicom.host`, the receiver is on the XNAT server itself (stock XNAT)."""
        if self.dicom.host is not None:
            return self
        host = urllib.parse.urlsplit(self.xnat.url).hostname or "127.0.0.1"
        dicom = self.dicom.model_copy(update={"host": host})
        updated = self.model_copy(update={"dicom": dicom})
        # model_copy counts an updated field as given; `model_fields_set` must keep saying what
        # the file gave (doctor checks the receiver when a [dicom] section is there).
        object.__setattr__(dicom, "__pydantic_fields_set__", set(self.dicom.model_fields_set))
        object.__setattr__(updated, "__pydantic_fields_set__", set(self.model_fields_set))
        return updated

    @model_validator(mode="after")
    def _logical(self) -> Config:
        roots = [d.path.resolve() for d in self.drop]
        if len(set(roots)) != len(roots):
            raise ValueError("drop roots must be distinct")
        for name in ("quarantine", "done", "state"):
            folder = getattr(self.paths, name).resolve()
            for root in roots:
                if folder == root or root in folder.parents:
                    raise ValueError(f"paths.{name} must not be inside drop root {root}")
        return self

    @model_validator(mode="after")
    def _mail(self) -> Config:
        """Addresses need a server to send through, and a server needs a sender and someone to
        tell."""
        wanted = self.mail.to or any(d.notify_email for d in self.drop)
        if self.mail.host is None:
            if wanted:
                raise ValueError(
                    "e-mail addresses are set (mail.to or drop.notify_email) but mail.host is "
                    "not: set mail.host to your SMTP server"
                )
            return self
        if self.mail.sender is None:
            raise ValueError("mail.host is set: also set mail.sender, the From address")
        if not wanted:
            raise ValueError("mail.host is set: also set mail.to (the site's addresses)")
        return self

    def rules_for(self, drop: DropSettings | None) -> RulesSettings:
        """The rule settings for one drop: `[rules]`, overridden by the keys `[drop.rules]` sets.

        `actions` merge code by code; `sidecars` falls back to `push.sidecars`.
        """
        merged = self.rules.model_dump()
        if drop is not None and drop.rules is not None:
            for name in drop.rules.model_fields_set:
                value = getattr(drop.rules, name)
                merged[name] = {**merged["actions"], **value} if name == "actions" else value
        if merged["sidecars"] is None:
            merged["sidecars"] = list(self.push.sidecars)
        return RulesSettings.model_validate(merged)

    def control_files(self) -> frozenset[str]:
        """Names of xnatdrop's own files a technologist may put at the top of a subject folder
        (the subject metadata file, the settle marker): not DICOM, not uploaded, not findings."""
        names = {self.push.subject_file, self.settle.marker_name}
        return frozenset(name for name in names if name)

    def drop_for(self, folder: Path) -> DropSettings | None:
        """The drop root a subject folder sits in, if any."""
        parent = folder.resolve().parent
        return next((d for d in self.drop if d.path.resolve() == parent), None)


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see config/xnatdrop.example.toml)"
    return f"at '{_location(error['loc'])}': {message}"


def parse(data: dict[str, Any], source: str) -> Config:
    """Validate already-parsed TOML; raise ConfigError listing every problem."""
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, [_describe(e) for e in error.errors()]) from None
    if config.push.verify_checksums is not None:
        log.warning(
            "%s: push.verify_checksums is deprecated and ignored: xnatdrop now reads XNAT's "
            "anonymisation settings at push time and compares sizes and MD5s only where XNAT "
            'keeps the bytes; remove it (push.anonymization = "prevent" sends prevent_anon=true)',
            source,
        )
    if config.xnat.password is not None:
        log.warning(
            "%s: xnat.password is a literal password in the config file; "
            "move it to a file named by xnat.password_file (mode 0600)",
            source,
        )
    return config


SYSTEM_PATH = Path("/etc/xnatdrop/xnatdrop.toml")


def load_or_system(path: Path | None) -> Config:
    """Load `path`; without one, the system file if it exists, else the built-in defaults.

    What `run`, `push`, `status`, `requeue` and `doctor` use, so an operator on the server does
    not have to repeat `--config`; `check` and `config check` take only what they are given.
    """
    return load(system_or(path))


def system_or(path: Path | None) -> Path | None:
    """The file `load_or_system` reads: `path`, else the system file if it exists, else None."""
    return path if path is not None or not SYSTEM_PATH.exists() else SYSTEM_PATH


def source_name(path: Path | None) -> str:
    """How messages name where the settings came from."""
    chosen = system_or(path)
    return str(chosen) if chosen is not None else "(built-in defaults)"


def load(path: Path | None) -> Config:
    """Load and validate `path`; with None, return the built-in defaults.

    Raise ConfigError (file, key, problem) for anything wrong; the CLI turns it into exit 2.
    """
    if path is None:
        return parse({}, "(built-in defaults)")
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except OSError as error:
        raise ConfigError(source, [f"cannot read: {error.strerror}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [f"not valid TOML: {error}"]) from None
    return parse(data, source)
