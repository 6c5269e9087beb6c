"""Reading back what XNAT holds of a drop, and what it does to uploads.

- `rewriting`: what XNAT may change in the files (anonymisation scripts, series import filters,
  the checksums preference: `verify.Rewriting`), read from XNAT when the import starts and kept
  in the spool (`spool.XnatRecord`) for the later steps and for a resumed run.
- `archived`: the archived session of this label, checked against the manifest: every instance
  matched by SOPInstanceUID from XNAT's scan catalogs, the pixel data of one file per scan
  downloaded and compared, sizes and MD5s where XNAT keeps the bytes. A difference is a
  PermanentError naming the session's page (ARCHIVE_MISMATCH, LABEL_EXISTS); what was verified
  and how is saved for the receipt (`verification`).
- `catalogued`, `pixel_problems`: the pieces the late-files decision (`late`) uses as well.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from xnatdrop import archivecheck, ledger, pack, verify, xnat
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline import spool
from xnatdrop.pipeline.context import Context

log = logging.getLogger(__package__)
T = TypeVar("T")
R = TypeVar("R")

# Pixel comparisons that mean "the same image as the file sent".
SAME_PIXELS = frozenset({"identical", "no pixel data", "changed by an alterPixels statement"})


def rewriting(context: Context, drop: ledger.Drop, fresh: bool = False) -> verify.Rewriting:
    """What XNAT may change in this drop's files: read from XNAT at push time (the import step
    asks with `fresh`), kept in the spool for the later steps and for a resumed run."""
    folder = context.spool(drop)
    stored = spool.xnat_record(folder).rewriting
    if stored is not None and not fresh:
        return stored
    # By C-STORE nothing can ask for prevent_anon: the receiver's own setting decides (§9).
    receiver = context.drop_settings.transport == "dicom"
    prevent = context.config.push.anonymization == "prevent" and not receiver
    found = verify.read_rewriting(context.client(), context.project, prevent, receiver)
    spool.update_xnat(folder, rewriting=found)
    log.info("XNAT at push time: %s", _describe(found))
    return found


def _describe(found: verify.Rewriting) -> str:
    def state(value: bool | None) -> str:
        if value is None:
            return "unknown (not readable by this account)"
        return "on" if value else "off"

    if found.filters is None:
        filters = "unknown"
    else:
        filters = ", ".join(found.filters) if found.filters else "off"
    parts = [
        f"site anonymisation {state(found.site)}",
        f"project anonymisation {state(found.project)}",
        "prevent_anon sent" if found.prevent_anon else "no prevent_anon",
        f"series import filters {filters}",
        f"checksums {state(found.checksums)}",
    ]
    return "; ".join(parts)


def fan_out(context: Context, work: Callable[[Any, T], R], items: Sequence[T]) -> list[R]:
    """`work(client, item)` for each item, a few at once (`xnat.fan_out`): each worker has its
    own client from the drop's client factory, on the session of `context.client()`."""
    return xnat.fan_out(context.client(), context.client_factory, work, items)


def prearchive_files(context: Context, uri: str) -> verify.PrearchiveTally:
    """The files of every scan of a prearchive session, tallied (`verify.PrearchiveTally`),
    the scans read a few at once, each scan's listing tallied as it arrives and dropped."""
    scans = context.client().prearchive_scans(uri)
    tallies = fan_out(
        context,
        lambda client, scan: verify.PrearchiveTally.of(client.prearchive_scan_files(uri, scan)),
        scans,
    )
    total = verify.PrearchiveTally()
    for tally in tallies:
        total.per_scan.update(tally.per_scan)
        total.sizes.update(tally.sizes)
    return total


def catalogued(
    context: Context,
    session: Any,
    manifest: pack.Manifest,
    compare_bytes: bool,
    expected: Sequence[str] = (),
    keep_catalog: bool = False,
    watch: Sequence[str] = (),
) -> archivecheck.ArchiveCheck:
    """The archived session's DICOM against `manifest` (`archivecheck.ArchiveTally`): one listing of
    every scan's files (`scans/ALL/files`), kept compactly (`archivecheck.dicom_listing`), then each
    scan's DICOM catalog, a few at once (XNAT answers one catalog per request:
    CatalogResource.represent), compared as it arrives and dropped: a session of 50,000 files
    never has all its catalog entries in memory. `expected`, `keep_catalog`, `watch`: as
    `archivecheck.ArchiveTally` and its `result`."""
    client = context.client()
    listing = archivecheck.dicom_listing(
        client.each_session_file(context.project, session.subject, session.label)
    )
    tally = archivecheck.ArchiveTally(manifest, listing, compare_bytes, expected, keep_catalog)
    lock = threading.Lock()

    def read(client: Any, pair: tuple[str, str]) -> None:
        scan, resource = pair
        entries = client.scan_catalog(
            context.project, session.subject, session.label, scan, resource
        )
        with lock:
            tally.add(scan, resource, entries)

    fan_out(context, read, sorted(listing))
    return tally.result(watch)


def pixel_result(
    client: Any,
    drop: ledger.Drop,
    entry: pack.Entry,
    file: xnat.RemoteFile,
    found: verify.Rewriting,
    scratch: Path,
) -> str:
    """Compare the Pixel Data of XNAT's copy of one file (downloaded with `client` into a
    temporary file in `scratch`) with the local file's (a phrase; one of SAME_PIXELS when they
    agree)."""
    # Spooled to an unnamed file beside the drop's records, not held in memory: the sample of an
    # enhanced multi-frame scan is its one file, hundreds of MB, and a few are read at once.
    with tempfile.TemporaryFile(dir=scratch) as copy:
        client.download_to(file.uri, copy)
        try:
            with open(Path(drop.work) / entry.path, "rb") as local:
                compared = verify.compare_pixels(local, copy)
        except ValueError:
            return "XNAT's copy is not readable as DICOM"
        except OSError as error:
            raise TransientError(
                f"cannot read {entry.path} to compare pixel data: {error}"
            ) from None
    if compared.same:
        return "identical" if compared.local is not None else "no pixel data"
    if found.alters_pixels():
        return "changed by an alterPixels statement"
    sent, stored = compared.local, compared.remote
    if sent is not None and stored is not None and sent != stored:
        return f"transcoded by XNAT (transfer syntax {sent} sent, {stored} stored)"
    if compared.remote is None:
        return "XNAT's copy has no pixel data"
    return "differs from the file sent"


def pixel_problems(
    context: Context,
    drop: ledger.Drop,
    samples: list[tuple[pack.Entry, xnat.RemoteFile]],
    found: verify.Rewriting,
) -> tuple[list[dict[str, str]], list[str]]:
    """The pixel comparison of the smallest file of each scan (`archivecheck.ArchiveCheck.samples`):
    (results, problems).

    The scans are compared a few at once (`fan_out`), each download digested and dropped in
    its worker, so at most a few sample files are in memory."""
    results, problems = [], []
    scratch = ledger.private_dir(context.spool(drop))

    def compare(client: Any, sample: tuple[pack.Entry, xnat.RemoteFile]) -> str:
        return pixel_result(client, drop, sample[0], sample[1], found, scratch)

    for (entry, file), result in zip(samples, fan_out(context, compare, samples), strict=True):
        results.append({"scan": file.scan, "file": entry.path, "result": result})
        if result not in SAME_PIXELS:
            problems.append(f"pixel data of {entry.path} (scan {file.scan}): {result}")
    return results, problems


@dataclasses.dataclass
class _Inspection:
    """An archived session against the manifest: `problems` says what differs (none: ours)."""

    check: archivecheck.ArchiveCheck
    dropped: list[dict[str, Any]]
    pixel: list[dict[str, str]]
    problems: list[str]
    bytes_compared: bool
    unexplained: list[pack.Entry] = dataclasses.field(default_factory=list)
    not_yet: bool = False  # appending: none of the new instances is in XNAT yet

    @property
    def other_instances(self) -> bool:
        """XNAT holds instances this folder lacks, or lacks some it has (not a content issue)."""
        return bool(self.check.extra or self.unexplained)


def _inspect(
    context: Context,
    drop: ledger.Drop,
    session: Any,
    manifest: pack.Manifest,
    found: verify.Rewriting,
    compare_bytes: bool,
    ours: bool,
) -> _Inspection:
    """Read the archived session's DICOM catalogs and sample its pixel data (verify module)."""
    record = spool.xnat_record(context.spool(drop))
    join = record.append
    # Late files: what XNAT held before this drop was appended is expected to be there.
    existing = join.existing if join is not None else ()
    sent = join.send if join is not None else ()
    check = catalogued(context, session, manifest, compare_bytes, existing, watch=sent)
    if join is not None and not ours and sent and not check.found:
        return _Inspection(check, [], [], [], compare_bytes, not_yet=True)
    problems: list[str] = []
    dropped: list[dict[str, Any]] = []
    unexplained: list[pack.Entry] = []
    recorded = {d["uid"] for d in record.dropped}
    missing = [e for e in check.missing if e.series_instance_uid not in recorded]
    if missing:
        # Just archived: only the project script runs now. Found archived (a resubmission, a
        # crash): whatever XNAT's configuration drops at import may also explain it.
        reason = found.drops_at_archive() or ("" if ours else found.drops_at_import())
        if reason:
            for item in verify.series_of(missing):
                dropped.append({**item.to_json(), "stage": "archive", "reason": reason})
        else:
            unexplained = missing
            problems.append(archivecheck.ArchiveCheck(missing, [], []).describe())
    if check.extra or check.changed:
        problems.append(archivecheck.ArchiveCheck([], check.extra, check.changed).describe())
    pixel, pixel_differs = pixel_problems(context, drop, check.samples, found)
    problems += pixel_differs
    return _Inspection(check, dropped, pixel, problems, compare_bytes, unexplained)


def _verification(
    inspection: _Inspection,
    found: verify.Rewriting,
    dropped: list[dict[str, Any]],
    join: spool.Append | None,
) -> dict[str, Any]:
    """What was verified and how, for the log, RECEIPT.json and RECEIPT.txt (honestly)."""
    check = inspection.check
    parts = [f"instance UIDs and counts of all {check.matched} files"]
    appended = None
    if join is not None:
        appended = {
            "session_held": len(join.existing),
            "new": len(join.send),
            "already_there": check.matched - len(join.send),
        }
        parts.append(
            f"{appended['new']} of them added to a session that already held "
            f"{appended['session_held']} instance(s)"
        )
    samples = [p for p in inspection.pixel if p["result"] != "no pixel data"]
    if samples:
        parts.append(f"pixel data of 1 file per scan ({len(samples)} scans)")
    if len(samples) < len(inspection.pixel):
        parts.append(f"{len(inspection.pixel) - len(samples)} scan(s) without pixel data")
    md5 = False
    if inspection.bytes_compared:
        md5 = check.md5_compared
        parts.append(
            "sizes and MD5s of every file"
            if md5
            else "sizes of every file (XNAT recorded no MD5s: its checksums preference is off)"
        )
    elif found.rewrites_at_archive():
        parts.append(f"{found.why_bytes_differ()}, so sizes and MD5s were not compared")
    else:
        parts.append("sizes and MD5s not compared (the session was found already archived)")
    if found.alters_pixels():
        parts.append("pixel data may be edited by an anonymisation script (alterPixels)")
    return {
        "summary": "; ".join(parts),
        "instances": check.matched,
        "bytes": check.matched_bytes,
        "instance_uids": "all matched",
        "pixel_data": inspection.pixel,
        "sizes_compared": inspection.bytes_compared,
        "md5_compared": md5,
        "rewriting": found.to_json(),
        "not_archived": dropped,
        "appended": appended,
    }


def archived(
    context: Context,
    drop: ledger.Drop,
    manifest: pack.Manifest,
    ours: bool = False,
    bytes_too: bool = False,
) -> Any | None:
    """The archived session for this label if it holds exactly our instances; None if absent.

    Instances are matched by SOPInstanceUID and the pixel data of one file per scan compared
    (`verify`); sizes and MD5s too with `bytes_too`, where XNAT keeps the bytes. Raise
    PermanentError if it differs: ARCHIVE_MISMATCH when `ours` (we just archived it) or when it
    holds exactly our instances but other content; LABEL_EXISTS when the label holds other
    instances. Either way the error's `in_xnat` is the session's page, for the reason file.
    """
    client = context.client()
    session = client.find_session(context.project, drop.label)
    if session is None:
        return None
    found = rewriting(context, drop)
    compare = bytes_too and not found.rewrites_at_archive()
    inspection = _inspect(context, drop, session, manifest, found, compare, ours)
    if inspection.not_yet:
        return None
    url = client.session_url(context.project, session.id)
    if inspection.problems:
        differences = "; ".join(inspection.problems)
        if ours or not inspection.other_instances:
            error = PermanentError(
                "ARCHIVE_MISMATCH",
                f"session {drop.label} is in XNAT ({url}) but differs from this folder: "
                f"{differences}",
                "nothing is lost: this folder is complete. Ask the XNAT administrator to compare "
                f"session {drop.label} in XNAT with this folder and repair or delete it there; "
                "then copy this folder back into the drop folder: xnatdrop checks the session "
                "again and finishes (sidecars, receipt) once XNAT holds exactly these instances",
            )
        else:
            error = label_exists(
                context, drop, f"already exists in XNAT project {context.project} ({url}) "
                f"with other data: {differences}", url
            )  # fmt: skip
        error.in_xnat = url
        raise error
    record = spool.xnat_record(context.spool(drop))
    dropped = [*record.dropped, *inspection.dropped]
    if inspection.dropped:
        series = ", ".join(
            f"series {d['number'] or '?'} ({d['folder']})" for d in inspection.dropped
        )
        log.warning(
            "XNAT left out %s at archive time: %s; the receipt lists them",
            series,
            inspection.dropped[0]["reason"],
        )
    verification = _verification(inspection, found, dropped, record.append)
    spool.update_xnat(context.spool(drop), dropped=tuple(dropped), verification=verification)
    return session


def label_exists(context: Context, drop: ledger.Drop, what: str, url: str) -> PermanentError:
    """LABEL_EXISTS: XNAT holds session `drop.label` with other data (`what` says how it
    differs, after "session LABEL "); the reason file names its page, `url`."""
    error = PermanentError(
        "LABEL_EXISTS",
        f"session {drop.label} {what}",
        "if this is a new session, rename the folder to a new label; if it replaces the "
        f"existing one, ask the XNAT administrator to delete session {drop.label} first",
    )
    error.in_xnat = url
    return error
