"""What a folder looks like on one scan: its fingerprint, and the cheap shallow signature.

A folder is *settled* when its fingerprint (file count, total bytes, newest mtime and ctime, and
a digest of the sorted relative names with sizes) is unchanged over several scans (see
`watcher`). Sizes and counts are compared, not ages, so copies that keep the source's
modification times (robocopy /COPY:DAT, Explorer) settle correctly. Temporary names (`*.part`,
`~$*`, …) and the optional marker file are noted on the way.

A settled folder waiting for the upload window is checked with the shallow signature (the folder
and its direct subfolders: names, mtimes, ctimes), and re-fingerprinted in full only when that
changes, so scans stay cheap on large shares.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xnatdrop import config as config_module


@dataclass(frozen=True)
class Fingerprint:
    """What a folder looks like on one scan; equal fingerprints mean nothing visible changed."""

    files: int
    bytes: int
    newest_mtime_ns: int
    newest_ctime_ns: int
    names_digest: str
    temp_names: tuple[str, ...] = ()
    marker: bool = False


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Case-insensitive fnmatch: SMB shares do not keep case apart, so neither do we."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def fingerprint(folder: Path, settle: config_module.SettleSettings) -> Fingerprint:
    """Walk `folder` with os.scandir and summarise it; symlinks are counted, never followed.

    Raise OSError when the folder itself cannot be listed (it vanished, or the share went away);
    a file that disappears during the walk is simply not counted (the next scan sees a change).
    """
    files = total = newest_m = newest_c = 0
    entries: list[str] = []
    temp: list[str] = []
    marker = False
    pending = [(folder, "")]
    first = True
    while pending:
        directory, prefix = pending.pop()
        try:
            iterator = os.scandir(directory)
        except FileNotFoundError:
            if first:
                raise
            continue
        first = False
        with iterator:
            for entry in iterator:
                relative = prefix + entry.name
                if matches_any(entry.name, settle.temp_patterns):
                    temp.append(relative)
                try:
                    info = entry.stat(follow_symlinks=False)
                    is_dir = entry.is_dir(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                newest_m = max(newest_m, info.st_mtime_ns)
                newest_c = max(newest_c, info.st_ctime_ns)
                if is_dir:
                    entries.append(relative + "/")
                    pending.append((Path(entry.path), relative + "/"))
                    continue
                if not prefix and settle.marker_name and entry.name == settle.marker_name:
                    marker = True
                files += 1
                total += info.st_size
                entries.append(f"{relative}\0{info.st_size}")
    # os.fsencode, not str.encode: a name that is not valid UTF-8 (latin-1 bytes from an SMB or
    # USB copy) reaches Python as surrogate escapes, which plain UTF-8 encoding refuses.
    digest = hashlib.blake2b(os.fsencode("\n".join(sorted(entries))), digest_size=16).hexdigest()
    return Fingerprint(files, total, newest_m, newest_c, digest, tuple(sorted(temp)[:5]), marker)


# A handle that can only name the folder (O_PATH: no read permission needed, as for a stat).
_FOLDER_HANDLE = os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)


def shallow_signature(
    folder: Path, previous: tuple[object, ...] | None = None
) -> tuple[object, ...]:
    """The folder's own times plus each direct entry's name, type and times.

    Adding, removing or renaming a file anywhere one level down changes the mtime of the
    directory holding it, so this catches files added to a settled folder's series folders at
    the cost of one listing and a few stats, instead of a stat per file. It does not see a file
    rewritten in place; `Watcher.confirm` re-fingerprints in full before hand-over for that.

    With `previous` (the last signature) and unchanged folder times, the entries cannot have
    changed, so only the known subfolders are stat'ed again, without listing the folder. Those
    stats are relative to the open folder (`dir_fd`): the kernel looks up one name each instead
    of the whole path, and no Path is built; this is most of what a settled folder costs a scan
    (half the CPU of stat'ing full paths, over 1,000 folders).
    """
    handle = os.open(folder, _FOLDER_HANDLE)
    try:
        info = os.fstat(handle)
        parts: list[object] = [info.st_mtime_ns, info.st_ctime_ns]
        if previous is not None and tuple(previous[:2]) == tuple(parts):
            try:
                for part in previous[2:]:
                    if isinstance(part, tuple):
                        sub = os.stat(part[0], dir_fd=handle, follow_symlinks=False)
                        parts.append((part[0], sub.st_mtime_ns, sub.st_ctime_ns))
                    else:
                        parts.append(part)
                return tuple(parts)
            except FileNotFoundError:
                parts = parts[:2]
    finally:
        os.close(handle)
    with os.scandir(folder) as iterator:
        for entry in sorted(iterator, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                sub = entry.stat(follow_symlinks=False)
                parts.append((entry.name, sub.st_mtime_ns, sub.st_ctime_ns))
            else:
                parts.append(entry.name)
    return tuple(parts)
