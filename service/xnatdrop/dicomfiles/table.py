"""The facts of every file of a check, held by column (`FactsTable`), and a view of some of its
rows (`FactsView`), both giving `FileFacts` on demand.

Why: the check keeps what it learnt of every file until the verdict is made, 55,000 files in
an 8 GB session. As one `FileFacts` and one `Header` per file, with the file's SOPInstanceUID
and size as objects of their own, that was ~280 bytes a file beside its name (tracemalloc),
the largest part of the check's peak, which made its memory grow with the session (issue 13).
What differs from file to file is only the name (the caller's list), the size, the
SOPInstanceUID and the InstanceNumber; everything else (kind, detail, the `SeriesFields`,
preamble, truncation) repeats across a series and is kept once, as a "shape" each row points
to. A row is then ~70 bytes: a shape index, the size, the InstanceNumber, the UID's text in one
shared string with its end offset, and the UID's hash (rule D2 compares hashes first).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from xnatdrop.dicomfiles.facts import NO_INODE, FileFacts, Header, Kind, SeriesFields

# (kind, detail, SeriesFields or None, preamble, truncated): what the files of a series share.
CHUNK = 1024  # SOPInstanceUIDs joined into one string
UID_HASH_MASK = 0xFFFFFFFF  # the bits of a UID's hash a row keeps (`FactsTable.uid_hashes`)
Shape = tuple[Kind, str, SeriesFields | None, bool, str]


class FactsTable(Sequence[FileFacts]):
    """Facts of files, row by row in the order added, each row's `FileFacts` made when asked.

    `names` is the caller's list of names (text), row i naming file i; a row's `FileFacts.path`
    is that object. `uid_hash(i)` is `hash()` of row i's SOPInstanceUID ('' for a file without
    a header), so repeated UIDs are found without making the UIDs' text (`rules.series`).
    """

    __slots__ = (
        "_big",
        "_big_sizes",
        "_count",
        "_inodes",
        "_rows",
        "_shape_of",
        "_sizes",
        "_sop_ends",
        "_sop_parts",
        "_sop_remaining",
        "_sops",
        "names",
        "numbers",
        "shapes",
        "uid_hashes",
    )

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names
        self.shapes: list[Shape] = []
        self._shape_of: dict[Shape, int] = {}
        # One row per name, each column made at its full size at once (by repetition, without
        # a temporary): grown an append at a time, the arrays were copied as they grew and
        # left freed copies behind, resident memory that a check never gave back.
        count = len(names)
        self._count = 0
        # 4 bytes a value each: what does not fit (a file of 4 GiB or more, an InstanceNumber
        # beyond 32 bits) goes to a dict beside its column (`_big_sizes`, `_big`). With 8 bytes
        # a value these columns were 12 bytes a file more at the check's peak (issue 13).
        self._rows = array("I", [0]) * count  # the shape of each row
        self._sizes = array("I", [0]) * count  # read by `size(row)`, which knows `_big_sizes`
        self._big_sizes: dict[int, int] = {}
        self.numbers = array("i", [0]) * count  # InstanceNumber (0: none); `_big` beyond
        self._big: dict[int, int] = {}
        # The low 32 bits of each UID's hash: rule D2's bitmap uses fewer bits than that
        # (`rules.series._repeated_uids`) and confirms every candidate on the full UID.
        self.uid_hashes = array("I", [0]) * count
        # The SOPInstanceUIDs, CHUNK rows to a string: `_sop_ends` is where each row's UID ends
        # in its chunk's string; `_sop_parts` are the UIDs of the chunk not yet joined.
        self._sops: list[str] = []
        self._sop_parts: list[str] = []
        self._sop_ends = array("I", [0]) * count
        self._inodes: dict[int, tuple[int, int]] = {}  # only files with other links
        self._sop_remaining: array | None = None  # see `count_uids`

    def add(
        self,
        size: int,
        kind: Kind,
        detail: str,
        fields: SeriesFields | None,
        sop: str,
        number: int,
        preamble: bool,
        truncated: str,
        inode: tuple[int, int],
    ) -> None:
        """Add the next row (the facts of `names[len(self)]`; at most one per name)."""
        shape = (kind, detail, fields, preamble, truncated)
        index = self._shape_of.get(shape)
        if index is None:
            index = self._shape_of[shape] = len(self.shapes)
            self.shapes.append(shape)
        row = self._count
        self._count += 1
        self._rows[row] = index
        try:
            self._sizes[row] = size
        except OverflowError:
            self._big_sizes[row] = size
        try:
            self.numbers[row] = number
        except OverflowError:
            self._big[row] = number
        self.uid_hashes[row] = hash(sop) & UID_HASH_MASK
        ends = self._sop_ends
        ends[row] = (ends[row - 1] if row % CHUNK else 0) + len(sop)
        self._sop_parts.append(sop)
        if len(self._sop_parts) == CHUNK:
            self._join()
        if inode != NO_INODE:
            self._inodes[row] = inode

    def _join(self) -> None:
        self._sops.append("".join(self._sop_parts))
        self._sop_parts.clear()

    def finish(self) -> FactsTable:
        """Done adding: the last chunk's UIDs in one string too."""
        if self._sop_parts:
            self._join()
        return self

    def __len__(self) -> int:
        return self._count

    def shape_index(self, row: int) -> int:
        """Which of `shapes` row's is."""
        return self._rows[row]

    def shape(self, row: int) -> Shape:
        return self.shapes[self._rows[row]]

    def fields(self, row: int) -> SeriesFields | None:
        return self.shapes[self._rows[row]][2]

    def release_uids(self, rows: Iterable[int]) -> None:
        """`rows`' UIDs will not be asked for again: each string of CHUNK UIDs goes once all
        of its rows were released (the check's verdict copies them into its series, and held
        twice they were ~45 bytes a file at its peak)."""
        remaining = self._sop_remaining
        if remaining is None:
            return
        for row in rows:
            chunk = row // CHUNK
            remaining[chunk] -= 1
            if not remaining[chunk]:
                self._sops[chunk] = ""

    def count_uids(self, rows: Iterable[int]) -> None:
        """`release_uids` will be given exactly `rows` (each once); until then UIDs stay."""
        remaining = array("I", [0]) * len(self._sops)
        for row in rows:
            remaining[row // CHUNK] += 1
        self._sop_remaining = remaining

    def sop(self, row: int) -> str:
        """Row's SOPInstanceUID ('' for a file without one)."""
        chunk, at = divmod(row, CHUNK)
        if chunk == len(self._sops):  # still being added
            return self._sop_parts[at]
        return self._sops[chunk][self._sop_ends[row - 1] if at else 0 : self._sop_ends[row]]

    def size(self, row: int) -> int:
        big = self._big_sizes
        return big[row] if big and row in big else self._sizes[row]

    def number(self, row: int) -> int:
        return self._big[row] if row in self._big else self.numbers[row]

    def inode(self, row: int) -> tuple[int, int]:
        return self._inodes.get(row, NO_INODE)

    def row(self, row: int) -> FileFacts:
        """Row's facts as a `FileFacts`, made now (the same each time it is asked for)."""
        kind, detail, fields, preamble, truncated = self.shapes[self._rows[row]]
        header = None if fields is None else Header(fields, self.sop(row), self.number(row))
        return FileFacts(
            self.names[row], self.size(row), kind, detail, header, preamble, truncated,
            self.inode(row),
        )  # fmt: skip

    @overload
    def __getitem__(self, index: int) -> FileFacts: ...
    @overload
    def __getitem__(self, index: slice) -> list[FileFacts]: ...
    def __getitem__(self, index: int | slice) -> FileFacts | list[FileFacts]:
        if isinstance(index, slice):
            return [self.row(i) for i in range(len(self))[index]]
        return self.row(range(len(self))[index])

    def __iter__(self) -> Iterator[FileFacts]:
        return map(self.row, range(len(self)))

    def view(self, rows: Iterable[int]) -> FactsView:
        """A view of `rows`; an `array("I")` given is the view's own (not copied: the check
        hands over the rows it collected, 4 bytes a file, and keeps no other copy)."""
        if not (isinstance(rows, array) and rows.typecode == "I"):
            rows = array("I", rows)
        return FactsView(self, rows)


class FactsView(Sequence[FileFacts]):
    """Some rows of a `FactsTable` (their numbers in an array, 4 bytes each), in that order:
    a list of the rows' `FileFacts` to whoever iterates, none of them held."""

    __slots__ = ("rows", "table")

    def __init__(self, table: FactsTable, rows: array) -> None:
        self.table = table
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> FileFacts: ...
    @overload
    def __getitem__(self, index: slice) -> list[FileFacts]: ...
    def __getitem__(self, index: int | slice) -> FileFacts | list[FileFacts]:
        if isinstance(index, slice):
            return [self.table.row(i) for i in self.rows[index]]
        return self.table.row(self.rows[index])

    def __iter__(self) -> Iterator[FileFacts]:
        return map(self.table.row, self.rows)

    def fields(self) -> Iterator[SeriesFields | None]:
        """Each row's `SeriesFields`, without making its facts."""
        shapes, of = self.table.shapes, self.table._rows
        return (shapes[of[row]][2] for row in self.rows)


def brief(dicoms: Sequence[FileFacts]) -> Iterator[tuple[int | str, SeriesFields, int]]:
    """(reference, SeriesFields, InstanceNumber) of each of `dicoms` that has a header (each,
    in a check: the rules judge together only DICOM files with a header); `path_of(dicoms,
    reference)` is the file's path.

    Why: the rules that judge files together (rules D, C) need only these, and a file's path
    only when a rule fires on it. Read from a `FactsView` they cost a tuple a file, where a
    `FileFacts` made on demand cost ~1.5 µs and the file's name and UID as text besides.
    """
    if isinstance(dicoms, FactsView):
        table = dicoms.table
        shapes, of, numbers, big = table.shapes, table._rows, table.numbers, table._big
        for row in dicoms.rows:
            fields = shapes[of[row]][2]
            assert fields is not None
            yield row, fields, big[row] if big and row in big else numbers[row]
        return
    for item in dicoms:  # a list: files without a header are passed over
        header = item.header
        if header is not None:
            yield str(item.path), header.fields, header.instance_number


def path_of(dicoms: Sequence[FileFacts], reference: int | str) -> str:
    """The path of the file `brief(dicoms)` gave `reference`."""
    if isinstance(dicoms, FactsView):
        return dicoms.table.names[reference]  # type: ignore[index]
    return reference  # type: ignore[return-value]
