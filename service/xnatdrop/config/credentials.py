"""Secrets, which never go in the TOML: the XNAT and SMTP passwords, from a file, a systemd
credential or the environment.

Like borgmatic's `hooks/credential/systemd.py`: a credential is looked up by name in
$CREDENTIALS_DIRECTORY (systemd's `LoadCredential=`), and an error names the place, never the
value. A password file that group or others may read is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from xnatdrop.errors import ConfigError

PASSWORD_ENV = "XNATDROP_XNAT_PASSWORD"
CREDENTIAL_NAME = "xnat-password"  # the name used with systemd's LoadCredential=
MAIL_PASSWORD_ENV = "XNATDROP_SMTP_PASSWORD"
MAIL_CREDENTIAL_NAME = "smtp-password"  # systemd LoadCredential=smtp-password:…


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


def find_secret(
    password_file: Path | None, key: str, credential: str, env: str, source: str
) -> str | None:
    """The secret from the first place that has one, or None.

    Order: `password_file` (the setting `key`), the systemd credential `credential`, the
    environment variable `env`. Raise ConfigError naming the place (never the value) when a
    file is unusable.
    """
    if password_file is not None:
        return read_secret_file(password_file, key, source)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / credential).is_file():
        return read_secret_file(Path(credentials) / credential, "credential", source)
    return os.environ.get(env) or None
