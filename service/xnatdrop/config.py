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
from pathlib import Path
from typing import Annotated, Any

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
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")
    timeout_seconds: float = Field(
        120.0, gt=0, description="Timeout for connecting and for each read from XNAT."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must start with http:// or https:// and name a host")
        return value.rstrip("/")

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


class Config(BaseModel):
    """The whole file. `source` records where it came from, for messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    xnat: XnatSettings = Field(default_factory=XnatSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    drop: list[DropSettings] = Field(default_factory=list)

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
    if config.xnat.password is not None:
        log.warning(
            "%s: xnat.password is a literal password in the config file; "
            "move it to a file named by xnat.password_file (mode 0600)",
            source,
        )
    return config


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
