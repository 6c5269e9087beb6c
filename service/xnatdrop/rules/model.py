"""The records of a verdict: what `check_folder` returns and what travels on from it.

- `FileEntry`: one file to upload with its DICOM identity, which the spool, the zip's plan and
  the manifest carry on without parsing the file again;
- `FileList`: the files of a series by column, read as a tuple of `FileEntry`;
- `Series`, `Finding`, `Verdict`: the outcome of checking one subject folder;
- `Hit`: one rule that fired, before `verdict` groups hits into findings and applies actions;
- `action_for`: the action the configuration gives a code.

It imports no other part of the rules, so each of them can import it.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, overload

from xnatdrop import codes

if TYPE_CHECKING:
    from xnatdrop import config

Action = codes.Action
# The subject folder itself, as a relative path. One object, compared with per file: building
# Path(".") for each comparison cost more than the comparison (10,000s of files a check).
TOP = Path(".")
SEVERITY = {Action.BLOCK: 0, Action.EXCLUDE: 1, Action.WARN: 2, Action.IGNORE: 3}


@dataclasses.dataclass(frozen=True, slots=True)
class FileEntry:
    """One file to upload: its path relative to the subject folder, its size when checked, and
    its DICOM identity, which the packer, the verifier and the receipt use without parsing the
    file again. A sidecar file has no DICOM identity (its UIDs are empty).

    The same identity travels the whole way: the check step stores it in the spool, the zip's
    plan carries it (`pack.Planned`), and a manifest line is a FileEntry plus its MD5
    (`pack.Entry`). Slots, because a verdict holds one per file of the session (55,000 in an
    8 GB session): without them each entry carried a dict of ~300 bytes.

    `path` is text ("series folder/file name", POSIX), not a `Path`: a Path is an object, a
    list of its parts and a string per part, ~230 bytes a file beside the ~70 of the text, and
    the check record, the plan and the manifest each hold one per file. Everything that takes a
    path takes the text (`os.path.join`, `folder / entry.path`, `Path(entry.path)`). A `Path`
    given is turned into its text, so an entry made either way is the same entry.
    """

    path: str
    size: int
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    series_instance_uid: str = ""
    series_number: str = ""
    study_instance_uid: str = ""
    transfer_syntax: str = ""

    def __post_init__(self) -> None:
        if type(self.path) is not str:
            object.__setattr__(self, "path", Path(self.path).as_posix())

    def to_json(self) -> dict[str, Any]:
        """The entry's fields (a subclass's too) as JSON values. Not `dataclasses.asdict`: it
        deep-copies every value, ten times the cost of this for a spool of 50,000 entries,
        whose values are all flat."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """The entry `to_json` wrote (a subclass's too). Keys it does not know are ignored and
        missing ones left empty: a spool written by an older xnatdrop still reads."""
        known = _field_names(cls)
        values = {key: value for key, value in data.items() if key in known}
        for name in _SHARED_TEXT:  # one string per session or series, not one per file
            if type(values.get(name)) is str:
                values[name] = sys.intern(values[name])
        values["path"] = str(values["path"])
        values["size"] = int(values.get("size", 0))
        return cls(**values)


_SHARED_TEXT = (
    "sop_class_uid",
    "series_instance_uid",
    "series_number",
    "study_instance_uid",
    "transfer_syntax",
)
"""Fields whose values repeat across a series: a spool read back shares one string for each
(`sys.intern`) instead of decoding a copy per file, ~300 bytes a file."""


# The fields of a FileEntry besides path, size and SOPInstanceUID: the same for nearly every
# file of a series, kept once per distinct combination.
Shared = tuple[str, str, str, str, str]


class FileList(Sequence[FileEntry]):
    """The files of one series (`Series.files`) by column, read as a tuple of `FileEntry`.

    Why: a verdict holds every file to upload until the push has sent them (55,000 in an
    8 GB session); one FileEntry per file with its path, UID and size as objects of their own
    was ~300 bytes a file, ~75 here: a series' folder said once, names and UIDs in one string
    each, sizes in an array, the four UIDs a series shares kept once (issue 13).

    Entries by column; compares equal to a tuple of the same entries, as the tuple did.

    Only plain `FileEntry`s: a subclass's extra fields would be lost (`Series` keeps a tuple of
    those as it is).
    """

    __slots__ = ("_ends", "_kinds", "_names", "_prefix", "_shared", "_sizes", "_sops")

    def __init__(self, entries: Iterable[FileEntry] = (), prefix: str | None = None) -> None:
        """`prefix` is the text every path starts with ("series folder/"); None: found from
        the first entry, '' if any path does not start with it."""
        self._prefix = prefix
        self._shared: list[Shared] = []
        self._kinds = array("H")
        # 4 bytes a size (8 once a file of 4 GiB or more is added): a verdict holds one per
        # file to upload until the push is done (issue 13).
        self._sizes = array("I")
        self._ends = array("I")  # where each name ends in `_names`, and its UID in `_sops`
        self._names: Any = []  # a list while adding, one string after `_close`
        self._sops: Any = []
        entries = list(entries) if prefix is None else entries
        if self._prefix is None:
            paths = [e.path for e in entries]  # type: ignore[union-attr]
            first = paths[0].rpartition("/")[0] + "/" if paths and "/" in paths[0] else ""
            self._prefix = first if all(p.startswith(first) for p in paths) else ""
        for entry in entries:
            if type(entry) is not FileEntry:
                raise TypeError(f"FileList holds FileEntry only, not {type(entry).__name__}")
            self.add(
                entry.path, entry.size, entry.sop_instance_uid,
                (entry.sop_class_uid, entry.series_instance_uid, entry.series_number,
                 entry.study_instance_uid, entry.transfer_syntax),
            )  # fmt: skip
        self._close()

    def add(self, path: str, size: int, sop: str, shared: Shared) -> None:
        """Add one file (before `_close`); `path` must start with the prefix."""
        if not path.startswith(self._prefix or ""):  # type: ignore[arg-type]
            raise ValueError(f"{path!r} is not under {self._prefix!r}")
        try:
            kind = self._shared.index(shared)
        except ValueError:
            kind = len(self._shared)
            self._shared.append(shared)
        self._kinds.append(kind)
        try:
            self._sizes.append(size)
        except OverflowError:  # a file of 4 GiB or more: this list's sizes take 8 bytes each
            self._sizes = array("q", self._sizes)
            self._sizes.append(size)
        self._names.append(path[len(self._prefix or "") :])
        self._sops.append(sop)

    def _close(self) -> None:
        if isinstance(self._names, list):
            ends, at, sop_at = self._ends, 0, 0
            for name, sop in zip(self._names, self._sops, strict=True):
                at += len(name)
                sop_at += len(sop)
                ends.append(at)
                ends.append(sop_at)
            self._names = "".join(self._names)
            self._sops = "".join(self._sops)

    @classmethod
    def building(cls, prefix: str) -> FileList:
        """An empty list to `add` to, every path under `prefix`; `done()` when added."""
        return cls((), prefix)._reopen()

    def _reopen(self) -> FileList:
        self._names, self._sops, self._ends = [], [], array("I")
        return self

    def done(self) -> FileList:
        self._close()
        return self

    def __len__(self) -> int:
        return len(self._sizes)

    def _entry(self, index: int) -> FileEntry:
        ends = self._ends
        name_from = ends[2 * index - 2] if index else 0
        sop_from = ends[2 * index - 1] if index else 0
        sop_class, series_uid, number, study, syntax = self._shared[self._kinds[index]]
        return FileEntry(
            self._prefix + self._names[name_from : ends[2 * index]],  # type: ignore[operator]
            self._sizes[index],
            self._sops[sop_from : ends[2 * index + 1]],
            sop_class, series_uid, number, study, syntax,
        )  # fmt: skip

    @overload
    def __getitem__(self, index: int) -> FileEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[FileEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> FileEntry | tuple[FileEntry, ...]:
        if isinstance(index, slice):
            return tuple(map(self._entry, range(len(self))[index]))
        return self._entry(range(len(self))[index])

    def __iter__(self) -> Iterator[FileEntry]:
        return map(self._entry, range(len(self)))

    @property
    def sizes(self) -> array:
        """Every file's size, in order (a `Series`' bytes without making its entries)."""
        return self._sizes

    def __eq__(self, other: object) -> bool:
        # As the tuple it stands for: equal to a FileList or a tuple of the same entries.
        if isinstance(other, FileList | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"FileList({list(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileList, (tuple(self),))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of `cls`, in order (a handful of classes: cached for good)."""
    return tuple(field.name for field in dataclasses.fields(cls))


@dataclasses.dataclass(frozen=True)
class Series:
    """One series folder × SeriesInstanceUID. `files` are uploaded; `excluded` are left out."""

    folder: Path  # relative to the subject folder; Path(".") for loose files
    series_instance_uid: str
    series_number: str
    description: str
    modality: str
    sop_class_uid: str
    image_type: str
    # A `FileList` (by column, ~75 bytes a file) whenever every entry is a plain
    # FileEntry: a sequence of them given is turned into one. It reads as the tuple did.
    files: Sequence[FileEntry]
    excluded: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.files, FileList):
            files = tuple(self.files)
            if all(type(f) is FileEntry for f in files):
                object.__setattr__(self, "files", FileList(files))
            else:
                object.__setattr__(self, "files", files)

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def bytes(self) -> int:
        sizes = getattr(self.files, "sizes", None)
        return sum(sizes) if sizes is not None else sum(f.size for f in self.files)

    def to_json(self, files: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "folder": self.folder.as_posix(),
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "image_type": self.image_type,
            "file_count": self.file_count,
            "bytes": self.bytes,
            "excluded_count": len(self.excluded),
        }
        if files:
            data["files"] = [f.to_json() for f in self.files]
            data["excluded"] = [p.as_posix() for p in self.excluded]
        return data


@dataclasses.dataclass(frozen=True)
class Finding:
    """One reason to block, exclude or warn. `message` says what was found and ends with the fix.

    `files` lists every file the finding applies to (the files an `exclude` leaves out);
    `path` is the file, or the series folder when the finding covers several files.
    """

    code: str
    action: Action
    path: Path
    message: str
    files: tuple[Path, ...] = ()

    @property
    def fix(self) -> str:
        return codes.CODES[self.code].fix

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "action": str(self.action),
            "path": self.path.as_posix(),
            "message": self.message,
            "summary": codes.CODES[self.code].summary,
            "fix": self.fix,
            "files": [f.as_posix() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        """The finding `to_json` wrote (summary and fix come from the code table again)."""
        return cls(
            str(data["code"]),
            Action(data["action"]),
            Path(data["path"]),
            str(data["message"]),
            tuple(Path(f) for f in data.get("files", [])),
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of checking one subject folder.

    `series` are the series with at least one file to upload; `excluded_series` are series
    found whose every file is left out (derived, non-image, duplicates …). `ok` is False when
    any finding blocks.
    """

    folder: Path
    label: str
    ok: bool
    series: tuple[Series, ...]
    excluded_series: tuple[Series, ...]
    sidecars: dict[str, Path]
    findings: tuple[Finding, ...]
    files_checked: int
    # xnatdrop's own QUARANTINE.txt/.json from an earlier quarantine, found at the top of a
    # resubmitted folder: neither findings nor uploaded; the push moves them aside.
    reason_files: tuple[Path, ...] = ()

    def upload_files(self) -> list[Path]:
        """The DICOM files to upload, relative to the subject folder, series by series."""
        return [Path(entry.path) for series in self.series for entry in series.files]

    def upload_entries(self) -> list[FileEntry]:
        return [entry for series in self.series for entry in series.files]

    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.action is Action.BLOCK]

    def reported(self) -> list[Finding]:
        """Findings a person should see (everything but `ignore`), worst first."""
        return [f for f in self.findings if f.action is not Action.IGNORE]

    def to_json(self, files: bool = False) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "label": self.label,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "upload_file_count": sum(s.file_count for s in self.series),
            "upload_bytes": sum(s.bytes for s in self.series),
            "series": [s.to_json(files) for s in self.series],
            "excluded_series": [s.to_json(files) for s in self.excluded_series],
            "sidecars": {name: str(path) for name, path in self.sidecars.items()},
            "findings": [f.to_json() for f in self.findings],
            "reason_files": [p.as_posix() for p in self.reason_files],
        }


@dataclasses.dataclass
class Hit:
    """A rule that fired on one file (or folder), before findings are grouped and acted on.

    A file's facts name it by text (`tree.Tree.files`); a hit, like the finding it becomes,
    holds Paths: made here, for the few files a rule fires on."""

    code: str
    path: Path
    reason: str
    group: tuple[Path, str] | None = None  # (series folder, SeriesInstanceUID) to group by
    covers: tuple[Path, ...] = ()  # files a folder-level hit applies to (default: `path`)

    def __post_init__(self) -> None:
        if type(self.path) is str:
            self.path = Path(self.path)
        if self.covers and any(type(p) is str for p in self.covers):
            self.covers = tuple(Path(p) for p in self.covers)


def action_for(settings: config.RulesSettings | None, code: str) -> Action:
    """The configured action for `code`, else the table's default."""
    if settings is not None and code in settings.actions:
        return Action(settings.actions[code])
    return codes.CODES[code].action


def series_folder(path: Path | str) -> Path:
    """The folder a file's series is counted in (`Series.folder`): the one it lies in."""
    return Path(path).parent


def path_order(path: Path | str) -> list[str]:
    """The sort key of a relative path, text or Path, as Paths sort (part by part): "a/x"
    before "a-b/x", where text would put them the other way round."""
    return str(path).split("/")


def series_number_key(number: str) -> tuple[int, str]:
    """Sort key for SeriesNumber text: numbers in numeric order, anything else after them."""
    return (int(number), "") if number.isdigit() else (1 << 30, number)
