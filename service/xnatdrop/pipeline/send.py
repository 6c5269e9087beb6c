"""Steps `pack` and `import`: plan the zip, then stream it into XNAT's prearchive.

Pack plans the zip (entry order, names, sizes, exact length) and keeps the plan in the spool;
no file data is read (`pack`). Import first reads what XNAT will do to the files
(`readback.rewriting`), then asks XNAT what exists: an archived session with this label (`late`:
of the same study, only the instances it lacks are sent; all of them there: nothing is sent;
another study, or other content for an instance it holds: LABEL_EXISTS), a READY prearchive
session holding every file (reused), a copy XNAT is still building (its answer was lost, e.g.
to a proxy's 504: waited for, never deleted), leftovers of an interrupted upload (deleted once
XNAT has stopped writing to them); only then uploads, streaming the zip while it reads and
hashes the files, and saves the manifest (size, MD5 and UIDs of each file) once every file is
hashed. An upload XNAT files under another project (Unassigned) is removed again.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from xnatdrop import apart, breaker, ledger, pack, planstream, verify, xnat
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline import check, crash, late, prearchive, readback, spool
from xnatdrop.pipeline.context import Context, Done

log = logging.getLogger(__package__)


def pack_step(context: Context, drop: ledger.Drop) -> Done:
    """Plan the streamed zip (names, sizes, its exact length) and save the plan atomically.

    No file data is read here: the import step reads, hashes and sends each file (`pack`).
    """
    folder, work = context.spool(drop), Path(drop.work)
    spool.discard(folder, pack.Plan, pack.Manifest)  # from a killed run: not trusted
    # A large folder's plan is made in a child, as its check is: the check record's files, read
    # for it, and the plan made of them stayed resident here through the upload (issue 13).
    if check.upload_count(spool.check_record(folder, drop.id, files=False)) < check.APART_MIN_FILES:
        count, total, zip_size = _plan(folder, work, drop.id)
    else:
        count, total, zip_size = apart.call(_plan, folder, work, drop.id)
    if context.progress is not None:
        context.progress("pack", total, total)
    if context.drop_settings.transport == "dicom":  # the plan only orders the files to hash
        return Done(f"{count} files, {total} bytes to send by C-STORE")
    return Done(f"{count} files, {total} bytes planned as a {zip_size}-byte zip")


def _plan(folder: Path, work: Path, drop_id: int) -> tuple[int, int, int]:
    """Make and save the plan: its file count, bytes, and the zip's size."""
    planned = spool.plan_for(folder, work, drop_id)
    return len(planned.files), planned.total_bytes, planned.zip_size


def import_step(context: Context, drop: ledger.Drop) -> Done:
    """Ask XNAT what it does to uploads and what is there, then stream the zip (`pack.Body`).

    The manifest (MD5s) is made while sending; only when XNAT already holds something to
    compare it with and the manifest is missing (a crash before it was saved) are the files
    hashed first without sending. A copy XNAT is still building (its answer to an earlier
    import was lost, e.g. to a proxy's 504: XNAT builds before it answers, stock row 4) is
    waited for, never deleted; a copy it is still receiving is left alone until it is quiet.

    A drop with `transport = "dicom"` goes by C-STORE instead (`cstore.store_step`).
    """
    if context.drop_settings.transport == "dicom":
        # Imported on this path only: the C-STORE code brings pydicom, numpy and pynetdicom
        # (about 0.2 s), which every push over REST would otherwise load for nothing.
        from xnatdrop.pipeline import cstore

        return cstore.store_step(context, drop)
    client = context.client()
    folder, work = context.spool(drop), Path(drop.work)
    found = readback.rewriting(context, drop, fresh=True)
    session = client.find_session(context.project, drop.label)
    if session is None:
        spool.update_xnat(folder, append=None)  # an earlier decision no longer holds
    elif not late.join(context, drop, session, spool.manifest_for(folder, work, drop.id), found):
        return Done("already archived with every instance; nothing sent")
    planned = late.upload_plan(context, drop)
    append = spool.xnat_record(folder).append
    reused = _reusable(context, drop, planned, found)
    if reused is not None:
        return reused
    total = planned.zip_size
    started = time.monotonic()
    last_byte = [started]

    def sent(count: int) -> None:
        last_byte[0] = time.monotonic()
        crash.point("import", "bytes", sent=count)
        if context.progress is not None:
            context.progress("import", count, total)

    if append is None:
        body = functools.partial(
            pack.Body, work, planned, manifest_file=spool.ManifestWriter(folder)
        )
    else:
        # Only the new instances go; the manifest of the whole folder is kept as it is, and
        # each file sent must still be the one hashed into it.
        hashed = {e.path: e.md5 for e in spool.manifest_for(folder, work, drop.id).files}
        body = functools.partial(
            pack.Body, work, planned, on_manifest=functools.partial(_unchanged, hashed)
        )
    try:
        uri = client.import_zip(
            body,
            project=context.project,
            subject=append.subject if append else drop.label,
            session=drop.label,
            progress=sent,
            prevent_anon=found.prevent_anon,
        )
    except pack.Changed:
        # The frozen folder changed under us (it should not): the next attempt plans again from
        # the folder as it is then. What XNAT got of this upload is cleaned up before it resends.
        spool.discard(folder, pack.Plan, pack.Manifest)
        raise
    except xnat.XnatAnswer as answer:
        raise _explained(context, answer, planned, drop.label, found) from None
    breaker.success(context.book, drop.id)
    # Sending ends with the last byte; the rest is XNAT storing and building the session. To
    # the hundredth: a 500 MB upload takes about a second, and the benchmark reads these.
    sending = max(last_byte[0] - started, 1e-6)
    waiting = time.monotonic() - last_byte[0]
    what = f"{len(planned.files)} new instance(s), " if append else ""
    return Done(
        f"{what}{total} bytes sent in {sending:.2f} s ({total / sending / 1e6:.1f} MB/s), "
        f"XNAT answered {waiting:.2f} s later",
        {"prearchive_uri": uri},
    )


def _reusable(
    context: Context,
    drop: ledger.Drop,
    planned: planstream.Sendable,
    found: verify.Rewriting,
) -> Done | None:
    """What the prearchive already holds of this drop: a READY copy with every file (reused),
    a copy XNAT is building (waited for); leftovers are deleted. None: upload."""
    for entry in prearchive.ours(context, drop, planned):
        if entry.status == prearchive.READY:
            files = readback.prearchive_files(context, entry.uri)
            check = verify.check_prearchive(
                late.sent(context, drop), files, not found.rewrites_at_import()
            )
            if not (check.incomplete or check.changed) and (
                not check.missing or found.drops_at_import()
            ):
                return Done(
                    "already in the prearchive; nothing sent", {"prearchive_uri": entry.uri}
                )
        elif entry.status in prearchive.BUILDING_NOW:
            return Done(
                f"XNAT is still building an earlier upload ({entry.status}); waiting for it, "
                "nothing sent",
                {"prearchive_uri": entry.uri},
            )
        elif entry.status in prearchive.RECEIVING:
            if not prearchive.quiet(context, entry):
                raise TransientError(
                    f"XNAT is still receiving an earlier upload of {drop.label}; looking again "
                    "later"
                )
        elif entry.status not in prearchive.FAILED | prearchive.CONFLICT:
            raise TransientError(f"XNAT is busy with a prearchive copy ({entry.status})")
        log.info("deleting an incomplete prearchive copy (%s)", entry.status)
        prearchive.delete(context, entry.uri)
    return None


def _unchanged(hashed: dict[Path, str], sent: pack.Manifest) -> None:
    """Raise pack.Changed if a file sent differs from the one hashed into the manifest."""
    for entry in sent.files:
        if hashed.get(entry.path) != entry.md5:
            raise pack.Changed(f"{entry.path} changed after it was hashed")


def _explained(
    context: Context,
    answer: xnat.XnatAnswer,
    planned: planstream.Sendable,
    label: str,
    found: verify.Rewriting,
) -> xnat.XnatAnswer:
    """XNAT's refusal of the upload, with what xnatdrop knows about its cause."""
    if answer.code == "XNAT_ROUTED_ELSEWHERE":
        return _remove_routed(context, answer)
    reason = found.drops_at_import()
    if answer.code == "XNAT_NOTHING_IMPORTED" and reason:
        return xnat.XnatAnswer(
            answer.code,
            f"XNAT kept none of the {len(planned.files)} files of {label}: every series was "
            f"left out by {reason}",
            "these series are excluded by the XNAT site's own configuration; if they should be "
            "archived, ask the XNAT administrator to change it, then copy the folder back into "
            "the drop folder",
            suspect=False,
        )
    return answer


def _remove_routed(context: Context, answer: xnat.XnatAnswer) -> xnat.XnatAnswer:
    """XNAT filed the upload elsewhere (Unassigned, for an unknown or unwritable project;
    pitfall 17): remove that copy, which xnatdrop caused, and say whether it could."""
    uri = str(getattr(answer, "leftover", ""))
    try:
        context.client().delete_prearchive(uri)
        note = "; xnatdrop removed that copy from XNAT's prearchive"
    except (PermanentError, TransientError) as error:
        note = (
            f"; xnatdrop could not remove that copy ({error}): ask the XNAT administrator to "
            f"delete {uri} from the prearchive"
        )
    return xnat.XnatAnswer(
        answer.code,
        f"{answer}{note}",
        answer.fix,
        status=answer.status,
        answer=answer.answer,
        suspect=answer.suspect,
    )
