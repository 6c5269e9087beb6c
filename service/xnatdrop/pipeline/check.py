"""Step `check`: the upload rules on the frozen folder (`rules.check_folder`).

The facts the later steps need go into the spool (`spool.CheckRecord`): the files to upload,
the findings, the series, the sidecars, the subject's fields. A block finding quarantines the
folder (RULES_BLOCKED), unless every block says the copy is not finished yet (empty or
truncated files, series visibly lacking files) and the copy is recent: then the folder goes
back to the drop root to settle again (`Unsettled`). Our own reason files of an earlier
quarantine, found in a resubmitted folder, are set aside first. A folder of only sidecar
folders for a session XNAT already holds is not quarantined: its sidecars are attached to that
session (`late`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from xnatdrop import apart, dicomfiles, ledger, names, reasonfiles, rules
from xnatdrop.config import PushSettings
from xnatdrop.errors import PermanentError
from xnatdrop.pipeline import late, quarantine, spool, subject
from xnatdrop.pipeline.context import Context, Done, Unsettled

log = logging.getLogger(__package__)

# Findings that mean "the copy is not finished yet": held back (thawed) until
# settle.max_wait_seconds after the files last changed, then quarantined.
COPYING_CODES = frozenset({"EMPTY_FILE", "TRUNCATED_DICOM", "INCOMPLETE_SERIES"})

# A folder of this many files or more is read and judged, and its zip planned (`send`), in a
# child process (`apart`), which gives that memory back when it ends; smaller ones here, where
# a child costs more than it gives. The count at which the check's reads take a process pool.
APART_MIN_FILES = dicomfiles.PARALLEL_MIN_FILES


def check(context: Context, drop: ledger.Drop) -> Done | Unsettled:
    """Run the rules; store what later steps need; a block finding quarantines."""
    work = Path(drop.work)
    found = reasonfiles.find_own(work)
    if found:
        name = names.fit(drop.label, f"__drop{drop.id}")
        kept = quarantine.set_aside(found, context.config.paths.state, name)
        log.info(
            "our reason files from an earlier quarantine (%s) moved aside to %s",
            ", ".join(p.name for p in found),
            kept,
        )
    config, drop_settings = context.config, context.drop_settings
    walk = rules.walk_folder(
        work,
        config.rules_for(drop_settings),
        drop_settings,
        control_files=config.control_files(),
    )
    folder = context.spool(drop)
    if walk.files >= APART_MIN_FILES:
        no_fields = apart.call(_save_apart, walk, config.push, folder)
        # Its head alone: the files are the pack step's, which reads them in a child as well
        # (read here, they left ~5 MB resident through the upload at 60,000 files).
        record = spool.check_record(folder, drop.id, files=False)
    else:
        record, no_fields = _save_record(walk, config.push, folder)
    if no_fields:
        log.warning("%s", no_fields)
    if late.sidecars_only(record):
        attached = late.attach_late(context, drop, record)
        if attached is not None:
            return attached
        raise PermanentError(
            "RULES_BLOCKED",
            f"the folder holds only sidecar folders ({', '.join(sorted(record.sidecars))}) "
            f"and XNAT project {context.project} has no session {drop.label} to add them to",
            "check that the folder is named exactly as the session archived in XNAT, or drop "
            "the sidecar folders together with the session's DICOM series",
        )
    if not record.ok:
        blocks = record.blocking()
        copying = _still_copying(context, work, blocks)
        if copying:
            return Unsettled(copying)
        fixes = {f.fix for f in blocks}
        raise PermanentError(
            "RULES_BLOCKED",
            f"{len(blocks)} problem(s) in the folder stop the upload "
            f"({', '.join(sorted({f.code for f in blocks}))})",
            fixes.pop() if len(fixes) == 1 else "",
        )
    return Done(
        f"{len(record.series)} series, {upload_count(record)} files to upload, "
        f"{len(record.excluded())} excluded, sidecars: {', '.join(record.sidecars) or 'none'}"
    )


def upload_count(record: spool.CheckRecord) -> int:
    """The number of files to upload, from the series: known without reading the files."""
    return sum(int(series["file_count"]) for series in record.series)


def _save_record(
    walk: rules.Walk, push: PushSettings, folder: Path
) -> tuple[spool.CheckRecord, str]:
    """Read and judge the walked folder's files and save what later steps need in `folder`;
    the record, and why the subject's fields could not be read from a header ('' if they
    could, or were not asked for), for the caller to log."""
    verdict = walk.verdict()
    # The first file only: `upload_entries()` made a `FileEntry` of every file (~250 bytes a
    # file) and held them while the record was made and saved, the push's peak (issue 13).
    first = next((entry for series in verdict.series for entry in series.files), None)
    fields, no_fields = subject.fields(
        walk.folder, push, walk.folder / first.path if first else None
    )
    record = spool.CheckRecord.of(verdict, fields)
    spool.save(folder, record)
    return record, no_fields


def _save_apart(walk: rules.Walk, push: PushSettings, folder: Path) -> str:
    """`_save_record` in a child process, which hands back only what is to be logged (its own
    log lines would not reach a daemon's log): the record is read from the spool, as every
    later step reads it."""
    return _save_record(walk, push, folder)[1]


def _still_copying(context: Context, work: Path, blocks: list[rules.Finding]) -> str:
    """Why the folder looks still being copied ('' if it does not): every block says "not
    copied yet" and the copy is recent.

    A copy still running, or paused for longer than `settle.quiet_seconds`, when the folder
    looked settled leaves empty or truncated files, or series that visibly lack files
    (INCOMPLETE_SERIES). The change time of those files (set when the copy wrote them; a rename
    of the folder does not touch it) tells a copy in progress from one that died long ago,
    which is quarantined once `settle.max_wait_seconds` have passed.
    """
    if not blocks or any(f.code not in COPYING_CODES for f in blocks):
        return ""
    paths = [work / p for f in blocks for p in (f.files or (f.path,))]
    newest = max((p.stat().st_ctime for p in paths if p.exists()), default=0.0)
    age = time.time() - newest
    wait = context.config.settle.max_wait_seconds
    if age >= wait:
        return ""
    codes = ", ".join(sorted({f.code for f in blocks}))
    return (
        f"still being copied ({codes} in {len(blocks)} place(s); the newest file came "
        f"{age:.0f} s ago); it is checked again once it settles, and quarantined if it is "
        f"still incomplete {wait:.0f} s after that file"
    )
