"""The audit: is everything xnatdrop archived still in XNAT, as it was received?

Each drop that reached done/ left a RECEIPT.json beside its files (`receipt`): the project,
label and XNAT session ID, every file sent with its SOPInstanceUID, SeriesInstanceUID and MD5,
the series XNAT's own configuration left out, and the session resources with their file counts.
The audit reads those receipts (`done/<date>/<label>/RECEIPT.json`, optionally from a date on)
and asks XNAT, through `xnat.XnatClient`'s public read methods only, what it holds now:

- the session, by project and label (`find_session`); gone means MISSING, and another session
  ID under the label means it was replaced;
- its instances, by SOPInstanceUID from each scan's DICOM catalog (`session_files` to find the
  scans, `scan_catalog` per scan and DICOM resource), as `verify` matches them at push time:
  instances gone, instances added, and, where the receipt says MD5s were verified and XNAT
  still records them, files whose MD5 differs;
- its resources (`resource_files`): each sidecar resource still there with its files.

Anything missing or different is CHANGED, named by series, resource and count. This is what
xnat-ingest users run as a nightly check; a receipt is the record of what XNAT once held.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xnatdrop import xnat
from xnatdrop.errors import PermanentError

log = logging.getLogger(__name__)

RECEIPT_NAME = "RECEIPT.json"  # receipt.JSON_NAME


@dataclasses.dataclass
class SessionAudit:
    """The audit of one receipt: `status` is "ok", "missing", "changed" or "unreadable"."""

    label: str
    project: str
    receipt: str
    archived: str
    status: str = "ok"
    problems: list[str] = dataclasses.field(default_factory=list)
    summary: str = ""
    xnat_url: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def receipts(done: Path, since: dt.date | None = None) -> Iterator[Path]:
    """RECEIPT.json files under `done/<date>/<label>/`, oldest day first, from `since` on."""
    if not done.is_dir():
        return
    for day in sorted(p for p in done.iterdir() if p.is_dir()):
        when = _day(day.name)
        if since is not None and when is not None and when < since:
            continue
        for folder in sorted(p for p in day.iterdir() if p.is_dir()):
            path = folder / RECEIPT_NAME
            if path.is_file():
                yield path


def _day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None


def read_receipt(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    needed = ("project", "label", "files")
    return data if isinstance(data, dict) and all(k in data for k in needed) else None


def audit_receipt(client: xnat.XnatClient, path: Path) -> SessionAudit:
    """Compare one receipt with what XNAT holds now.

    Raise TransientError or AuthenticationError when XNAT cannot be asked (the caller stops:
    the audit would say nothing true); an XnatAnswer for this session is recorded as a problem.
    """
    data = read_receipt(path)
    if data is None:
        return SessionAudit(
            path.parent.name,
            "",
            str(path),
            path.parent.parent.name,
            "unreadable",
            [f"{path} is not a readable xnatdrop receipt; it cannot be checked"],
        )
    result = SessionAudit(
        str(data["label"]),
        str(data["project"]),
        str(path),
        str(data.get("finished") or path.parent.parent.name),
        xnat_url=str(data.get("xnat_url", "")),
    )
    try:
        _compare(client, data, result)
    except PermanentError as error:
        result.status = "changed"
        result.problems.append(f"XNAT would not show it: {error}")
    if result.problems and result.status == "ok":
        result.status = "changed"
    return result


def _expected(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """SOPInstanceUID -> manifest entry of every instance the receipt says XNAT archived."""
    left_out = {item.get("uid") for item in data.get("not_archived", [])}
    return {
        entry["sop_instance_uid"]: entry
        for entry in data.get("files", [])
        if entry.get("series_instance_uid") not in left_out
    }


def _compare(client: xnat.XnatClient, data: dict[str, Any], result: SessionAudit) -> None:
    project, label = result.project, result.label
    session = client.find_session(project, label)
    if session is None:
        result.status = "missing"
        result.problems.append(
            f"session {label} is no longer in XNAT project {project} (archived "
            f"{result.archived}; receipt {result.receipt})"
        )
        return
    if data.get("session_id") and session.id != data["session_id"]:
        result.problems.append(
            f"XNAT now holds another session under this label (ID {session.id}; the one "
            f"archived was {data['session_id']})"
        )
    expected = _expected(data)
    files = client.session_files(project, session.subject, label)
    catalogs = sorted({(f.scan, f.resource) for f in files if f.resource in xnat.DICOM_RESOURCES})
    remote: dict[str, xnat.CatalogEntry] = {}
    added: list[xnat.CatalogEntry] = []
    for scan, resource in catalogs:
        for entry in client.scan_catalog(project, session.subject, label, scan, resource):
            if entry.uid in expected and entry.uid not in remote:
                remote[entry.uid] = entry
            else:
                added.append(entry)
    missing = [entry for uid, entry in expected.items() if uid not in remote]
    if missing:
        by_series: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for entry in missing:
            by_series[entry.get("series_instance_uid", "")].append(entry)
        totals = collections.Counter(e.get("series_instance_uid", "") for e in expected.values())
        for series_uid, entries in by_series.items():
            first = entries[0]
            folder = str(Path(first.get("path", "")).parent)
            result.problems.append(
                f"series {first.get('series_number') or '?'} ({folder}): {len(entries)} of "
                f"{totals[series_uid]} instances no longer in XNAT"
            )
    if added:
        scans = ", ".join(sorted({e.scan for e in added}))
        result.problems.append(
            f"{len(added)} instance(s) in XNAT were not in the upload (scan {scans})"
        )
    if data.get("checksums_verified"):
        changed = [
            expected[uid]["path"]
            for uid, entry in remote.items()
            if entry.digest and expected[uid].get("md5") and entry.digest != expected[uid]["md5"]
        ]
        if changed:
            names = ", ".join(changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
            result.problems.append(f"{len(changed)} file(s) have other bytes now: {names}")
    resources = data.get("resources", [])
    for resource in resources:
        name = str(resource.get("name", ""))
        wanted = int(resource.get("file_count", 0))
        listed = client.resource_files(project, session.subject, label, name)
        have = 0 if listed is None else len(listed)
        if listed is None or (have == 0 and wanted):
            result.problems.append(f"resource {name} is no longer in XNAT ({wanted} files)")
        elif have < wanted:
            result.problems.append(f"resource {name}: {have} of {wanted} files in XNAT")
    scans = len({e.scan for e in remote.values()})
    result.summary = (
        f"{scans} scans, {len(remote)} of {len(expected)} instances, {len(resources)} resource(s)"
    )


def audit(client: xnat.XnatClient, done: Path, since: dt.date | None = None) -> list[SessionAudit]:
    """Audit every receipt under `done` (from `since` on), in order."""
    return [audit_receipt(client, path) for path in receipts(done, since)]
