"""The folder walk: which files a subject folder holds, listed without following links.

`scan` lists the files the rules judge, notes the sidecar folders (listed, never judged as
DICOM), passes over OS litter and xnatdrop's own control and reason files, and records as hits
what cannot be read or named (UNREADABLE, SYMLINK, BAD_NAME). `identity` and `FolderGone` tell a
folder that went away while it was read (an unmounted share) from bad data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from xnatdrop import dicomfiles, names, reasonfiles
from xnatdrop.errors import TransientError
from xnatdrop.rules import model

DEFAULT_SIDECARS = ("behav", "physio", "logs")
LITTER_DIRS = frozenset(
    {"__macosx", ".appledouble", ".trashes", ".spotlight-v100", ".fseventsd", "$recycle.bin"}
)
LITTER_DIRS |= {"system volume information"}


class FolderGone(TransientError):
    """The subject folder went away, or another folder took its place, while it was read.

    An unmounted or disconnected share does this: every file read after that moment fails,
    which would otherwise become UNREADABLE findings and quarantine complete data (found by the
    campaign, local/share-unmounted). Nothing can be said about the data, so the check is
    worth repeating once the folder is back, never a verdict.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(
            f"{names.shown(str(folder))} went away while it was checked (share unmounted or "
            "disconnected?); it is checked again once it is back"
        )


def identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder, or None if it cannot be reached now."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


@dataclasses.dataclass
class Tree:
    """What `scan` found: the files to judge, the sidecar folders, the hits of the walk itself
    and xnatdrop's own reason files at the top."""

    # The files to judge, relative, not in sidecars, as text ("folder/name", POSIX), which is
    # what each file's facts and entry keep as its path: a `Path` per file (an object, a list
    # of parts and a string per part, ~230 bytes) held by the facts of 50,000 files was the
    # largest part of the check's peak. Rules that report a file make its Path then (`Hit`).
    files: list[str] = dataclasses.field(default_factory=list)
    # The folder each file lies in (`model.series_folder` of it), one object per folder:
    # `path.parent` makes a new Path at each call, several times a file in the rules.
    folders: list[Path] = dataclasses.field(default_factory=list)
    sidecars: dict[str, Path] = dataclasses.field(default_factory=dict)
    hits: list[model.Hit] = dataclasses.field(default_factory=list)
    reason_files: list[Path] = dataclasses.field(default_factory=list)


def scan(folder: Path, sidecar_names: Iterable[str], control_files: frozenset[str]) -> Tree:
    """List files without following links; note sidecars, links and unreadable folders."""
    tree = Tree()
    wanted = {name.lower(): name for name in sidecar_names}
    ours = {p.name for p in reasonfiles.find_own(folder)}
    tree.reason_files = sorted(Path(name) for name in ours)
    # Depth first, each folder's entries in name order and a subfolder's files listed where
    # its name sorts: the order of the files' Paths (part by part), with nothing to sort
    # after. Why: sorting at the end needed a key and a tuple of parts per file (~200 bytes
    # a file) besides its name, freed after the walk but not given back to the system, so
    # the walk was the check's peak resident memory (issue 13).
    pending: list[tuple[Path, str, Iterator[os.DirEntry[str]]]] = []
    opened = _listing(folder, model.TOP, tree)
    if opened is not None:
        pending.append((model.TOP, "", opened))
    while pending:
        relative, prefix, entries = pending[-1]
        entry = next(entries, None)
        if entry is None:
            pending.pop()
            continue
        at_top = relative == model.TOP
        if not names.valid(entry.name):
            tree.hits.append(_bad_name(relative, entry))
        elif at_top and entry.name in ours:
            continue
        elif entry.is_symlink():
            link = relative / entry.name
            tree.hits.append(model.Hit("SYMLINK", link, "symbolic link, not followed"))
        elif entry.is_dir(follow_symlinks=False):
            if entry.name.lower() in LITTER_DIRS:
                continue
            path = relative / entry.name
            if at_top and entry.name.lower() in wanted:
                tree.sidecars[wanted[entry.name.lower()]] = folder / path
                _scan_sidecar(folder, path, tree)
            else:
                inner = _listing(folder, path, tree)
                if inner is not None:
                    pending.append((path, f"{prefix}{entry.name}/", inner))
        elif at_top and entry.name in control_files:
            continue
        elif not entry.is_file(follow_symlinks=False):
            # A FIFO or device node is never opened (opening a device can act on it); the
            # listing's type says so without a stat on SMB/NFS.
            odd = relative / entry.name
            tree.hits.append(model.Hit("UNREADABLE", odd, "not a regular file"))
        elif not dicomfiles.is_os_litter(entry.name):
            # No Path per file: a Path would intern each file's name for as long as it lives.
            tree.files.append(prefix + entry.name)
            tree.folders.append(relative)
    return tree


def _listing(folder: Path, relative: Path, tree: Tree) -> Iterator[os.DirEntry[str]] | None:
    """The entries of one folder in name order, or None (and an UNREADABLE hit)."""
    try:
        with os.scandir(folder / relative) as entries:
            return iter(sorted(entries, key=lambda e: e.name))
    except OSError as error:
        tree.hits.append(model.Hit("UNREADABLE", relative, f"cannot list folder: {error.strerror}"))
        return None


def _scan_sidecar(folder: Path, top: Path, tree: Tree) -> None:
    """Sidecar contents are not checked as DICOM, but links and unreadable files still count."""
    pending = [top]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(folder / relative) as entries:
                for entry in entries:
                    path = relative / entry.name
                    if not names.valid(entry.name):
                        tree.hits.append(_bad_name(relative, entry))
                    elif entry.is_symlink():
                        tree.hits.append(model.Hit("SYMLINK", path, "symbolic link, not followed"))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(path)
                    elif not entry.is_file(follow_symlinks=False):
                        tree.hits.append(model.Hit("UNREADABLE", path, "not a regular file"))
                    elif not os.access(folder / path, os.R_OK):
                        tree.hits.append(model.Hit("UNREADABLE", path, "permission denied"))
        except OSError as error:
            tree.hits.append(
                model.Hit("UNREADABLE", relative, f"cannot list folder: {error.strerror}")
            )


def _bad_name(relative: Path, entry: os.DirEntry[str]) -> model.Hit:
    """BAD_NAME for one entry: never read, never uploaded, shown with its bytes escaped.

    The escaped path is all that travels on (findings, reason files, logs): the name itself
    cannot be written as text anywhere.
    """
    kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
    shown = Path(names.shown(str(relative / entry.name)))
    return model.Hit("BAD_NAME", shown, f"{kind} name {shown.name} is not valid UTF-8")
