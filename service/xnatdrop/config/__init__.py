"""The xnatdrop configuration: one TOML file, read with tomllib, validated by pydantic.

Every model forbids unknown keys, so a typo is an error rather than a silent default. All
problems in a file are reported at once, each with its key (`drop[0].label_pattern`), and
`xnatdrop config check` uses exactly this loader.

- `section`: the strict base of every section and the values sections share;
- `server`: `[xnat]` (the REST API and its login) and `[dicom]` (the DICOM receiver);
- `drops`: `[paths]`, `[[drop]]`, `[rules]`, `[settle]`;
- `push`: `[schedule]` and `[push]`;
- `notify`: `[mail]`, `[notify]`, `[metrics]`;
- `model`: `Config`, the whole file, and the checks that span sections;
- `credentials`: the passwords, from a file, a systemd credential or the environment;
- `loader`: reading and validating a file (`load`, `load_or_system`, `parse`).

Callers import the package: `config.load(path)`, `config.Config`, `config.DropSettings`.
"""

from xnatdrop.config.credentials import (
    CREDENTIAL_NAME,
    MAIL_CREDENTIAL_NAME,
    MAIL_PASSWORD_ENV,
    PASSWORD_ENV,
    read_secret_file,
)
from xnatdrop.config.drops import (
    DEFAULT_TEMP_PATTERNS,
    DropSettings,
    LabelSource,
    PathSettings,
    RuleAction,
    RulesSettings,
    SettleSettings,
)
from xnatdrop.config.loader import SYSTEM_PATH, load, load_or_system, parse, source_name, system_or
from xnatdrop.config.model import Config
from xnatdrop.config.notify import MAIL_PORTS, MailSettings, MetricsSettings, NotifySettings
from xnatdrop.config.push import PushSettings, ScheduleSettings
from xnatdrop.config.section import XNAT_ID_PATTERN, Section
from xnatdrop.config.server import DicomSettings, XnatSettings
from xnatdrop.errors import ConfigError

__all__ = [
    "CREDENTIAL_NAME",
    "DEFAULT_TEMP_PATTERNS",
    "MAIL_CREDENTIAL_NAME",
    "MAIL_PASSWORD_ENV",
    "MAIL_PORTS",
    "PASSWORD_ENV",
    "SYSTEM_PATH",
    "XNAT_ID_PATTERN",
    "Config",
    "ConfigError",
    "DicomSettings",
    "DropSettings",
    "LabelSource",
    "MailSettings",
    "MetricsSettings",
    "NotifySettings",
    "PathSettings",
    "PushSettings",
    "RuleAction",
    "RulesSettings",
    "ScheduleSettings",
    "Section",
    "SettleSettings",
    "XnatSettings",
    "load",
    "load_or_system",
    "parse",
    "read_secret_file",
    "source_name",
    "system_or",
]
