"""Loading the file: TOML read with tomllib, validated by pydantic, every problem reported at
once with its key (`drop[0].label_pattern`). `xnatdrop config check` uses exactly this loader."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xnatdrop.config.model import Config
from xnatdrop.errors import ConfigError

log = logging.getLogger(__name__)


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
