"""Steps `verify` and `archive`: confirm the prearchive copy, archive it, confirm the archive.

Verify waits for READY (CONFLICT and ERROR end the wait) and compares the number of files of
each scan with the manifest, and their sizes where XNAT keeps the bytes; series a series import
filter dropped are recorded for the receipt; anything else missing is deleted and sent again
(`Resend`). Archive asks for the archived session first (a crash after XNAT archived but before
the ledger heard of it), archives with explicit labels and no overwrite, and reads the archived
session back (`readback.archived`); a difference quarantines the folder with a reason file
saying the session is in XNAT, at which address, and what differs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from xnatdrop import breaker, ledger, pack, verify, xnat
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline import late, prearchive, readback, spool
from xnatdrop.pipeline.context import Context, Done, Resend

log = logging.getLogger(__package__)


def verify_step(context: Context, drop: ledger.Drop) -> Done | Resend:
    """Compare the READY prearchive copy with the manifest.

    XNAT exposes no instance UIDs in the prearchive, so this compares the number of files of
    each scan, and their sizes only when XNAT keeps the bytes (no site script, or prevent_anon;
    the project script runs later, at archive time). Series of which nothing arrived are
    XNAT's configuration at work when a series import filter (or a site script with a reject
    statement) may drop them: they are recorded, warned about once and listed in the receipt,
    never sent again. Anything else missing means a lost upload: delete and send again.
    """
    found = readback.rewriting(context, drop)
    if drop.prearchive_uri is None:
        if readback.archived(context, drop, _manifest(context, drop)) is not None:
            return Done("already archived")
        return Resend("no prearchive session recorded")
    if prearchive.wait_ready(context, drop) is None:
        if readback.archived(context, drop, _manifest(context, drop)) is not None:
            return Done("already archived")
        return Resend("the prearchive session is gone")
    files = readback.prearchive_files(context, drop.prearchive_uri)
    sizes = not found.rewrites_at_import()
    # The manifest is read once here (what was sent), not also for the branches above.
    check = verify.check_prearchive(late.sent(context, drop), files, compare_sizes=sizes)
    if check.incomplete:
        prearchive.delete(context, drop.prearchive_uri)
        return Resend(f"the prearchive session is incomplete ({check.incomplete})")
    dropped = []
    if check.missing:
        series = ", ".join(s.name() for s in check.missing)
        reason = found.drops_at_import()
        if not reason:
            prearchive.delete(context, drop.prearchive_uri)
            return Resend(f"the prearchive session lacks {series}")
        dropped = [{**s.to_json(), "stage": "import", "reason": reason} for s in check.missing]
        log.warning(
            "XNAT left out %s at import: %s; they are not archived, and the receipt lists them",
            series,
            reason,
        )
    spool.update_xnat(context.spool(drop), dropped=tuple(dropped))
    if check.changed:
        # Every file arrived but with other bytes, where XNAT said it would keep them.
        prearchive.delete(context, drop.prearchive_uri)
        raise PermanentError(
            "XNAT_CHANGED_FILES",
            f"XNAT holds every file of {drop.label} but {check.changed}, although no "
            "anonymisation script runs on this upload",
        )
    scans = len(files.per_scan)
    what = "counts and sizes" if sizes else "counts per scan"
    return Done(f"READY, {scans} scans, {files.file_count} files: {what} match the manifest")


def archive_step(context: Context, drop: ledger.Drop) -> Done | Resend:
    """Archive with explicit labels and no overwrite, then verify the archived session.

    First ask whether it is archived already (a crash after XNAT archived but before the ledger
    heard of it). After archiving, every instance is matched by UID and one file per scan has its
    pixel data compared (`readback.archived`); any difference leaves the session in XNAT and the
    folder in quarantine with a reason file that says so.
    """
    manifest = _manifest(context, drop)
    client = context.client()
    session = readback.archived(context, drop, manifest, bytes_too=True)
    gone = "the prearchive session is gone and nothing is archived"
    if session is None:
        if drop.prearchive_uri is None or client.prearchive_entry(drop.prearchive_uri) is None:
            return Resend(gone)
        append = spool.xnat_record(context.spool(drop)).append
        started = time.monotonic()
        try:
            client.archive(
                drop.prearchive_uri,
                project=context.project,
                subject=append.subject if append else drop.label,
                session=drop.label,
            )
        except TransientError as error:
            cause = getattr(error, "cause", None)
            if cause is not None:
                _archive_failed(context, drop, cause)
            raise
        except xnat.XnatAnswer as answer:
            if answer.status != 404:
                raise
            # "Unknown prearchive session." / "{uri} not found.": the copy went away meanwhile.
            if readback.archived(context, drop, manifest, ours=True, bytes_too=True) is None:
                return Resend(gone)
        breaker.success(context.book, drop.id)
        archiving = time.monotonic() - started
        session = readback.archived(context, drop, manifest, ours=True, bytes_too=True)
        if session is None:
            raise TransientError("XNAT answered the archive request but shows no session yet")
        # XNAT's own time apart from the read-back's, so the step's cost can be told apart.
        summary = f"archived as {session.id} (XNAT took {archiving:.2f} s)"
    else:
        summary = f"already archived as {session.id}"
        if drop.prearchive_uri and client.prearchive_entry(drop.prearchive_uri) is not None:
            prearchive.delete(context, drop.prearchive_uri)  # a leftover of the same data
    verification = spool.xnat_record(context.spool(drop)).verification or {}
    return Done(
        f"{summary}; verified {verification.get('summary', '')}", {"archive_uri": session.uri}
    )


def _manifest(context: Context, drop: ledger.Drop) -> pack.Manifest:
    return spool.manifest_for(context.spool(drop), Path(drop.work), drop.id)


def _archive_failed(context: Context, drop: ledger.Drop, cause: str) -> None:
    """An archive answered 500 with a cause XNAT does not word as a conflict or as busy.

    If XNAT left the prearchive row ERROR it has given up on it (an empty session after the
    project script rejected every file answers so, RT TestPrearchiveMgmt): a permanent,
    suspect answer. Otherwise (a timeout, the row still ARCHIVING) it is transient.
    """
    entry = context.client().prearchive_entry(drop.prearchive_uri)
    if entry is None or entry.status not in prearchive.FAILED:
        return
    found = readback.rewriting(context, drop)
    hint = ""
    if found.drops_at_archive():
        hint = (
            f" ({found.drops_at_archive()} may have rejected every file; XNAT does not "
            "archive an empty session)"
        )
    raise xnat.XnatAnswer(
        "XNAT_ARCHIVE_FAILED",
        f"XNAT could not archive {drop.label}: {cause}{hint}",
        status=500,
        answer=f"HTTP 500 {xnat.fixed_wording(cause) or 'archive failed'}",
    )
