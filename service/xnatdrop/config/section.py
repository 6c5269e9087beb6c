"""What every section of the configuration shares: the strict base model and common values.

Every model forbids unknown keys, so a typo is an error rather than a silent default
(borgmatic's `additionalProperties: false`).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

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


def email_address(value: str) -> str:
    """One e-mail address, `name@host`: no display name, no spaces, no line breaks (a line
    break in a header would let a value add headers of its own)."""
    value = value.strip()
    if not re.fullmatch(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+", value):
        raise ValueError(f"{value!r} is not an e-mail address (write it as name@example.org)")
    return value
