"""The records of the upload zip: its plan (`Plan`, a `Planned` per file) and its manifest
(`Manifest`, an `Entry` per file). `pack` makes them and re-exports them (`pack.Plan`, ...);
the spool keeps them (`json_pieces`, written piece by piece: a row per file, 50,000 and more,
is never held as one text).
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring as _quote  # json's own, in C (ensure_ascii=False)
from typing import Any, Protocol, TypeVar

from xnatdrop import rules
from xnatdrop.filecolumns import SHARED, Files, Texts
from xnatdrop.packplan import Plan, Planned, PlannedFiles
from xnatdrop.planstream import Sendable, StreamedPlan

__all__ = ["Entry", "Manifest", "ManifestFile", "Plan", "Planned", "PlannedFiles", "Texts"]

# One encoder for every row: json.dumps with options builds a new one per call (3 µs a file).
_ROW = json.JSONEncoder(ensure_ascii=False)
ROWS = 256  # rows joined into one piece of a manifest's text: a write call per row cost 0.5 µs


_FIELDS = tuple(f.name for f in dataclasses.fields(rules.FileEntry))


def _identity(file: rules.FileEntry) -> dict[str, Any]:
    """`file.to_json()` without `dataclasses.asdict` (a deep copy, 10 µs a file)."""
    row = {name: getattr(file, name) for name in _FIELDS}
    row["path"] = _posix(file.path)
    return row


def _posix(path: Any) -> str:
    return path if isinstance(path, str) else path.as_posix()


# A manifest row as text, from a template: `_ROW.encode(dict)` built a dict and an encoder's
# state per file, 4-6 µs; this is about half that, and the manifest is written while the upload
# waits for it (`pack.Body` sends the zip's end only once it is saved). The template holds when
# FileEntry starts with path and size and its other fields are text (json's own C function
# quotes them); any other entry takes the dict's way, with the same result.
_TEXT_FIELDS = _FIELDS[2:]
_TEXT_VALUES = operator.attrgetter(*_TEXT_FIELDS) if len(_TEXT_FIELDS) > 1 else None
_MANIFEST_ROW = (
    '{{"path": {}, "size": {}, '
    + "".join(f"{_quote(name)}: {{}}, " for name in _TEXT_FIELDS)
    + '"md5": "{}"}}'
)
_TEMPLATED = _FIELDS[:2] == ("path", "size") and _TEXT_VALUES is not None


def _manifest_row(file: rules.FileEntry, size: int, md5: str) -> str:
    """`_ROW.encode({**_identity(file), "size": size, "md5": md5})`, faster (see above)."""
    if _TEMPLATED and type(size) is int:
        try:
            texts = map(_quote, _TEXT_VALUES(file))  # type: ignore[misc]
            return _MANIFEST_ROW.format(_quote(_posix(file.path)), size, *texts, md5)
        except TypeError:  # a field that is not text: the general way
            pass
    row = _identity(file)
    row["size"] = size
    row["md5"] = md5
    return _ROW.encode(row)


@dataclasses.dataclass(frozen=True, slots=True)  # a verify holds one per file, as the check
class Entry(rules.FileEntry):
    """One manifest line: a file of the upload with the MD5 of the bytes that went into the
    zip; `size` is the size of those bytes."""

    md5: str = dataclasses.field(kw_only=True)

    @classmethod
    def of(cls, file: rules.FileEntry, size: int, md5: str) -> Entry:
        """`file` as it was sent: `size` bytes with this MD5."""
        identity = {name: getattr(file, name) for name in _FIELDS}
        return cls(**{**identity, "size": size}, md5=md5)


_HEX = re.compile(r"[0-9a-f]{32}")
_NONE: Any = object()
T = TypeVar("T")


class Manifest:
    """The manifest of an upload: `zip_size` and, for each file, an `Entry`.

    Kept in columns, not as an `Entry` per file (about 400 bytes each with its strings): the
    files' identities in a `filecolumns.Files` (names and UIDs in `Texts`, sizes in an array,
    what a series shares once) and MD5s as 16 bytes each; about 130 bytes a file.
    The verify, archive and finish steps each hold it whole while they compare or list
    it, so `entries()` makes each `Entry` as it is read and lets it go; `files` makes them all
    (for small manifests and callers that need a tuple). `position(uid)` finds a file by its
    SOPInstanceUID (the archive check) without a dict of entries.
    """

    __slots__ = ("_digests", "_files", "_odd", "zip_size")

    def __init__(self, zip_size: int, files: Iterable[Entry] = ()) -> None:
        self.zip_size = zip_size
        self._files = Files()  # each file's identity: path, size (as sent), UID, series fields
        self._digests = bytearray()
        self._odd: dict[int, str] = {}  # an MD5 that is not 32 hexadecimal digits, as given
        for entry in files:
            self._digest(self._files.append(entry), entry.md5)

    def _digest(self, position: int, md5: str) -> None:
        """Keep the MD5 of the file just added at `position`."""
        if _HEX.fullmatch(md5):
            self._digests += bytes.fromhex(md5)
        else:
            self._digests += bytes(16)
            self._odd[position] = md5

    @classmethod
    def sent(cls, zip_size: int, planned: Plan | Iterable[Planned], md5: bytes) -> Manifest:
        """The manifest of `planned`, sent as planned, whose MD5 digests are `md5` (16 bytes
        each, in order). From a `Plan`, its columns are taken as they are (no file is read
        as a `Planned`): this runs while the zip's end waits for the manifest."""
        manifest = cls(zip_size)
        if isinstance(planned, Plan):
            manifest._files = planned.entries.with_sizes(planned.sizes)
        else:
            for p in planned:
                entry = p.entry
                shared = tuple(getattr(entry, field) for field in SHARED)
                manifest._files.add(entry.path, p.size, entry.sop_instance_uid, shared)
        if len(md5) != 16 * len(manifest):
            raise ValueError("one 16-byte MD5 per planned file")
        # Kept as they came: the digests are the 16 bytes the columns keep (not hex text to
        # check and decode again).
        manifest._digests = bytearray(md5)
        return manifest

    def __len__(self) -> int:
        return len(self._files)

    def entry(self, position: int) -> Entry:
        """The file at `position` (made now; not kept)."""
        files = self._files
        kind = files.kind(position)
        path, size, uid = files.path(position), files.size(position), files.uid(position)
        return Entry(path, size, uid, *kind[1:], md5=self.md5(position))

    def shared(self, key: Callable[[Entry], T]) -> Iterator[tuple[T, int]]:
        """(`key(entry)`, size) of each file in order, `key` called once per series (its
        folder and shared fields): for a key that reads only those, such as the scan XNAT
        files an instance under, without making an `Entry` per file."""
        values: dict[int, T] = {}
        files = self._files
        for position, size in enumerate(files.sizes):
            kind = id(files.kind(position))  # one tuple per distinct kind, kept by `files`
            value = values.get(kind, _NONE)
            if value is _NONE:
                value = values[kind] = key(self.entry(position))
            yield value, size  # type: ignore[misc]

    def entries(self) -> Iterator[Entry]:
        """Each file's `Entry` in order, made as it is read (none is kept)."""
        return map(self.entry, range(len(self)))

    def json_rows(self) -> Iterator[dict[str, Any]]:
        """Each file's `Entry.to_json()`, made from the columns as it is read (for RECEIPT.json:
        no `Entry` is made)."""
        for position, row in enumerate(self._files.json_rows()):
            row["md5"] = self.md5(position)
            yield row

    def size(self, position: int) -> int:
        return self._files.size(position)

    def md5(self, position: int) -> str:
        odd = self._odd.get(position)
        return odd if odd is not None else self._digests[16 * position : 16 * position + 16].hex()

    def position(self, uid: str) -> int:
        """The position of the (last) file with this SOPInstanceUID; -1 if none."""
        return self._files.position(uid)

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(self.entries())

    @property
    def file_count(self) -> int:
        return len(self)

    @property
    def total_bytes(self) -> int:
        return sum(self._files.sizes)

    def series(self) -> dict[str, list[Entry]]:
        """Entries grouped by SeriesInstanceUID, in first-seen order."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.entries():
            groups.setdefault(entry.series_instance_uid, []).append(entry)
        return groups

    def study_uids(self) -> set[str]:
        return self._files.study_uids()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return (
            self.zip_size == other.zip_size
            and len(self) == len(other)
            and all(a == b for a, b in zip(self.entries(), other.entries(), strict=True))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Manifest(zip_size={self.zip_size}, {self.file_count} files)"

    def _rows(self) -> Iterator[str]:
        """Each file's row as JSON text."""
        for entry in self.entries():
            yield _manifest_row(entry, entry.size, entry.md5)

    def to_json(self) -> dict[str, Any]:
        return json.loads("".join(self.json_pieces()))

    def json_pieces(self) -> Iterator[str]:
        """`to_json()` as JSON text, in pieces of up to ROWS files (see `Plan.json_pieces`)."""
        yield _manifest_head(self.zip_size, self.file_count, self.total_bytes)
        rows = self._rows()
        first = next(rows, None)
        if first is not None:
            batch = ["\n" + first]
            for row in rows:
                batch.append(row)
                if len(batch) >= ROWS:
                    yield ",\n".join(batch)
                    batch = [""]
            if batch != [""]:
                yield ",\n".join(batch)
        yield MANIFEST_TAIL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """The manifest `json_pieces` wrote; its rows (an iterator when read from the spool)
        are taken one at a time into the columns, never an `Entry` per file."""
        manifest = cls(int(data["zip_size"]))
        for row in data["files"]:
            manifest._digest(manifest._files.add_row(row), str(row["md5"]))
        return manifest


# -- the manifest written while the zip is sent ----------------------------------------------

MANIFEST_TAIL = "\n]}\n"


def _manifest_head(zip_size: int, count: int, total: int) -> str:
    return f'{{"zip_size": {zip_size}, "file_count": {count}, "bytes": {total}, "files": ['


def manifest_head(planned: Sendable) -> str:
    """The first text of the manifest `planned` will have once sent (`Manifest.json_pieces`):
    everything in it is known from the plan, before any file is read."""
    return _manifest_head(planned.zip_size, len(planned.sizes), planned.total_bytes)


def manifest_rows(planned: Sendable, start: int, stop: int, md5: bytes) -> str:
    """The manifest text of the sent files `start` to `stop` of `planned` (`md5`: their
    digests, 16 bytes each), with the separators `Manifest.json_pieces` puts before them.
    Head, then each run's rows in order, then MANIFEST_TAIL is `Manifest.json_pieces`' text.

    Made from the plan's columns, what a series shares quoted once (no `Entry` per file): this
    runs in the sender between its sends. A plan read from the spool page by page gives each
    page's part (a run may end on the next page)."""
    if isinstance(planned, StreamedPlan):
        parts = []
        for page, base, low, high in planned.spans(start, stop):
            text = manifest_rows(page, low, high, md5[16 * (base + low - start) :])
            # The page's first file is not the plan's: its row follows another one.
            parts.append("," + text if low == 0 < base and text else text)
        return "".join(parts)
    files, sizes = planned.entries, planned.sizes
    kinds, kind_of, names, uids = files.kinds(), files._kind_of, files._names, files._uids
    quoted: dict[int, tuple[str, ...] | None] = {}
    rows = []
    for n, i in enumerate(range(start, stop)):
        digest = md5[16 * n : 16 * n + 16].hex()
        kind = kind_of[i]
        shared = quoted.get(kind, ())
        if shared == ():
            shared = quoted[kind] = _quoted(kinds[kind][1:])
        if shared is None or type(sizes[i]) is not int:  # not the template's: the general way
            rows.append(_manifest_row(files.entry(i), sizes[i], digest))
        else:
            path = _quote(kinds[kind][0] + names[i])
            rows.append(_MANIFEST_ROW.format(path, sizes[i], _quote(uids[i]), *shared, digest))
    if not rows:
        return ""
    return ("\n" if start == 0 else ",\n") + ",\n".join(rows)


def _quoted(shared: tuple[Any, ...]) -> tuple[str, ...] | None:
    """A series' shared fields as the manifest row's template quotes them; None where the
    template does not hold (a field that is not text, or fields in another order)."""
    if not (_TEMPLATED and all(type(v) is str for v in shared)):
        return None
    return tuple(map(_quote, shared))


class ManifestFile(Protocol):
    """Where `pack.Body` writes the manifest while it sends (the spool's `manifest.json`):
    `open(head)` when sending starts, `write(rows)` as each run is sent, `commit(tail)` once
    every file is hashed (durable, in place: before the zip's central directory is sent);
    `abort()` if the body ends any other way (nothing of it may pass for a manifest)."""

    def open(self, head: str) -> None: ...

    def write(self, text: str) -> None: ...

    def commit(self, tail: str) -> None: ...

    def abort(self) -> None: ...
