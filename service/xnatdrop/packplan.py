"""The zip's plan (`Plan`, read as a `Planned` per file): what `pack.plan` fixes before any
file is read (entry order, names, sizes, modification times) and the import step sends by.
Held in columns (`filecolumns.Files` and arrays): the import step holds the plan of every file
while it sends, 55,000 and more (issue 13, "memory flat")."""

from __future__ import annotations

import array
import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, overload

from xnatdrop import filecolumns, rules

# One encoder for every row: json.dumps with options builds a new one per call (3 µs a file).
_ROW = json.JSONEncoder(ensure_ascii=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Planned:
    """One zip entry of the plan: the file, its size and modification time when planned, and
    its name in the zip. (A plan holds none: `Plan.files` makes them when read.)"""

    entry: rules.FileEntry
    size: int
    mtime: float
    zip_name: str


class Run(NamedTuple):
    """Consecutive files of the plan as a reader reads them (`Plan.columns`), in columns:
    their paths (relative to the folder), sizes and modification times when planned, and
    names in the zip.

    Why not a `Planned` each: a reader needs only these four values of a file, and making a
    `Planned` with its `rules.FileEntry` (two frozen dataclasses, the UID decoded) cost the
    sender about 2.6 µs a file, as much as packing the file's header (issue 13)."""

    paths: list[str]
    sizes: list[int]
    names: list[str]
    mtimes: list[float]


class Plan:
    """The zip's plan: `zip_size` and, for each file in zip order, a `Planned` (`files`).

    Kept in columns, not as a `Planned` per file (with its `FileEntry`, ~380 bytes a file read
    back from the spool, held by the import step while it sends): the files' identities as the
    check gave them in `filecolumns.Files`, the size and modification time when planned in
    arrays, and a zip name only where it is not the file's path (`pack.upload_name` shortens
    only names too long for XNAT). `pack.Body` reads the columns: `sizes`, a reader's run of
    small files as a `Run` (`columns`), a large file as a `Planned` (`planned`), and
    `central_rows`; `files[i]` and `files[i:j]` make `Planned`s on demand.
    """

    __slots__ = ("_entries", "_mtimes", "_renamed", "_sizes", "zip_size")

    def __init__(self, zip_size: int, files: Iterable[Planned] = ()) -> None:
        self.zip_size = zip_size
        self._entries = filecolumns.Files()
        self._sizes = array.array("q")  # as stat'ed when planned; the entries' as checked
        self._mtimes = array.array("d")
        self._renamed: dict[int, str] = {}  # position -> zip name, where not the path
        for p in files:
            self.add(p.entry, p.size, p.mtime, p.zip_name)

    def add(self, entry: rules.FileEntry, size: int, mtime: float, zip_name: str) -> None:
        """Plan `entry` next, `size` bytes modified at `mtime`, named `zip_name` in the zip."""
        position = self._entries.append(entry)
        self._sizes.append(size)
        self._mtimes.append(mtime)
        if zip_name != entry.path:
            self._renamed[position] = zip_name

    @classmethod
    def planning(cls, entries: Iterable[rules.FileEntry]) -> tuple[Plan, Iterator[str]]:
        """An empty plan of `entries` and their paths in order, each to be `place`d: files in
        columns already (the check record read back) are taken as they are, not made into a
        `FileEntry` each and taken apart again (~2 µs a file)."""
        plan = cls(0)
        if isinstance(entries, filecolumns.Files):
            plan._entries = entries
            return plan, entries.paths()
        return plan, plan._taking(entries)

    def _taking(self, entries: Iterable[rules.FileEntry]) -> Iterator[str]:
        """Each entry's path, once it is added to the plan's columns."""
        for entry in entries:
            self._entries.append(entry)
            yield entry.path

    def place(self, path: str, size: int, mtime: float, zip_name: str) -> None:
        """Plan the next file of `planning`'s, at `path`: `size` bytes modified at `mtime`,
        named `zip_name` in the zip."""
        if zip_name != path:
            self._renamed[len(self._sizes)] = zip_name
        self._sizes.append(size)
        self._mtimes.append(mtime)

    @property
    def files(self) -> PlannedFiles:
        return PlannedFiles(self)

    @property
    def entries(self) -> filecolumns.Files:
        """Each file's identity as the check gave it."""
        return self._entries

    @property
    def sizes(self) -> array.array[int]:
        """Each file's size as planned, in zip order (read, not changed)."""
        return self._sizes

    def path(self, position: int) -> str:
        return self._entries.path(position)

    def zip_name(self, position: int) -> str:
        name = self._renamed.get(position)
        return name if name is not None else self._entries.path(position)

    def planned(self, position: int) -> Planned:
        """The file at `position` (made now; not kept)."""
        if position < 0:
            position += len(self._sizes)
        entry = self._entries.entry(position)
        name = self._renamed.get(position)
        name = entry.path if name is None else name
        return Planned(entry, self._sizes[position], self._mtimes[position], name)

    def run(self, start: int, stop: int) -> Iterator[Planned]:
        """The files `start` to `stop` as `Planned`s, made in one loop (`files[start:stop]`)."""
        sizes, mtimes, renamed = self._sizes, self._mtimes, self._renamed
        for position, entry in zip(
            range(start, stop), self._entries.entries(start, stop), strict=True
        ):
            name = renamed.get(position, entry.path) if renamed else entry.path
            yield Planned(entry, sizes[position], mtimes[position], name)

    def columns(self, start: int, stop: int) -> Run:
        """The files `start` to `stop` as a reader reads them (`Run`)."""
        paths = list(self._entries.paths(start, stop))
        names = list(self._zip_names(paths, start)) if self._renamed else paths
        sizes, mtimes = self._sizes[start:stop].tolist(), self._mtimes[start:stop].tolist()
        return Run(paths, sizes, names, mtimes)

    def central_rows(self) -> Iterator[tuple[str, int, float]]:
        """(zip name, size, mtime) of each file, for the zip's central directory."""
        names = self._zip_names(self._entries.paths())
        return zip(names, self._sizes, self._mtimes, strict=True)

    def _zip_names(self, paths: Iterable[str], start: int = 0) -> Iterator[str]:
        """The zip names of the files whose `paths` these are, the first at `start`."""
        renamed = self._renamed
        if not renamed:
            return iter(paths)
        return (renamed.get(position, path) for position, path in enumerate(paths, start))

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes)

    def study_uids(self) -> set[str]:
        return self._entries.study_uids()

    def zip_names(self) -> dict[str, str]:
        """Path (relative, POSIX) -> name in the zip, of every file."""
        return {self.path(i): self.zip_name(i) for i in range(len(self._sizes))}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self.zip_size == other.zip_size and self.files == other.files

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Plan(zip_size={self.zip_size}, {len(self._sizes)} files)"

    def to_json(self) -> dict[str, Any]:
        return json.loads("".join(self.json_pieces()))

    def json_pieces(self) -> Iterator[str]:
        """`to_json()` as JSON text, in pieces of one file each: a spool record of 50,000 files
        is written without building its whole text, or a dict per file, in memory."""
        yield (
            f'{{"zip_size": {self.zip_size}, "file_count": {len(self._sizes)}, '
            f'"bytes": {self.total_bytes}, "files": ['
        )
        rows = zip(self._entries.json_rows(), self._sizes, self._mtimes, strict=True)
        for index, (entry, size, mtime) in enumerate(rows):
            row = {"entry": entry, "size": size, "mtime": mtime, "name": self.zip_name(index)}
            yield ("\n" if index == 0 else ",\n") + _ROW.encode(row)
        yield "\n]}\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """The plan `json_pieces` wrote; its rows (an iterator when read from the spool) are
        taken one at a time into the columns, never a `Planned` or `FileEntry` per file."""
        plan = cls(int(data["zip_size"]))
        entries, sizes, mtimes = plan._entries, plan._sizes, plan._mtimes
        for row in data["files"]:
            entry = row["entry"]
            position = entries.add_row(entry)
            sizes.append(int(row["size"]))
            mtimes.append(float(row["mtime"]))
            name = row["name"]
            if name != entry["path"]:
                plan._renamed[position] = str(name)
        return plan


class PlannedFiles(Sequence[Planned]):
    """A plan's files read as a tuple of `Planned`, each made when read."""

    __slots__ = ("_plan",)

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def __len__(self) -> int:
        return len(self._plan.sizes)

    @overload
    def __getitem__(self, index: int) -> Planned: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Planned, ...]: ...
    def __getitem__(self, index: int | slice) -> Planned | tuple[Planned, ...]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return tuple(self._plan.run(start, max(start, stop)))
            return tuple(map(self._plan.planned, range(start, stop, step)))
        if not -len(self) <= index < len(self):
            raise IndexError("planned file out of range")
        return self._plan.planned(index)

    def __iter__(self) -> Iterator[Planned]:
        return self._plan.run(0, len(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PlannedFiles | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
