"""The zip's plan read from the spool a page at a time while the import step sends it
(`StreamedPlan`): what the body reads of a `packplan.Plan`, without holding every file.

Why: the import step held the whole plan while it sent (about 90 bytes a file in columns:
5 MB at 8 GB, 55,757 files), on top of the upload's buffers, at the push's peak; at 0.5 GB it
was 0.3 MB, so the peak grew with the session (issue 13, "memory flat"). The body reads the
plan in order, a window of files ahead of the one it sends (`pack.WINDOW` bytes and
`pack.OPEN_AHEAD` files at most), then the zip names, sizes and times of all of them once for
the central directory. So this keeps every file's size (8 bytes, for the runs and the zip's
length) and only the pages of PAGE files around the window as small `Plan`s, read from the
record's rows as the body gets there; the central directory reads the rows once more.

A page behind those kept is read again from the start of the record (a new body sending the
same plan again does that); nothing is ever read wrong, only again.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from xnatdrop.packplan import Plan, Planned, PlannedFiles, Run

PAGE = 1024  # files a page holds
PAGES = 8  # pages kept at most: the body's window spans at most OPEN_AHEAD small files + a run

Rows = Callable[[], Iterator[dict[str, Any]]]
"""Opens the record and gives its rows (`Plan.json_pieces`' "files"), in order."""


class StreamedPlan:
    """A plan in the spool, read as the body reads a `Plan` (`zip_size`, `sizes`, `columns`,
    `planned`, `path`, `files`, `central_rows`, `page`), a page at a time from `rows`."""

    def __init__(self, zip_size: int, rows: Rows) -> None:
        self.zip_size = zip_size
        self._rows = rows
        self._sizes = array.array("q")
        studies: set[str] = set()
        for row in rows():  # once, for the sizes (the runs) and what the import asks first
            self._sizes.append(int(row["size"]))
            study = row["entry"].get("study_instance_uid")
            if study:
                studies.add(study)
        self._studies = studies
        self._pages: dict[int, Plan] = {}
        self._reading: Iterator[dict[str, Any]] | None = None
        self._next = 0  # the page `_reading` gives next

    @property
    def sizes(self) -> array.array[int]:
        """Each file's size as planned, in zip order (read, not changed)."""
        return self._sizes

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes)

    @property
    def files(self) -> PlannedFiles:
        return PlannedFiles(self)  # type: ignore[arg-type]  # reads `sizes`, `planned`, `run`

    def study_uids(self) -> set[str]:
        return set(self._studies)

    def page(self, position: int) -> tuple[Plan, int]:
        """The page holding file `position`, and the position of its first file."""
        number = position // PAGE
        found = self._pages.get(number)
        if found is None:
            found = self._read(number)
        return found, number * PAGE

    def _read(self, number: int) -> Plan:
        if self._reading is None or number < self._next:
            self._reading, self._next = self._rows(), 0  # behind what was read: from the start
        while True:
            # The rows taken one at a time into the page's columns: a list of a page's rows
            # as dicts was about 1 MB at once.
            page = Plan.from_json({"zip_size": 0, "files": itertools.islice(self._reading, PAGE)})
            if not page.sizes:
                raise IndexError("planned file out of range")
            self._next += 1
            if self._next - 1 == number:
                self._pages[number] = page
                while len(self._pages) > PAGES:
                    del self._pages[min(self._pages)]
                return page

    def spans(self, start: int, stop: int) -> Iterator[tuple[Plan, int, int, int]]:
        """(page, first file on it, start and stop within it) covering `start` to `stop`."""
        while start < stop:
            page, base = self.page(start)
            end = min(stop, base + PAGE)
            yield page, base, start - base, end - base
            start = end

    def path(self, position: int) -> str:
        page, base = self.page(position)
        return page.path(position - base)

    def planned(self, position: int) -> Planned:
        """The file at `position` (made now; not kept)."""
        if position < 0:
            position += len(self._sizes)
        page, base = self.page(position)
        return page.planned(position - base)

    def run(self, start: int, stop: int) -> Iterator[Planned]:
        for page, _, low, high in self.spans(start, stop):
            yield from page.run(low, high)

    def columns(self, start: int, stop: int) -> Run:
        """The files `start` to `stop` as a reader reads them (`packplan.Run`)."""
        parts = [page.columns(low, high) for page, _, low, high in self.spans(start, stop)]
        if len(parts) == 1:
            return parts[0]
        return Run(*(list(itertools.chain.from_iterable(c)) for c in zip(*parts, strict=True)))

    def central_rows(self) -> Iterator[tuple[str, int, float]]:
        """(zip name, size, mtime) of each file, for the zip's central directory: the rows read
        once more, none kept."""
        return ((str(r["name"]), int(r["size"]), float(r["mtime"])) for r in self._rows())

    def __repr__(self) -> str:
        return f"StreamedPlan(zip_size={self.zip_size}, {len(self._sizes)} files)"


Sendable = Plan | StreamedPlan  # what `pack.Body` sends: a plan held whole, or one read so
