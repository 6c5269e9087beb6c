"""Late files: the import finds that XNAT already holds a session with this label; and late
sidecars, a drop of only sidecar folders for a session archived earlier.

Files that arrive for a session already archived (a copy that paused, a series exported
later) are appended to it: only the instances XNAT lacks are sent, and archived into the
existing session. XNAT merges them with `overwrite=none` (the Archiver allows a session merge;
PrearcSessionArchiver.checkForConflicts needs the same StudyInstanceUID, project, subject and
modality, and a scan of the same number to have the same SeriesInstanceUID), but refuses the
merge when an incoming instance's UID or file name is already catalogued in the destination
(MergeSessionsA.checkForConflict: SessionOverwriteCheck, "Session already exists with the same
resources."; FindFirstMatch, "... with matching files."): so nothing XNAT holds is ever sent
again, and a new file whose name is taken in its scan is sent under another name. What is
already there must have the same content (pixel data of one file per scan; sizes and MD5s where
XNAT keeps the bytes); another study, or other content, is a conflict a person must resolve
(LABEL_EXISTS).

The decision is kept in the spool (`spool.Append`) for the later steps: the instances XNAT held
before are expected there, and `upload_plan` and `sent` say what the import sends.

Late sidecars (`sidecars_only`, `attach_late`, `skip_upload`): the physiological or behavioural
files often arrive a day after the scan, as a second folder of the same label holding only
`physio/`, `behav/` or `logs/` (and maybe `subject.toml`). The rules find no DICOM (NO_DICOM);
when XNAT holds an archived session of that label, the check step records it
(`spool.LateSidecars`) instead of quarantining, the runner takes the drop from `checked`
straight to `archived` (the ledger's step "sidecars": nothing goes through the prearchive), and
the attach step adds the folders to that session as for a first upload: only files the resource
lacks are sent, each is verified afterwards by the resource listing's size and MD5, and a file
XNAT holds with other content is RESOURCE_CONFLICT. The finish step writes the drop's own
receipt.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from xnatdrop import archivecheck, ledger, names, pack, planstream, verify
from xnatdrop.pipeline import readback, spool
from xnatdrop.pipeline.context import Context, Done

log = logging.getLogger(__package__)


def join(
    context: Context,
    drop: ledger.Drop,
    session: Any,
    manifest: pack.Manifest,
    found: verify.Rewriting,
) -> int:
    """Decide what to send when XNAT already holds a session with this label; return how many
    instances (0: every one is there already, nothing is sent). Raise LABEL_EXISTS when the
    folder cannot be added to it."""
    client = context.client()
    compare = not found.rewrites_at_archive()
    check = readback.catalogued(context, session, manifest, compare, keep_catalog=True)
    url = client.session_url(context.project, session.id)
    studies = manifest.study_uids()
    same_study = bool(session.uid) and studies == {session.uid}
    differs = [archivecheck.ArchiveCheck([], [], check.changed).describe()] if check.changed else []
    differs += readback.pixel_problems(context, drop, check.samples, found)[1]
    if differs or (check.missing and not same_study):
        if differs:
            what = f"instances of this folder are in it with other content: {'; '.join(differs)}"
        elif session.uid:
            what = (
                f"it is another study (StudyInstanceUID {session.uid}; this folder: "
                f"{', '.join(sorted(studies)) or 'none'})"
            )
        else:
            what = "XNAT does not say which study it is, so these files cannot be added to it"
        where = f"already exists in XNAT project {context.project} ({url}) and {what}"
        raise readback.label_exists(context, drop, where, url)
    existing = tuple(sorted(check.catalog_uids))
    append = spool.Append(
        session=session.id,
        subject=session.subject,
        existing=existing,
        send=tuple(e.sop_instance_uid for e in check.missing),
        names=_free_names(check.missing, check.names),
    )
    spool.update_xnat(context.spool(drop), append=append)
    if check.missing:
        log.info(
            "session %s in XNAT holds %d instance(s) of this study; appending the %d of "
            "this folder it lacks (%d already there)",
            session.id,
            len(existing),
            len(check.missing),
            check.matched,
        )
    return len(check.missing)


def _free_names(new: list[pack.Entry], taken: dict[str, set[str]]) -> dict[str, str]:
    """Zip entry names for new instances whose name XNAT already uses in their scan (`taken`:
    the file names each scan's catalog holds).

    XNAT stores a file under its zip entry name made file-name-safe (getSafeFile, stock row
    12) in the scan of its SeriesNumber (Restructurer.determineScanSubdir); a name taken there
    would make the merge fail ("Session already exists with matching files.")."""
    renamed = {}
    for entry in new:
        path = entry.path
        name = pack.upload_name(path)
        if xnat_file_name(name) in taken.get(verify.scan_folder(entry), ()):
            stem, dot, extension = name.rpartition(".")
            head, tail = (stem, f".{extension}") if dot and stem else (name, "")
            digest = hashlib.sha1(entry.sop_instance_uid.encode()).hexdigest()[:10]
            renamed[path] = names.fit(f"{head}~{digest}", tail, limit=pack.ZIP_NAME_MAX)
    return renamed


def xnat_file_name(entry_name: str) -> str:
    """The name XNAT gives a file from its zip entry name: `Files.toFileNameChars`, anything
    but ASCII letters, digits, `_`, `.` and `-` becomes `_` (stock row 12)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", entry_name)


def upload_plan(context: Context, drop: ledger.Drop) -> planstream.Sendable:
    """The zip to send: the whole folder, read from the spool as it is sent (not held whole),
    or, when appending, only what XNAT lacks."""
    folder, work = context.spool(drop), Path(drop.work)
    append = spool.xnat_record(folder).append
    if append is None:
        return spool.streamed_plan(folder, work, drop.id)
    planned = spool.plan_for(folder, work, drop.id)
    send = set(append.send)
    entries = [p.entry for p in planned.files if p.entry.sop_instance_uid in send]
    return pack.plan(work, entries, {**planned.zip_names(), **append.names})


def sent(context: Context, drop: ledger.Drop) -> pack.Manifest:
    """The manifest of what the import sends: all of it, or the new instances when appending."""
    folder = context.spool(drop)
    manifest = spool.manifest_for(folder, Path(drop.work), drop.id)
    append = spool.xnat_record(folder).append
    if append is None:
        return manifest
    send = set(append.send)
    return pack.Manifest(0, tuple(e for e in manifest.files if e.sop_instance_uid in send))


# -- late sidecars ---------------------------------------------------------------------------

SKIP = "sidecars"  # the ledger's step from `checked` straight to `archived` (`ledger.NEXT`)


def sidecars_only(record: spool.CheckRecord) -> bool:
    """The folder holds sidecar folders and nothing to upload as DICOM: no file at all outside
    them (subject.toml and the other control files are not judged), so the only block is
    NO_DICOM."""
    blocks = {f.code for f in record.blocking()}
    return bool(record.sidecars) and not record.series and blocks == {"NO_DICOM"}


def attach_late(context: Context, drop: ledger.Drop, record: spool.CheckRecord) -> Done | None:
    """For a `sidecars_only` drop: the session of this label XNAT holds, recorded for the
    later steps; None when XNAT has none (the folder is then quarantined as NO_DICOM)."""
    client = context.client()
    session = client.find_session(context.project, drop.label)
    if session is None:
        return None
    url = client.session_url(context.project, session.id)
    spool.save(context.spool(drop), spool.LateSidecars(session.id, session.subject, url))
    return Done(
        f"only sidecar folders ({', '.join(sorted(record.sidecars))}) for session {session.id}, "
        "archived earlier: they are attached to it"
    )


def skip_upload(context: Context, drop: ledger.Drop) -> ledger.Drop | None:
    """The runner's turn at `checked`: a late-sidecar drop goes straight to `archived` (the
    new state after a crash here too); None for every other drop."""
    if drop.state != "checked":
        return None
    late = spool.load(context.spool(drop), spool.LateSidecars)
    if late is None:
        return None
    drop = context.book.advance(drop, SKIP, archive_uri=late.url)
    log.info("nothing to upload as DICOM: session %s is archived already", late.session)
    return drop
