"""`POST /data/services/import`: the DICOM-zip and gradual-DICOM handlers (§3, §6).

A raw body is read as it arrives, as XNAT's `DicomZipImporter` reads it through a
`ZipInputStream` (`zipstream`; a tar through `tarfile`'s stream mode); only a multipart upload is
spooled first. For each entry the header is read straight from the entry stream (`dicomheader`:
the sandbox's walker, or pydicom for what it declines), the §6 rules pick project, subject and
session, and the entry's bytes go to a worker thread (`entrywriter`) that writes its prearchive
file once, the site script's edits spliced in (`anonymize.splice`), checking the entry's CRC-32 on
the way while the request thread receives the next entry. No MD5 is computed at import, as in
XNAT: the catalog digests are computed at archive (`archive.py`). Memory stays flat whatever
the upload size.

An import that fails because its body is cut short or is not a readable archive leaves nothing
behind: the sessions it created are deleted and the files it added to existing ones removed
(`_roll_back`). A non-DICOM entry keeps the entries before it, as XNAT does.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import os
import re
import sqlite3
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pydicom

from xnat_sandbox import (
    anonymize,
    archive,
    bodies,
    dicomedit,
    entrywriter,
    prearchive,
    prearchive_build,
    seriesfilter,
    tables,
    zipstream,
)
from xnat_sandbox.context import SiteContext
from xnat_sandbox.dicomheader import (
    LAST_NEEDED_TAG,
    Header,
    HeaderTap,
    Unreadable,
    check_header,
    read_header,
    walk_header,
    walked_header,
)
from xnat_sandbox.users import UNASSIGNED, User
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

HANDLERS = ("DICOM-zip", "gradual-DICOM")
RECORD_BATCH = 256
GRADUAL_TYPES = ("application/dicom", "application/x-mirc", "application/x-mirc-dicom")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_FILE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@functools.lru_cache(maxsize=1024)  # a session's files repeat the same comments
def contained(text: str, key: str) -> str | None:
    """`ContainedAssignmentExtractor`: the value of `KEY: value` inside a comment field."""
    pattern = rf"(?:\A|(?:.*[\s,;])){key}\s*:\s*([\w\-]*)(?:(?:[\s,;].*\Z)|\Z)"
    match = re.match(pattern, text, re.IGNORECASE | re.DOTALL)
    return match.group(1) if match and match.group(1) else None


def to_file_name_chars(value: str) -> str:
    """`org.nrg.xnat.Files.toFileNameChars`: anything but ASCII letters, digits, `_`, `.` and `-`
    becomes `_` (Java's `\\w` is ASCII)."""
    return _FILE_NAME_CHARS.sub("_", value)


def to_label_chars(value: str) -> str:
    """`Labels.toLabelChars`: anything but letters, digits, `_` and `-` becomes `_`."""
    return _LABEL_CHARS.sub("_", value)


@dataclass
class Dest:
    """A parsed `dest` parameter (§3.3 templates)."""

    kind: str  # "prearchive" | "archive"
    project: str | None = None
    timestamp: str | None = None
    folder: str | None = None
    subject: str | None = None
    experiment: str | None = None


def parse_dest(value: str) -> Dest:
    path = re.sub(r"^/(data|REST)(?=/)", "", value.strip()).rstrip("/")
    match = re.fullmatch(r"/prearchive(?:/projects/([^/]+)(?:/([^/]+)(?:/([^/]+))?)?)?", path)
    if match:
        return Dest("prearchive", *match.groups())
    match = re.fullmatch(
        r"/archive(?:/projects/([^/]+)(?:/subjects/([^/]+))?(?:/experiments/([^/]+))?)?", path
    )
    if match:
        return Dest("archive", match.group(1), subject=match.group(2), experiment=match.group(3))
    raise tables.HttpError(400, "Parameter dest format error")


@dataclass
class Job:
    """One import, resolved: who, which handler, and the explicit routing values (a REST
    request's parameters, or what the DICOM receiver passes)."""

    sandbox: SiteContext
    user: User  # who files the data: the requester, or the DICOM receiver's `receivedFileUser`
    handler: str
    dest: Dest | None
    project: str | None  # an explicit project the user may write to, else None (§6 decides)
    subject: str | None
    label: str | None
    ignore_unparsable: bool
    rename: bool
    values: dict[str, str]
    sessions: dict[int, sqlite3.Row] = field(default_factory=dict)
    keys: dict[tuple[str, str, str], int] = field(default_factory=dict)
    scans: dict[tuple[int, str], str] = field(default_factory=dict)  # (session, series UID)
    stored: int = 0
    rejected: int = 0  # files a site script rejected
    answered: set[int] = field(default_factory=set)  # sessions that received a file
    #: (which filter, SeriesNumber) → instances a series import filter dropped
    filtered: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    _filters: dict[str | None, seriesfilter.Filter | None] = field(default_factory=dict)
    #: the site anonymisation script (None when off), read once per import, and its last tag
    site_script: dicomedit.Script | None = None
    script_top: int = 0
    #: stored files not yet recorded: one commit per RECORD_BATCH files, not one per file;
    #: (pk, scan, name) → (result, SOPInstanceUID, instance), result getting [size] once the
    #: writer has closed the file. No MD5: XNAT computes the digests at archive (entrywriter)
    pending: dict[tuple[int, str, str], tuple[list[object], str, int | None]] = field(
        default_factory=dict
    )
    #: sessions this import created, and files it added to sessions that existed (a roll back)
    created: set[int] = field(default_factory=set)
    #: hashes of the names this import stored in the sessions it created: no other file can be
    #: there, so a name not in it needs no database look-up (`owner`)
    named: set[int] = field(default_factory=set)
    added: list[tuple[int, str, str]] = field(default_factory=list)
    #: (session, scan) → its DICOM folder, made by this import (a string: the hot path)
    folders: dict[tuple[int, str], str] = field(default_factory=dict)
    entries: int = 0  # archive entries met so far
    _writer: entrywriter.EntryWriter | None = None
    #: files whose header (or anonymisation) pydicom had to do: the walker could not
    read_by_pydicom: int = 0
    anonymised_by_pydicom: int = 0

    def __post_init__(self) -> None:
        self.site_script = anonymize.site_script(self.sandbox.store)
        self.script_top = max(self.site_script.tags(), default=0) if self.site_script else 0

    @property
    def writer(self) -> entrywriter.EntryWriter:
        """The worker writing this import's files, started on first use."""
        if self._writer is None:
            lanes = 1 if self.handler == "gradual-DICOM" else entrywriter.LANES  # one file
            self._writer = entrywriter.EntryWriter(lanes)
        return self._writer

    def hand_over_before_wait(self, body: bodies.Body) -> None:
        """Before a read of `body` that would wait for the client, hand the writer's group of
        whole files to a worker: nothing that has arrived waits on the client's next bytes."""
        writer = self._writer
        if writer is not None and writer.holding and not body.ready():
            writer.hand_over()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def record(
        self, key: tuple[int, str, str], result: list[object], sop: str, number: int | None
    ) -> None:
        self.pending[key] = (result, sop, number)
        if key[0] not in self.created:
            self.added.append(key)
        else:
            self.named.add(hash(key))
        if len(self.pending) >= RECORD_BATCH:
            self.flush()

    def flush(self) -> None:
        """Record the stored files (before anything reads prearc_files, and at the end), once
        the writer has written them."""
        if self.pending:
            if self._writer is not None:
                self._writer.drain()
            rows: list[prearchive.FileRow] = [
                (pk, scan, name, int(result[0]), "", sop, number)  # type: ignore[call-overload]
                for (pk, scan, name), (result, sop, number) in self.pending.items()
            ]
            prearchive.record_files(self.sandbox.store, rows)
            self.pending.clear()

    def owner(self, pk: int, scan_id: str, name: str) -> str | None:
        """The SOPInstanceUID stored under this name in the scan, by this import or before."""
        key = (pk, scan_id, name)
        row = self.pending.get(key)
        if row is not None:
            return row[1]
        if pk in self.created and hash(key) not in self.named:
            return None
        return prearchive.file_owner(self.sandbox.store, pk, scan_id, name)

    def filter_for(self, project: str | None) -> seriesfilter.Filter | None:
        """The site filter (project None) or a project's, read once per import."""
        if project not in self._filters:
            store = self.sandbox.store
            if project is None:
                self._filters[None] = seriesfilter.site_filter(store)
            else:
                self._filters[project] = (
                    None if project == UNASSIGNED else seriesfilter.project_filter(store, project)
                )
        return self._filters[project]

    def filter_tags(self, project: str | None) -> list[int]:
        tags = []
        for scope in (None, project) if project else (None,):
            found = self.filter_for(scope)
            tags.extend(found.tags() if found else [])
        return tags

    def excluded_by(self, project: str, dataset: pydicom.Dataset) -> str | None:
        """ "site" or "project" when that filter drops the instance, else None."""
        site = self.filter_for(None)
        if site is not None and not site.includes(dataset):
            return "site"
        own = self.filter_for(project)
        if own is not None and not own.includes(dataset):
            return "project"
        return None


def handle_import(request: Request) -> tables.Response:
    """`POST /data/services/import` (§3): read the body, pick the handler, import, answer."""
    if request.method != "POST":
        raise tables.HttpError(405, "Method Not Allowed")
    # A raw body is read as it arrives; multipart spools.
    received = request.receive(digest=False, stream_raw=True)
    handler = request.param("import-handler")
    if not received.uploads:
        # Importer.handlePost: no file with a handler named is 400; with none, `fw.get(0)`
        # throws IndexOutOfBoundsException, which nothing catches: Restlet's 500.
        if handler is None:
            raise tables.HttpError(500, "Internal Server Error")
        raise tables.HttpError(400, "Unable to identify upload format.")
    if len(received.uploads) > 1:
        raise tables.HttpError(400, "Importer is limited to one uploaded resource at a time.")
    kind = bodies.media_type(request.headers.get("Content-Type"))
    if handler is None:
        handler = "gradual-DICOM" if kind in GRADUAL_TYPES else "DICOM-zip"
    if handler not in HANDLERS:
        raise tables.HttpError(404, f"Unknown importer implementation specified: {handler}")
    job = _job(request, handler)
    upload = received.uploads[0]
    read, close = upload.reader()
    if upload.stream is not None:
        read = _streamed(upload.stream, job)
    try:
        if handler == "gradual-DICOM":
            try:
                _store_entry(job, _Stream(read), upload.name)
            except Unreadable as error:
                raise tables.HttpError(400, str(error)) from error
        else:
            _import_archive(job, upload.name, read)
        while read(bodies.CHUNK):  # the rest of the body (a zip's central directory)
            pass
        job.flush()
    except _BROKEN as error:
        _roll_back(job)
        if isinstance(error, (bodies.ClientGone, bodies.ConnectionDropped)):
            raise
        _touch_sessions(job)
        # DicomZipImporter.importCompressedFile l.155-156: an IOException of the zip or tar
        # stream (a CRC that does not match, a body that ends inside an entry, a tar header
        # that does not parse) becomes ClientException("unable to read data from file").
        raise tables.HttpError(400, "unable to read data from file") from error
    except BaseException:
        job.flush()  # what was stored is recorded (a non-DICOM entry keeps those before it)
        raise
    finally:
        job.close()
        close()
    return _finish(job, request)


#: what fails an import as a whole: a body cut short, or one that is no readable archive
_BROKEN = (
    bodies.ClientGone,
    bodies.ConnectionDropped,
    zipstream.ZipError,
    entrywriter.CrcMismatch,
    tarfile.TarError,
    EOFError,
    zlib.error,
)


def _streamed(body: bodies.Body, job: Job) -> Callable[[int], bytes]:
    """`read(n)` over a body still arriving: what has come (`read_some`), after handing the
    writer's waiting files over if the client has sent nothing more (`Job.hand_over_before_wait`).
    """

    def read(size: int) -> bytes:
        job.hand_over_before_wait(body)
        return body.read_some(size)

    return read


class _Stream:
    """A `read(n)` callable as the file-like object `tarfile`, `HeaderTap` and pydicom read."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


def _roll_back(job: Job) -> None:
    """Leave nothing of a failed import: delete the sessions it created and the files it added
    to sessions that were there before (their scans too, if they are left empty)."""
    store = job.sandbox.store
    with contextlib.suppress(BaseException):
        job.writer.drain()  # the worker stops writing (and removes its current file)
    job.pending.clear()
    for pk in job.created:
        row = store.one("SELECT * FROM prearchive WHERE pk = ?", pk)
        if row is not None:
            prearchive.delete_session(store, row)
    for pk, scan_id, name in job.added:
        row = job.sessions[pk]
        (prearchive.session_dir(store, row) / "SCANS" / scan_id / "DICOM" / name).unlink(
            missing_ok=True
        )
        store.run(
            "DELETE FROM prearc_files WHERE session = ? AND scan_id = ? AND name = ?",
            pk,
            scan_id,
            name,
        )
        prearchive.drop_scan_if_empty(store, pk, scan_id)
    job.sessions = {pk: row for pk, row in job.sessions.items() if pk not in job.created}
    job.answered -= job.created


def _job(request: Request, handler: str) -> Job:
    sandbox = request.sandbox
    dest = parse_dest(request.param("dest") or "") if request.param("dest") else None
    if handler == "DICOM-zip":
        project = request.param("project", "PROJECT_ID")
        subject = request.param("subject", "SUBJECT_ID")
        label = request.param("session", "EXPT_LABEL")
    else:  # gradual-DICOM honours only the upper-case names (§3.3, pitfall 2)
        project = request.param("PROJECT_ID")
        subject = request.param("SUBJECT_ID")
        label = request.param("EXPT_LABEL")
    if dest is not None and dest.project:
        project = dest.project
    if dest is not None and handler == "DICOM-zip":
        subject = dest.subject or subject
        if dest.experiment:
            found = sandbox.store.experiment(project, dest.experiment) if project else None
            label = found["label"] if found else dest.experiment
        if dest.folder and not label:
            label = dest.folder
    resolved = None
    if project:
        row = sandbox.store.project(project)
        if row is not None and request.user.can_write(row["id"]):
            resolved = row["id"]
        else:
            log.info(
                "import: project %s does not exist or is not writable; using DICOM rules", project
            )
    explicit_commit = request.param("action") == "commit"
    ignore = request.param("Ignore-Unparsable")
    values = {
        "prevent_anon": request.param("prevent_anon") or "",
        "prevent_auto_commit": request.param("prevent_auto_commit") or "",
        "source": request.param("SOURCE") or "",
        "visit": request.param("VISIT") or "",
        "subtype": request.param("SUBTYPE") or "",
        "timezone": request.param("TIMEZONE") or "",
        "aa": "",
    }
    if handler == "DICOM-zip":
        values["aa"] = (request.param("AA", "auto-archive") or "").lower()
        if dest is not None:
            values["aa"] = "true" if dest.kind == "archive" else "false"
    return Job(
        sandbox,
        request.user,
        handler,
        dest,
        resolved,
        to_label_chars(subject) if subject else None,
        label,
        ignore.lower() == "true" if ignore else explicit_commit,
        request.flag("rename"),
        values,
    )


def archive_format(name: str) -> str | None:
    """`Format.getFormat` by file name: ZIP, TAR or TGZ; None is "UNKNOWN"."""
    lower = name.lower()
    if lower.endswith((".zip", ".zar")):
        return "zip"
    if lower.endswith((".tar", ".xar")):
        return "tar"
    if lower.endswith((".tgz", ".tar.gz")):
        return "tgz"
    return None


def _entries(read: Callable[[int], bytes], kind: str) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (entry name, stream) for each regular file of a zip, tar or tar.gz, read in one
    pass from `read` (`DicomZipImporter.importZipFile`/`importTgzFile`: a ZipInputStream or a
    TarArchiveInputStream over the request body)."""
    if kind == "zip":
        for entry in zipstream.entries(read):
            if not entry.name.endswith("/"):
                yield entry.name, entry  # type: ignore[misc]
    else:
        with tarfile.open(
            fileobj=_Stream(read),  # type: ignore[arg-type]
            mode="r|gz" if kind == "tgz" else "r|",
        ) as bundle:
            for member in bundle:
                if not member.isfile():
                    continue
                stream = bundle.extractfile(member)
                if stream is not None:
                    with stream:
                        yield member.name, stream


def _import_archive(job: Job, name: str, read: Callable[[int], bytes]) -> None:
    kind = archive_format(name)
    if kind is None:
        raise tables.HttpError(400, "Unsupported format UNKNOWN")
    last_error: Unreadable | None = None
    for entry_name, stream in _entries(read, kind):
        job.entries += 1
        try:
            _store_entry(job, stream, entry_name)
        except Unreadable as error:
            if not job.ignore_unparsable:
                _touch_sessions(job)
                raise tables.HttpError(400, str(error)) from error
            last_error = error
    if job.stored == 0 and last_error is not None:
        raise tables.HttpError(400, str(last_error))


def _identify(job: Job, header: Header) -> tuple[str, str, str, str]:
    """(project, subject, label, autoarchive) for one file, by the §6.1 chains."""
    store = job.sandbox.store
    project = job.project
    if project is None:
        candidates = [contained(c, "Project") for c in header.comments]
        candidates += [header.study_description, header.accession]
        for candidate in candidates:
            if not candidate:
                continue
            row = store.project(candidate)
            if row is not None and job.user.can_write(row["id"]):
                project = row["id"]
                break
    subject = job.subject
    if subject is None:
        found = next((v for c in header.comments if (v := contained(c, "Subject"))), None)
        subject = to_label_chars(found or header.patient_name)
    label = job.label
    if label is None:
        found = next((v for c in header.comments if (v := contained(c, "Session"))), None)
        label = to_label_chars(found or header.patient_id) or "dicom_upload"
    autoarchive = ""
    flag = next((v for c in header.comments if (v := contained(c, "AA"))), None)
    if flag:
        autoarchive = "AutoArchive" if flag.lower() in ("t", "true") else "Manual"
    return project or UNASSIGNED, subject, label, autoarchive


def _namer(header: Header) -> str:
    """`dicomFileNameTemplate`: StudyInstanceUID-SeriesNumber-InstanceNumber-hash."""
    digest = hashlib.md5(f"{header.sop_class}{header.sop_uid}".encode()).hexdigest()[:8]
    return f"{header.study_uid}-{header.series_number}-{header.instance_number}-{digest}.dcm"


def _store_entry(job: Job, source: IO[bytes], entry_name: str) -> None:
    """Parse one entry's header, route it, and copy it to its prearchive file."""
    tap = HeaderTap(source)
    store = job.sandbox.store
    last_tag = max([LAST_NEEDED_TAG, *job.filter_tags(job.project)])
    # The walker reads the header's bytes (and as far as the site script edits); pydicom reads
    # the files it cannot walk, and the header a series import filter needs.
    walked = walk_header(tap, max(last_tag, job.script_top), job.script_top)
    header = walked_header(walked) if walked is not None else None
    dataset: pydicom.Dataset | None = None
    if header is None:
        job.read_by_pydicom += 1
        header, dataset = read_header(tap, entry_name, last_tag)
    else:
        check_header(header, entry_name)
    project, subject, label, autoarchive = _identify(job, header)
    filtered = job.filter_for(None) is not None or job.filter_for(project) is not None
    if filtered and (dataset is None or max(job.filter_tags(project), default=0) > last_tag):
        tags = [last_tag, *job.filter_tags(project)]  # the project came from the header
        header, dataset = read_header(tap, entry_name, max(tags))
    excluded_by = job.excluded_by(project, dataset) if dataset is not None else None
    if excluded_by:  # GradualDicomImporter.call l.193: an empty answer, nothing stored
        job.filtered[(excluded_by, header.series_number)] += 1
        return
    key = (project, header.study_uid, label)
    pk = job.keys.get(key)
    if pk is None:
        values = dict(
            job.values,
            subject=subject,
            autoarchive=autoarchive,
            scan_date=_date(header.study_date),
            scan_time=_time(header.study_time),
        )
        dest = job.dest
        explicit = dest is not None and dest.kind == "prearchive" and dest.project == project
        row, created = prearchive.open_session(
            store,
            job.sandbox.clock.now(),
            project,
            header.study_uid,
            label,
            values,
            timestamp=dest.timestamp if explicit and dest else None,
            folder=dest.folder if explicit and dest else None,
        )
        if created:
            job.created.add(row["pk"])
        else:
            prearchive.update_flags(store, row["pk"], job.values)
        pk = row["pk"]
        job.keys[key] = pk
        job.sessions[pk] = row
    row = job.sessions[pk]
    scan_id = job.scans.get((pk, header.series_uid))
    if scan_id is None:
        scan_id = prearchive.assign_scan(
            store,
            pk,
            header.series_uid,
            header.series_number,
            header.series_description,
            header.modality,
        )
        job.scans[(pk, header.series_uid)] = scan_id
    # GradualDicomImporter.getSafeFile: the whole entry name through Files.toFileNameChars, so
    # `t1_mpr/00000070.dcm` is stored as `t1_mpr_00000070.dcm`; the namer when renaming.
    name = to_file_name_chars(entry_name)
    if job.rename or not name or name in (".", ".."):
        name = _namer(header)
    owner = job.owner(pk, scan_id, name)
    if owner is not None and owner != header.sop_uid:
        name = _namer(header)
    folder = job.folders.get((pk, scan_id))
    if folder is None:
        made = prearchive.session_dir(store, row) / "SCANS" / scan_id / "DICOM"
        made.mkdir(parents=True, exist_ok=True)
        folder = job.folders[(pk, scan_id)] = str(made)
    target = os.path.join(folder, name)
    prevent_anon = job.values["prevent_anon"] or row["prevent_anon"] or ""
    # GradualDicomImporter.call l.390-411: the site script with the session's project,
    # subject and prearchive folder name (`session.getFolderName()`) as `session`.
    script = job.site_script if prevent_anon.lower() != "true" else None
    variables = {"project": project, "subject": row["subject"] or "", "session": row["folder"]}
    spliced = None
    if script is not None and walked is not None:
        spliced = anonymize.splice(walked, script, variables)
        if spliced is not None and spliced.rejected:
            job.rejected += 1  # GradualDicomImporter: nothing stored, empty answer
            job.flush()
            if prearchive.drop_scan_if_empty(store, pk, scan_id):
                job.scans.pop((pk, header.series_uid), None)
            return
    result: list[object] = []
    _write(job.writer, target, tap, spliced, result)
    if script is not None and spliced is None:  # the pydicom path, on the stored file
        job.anonymised_by_pydicom += 1
        job.writer.drain()
        try:
            outcome = anonymize.rewrite(Path(target), script, variables)
        except anonymize.Unrewritable as error:
            # handleAnonymizationError: the file is dropped, the import answers 400
            Path(target).unlink(missing_ok=True)
            job.flush()
            store.run(
                "DELETE FROM prearc_files WHERE session = ? AND scan_id = ? AND name = ?",
                pk,
                scan_id,
                name,
            )
            job.flush()
            if prearchive.drop_scan_if_empty(store, pk, scan_id):
                job.scans.pop((pk, header.series_uid), None)
            raise Unreadable(f"unable to read DICOM object {entry_name}") from error
        if outcome.rejected:
            job.rejected += 1  # GradualDicomImporter: file deleted, empty answer
            job.flush()
            if prearchive.drop_scan_if_empty(store, pk, scan_id):
                job.scans.pop((pk, header.series_uid), None)
            return
        result[:] = [outcome.size]
    job.record((pk, scan_id, name), result, header.sop_uid, _instance(header.instance_number))
    job.stored += 1
    job.answered.add(pk)


def _write(
    writer: entrywriter.EntryWriter,
    target: str,
    tap: HeaderTap,
    spliced: anonymize.Spliced | None,
    result: list[object],
) -> None:
    """Hand the writer the kept header bytes (with the anonymised header spliced in, if given)
    and the rest of the stream as it is read; `result` gets [size] once it is written.

    A zip entry's CRC-32 is checked by the writer against the bytes as received (the kept
    header's before any splice), as `ZipInputStream` checks it.
    """
    source = tap.source
    check = isinstance(source, zipstream.Entry)
    if spliced is None:
        handle = writer.begin(target, result, 0 if check else None)
        writer.write(handle, tap.kept)  # not copied: nothing adds to it after this
    else:
        handle = writer.begin(target, result, entrywriter.crc32(tap.kept) if check else None)
        writer.write(handle, spliced.head, received=False)
        writer.write(handle, memoryview(tap.kept)[spliced.resume :], received=False)
    while chunk := source.read(bodies.CHUNK):
        writer.write(handle, chunk)
    writer.end(handle, source.crc if isinstance(source, zipstream.Entry) else None)


def _instance(value: str) -> int | None:
    """InstanceNumber (IS) as the catalog's integer `instanceNumber`; None when absent."""
    try:
        return int(value)
    except ValueError:
        return None


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value) else ""


def _time(value: str) -> str:
    digits = value.split(".")[0]
    if re.fullmatch(r"\d{6}", digits):
        return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    return ""


def _touch_sessions(job: Job) -> None:
    now = job.sandbox.clock.now()
    for pk in job.sessions:
        prearchive.touch(job.sandbox.store, pk, now)


def _finish(job: Job, params: Request) -> tables.Response:
    """Build/archive as `dest` asks, then answer with one `/data` URI per session (§3.5)."""
    sandbox = job.sandbox
    store = sandbox.store
    _touch_sessions(job)
    uris: list[str] = []
    for pk in (pk for pk in job.sessions if pk in job.answered):
        row = prearchive.get(store, pk)
        if job.dest is None or job.handler == "gradual-DICOM":
            uris.append(prearchive.data_uri(row))
            continue
        built = prearchive_build.build(sandbox, row)
        if built is None:  # DicomZipImporter.xmlBuild wraps any failure so
            raise tables.HttpError(400, "unable to archive for the Prearchive session")
        row = built
        if job.dest.kind == "prearchive":
            uris.append(prearchive.data_uri(row))
            continue
        overwrite = (params.param("overwrite") or "").lower()
        code = prearchive.project_code(store, row["project"])
        try:
            if row["status"] != "READY":
                raise archive.ArchiveFailure("build failed", conflict=False)
            uris.append(
                archive.archive_session(
                    sandbox,
                    row,
                    label=job.label,
                    subject=job.subject,
                    allow_merge=bool(overwrite) or code != 0,
                    override=overwrite in ("delete", "override"),
                    overwrite_files=params.flag("overwrite_files") or code == 5,
                    delete_files=overwrite == "delete",
                )
            )
        except (archive.ArchiveFailure, archive.ArchiveTimeout) as error:
            if isinstance(error, archive.ArchiveFailure) and row["project"] == UNASSIGNED:
                prearchive.set_status(store, pk, "ERROR")
            raise tables.HttpError(400, "unable to archive for the Prearchive session") from error
    unique = list(dict.fromkeys(uris))
    log.info("import (%s): %d files into %d session(s)", job.handler, job.stored, len(unique))
    if job.read_by_pydicom or job.anonymised_by_pydicom:
        log.info(
            "import (%s): pydicom read %d and anonymised %d file(s) the header walker could not",
            job.handler,
            job.read_by_pydicom,
            job.anonymised_by_pydicom,
        )
    if job.rejected:
        log.info("import (%s): %d file(s) rejected by the site script", job.handler, job.rejected)
    for (scope, series), count in sorted(job.filtered.items()):
        log.info(
            "import (%s): %d file(s) of series %s dropped by the %s series import filter",
            job.handler,
            count,
            series or "?",
            scope,
        )
    return tables.uri_list(unique, params.fmt)


#: `StreamWrapper.getName()` is null for a C-STORE: XNAT's messages then name "null", and the
#: file name always comes from the namer (`getSafeFile` finds no valid requested name).
RECEIVED_NAME = "null"


def import_received(
    sandbox: SiteContext,
    user: User,
    source: IO[bytes],
    project: str | None,
    prevent_anon: bool,
) -> list[str]:
    """One instance from the DICOM receiver, as `CStoreService.doCStore` hands it to
    `GradualDicomImporter`: no request parameters but the receiver's own (`project` when its
    identifier fixes one, `prevent_anon` = not the receiver's anonymizationEnabled), filed as
    `user`. The same path as a REST gradual-DICOM import: §6 routing, series import filters,
    the site script, the session left RECEIVING for the rebuilder (§4.4).

    Return the prearchive URIs (`/data/prearchive/…`), empty when a filter or the site script
    dropped the instance; raise Unreadable where the importer throws its ClientException.
    """
    values = dict.fromkeys(
        ("prevent_auto_commit", "source", "visit", "subtype", "timezone", "aa"), ""
    )
    values["prevent_anon"] = "true" if prevent_anon else "false"  # String.valueOf(!enabled)
    job = Job(sandbox, user, "gradual-DICOM", None, project, None, None, False, True, values)
    try:
        _store_entry(job, source, RECEIVED_NAME)
    finally:
        try:
            job.flush()  # the instance is recorded before the association hears "stored"
        finally:
            job.close()
        _touch_sessions(job)
    store = sandbox.store
    return [prearchive.data_uri(prearchive.get(store, pk)) for pk in job.answered]
