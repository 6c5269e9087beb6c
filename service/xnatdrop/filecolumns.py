"""Many files' identities in columns (`Files`, `Texts`): the check record read back from the
spool, the zip's plan and its manifest each describe every file of an upload (55,000 and more
in an 8 GB session) and are held while a step works through them.

Why columns: a `rules.FileEntry` per file with its path, SOPInstanceUID and size as objects of
their own costs ~290 bytes a file read back from the spool; here a file costs its name's and
UID's UTF-8 bytes plus about 20 (two end offsets, a size, a series number), and what a series
shares (its folder, series and study UIDs, classes, transfer syntax) is kept once. Entries are
made only when read, one at a time, and let go (issue 13, "memory flat").
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from xnatdrop import rules


class Texts:
    """Many short texts (a manifest's file names or UIDs, a listing's names: one per file,
    50,000 and more) as one UTF-8 buffer and the end offset of each, with an index from text to
    position made when first asked (open addressing on the text's hash, positions in an array).

    About the text's length plus 4 bytes each, 12 once indexed: a `str` object per file costs
    49 bytes beside its text, a dict entry from it 40-80 more.
    """

    __slots__ = ("_blob", "_ends", "_indexed", "_slots")

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array.array("I")
        self._slots = array.array("i")  # the index, made again once texts were added
        self._indexed = 0  # how many texts `_slots` indexes

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, position: int) -> str:
        ends = self._ends
        start = ends[position - 1] if position > 0 else 0
        return self._blob[start : ends[position]].decode()

    def append(self, text: str) -> int:
        """Add `text` (even if it is there already); its position."""
        self._blob += text.encode()
        self._ends.append(len(self._blob))
        return len(self._ends) - 1

    def index(self, text: str) -> int:
        """The last position `text` was appended at; -1 if never."""
        slots = self._slots
        if self._indexed != len(self._ends) or not slots:
            slots = self._index()
        mask = len(slots) - 1
        slot = hash(text) & mask
        found = -1
        encoded = b""
        while (position := slots[slot]) >= 0:
            if not encoded:
                encoded = text.encode()
            ends = self._ends
            start = ends[position - 1] if position > 0 else 0
            if position > found and self._blob[start : ends[position]] == encoded:
                found = position
            slot = (slot + 1) & mask
        return found

    def _index(self) -> array.array[int]:
        """The index with every text in it: the texts appended since it was made are added to
        it while it stays at most half full; otherwise it is made again, twice as large (so
        appends and lookups in turn cost the same, amortised, as lookups after all appends)."""
        count = len(self._ends)
        slots, start_at = self._slots, self._indexed
        if not slots or len(slots) < 2 * count:
            size = 8
            while size < 4 * count:
                size *= 2
            slots, start_at = array.array("i", [-1]) * size, 0
        mask = len(slots) - 1
        blob, ends = self._blob, self._ends
        start = ends[start_at - 1] if start_at > 0 else 0
        for position in range(start_at, count):
            end = ends[position]
            slot = hash(blob[start:end].decode()) & mask
            while slots[slot] >= 0:
                slot = (slot + 1) & mask
            slots[slot] = position
            start = end
        self._slots = slots
        self._indexed = count
        return slots


FIELDS = tuple(f.name for f in dataclasses.fields(rules.FileEntry))
# Per file: path, size, SOP instance UID; the other fields of an entry (series, study, classes,
# transfer syntax) repeat within a series and are kept once per series with the folder.
SHARED = tuple(name for name in FIELDS if name not in ("path", "size", "sop_instance_uid"))
# Entries are made by position (a third of the cost of keywords, per file read), so a row's
# fields are path, size, UID, then `SHARED`: FileEntry must keep them first, in this order.
if FIELDS[:3] != ("path", "size", "sop_instance_uid"):
    raise ImportError("rules.FileEntry must begin with path, size and sop_instance_uid")


class Files(Sequence[rules.FileEntry]):
    """`rules.FileEntry`s in columns, read as a tuple of them (indexing, slices, iteration,
    equality with a tuple): file names and UIDs in `Texts`, sizes in an array, the folder and
    the fields a series shares once per distinct combination (a *kind*: the folder with its
    slash, then the `SHARED` values, in that order; `kind(position)`).

    Only a FileEntry's own fields are kept (a subclass's extra ones are not).
    """

    __slots__ = ("_kind_of", "_kinds", "_known", "_names", "_sizes", "_uids")

    def __init__(self, entries: Iterable[rules.FileEntry] = ()) -> None:
        self._names = Texts()
        self._uids = Texts()
        self._sizes = array.array("q")
        self._kinds: list[tuple[Any, ...]] = []
        self._kind_of = array.array("I")
        self._known: dict[tuple[Any, ...], int] = {}
        for entry in entries:
            self.append(entry)

    def append(self, entry: rules.FileEntry) -> int:
        """Add `entry`; its position."""
        shared = tuple(getattr(entry, field) for field in SHARED)
        return self.add(entry.path, entry.size, entry.sop_instance_uid, shared)

    def add(self, path: str, size: int, uid: str, shared: tuple[Any, ...]) -> int:
        """Add a file by its fields (`shared`: its `SHARED` values, in order); its position."""
        folder, slash, name = path.rpartition("/")
        kind = (folder + slash, *shared)
        number = self._known.get(kind)
        if number is None:
            number = self._known[kind] = len(self._kinds)
            self._kinds.append(tuple(sys.intern(v) if type(v) is str else v for v in kind))
        self._kind_of.append(number)
        self._names.append(name)
        self._sizes.append(size)
        return self._uids.append(uid)

    def add_row(self, row: dict[str, Any]) -> int:
        """Add a file from its `FileEntry.to_json()` row (unknown keys ignored, missing ones
        empty, as `FileEntry.from_json`): a spool record read back, one small dict at a time."""
        get = row.get
        return self.add(
            str(row["path"]),
            int(get("size", 0)),
            get("sop_instance_uid", ""),
            tuple(get(field, "") for field in SHARED),
        )

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> Files:
        files = cls()
        for row in rows:
            files.add_row(row)
        return files

    def __len__(self) -> int:
        return len(self._sizes)

    def with_sizes(self, sizes: Iterable[int]) -> Files:
        """These files with other `sizes` (a plan's, as stat'ed), sharing every other column:
        the manifest of a sent plan is its files with their sizes as sent. Neither may be
        appended to afterwards (they share the name, UID and kind columns)."""
        copy = Files.__new__(Files)
        copy._names, copy._uids, copy._kinds = self._names, self._uids, self._kinds
        copy._kind_of, copy._known = self._kind_of, self._known
        copy._sizes = array.array("q", sizes)
        return copy

    @property
    def sizes(self) -> array.array[int]:
        """Each file's size, in order (read, not changed)."""
        return self._sizes

    def position(self, uid: str) -> int:
        """The position of the (last) file with this SOPInstanceUID; -1 if none."""
        return self._uids.index(uid)

    def study_uids(self) -> set[str]:
        field = 1 + SHARED.index("study_instance_uid")
        return {kind[field] for kind in self._kinds if kind[field]}

    def path(self, position: int) -> str:
        return self._kinds[self._kind_of[position]][0] + self._names[position]

    def size(self, position: int) -> int:
        return self._sizes[position]

    def uid(self, position: int) -> str:
        return self._uids[position]

    def kind(self, position: int) -> tuple[Any, ...]:
        """The file's folder (with its slash) and its `SHARED` values."""
        return self._kinds[self._kind_of[position]]

    def kinds(self) -> list[tuple[Any, ...]]:
        """Every distinct kind (folder and shared values), in first-seen order."""
        return self._kinds

    def entry(self, position: int) -> rules.FileEntry:
        """The file at `position` (made now; not kept)."""
        if position < 0:
            position += len(self)
        kind = self._kinds[self._kind_of[position]]
        path = kind[0] + self._names[position]
        return rules.FileEntry(path, self._sizes[position], self._uids[position], *kind[1:])

    @overload
    def __getitem__(self, index: int) -> rules.FileEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[rules.FileEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> rules.FileEntry | tuple[rules.FileEntry, ...]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return tuple(self.entries(start, max(start, stop)))
            return tuple(map(self.entry, range(start, stop, step)))
        if not -len(self) <= index < len(self):
            raise IndexError("file position out of range")
        return self.entry(index)

    def __iter__(self) -> Iterator[rules.FileEntry]:
        return self.entries(0, len(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Files | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Files({len(self)} files)"

    def paths(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """The paths of the files `start` to `stop`, in order: decoded in one loop, a third of
        the cost of `path` per file (the plan and the zip's central directory read each)."""
        blob, ends, kinds, kind_of = (
            self._names._blob,
            self._names._ends,
            self._kinds,
            self._kind_of,
        )
        stop = len(ends) if stop is None else stop
        begin = ends[start - 1] if start > 0 else 0
        for position in range(start, stop):
            end = ends[position]
            yield kinds[kind_of[position]][0] + blob[begin:end].decode()
            begin = end

    def entries(self, start: int, stop: int) -> Iterator[rules.FileEntry]:
        """The entries of the files `start` to `stop`, in order, made in one loop."""
        uids, sizes, kinds, kind_of = self._uids, self._sizes, self._kinds, self._kind_of
        blob, ends = uids._blob, uids._ends
        begin = ends[start - 1] if start > 0 else 0
        make = rules.FileEntry
        for position, path in zip(range(start, stop), self.paths(start, stop), strict=True):
            end = ends[position]
            uid = blob[begin:end].decode()
            begin = end
            yield make(path, sizes[position], uid, *kinds[kind_of[position]][1:])

    def json_rows(self) -> Iterator[dict[str, Any]]:
        """Each file's `FileEntry.to_json()`, made from the columns as it is read."""
        names, uids, sizes, kinds, kind_of = (
            self._names, self._uids, self._sizes, self._kinds, self._kind_of,
        )  # fmt: skip
        for position in range(len(sizes)):
            kind = kinds[kind_of[position]]
            row = {
                "path": kind[0] + names[position],
                "size": sizes[position],
                "sop_instance_uid": uids[position],
            }
            row.update(zip(SHARED, kind[1:], strict=True))
            yield row


class Chain(Sequence[rules.FileEntry]):
    """Sequences of entries (a verdict's series' `rules.FileList`s) read as one tuple of them,
    without a copy: the check step's record lists the verdict's files while the verdict holds
    them already (a copy in columns was ~100 bytes a file more at the push's peak)."""

    __slots__ = ("_ends", "_parts")

    def __init__(self, parts: Iterable[Sequence[rules.FileEntry]]) -> None:
        self._parts = tuple(parts)
        self._ends = list(itertools.accumulate(map(len, self._parts)))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> rules.FileEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[rules.FileEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> rules.FileEntry | tuple[rules.FileEntry, ...]:
        if isinstance(index, slice):
            return tuple(itertools.islice(self, *index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("file position out of range")
        part = bisect.bisect_right(self._ends, index)
        return self._parts[part][index - (self._ends[part - 1] if part else 0)]

    def __iter__(self) -> Iterator[rules.FileEntry]:
        return itertools.chain.from_iterable(self._parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Chain({len(self)} files)"
