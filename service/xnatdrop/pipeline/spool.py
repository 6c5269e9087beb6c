"""The spool: what the steps of one drop hand on to the later ones, as typed records.

Each record is one JSON file in `<state>/spool/<drop id>/`, written atomically and private
(0600), so that a later step, or the same step after a kill -9, finds it as it was:

- `check.json`, a `CheckRecord`: the verdict of the rules as the later steps need it (the
  files to upload as `rules.FileEntry`, the findings, the series, the sidecars, the subject's
  fields);
- `plan.json`, a `pack.Plan`: the zip's layout, made by the pack step;
- `manifest.json`, a `pack.Manifest`: size and MD5 of each file sent, made while importing;
- `xnat.json`, an `XnatRecord`: what XNAT does to uploads (read at push time), which series it
  left out on purpose, how the archived session was verified, and whether the drop is appended
  to a session XNAT already holds (`Append`);
- `quarantine.json`, a `QuarantineReason`: the reason of a quarantine under way;
- `late.json`, `LateSidecars`: the drop only adds sidecar folders to an archived session.

Everything here is xnatdrop's own. The plan and the manifest are made again from the folder
when lost (`plan_for`, `manifest_for`); a lost check record is an operator problem, not the
drop's (TransientError). `clear` removes a finished drop's records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from xnatdrop import atomicfile, filecolumns, ledger, pack, planstream, rules, verify
from xnatdrop.errors import TransientError

log = logging.getLogger(__package__)


class Record(Protocol):
    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self: ...


R = TypeVar("R", bound=Record)


@dataclasses.dataclass(frozen=True)
class CheckRecord:
    """What the check step found, as the later steps need it (`check.json`).

    `series` holds `rules.Series.to_json()` of each series to upload (the receipt's scans);
    `sidecars` maps a resource name to its folder, relative to the subject folder.

    `files` reads as a tuple of `rules.FileEntry`: made from a verdict, it is the verdict's own
    series' files (`filecolumns.Chain`, no copy); read back, it is kept in columns
    (`filecolumns.Files`), one row at a time: the pack step holds the record while it plans,
    and a `FileEntry` per file read back from the spool was ~290 bytes a file (issue 13).
    """

    label: str
    ok: bool
    findings: tuple[rules.Finding, ...]
    files: Sequence[rules.FileEntry]
    series: tuple[dict[str, Any], ...]
    sidecars: dict[str, str]
    subject_fields: dict[str, str]
    upload_bytes: int

    @classmethod
    def of(cls, verdict: rules.Verdict, subject_fields: dict[str, str]) -> CheckRecord:
        """The record of `verdict`: the findings a person should see, the files to upload."""
        folder = verdict.folder
        return cls(
            label=verdict.label,
            ok=verdict.ok,
            findings=tuple(verdict.reported()),
            files=filecolumns.Chain(series.files for series in verdict.series),
            series=tuple(s.to_json() for s in verdict.series),
            sidecars={
                name: path.relative_to(folder).as_posix() if path.is_absolute() else str(path)
                for name, path in verdict.sidecars.items()
            },
            subject_fields=subject_fields,
            upload_bytes=sum(s.bytes for s in verdict.series),
        )

    def blocking(self) -> list[rules.Finding]:
        return [f for f in self.findings if f.action is rules.Action.BLOCK]

    def excluded(self) -> list[dict[str, str]]:
        """What is left out of the upload and why, for the receipt."""
        return [
            {"path": f.path.as_posix(), "code": f.code, "message": f.message}
            for f in self.findings
            if f.action is rules.Action.EXCLUDE
        ]

    def to_json(self) -> dict[str, Any]:
        return {**self._head(), "files": list(self._rows())}

    def _rows(self) -> Iterator[dict[str, Any]]:
        files = self.files
        if isinstance(files, filecolumns.Files):
            return files.json_rows()
        return (f.to_json() for f in files)

    def json_pieces(self) -> Iterator[str]:
        """`to_json()` as JSON text: everything but the files on the first line, then one file
        a line (the layout `load` reads a row at a time, as the plan's and the manifest's)."""
        yield json.dumps(self._head(), ensure_ascii=False)[:-1] + ', "files": ['
        for index, row in enumerate(self._rows()):
            yield ("\n" if index == 0 else ",\n") + json.dumps(row, ensure_ascii=False)
        yield "\n]}\n"

    def _head(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
            "series": list(self.series),
            "sidecars": self.sidecars,
            "subject_fields": self.subject_fields,
            "upload_bytes": self.upload_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckRecord:
        return cls(
            label=str(data["label"]),
            ok=bool(data["ok"]),
            findings=tuple(rules.Finding.from_json(f) for f in data["findings"]),
            files=filecolumns.Files.from_rows(data["files"]),
            series=tuple(data["series"]),
            sidecars=dict(data["sidecars"]),
            subject_fields=dict(data.get("subject_fields", {})),
            upload_bytes=int(data.get("upload_bytes", 0)),
        )


@dataclasses.dataclass(frozen=True)
class Append:
    """Late files: XNAT already holds session `session` (of subject `subject`) of this study.

    `existing` are the SOPInstanceUIDs it held before, `send` those of this folder it lacks
    (the only ones uploaded), `names` the zip names of new files whose name is taken in their
    scan (path -> name).
    """

    session: str
    subject: str
    existing: tuple[str, ...]
    send: tuple[str, ...]
    names: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "subject": self.subject,
            "existing": list(self.existing),
            "send": list(self.send),
            "names": self.names,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Append:
        return cls(
            str(data["session"]),
            str(data["subject"]),
            tuple(data["existing"]),
            tuple(data["send"]),
            dict(data["names"]),
        )


@dataclasses.dataclass(frozen=True)
class XnatRecord:
    """What XNAT said at push time and what verification found (`xnat.json`).

    `rewriting`: what XNAT may change in the files (read when the import starts); `dropped`:
    series XNAT's own configuration left out (`verify.Series` rows with `stage` and `reason`),
    for the receipt; `verification`: what was verified and how, for the receipt; `append`: the
    session the drop is added to, if XNAT already held one of this study; `sent`: how it went
    when not by the REST import (`transport = "dicom"`: the receiver, instances, associations),
    for the receipt.
    """

    rewriting: verify.Rewriting | None = None
    dropped: tuple[dict[str, Any], ...] = ()
    verification: dict[str, Any] | None = None
    append: Append | None = None
    sent: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rewriting": self.rewriting.to_json() if self.rewriting else None,
            "dropped": list(self.dropped),
            "verification": self.verification,
            "append": self.append.to_json() if self.append else None,
            "sent": self.sent,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> XnatRecord:
        rewriting, append = data.get("rewriting"), data.get("append")
        return cls(
            rewriting=verify.Rewriting.from_json(rewriting) if rewriting else None,
            dropped=tuple(data.get("dropped") or ()),
            verification=data.get("verification"),
            append=Append.from_json(append) if append else None,
            sent=data.get("sent"),
        )


@dataclasses.dataclass(frozen=True)
class QuarantineReason:
    """Why a drop is quarantined: QUARANTINE.json's content (`reasonfiles`), kept in the spool
    (`quarantine.json`) from the start of the move, so a quarantine cut short by a crash is
    finished with the same reason. `in_xnat` is the session's page when it is in XNAT."""

    label: str
    project: str
    code: str
    message: str
    fix: str
    step: str | None
    findings: tuple[rules.Finding, ...]
    drop_root: str
    time: str
    in_xnat: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "label": self.label,
            "project": self.project,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
            "step": self.step,
            "findings": [f.to_json() for f in self.findings],
            "drop_root": self.drop_root,
            "time": self.time,
        }
        if self.in_xnat:
            data["in_xnat"] = self.in_xnat
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuarantineReason:
        return cls(
            label=str(data["label"]),
            project=str(data["project"]),
            code=str(data["code"]),
            message=str(data["message"]),
            fix=str(data.get("fix", "")),
            step=data.get("step"),
            findings=tuple(rules.Finding.from_json(f) for f in data.get("findings", [])),
            drop_root=str(data["drop_root"]),
            time=str(data["time"]),
            in_xnat=data.get("in_xnat"),
        )


@dataclasses.dataclass(frozen=True)
class LateSidecars:
    """The drop holds only sidecar folders for a session XNAT has archived already
    (`late.sidecars_only`): the upload steps are skipped and the attach step adds the sidecars
    to that session."""

    session: str
    subject: str
    url: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LateSidecars:
        return cls(str(data["session"]), str(data["subject"]), str(data["url"]))


NAMES: dict[type, str] = {
    CheckRecord: "check.json",
    pack.Plan: "plan.json",
    pack.Manifest: "manifest.json",
    XnatRecord: "xnat.json",
    QuarantineReason: "quarantine.json",
    LateSidecars: "late.json",
}
# Files of xnatdrop versions that wrote the upload zip into the spool.
LEGACY = ("upload.zip", "upload.zip.part")
# What the DICOM receiver answered for each instance (`dimse.Journal`, written by `cstore`).
JOURNAL = "dicom-journal.jsonl"


def load(folder: Path, kind: type[R], files: bool = True) -> R | None:
    """The record of `kind` in `folder`, or None if there is none or it is unreadable.

    A record written a file a line (`json_pieces`: the check record, the plan, the manifest;
    50,000 rows and more) is read a row at a time: its `from_json` gets the rows as an
    iterator and makes each file's object from one small dict, so neither the whole text nor
    a dict per file is ever in memory (at 50,000 files they were about 70 MB beside the
    records themselves). Anything else is parsed whole. Without `files`, the record comes
    with no files (its rows are not read): for a step that needs only its head.
    """
    try:
        with open(folder / NAMES[kind], encoding="utf-8") as handle:
            first = handle.readline()
            if first.endswith(ROWS_START):
                head = json.loads(first[: -len(ROWS_START)].rstrip().rstrip(",") + "}")
                head["files"] = _rows(handle) if files else ()
                return kind.from_json(head)
            handle.seek(0)
            data = json.load(handle)
            if not files:
                data["files"] = ()
            return kind.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# How the first line of a record written a file a line ends (`json_pieces`).
ROWS_START = '"files": [\n'


def _rows(lines: Iterator[str]) -> Iterator[Any]:
    """The rows of a record written a file a line, each parsed alone; ValueError if the text
    does not end as `json_pieces` ends it (a record cut short is not a record)."""
    for line in lines:
        if line == "]}\n":
            if next(lines, None) is not None:
                raise ValueError("text after the end of the record")
            return
        yield json.loads(line.rstrip().removesuffix(","))
    raise ValueError("the record ends inside its list of files")


def save(folder: Path, record: Record) -> None:
    """Write `record` atomically into `folder` (made 0700 if missing).

    The plan and the manifest (a row per file, 50,000 and more) are written piece by piece
    (`json_pieces`): their whole text, or a dict per file, is never built in memory.
    """
    ledger.private_dir(folder)
    pieces = getattr(record, "json_pieces", None)
    if pieces is not None:
        atomicfile.write(folder / NAMES[type(record)], pieces())
        return
    text = json.dumps(record.to_json(), indent=1, ensure_ascii=False)
    atomicfile.write(folder / NAMES[type(record)], text)


class ManifestWriter:
    """The drop's `manifest.json`, written while the zip is sent (`pack.ManifestFile`).

    The same file `save` writes, the same way (its `.part` beside it, mode 0600, fsync, then
    one rename), but in pieces as each run of the zip is sent: at the end of the upload only
    the last rows, the fsync and the rename remain before the central directory goes. Until
    `commit`, only the `.part` exists, which `load` never reads, so a kill at any moment
    leaves no manifest, or the whole of it.
    """

    def __init__(self, folder: Path) -> None:
        self._path = folder / NAMES[pack.Manifest]
        self._part = folder / f"{NAMES[pack.Manifest]}.part"
        self._handle: Any = None

    def open(self, head: str) -> None:
        self.abort()  # a Body sent again starts its manifest again
        ledger.private_dir(self._path.parent)
        descriptor = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, atomicfile.PRIVATE)
        self._handle = os.fdopen(descriptor, "w", encoding="utf-8", buffering=1 << 16)
        os.fchmod(descriptor, atomicfile.PRIVATE)  # whatever a killed run's .part had
        self._handle.write(head)

    def write(self, text: str) -> None:
        try:
            self._handle.write(text)
        except OSError as error:  # a full disk names no file: the pipeline sorts by path
            raise OSError(error.errno, error.strerror, str(self._part)) from error

    def commit(self, tail: str) -> None:
        handle, self._handle = self._handle, None
        try:
            try:
                handle.write(tail)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                handle.close()
            os.replace(self._part, self._path)
        except OSError as error:
            self._part.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(self._part)) from error

    def abort(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
            self._part.unlink(missing_ok=True)


def discard(folder: Path, *kinds: type) -> None:
    """Remove the records of `kinds` (and what a killed write of theirs left)."""
    for kind in kinds:
        for name in (NAMES[kind], f"{NAMES[kind]}.part"):
            (folder / name).unlink(missing_ok=True)


def clear(folder: Path) -> None:
    """Remove every record of a finished drop, then its folder if nothing else is in it."""
    discard(folder, *NAMES)
    for name in (*LEGACY, JOURNAL):
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty or already gone: leave it
        folder.rmdir()


def check_record(folder: Path, drop_id: int, files: bool = True) -> CheckRecord:
    """The check step's record; TransientError if it is lost (an operator problem).

    Without `files`, its `files` are left empty and never read: the finish step needs the
    series, sidecars and findings only, not the files beside the manifest the receipt lists."""
    record = load(folder, CheckRecord, files)
    if record is None:
        raise TransientError(
            f"the check results of drop {drop_id} are unreadable: {folder / NAMES[CheckRecord]}"
        )
    return record


def xnat_record(folder: Path) -> XnatRecord:
    """What the spool knows of XNAT for this drop (empty before the import step)."""
    return load(folder, XnatRecord) or XnatRecord()


def update_xnat(folder: Path, **changes: Any) -> XnatRecord:
    """Change some fields of the drop's `XnatRecord` and save it."""
    record = dataclasses.replace(xnat_record(folder), **changes)
    save(folder, record)
    return record


def plan_for(folder: Path, work: Path, drop_id: int) -> pack.Plan:
    """The zip's plan for this drop, planning (again) from the check record if it is lost.

    Zip entry names are the files' paths, shortened where XNAT could not store them
    (`pack.upload_name`).
    """
    planned = load(folder, pack.Plan)
    if planned is None:
        files = check_record(folder, drop_id).files
        # Only the names XNAT could not store as they are (`pack.plan` keeps the others): a
        # dict entry per file was ~100 bytes a file beside the plan.
        names = {p: n for f in files if (n := pack.upload_name(p := f.path)) != p}
        planned = pack.plan(work, files, names)
        save(folder, planned)
    return planned


def streamed_plan(folder: Path, work: Path, drop_id: int) -> planstream.StreamedPlan:
    """The plan as the import sends it, a page at a time (`planstream`); made again if lost."""
    path = folder / NAMES[pack.Plan]
    for _ in range(2):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if (head := load(folder, pack.Plan, files=False)) is not None:
                return planstream.StreamedPlan(head.zip_size, lambda: _record_rows(path))
        discard(folder, pack.Plan)
        plan_for(folder, work, drop_id)
    raise TransientError(f"the plan of drop {drop_id} cannot be read back: {path}")


def _record_rows(path: Path) -> Iterator[Any]:
    """The rows of a record written a file a line (`json_pieces`), read as asked for."""
    with open(path, encoding="utf-8") as handle:
        handle.readline()
        yield from _rows(handle)


def manifest_for(folder: Path, work: Path, drop_id: int) -> pack.Manifest:
    """The MD5 manifest of this drop's upload.

    The import step saves it while it sends the zip. A step that needs it before that (the
    import after a crash, with something already on the server) or after the spool lost it
    hashes the files without sending them.
    """
    manifest = load(folder, pack.Manifest)
    if manifest is None:
        started = time.monotonic()
        manifest = pack.digest(work, plan_for(folder, work, drop_id))
        save(folder, manifest)
        log.info(
            "hashed %d files for the manifest (%.1f s)",
            manifest.file_count,
            time.monotonic() - started,
        )
    return manifest
