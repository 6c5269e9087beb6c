"""The folder walk: which files a subject folder holds, listed without following links.

`scan` lists the files the rules judge, notes the sidecar folders (listed, never judged as
DICOM), passes over OS litter and xnatdrop's own control and reason files, and records as hits
what cannot be read or named (UNREADABLE, SYMLINK, BAD_NAME). `identity` and `FolderGone` tell a
folder that went away while it was read (an unmounted share) from bad data.
"""

from __future__ import annotations

import dataclasses
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

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


class Names(Sequence[str]):
    """The files a walk found, as text ("folder/name", POSIX), each made when asked for.

    Why not a list of strings: the check holds the name of every file from the walk to its
    verdict (55,000 in an 8 GB session), ~100 bytes a file as a string and two list slots
    (issue 13). Here each folder's prefix is held once, and a file's own name is a slice of one
    string of names: ~20 bytes a file.
    """

    __slots__ = ("_ends", "_folder_of", "_folders", "_pending", "_prefixes", "_text")

    def __init__(self) -> None:
        self._prefixes: list[str] = []  # "folder/" ('' at the top)
        self._folders: list[Path] = []  # the same folders as Paths, one object each
        self._folder_of = array("I")  # each file's index in those
        # Where each file's name ends in `_text`: 4 bytes a file, 8 past 4 GiB of names.
        self._ends = array("I")
        self._text = ""
        self._pending: list[str] = []  # a folder's names each, joined by `_close`

    def add_folder(self, prefix: str, folder: Path, names: list[str]) -> None:
        """Add the files `names` (in order) of `folder`, whose text is `prefix`."""
        if not names:
            return
        index = len(self._prefixes)
        self._prefixes.append(prefix)
        self._folders.append(folder)
        at = self._ends[-1] if self._ends else 0
        if at + sum(map(len, names)) > _ENDS_MAX and self._ends.typecode == "I":
            self._ends = array("Q", self._ends)
        for name in names:
            at += len(name)
            self._ends.append(at)
            self._folder_of.append(index)
        self._pending.append("".join(names))

    def _close(self) -> None:
        if self._pending:
            self._text = "".join([self._text, *self._pending])
            self._pending.clear()

    def __len__(self) -> int:
        return len(self._ends)

    def _name(self, index: int) -> str:
        return (
            self._prefixes[self._folder_of[index]]
            + self._text[self._ends[index - 1] if index else 0 : self._ends[index]]
        )

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        self._close()
        if isinstance(index, slice):
            return [self._name(i) for i in range(len(self))[index]]
        return self._name(range(len(self))[index])

    def __iter__(self) -> Iterator[str]:
        self._close()
        return map(self._name, range(len(self)))

    def folders(self) -> Iterator[Path]:
        """The folder of each file, in order (one Path object per folder)."""
        folders = self._folders
        return (folders[i] for i in self._folder_of)

    def folders_of(self, rows: array) -> Folders:
        """The folder of each of the files `rows` (indexes into these names), as a sequence
        read from the walk's own columns: nothing held per file."""
        return Folders(self._folders, self._folder_of, rows)


_ENDS_MAX = 0xFFFFFFFF  # the largest end offset an array("I") holds


class Folders(Sequence[Path]):
    """The folder of some files of a walk (`Names.folders_of`), each looked up when read.

    Why: the rules that judge files together read each file's series folder beside its facts
    (`rules.files.content_hits`, `rules.series.folder_hits`, the verdict's series). A list of
    them was 8-9 bytes a file at the check's peak, for what the walk already holds.
    """

    __slots__ = ("_folder_of", "_folders", "_rows")

    def __init__(self, folders: list[Path], folder_of: array, rows: array) -> None:
        self._folders = folders
        self._folder_of = folder_of
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Path: ...
    @overload
    def __getitem__(self, index: slice) -> list[Path]: ...
    def __getitem__(self, index: int | slice) -> Path | list[Path]:
        if isinstance(index, slice):
            return [self._folders[self._folder_of[row]] for row in self._rows[index]]
        return self._folders[self._folder_of[self._rows[index]]]

    def __iter__(self) -> Iterator[Path]:
        folders, folder_of = self._folders, self._folder_of
        return (folders[folder_of[row]] for row in self._rows)


@dataclasses.dataclass
class Tree:
    """What `scan` found: the files to judge, the sidecar folders, the hits of the walk itself
    and xnatdrop's own reason files at the top."""

    # The files to judge, relative, not in sidecars, as text ("folder/name", POSIX), which is
    # what each file's facts and entry keep as its path: a `Path` per file (an object, a list
    # of parts and a string per part, ~230 bytes) held by the facts of 50,000 files was the
    # largest part of the check's peak. Rules that report a file make its Path then (`Hit`).
    # Held compactly (`Names`); `files.folders()` gives each file's folder (`Series.folder`).
    files: Names = dataclasses.field(default_factory=Names)
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
    # Each open folder: its path, text, entries still to see, and its files found since the
    # last subfolder (added to `tree.files` before a subfolder's files, and at its end).
    pending: list[tuple[Path, str, Iterator[os.DirEntry[str]], list[str]]] = []
    opened = _listing(folder, model.TOP, tree)
    if opened is not None:
        pending.append((model.TOP, "", opened, []))
    while pending:
        relative, prefix, entries, found = pending[-1]
        entry = next(entries, None)
        if entry is None:
            tree.files.add_folder(prefix, relative, found)
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
                    tree.files.add_folder(prefix, relative, found)
                    found.clear()
                    pending.append((path, f"{prefix}{entry.name}/", inner, []))
        elif at_top and entry.name in control_files:
            continue
        elif not entry.is_file(follow_symlinks=False):
            # A FIFO or device node is never opened (opening a device can act on it); the
            # listing's type says so without a stat on SMB/NFS.
            odd = relative / entry.name
            tree.hits.append(model.Hit("UNREADABLE", odd, "not a regular file"))
        elif not dicomfiles.is_os_litter(entry.name):
            found.append(entry.name)
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
