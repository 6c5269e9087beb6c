"""File names as the file system holds them, and as a person can read them.

A copy from an SMB share or a USB stick formatted with another character set can leave names
that are not valid UTF-8 (latin-1 "Muñoz" is the bytes `Mu\\xf1oz`). Python hands such names
over as surrogate escapes (PEP 383); they work for opening the file, but cannot be written to a
log, a JSON reason file or the ledger as text. Everywhere a name is shown, it goes through
`shown`, which prints the offending bytes as `\\xNN`.
"""

from __future__ import annotations

import os


def valid(name: str) -> bool:
    """False for a name that is not valid UTF-8 (it arrived as surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str) -> str:
    """`name` fit for a log line or a reason file: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
