"""Step `finish`: the subject's fields in XNAT, the receipt, and the folder into done/.

The folder moves to `done/<date>/<LABEL>/` with RECEIPT.txt and RECEIPT.json (`receipt`); the
target is written to the ledger before the rename, and chosen again if the configured done/
path changed since (`destination.aim`). xnatdrop's own files of the drop are removed after.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from xnatdrop import ledger, pack, receipt
from xnatdrop.errors import TransientError
from xnatdrop.pipeline import attach, destination, readback, spool
from xnatdrop.pipeline.context import Context, Done

log = logging.getLogger(__package__)


def finish(context: Context, drop: ledger.Drop) -> Done:
    work = Path(drop.work)
    if work.is_dir():
        drop = destination.aim(context, drop, context.config.paths.done, time.strftime("%Y-%m-%d"))
    target = Path(drop.target or "")
    if work.is_dir():
        client = context.client()
        session = client.find_session(context.project, drop.label)
        if session is None:
            raise TransientError("the archived session is not visible")
        checked = spool.check_record(context.spool(drop), drop.id, files=False)
        if checked.subject_fields:
            client.set_subject_fields(context.project, session.subject, checked.subject_fields)
        receipt.write(work, _receipt(context, drop, session, checked))
        del checked
        target.parent.mkdir(parents=True, exist_ok=True)
        destination.move(work, target)
    elif not target.is_dir():
        raise TransientError(
            f"the folder of {drop.label} is neither in the work area ({work}) nor in done/ "
            f"({target}); if the share is unmounted it waits for it, else put the folder back "
            f"at {work}"
        )
    destination.tidy(context, drop)
    return Done(f"moved to {target}", {"final_path": target})


def _receipt(
    context: Context, drop: ledger.Drop, session: Any, checked: spool.CheckRecord
) -> dict[str, Any]:
    """RECEIPT.json's content: where the session is, what went in, what was left out, how it
    was verified (`receipt` renders the text). Its "files" are the manifest's entries as they
    are, each made as it is written (`receipt.Rows`), and `receipt.write` turns each into its
    JSON row as it writes it."""
    folder, work = context.spool(drop), Path(drop.work)
    late = spool.load(folder, spool.LateSidecars)
    manifest = pack.Manifest(0, ()) if late else spool.manifest_for(folder, work, drop.id)
    resources = []
    for name, relative in sorted(checked.sidecars.items()):
        local = attach.local_files(work / relative)
        skipped = sorted(path for path in local if attach.uncatalogued(path))
        local = {path: value for path, value in local.items() if path not in skipped}
        if local or skipped:
            resources.append(
                {
                    "name": name,
                    "folder": relative,
                    "file_count": len(local),
                    "bytes": sum(size for size, _ in local.values()),
                    "not_uploaded": skipped,
                }
            )
    record = spool.xnat_record(folder)
    verification = record.verification
    if late is not None:  # no DICOM sent: the sidecars were verified by the attach step
        verification = {"instances": 0, "bytes": 0, "late_sidecars": late.session}
    if verification is None:  # the spool lost it after archiving: verify again
        readback.archived(context, drop, manifest)
        verification = spool.xnat_record(folder).verification or {}
    dropped = {d["uid"]: d for d in verification.get("not_archived", [])}
    scans, not_archived = [], []
    for series in checked.series:
        left_out = dropped.get(series["series_instance_uid"])
        kept = series["file_count"] - (left_out["files"] if left_out else 0)
        if kept > 0:
            scans.append({**series, "file_count": kept} if left_out else series)
        if left_out:
            not_archived.append({**left_out, "description": series.get("description", "")})
    return {
        "label": drop.label,
        "project": context.project,
        "subject": session.subject,
        "session_id": session.id,
        "xnat_url": context.client().session_url(context.project, session.id),
        "archive_uri": drop.archive_uri,
        "finished": receipt.now_text(),
        "file_count": verification.get("instances", manifest.file_count),
        "bytes": verification.get("bytes", manifest.total_bytes),
        "checksums_verified": bool(verification.get("md5_compared")),
        "verification": verification,
        "appended": verification.get("appended"),
        # How the DICOM went in: "rest" (the import service) or "dicom" (C-STORE, with the
        # receiver and what XNAT did with it).
        "transport": (record.sent or {}).get("transport", "rest"),
        "sent": record.sent,
        "scans": scans,
        "not_archived": not_archived,
        "resources": resources,
        "late_sidecars": late is not None,
        "excluded": checked.excluded(),
        "subject_fields": checked.subject_fields,
        "files": receipt.Rows(manifest.file_count, manifest.json_rows),
    }
