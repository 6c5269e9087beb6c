"""The sandbox's behaviour switches: XNAT preferences it models and test timings.

`Settings` is what `Sandbox(**settings)`, `/_sandbox/settings` and the `/xapi/siteConfig`
preferences change. Values are checked as XNAT would check them, and refused where the sandbox
cannot model them (a password expiry by fixed date).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

UNMODELLED_EXPIRATION_TYPES = ("Date",)
"""`passwordExpirationType` values the sandbox refuses: XNAT's `Date` type (expired once a fixed
date has passed) is not modelled. `Interval` expires; any other value disables expiry, as
`ExpirationType.value` maps it to `Disabled`."""

#: PostgreSQL interval units in seconds, as `interval_cmp` compares them: a month is 30 days and a
#: year 12 months, so "1 year" is 360 days (src/backend/utils/adt/timestamp.c, DAYS_PER_MONTH).
_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 360 * 86400,
}
_ABBREVIATIONS = {
    "s": "second", "sec": "second", "secs": "second", "seconds": "second",
    "m": "minute", "min": "minute", "mins": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hours": "hour",
    "d": "day", "days": "day", "w": "week", "weeks": "week",
    "mon": "month", "mons": "month", "months": "month",
    "y": "year", "yr": "year", "yrs": "year", "years": "year",
}  # fmt: skip
_INTERVAL_PART = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*([a-z]*)\s*")


def parse_interval(text: str) -> float:
    """Seconds in a PostgreSQL interval such as "1 year" or "90 days 12 hours".

    Raise ValueError for anything else (the sandbox refuses what it cannot compare).
    """
    total, position, lowered = 0.0, 0, text.strip().lower()
    while position < len(lowered):
        match = _INTERVAL_PART.match(lowered, position)
        if match is None or match.end() == position:
            raise ValueError(f"not a PostgreSQL interval: {text!r} (e.g. '1 year', '90 days')")
        unit = _ABBREVIATIONS.get(match.group(2), match.group(2)) or "second"
        if unit not in _UNITS:
            raise ValueError(f"unknown interval unit {match.group(2)!r} in {text!r}")
        total += float(match.group(1)) * _UNITS[unit]
        position = match.end()
    if not lowered:
        raise ValueError("an empty password expiration interval")
    return total


@dataclass
class Settings:
    """Behaviour switches; all can be changed at run time through `/_sandbox/settings`."""

    session_timeout: float = 900.0  # idle seconds before a JSESSIONID stops working (§2.2)
    login_page_on_expiry: bool = False  # expired cookie → 200 + login HTML (pitfall 12)
    rebuild_idle: float = 300.0  # RECEIVING sessions idle this long are built (§4.4)
    rebuild_repeat: float = 60.0  # how often the rebuilder looks, in wall seconds
    archive_timeout: float = 600.0  # sessionArchiveTimeoutInterval (slow-archive fault)
    site_url: str = ""  # XNAT's siteUrl preference; "" = the sandbox's own URL
    password_expiration_type: str = "Interval"  # SiteConfigPreferences l.539 (Date: not modelled)
    password_expiration_interval: str = "1 year"  # l.552, a PostgreSQL interval
    password_filter_before_basic: bool = False  # True: Basic + expired password → 403 (site.py)
    allow_insecure_cookies: bool = False  # SecurityPreferences: never mark cookies Secure
    concurrent_max_sessions: int = 1000  # SiteConfigPreferences l.1039; -1 = no cap

    def check(self) -> None:
        """Raise ValueError for a value XNAT would not accept or the sandbox cannot model."""
        if self.password_expiration_type in UNMODELLED_EXPIRATION_TYPES:
            raise ValueError(
                f"password_expiration_type {self.password_expiration_type!r} is not modelled "
                "by the sandbox: use Interval or Disabled"
            )
        parse_interval(self.password_expiration_interval)

    def changed(self, **changes: Any) -> Settings:
        """A checked copy with `changes` applied (JSON values coerced to each setting's type);
        ValueError names an unknown setting or a value XNAT would refuse, and nothing changes."""
        updated = Settings(**asdict(self))
        for key, value in changes.items():
            if not hasattr(updated, key):
                raise ValueError(f"unknown setting {key!r}")
            setattr(updated, key, _coerce(key, value, type(getattr(updated, key))))
        updated.check()
        return updated


def _coerce(key: str, value: Any, kind: type) -> Any:
    """A JSON value for a setting of type `kind`; booleans must be true/false, not any string."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"setting {key!r} takes true or false, not {value!r}")
    return kind(value)
