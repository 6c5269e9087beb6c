"""File names as the file system holds them, and as a person can read them.

A copy from an SMB share or a USB stick formatted with another character set can leave names
that are not valid UTF-8 (latin-1 "Muñoz" is the bytes `Mu\\xf1oz`). Python hands such names
over as surrogate escapes (PEP 383); they work for opening the file, but cannot be written to a
log, a JSON reason file or the ledger as text. Everywhere a name is shown, it goes through
`shown`, which prints the offending bytes as `\\xNN`.
"""

from __future__ import annotations

import hashlib
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


NAME_MAX = 255  # bytes in one file name: Linux file systems, and SMB/NFS shares mounted there
_HASH = 10  # hex digits of SHA-1 that keep two shortened names apart


def fit(name: str, suffix: str = "", limit: int = NAME_MAX) -> str:
    """`name + suffix` if it fits in `limit` bytes; else `name` cut short, then `~` and a hash
    of the whole of `name`, then `suffix`.

    xnatdrop adds to names a person chose: `<label>__<time>` in quarantine/, `<label>__2` in
    done/, `<project>__<label>.lock`. A folder with a 255-byte name then made a lock file name
    too long for the kernel (ENAMETOOLONG), and the folder was never processed. The hash keeps
    two long names apart that differ only at their end; the cut never splits a character.
    """
    whole = name + suffix
    if len(os.fsencode(whole)) <= limit:
        return whole
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:_HASH]
    room = limit - len(os.fsencode(suffix)) - len(digest) - 1
    if room < 1:
        raise ValueError(f"a suffix of {len(os.fsencode(suffix))} bytes leaves no room")
    head = name
    while len(os.fsencode(head)) > room:
        head = head[: max(len(head) - max((len(os.fsencode(head)) - room) // 4, 1), 0)]
    return f"{head}~{digest}{suffix}"
