"""The records of the upload zip: its plan (`Plan`, a `Planned` per file) and its manifest
(`Manifest`, an `Entry` per file). `pack` makes them and re-exports them (`pack.Plan`, ...);
the spool keeps them (`json_pieces`, written piece by piece: a row per file, 50,000 and more,
is never held as one text).
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Iterator
from json.encoder import encode_basestring as _quote  # json's own, in C (ensure_ascii=False)
from typing import Any, Protocol

from xnatdrop import rules

# One encoder for every row: json.dumps with options builds a new one per call (3 µs a file).
_ROW = json.JSONEncoder(ensure_ascii=False)
ROWS = 256  # rows joined into one piece of a manifest's text: a write call per row cost 0.5 µs


@dataclasses.dataclass(frozen=True, slots=True)
class Planned:
    """One zip entry of the plan: the file, its size and modification time when planned, and
    its name in the zip. (Slots: a plan holds one per file, 50,000 and more.)"""

    entry: rules.FileEntry
    size: int
    mtime: float
    zip_name: str


@dataclasses.dataclass(frozen=True)
class Plan:
    zip_size: int
    files: tuple[Planned, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.files)

    def study_uids(self) -> set[str]:
        return {p.entry.study_instance_uid for p in self.files if p.entry.study_instance_uid}

    def zip_names(self) -> dict[str, str]:
        """Path (relative, POSIX) -> name in the zip, of every file."""
        return {p.entry.path: p.zip_name for p in self.files}

    def to_json(self) -> dict[str, Any]:
        return json.loads("".join(self.json_pieces()))

    def json_pieces(self) -> Iterator[str]:
        """`to_json()` as JSON text, in pieces of one file each: a spool record of 50,000 files
        is written without building its whole text, or a dict per file, in memory."""
        yield (
            f'{{"zip_size": {self.zip_size}, "file_count": {len(self.files)}, '
            f'"bytes": {self.total_bytes}, "files": ['
        )
        for index, p in enumerate(self.files):
            row = {
                "entry": _identity(p.entry),
                "size": p.size,
                "mtime": p.mtime,
                "name": p.zip_name,
            }
            yield ("\n" if index == 0 else ",\n") + _ROW.encode(row)
        yield "\n]}\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        files = tuple(_planned(row) for row in data["files"])
        return cls(int(data["zip_size"]), files)


def _planned(row: dict[str, Any]) -> Planned:
    """A plan's row read back. A zip name equal to the file's path (nearly all: `upload_name`
    shortens only names too long for XNAT) is the path's string, not a second copy of it:
    ~75 bytes a file of the plan the import step holds while it sends."""
    entry = rules.FileEntry.from_json(row["entry"])
    name = str(row["name"])
    return Planned(
        entry, int(row["size"]), float(row["mtime"]), entry.path if name == entry.path else name
    )


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


class Manifest:
    """The manifest of an upload: `zip_size` and, in `files`, an `Entry` per file.

    A manifest made while sending (`sent`) holds only the plan's entries and 16 bytes of MD5
    per file; the `Entry` objects (about 1 KB each with their dict) are made the first time
    `files` is read, by the verify step, and never while the body is sent or the manifest
    saved (`json_pieces`).
    """

    __slots__ = ("_files", "_md5", "_planned", "zip_size")

    def __init__(self, zip_size: int, files: tuple[Entry, ...]) -> None:
        self.zip_size = zip_size
        self._files: tuple[Entry, ...] | None = files
        self._planned: tuple[Planned, ...] = ()
        self._md5 = b""

    @classmethod
    def sent(cls, zip_size: int, planned: tuple[Planned, ...], md5: bytes) -> Manifest:
        """The manifest of `planned`, sent as planned, whose MD5 digests are `md5` (16 bytes
        each, in order)."""
        if len(md5) != 16 * len(planned):
            raise ValueError("one 16-byte MD5 per planned file")
        manifest = cls(zip_size, ())
        manifest._files, manifest._planned, manifest._md5 = None, planned, md5
        return manifest

    @property
    def files(self) -> tuple[Entry, ...]:
        if self._files is None:
            self._files = tuple(
                Entry.of(p.entry, p.size, self._md5[16 * i : 16 * i + 16].hex())
                for i, p in enumerate(self._planned)
            )
            self._planned, self._md5 = (), b""
        return self._files

    @property
    def file_count(self) -> int:
        return len(self._planned) if self._files is None else len(self._files)

    @property
    def total_bytes(self) -> int:
        if self._files is None:
            return sum(p.size for p in self._planned)
        return sum(e.size for e in self._files)

    def series(self) -> dict[str, list[Entry]]:
        """Entries grouped by SeriesInstanceUID, in first-seen order."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.files:
            groups.setdefault(entry.series_instance_uid, []).append(entry)
        return groups

    def study_uids(self) -> set[str]:
        return {e.study_instance_uid for e in self.files if e.study_instance_uid}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return (self.zip_size, self.files) == (other.zip_size, other.files)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Manifest(zip_size={self.zip_size}, {self.file_count} files)"

    def _rows(self) -> Iterator[str]:
        """Each file's row as JSON text."""
        if self._files is None:
            md5 = self._md5
            for i, p in enumerate(self._planned):
                yield _manifest_row(p.entry, p.size, md5[16 * i : 16 * i + 16].hex())
        else:
            for entry in self._files:
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
        return cls(int(data["zip_size"]), tuple(Entry.from_json(e) for e in data["files"]))


# -- the manifest written while the zip is sent ----------------------------------------------

MANIFEST_TAIL = "\n]}\n"


def _manifest_head(zip_size: int, count: int, total: int) -> str:
    return f'{{"zip_size": {zip_size}, "file_count": {count}, "bytes": {total}, "files": ['


def manifest_head(planned: Plan) -> str:
    """The first text of the manifest `planned` will have once sent (`Manifest.json_pieces`):
    everything in it is known from the plan, before any file is read."""
    return _manifest_head(planned.zip_size, len(planned.files), planned.total_bytes)


def manifest_rows(planned: tuple[Planned, ...], md5: bytes, first: bool) -> str:
    """The manifest text of consecutive sent files (`md5`: their digests, 16 bytes each), with
    the separators `Manifest.json_pieces` puts before them; `first`: the manifest's first rows.
    Head, then each run's rows in order, then MANIFEST_TAIL is `Manifest.json_pieces`' text."""
    rows = [
        _manifest_row(p.entry, p.size, md5[16 * i : 16 * i + 16].hex())
        for i, p in enumerate(planned)
    ]
    if not rows:
        return ""
    return ("\n" if first else ",\n") + ",\n".join(rows)


class ManifestFile(Protocol):
    """Where `pack.Body` writes the manifest while it sends (the spool's `manifest.json`):
    `open(head)` when sending starts, `write(rows)` as each run is sent, `commit(tail)` once
    every file is hashed (durable, in place: before the zip's central directory is sent);
    `abort()` if the body ends any other way (nothing of it may pass for a manifest)."""

    def open(self, head: str) -> None: ...

    def write(self, text: str) -> None: ...

    def commit(self, tail: str) -> None: ...

    def abort(self) -> None: ...
