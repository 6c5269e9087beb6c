"""`FileList`: the files of one series (`Series.files`), held by column, read as a tuple of
`FileEntry`.

Why: a verdict holds every file to upload until the push has sent them, 55,000 in an 8 GB
session. As one `FileEntry` per file with its path, SOPInstanceUID and size as objects of
their own, that was ~300 bytes a file (tracemalloc), the most of what the check keeps and
why its memory grew with the session (issue 13). The files of a series share their folder and
four UIDs; what is left per file is a name, a size and a SOPInstanceUID, held here in two
strings and three arrays, ~75 bytes a file. Each `FileEntry` is made when asked for, equal to
the one stored.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from xnatdrop.rules.model import FileEntry

# The fields of a FileEntry besides path, size and SOPInstanceUID: the same for nearly every
# file of a series, kept once per distinct combination.
Shared = tuple[str, str, str, str, str]


class FileList(Sequence[FileEntry]):
    """Entries by column; compares equal to a tuple of the same entries, as the tuple did.

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
        self._sizes = array("q")
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
