"""`POST /data/services/import`: the DICOM-zip and gradual-DICOM handlers (§3, §6).

A raw body is read as it arrives, as XNAT's `DicomZipImporter` reads it through a
`ZipInputStream` (`zipstream`; a tar through `tarfile`'s stream mode); only a multipart upload is
spooled first (`importstream`). Each entry is routed by `importroute`: its header read straight
from the entry stream (`dicomheader`: the sandbox's walker, or pydicom for what it declines), the
§6 rules pick project, subject and session, and the entry's bytes go to a worker thread
(`entrywriter`) that writes its prearchive file once, the site script's edits spliced in
(`anonymize.splice`), checking the entry's CRC-32 on the way while the request thread receives
the next entry. This module is the handler: the request resolved to a `Job` (`importjob`), the
import run, failure rolled back, the sessions built or archived as `dest` asks, the answer. No
MD5 is computed at import, as in XNAT: the catalog digests are computed at archive
(`archive.py`). Memory stays flat whatever the upload size.

An import that fails because its body is cut short or is not a readable archive leaves nothing
behind: the sessions it created are deleted and the files it added to existing ones removed
(`_roll_back`). A non-DICOM entry keeps the entries before it, as XNAT does.
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
import zlib
from collections.abc import Callable
from typing import IO

from xnat_sandbox import (
    archive,
    bodies,
    entrywriter,
    prearchive,
    prearchive_build,
    tables,
    zipstream,
)
from xnat_sandbox.context import SiteContext
from xnat_sandbox.dicomheader import Unreadable
from xnat_sandbox.importjob import Job, parse_dest
from xnat_sandbox.importroute import store_entry, to_label_chars
from xnat_sandbox.importstream import Stream, archive_format, entries, streamed
from xnat_sandbox.users import UNASSIGNED, User
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

HANDLERS = ("DICOM-zip", "gradual-DICOM")
GRADUAL_TYPES = ("application/dicom", "application/x-mirc", "application/x-mirc-dicom")


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
        read = streamed(upload.stream, job)
    try:
        if handler == "gradual-DICOM":
            try:
                store_entry(job, Stream(read), upload.name)
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


def _import_archive(job: Job, name: str, read: Callable[[int], bytes]) -> None:
    kind = archive_format(name)
    if kind is None:
        raise tables.HttpError(400, "Unsupported format UNKNOWN")
    last_error: Unreadable | None = None
    for entry_name, stream in entries(read, kind):
        job.entries += 1
        try:
            store_entry(job, stream, entry_name)
        except Unreadable as error:
            if not job.ignore_unparsable:
                _touch_sessions(job)
                raise tables.HttpError(400, str(error)) from error
            last_error = error
    if job.stored == 0 and last_error is not None:
        raise tables.HttpError(400, str(last_error))


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
        store_entry(job, source, RECEIVED_NAME)
    finally:
        try:
            job.flush()  # the instance is recorded before the association hears "stored"
        finally:
            job.close()
        _touch_sessions(job)
    store = sandbox.store
    return [prearchive.data_uri(prearchive.get(store, pk)) for pk in job.answered]


__all__ = ["RECEIVED_NAME", "Unreadable", "archive_format", "handle_import", "import_received"]
