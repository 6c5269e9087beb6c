"""RECEIPT.txt and RECEIPT.json: what xnatdrop put into XNAT for one subject folder.

Both files are written into the subject folder just before it is moved to
`done/<date>/<label>/`, so the receipt travels with the data. RECEIPT.txt is for the people who
dropped the folder; RECEIPT.json carries the same facts for scripts. Neither holds patient
identifiers: labels, UIDs of series, counts, sizes and URLs only.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from xnatdrop import atomicfile

log = logging.getLogger(__name__)

TEXT_NAME = "RECEIPT.txt"
JSON_NAME = "RECEIPT.json"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def render_text(receipt: dict[str, Any]) -> str:
    """The human receipt: where the session is, what went in, what was left out and why."""
    lines = [
        f"xnatdrop receipt for {receipt['label']}",
        "",
        f"Archived in XNAT project {receipt['project']} as session {receipt['label']} "
        f"(subject {receipt['subject']}) on {receipt['finished']}.",
        f"Open it at: {receipt['xnat_url']}",
        "",
    ]
    if receipt.get("late_sidecars"):
        # Only sidecar folders, added to a session archived earlier (pipeline.late).
        lines[2] = (
            f"Added to session {receipt['label']} (subject {receipt['subject']}) in XNAT "
            f"project {receipt['project']}, archived earlier, on {receipt['finished']}: this "
            "folder held only the sidecar folders listed below, each checked in XNAT after "
            "the upload (size and MD5 of every file)."
        )
    else:
        lines.append(
            f"Scans ({len(receipt['scans'])}), {receipt['file_count']} files, "
            f"{_size(receipt['bytes'])}:"
        )
    for scan in receipt["scans"]:
        description = f" {scan['description']}" if scan.get("description") else ""
        lines.append(
            f"  scan {scan['series_number'] or '?'}{description}: {scan['file_count']} files, "
            f"{_size(scan['bytes'])} (from {scan['folder']})"
        )
    sent = receipt.get("sent") or {}
    if receipt.get("transport") == "dicom":
        moved = " XNAT filed it in Unassigned; xnatdrop moved it into the project." * bool(
            sent.get("moved_from_unassigned")
        )
        lines += [
            "",
            f"Sent by DICOM (C-STORE) to XNAT's receiver {sent.get('receiver', '')}, "
            f"{sent.get('instances', '?')} instances.{moved}",
        ]
    appended = receipt.get("appended")
    if appended:
        lines += [
            "",
            f"This session was already in XNAT with {appended['session_held']} files: "
            f"{appended['new']} files of this folder were added to it"
            + (
                f", {appended['already_there']} were there already (same instances)."
                if appended["already_there"]
                else "."
            ),
        ]
    verification = receipt.get("verification") or {}
    if verification.get("summary"):
        lines += ["", f"Verified against XNAT: {verification['summary']}."]
    if receipt.get("not_archived"):
        lines += ["", "Not archived, because XNAT's own configuration left them out:"]
        for item in receipt["not_archived"]:
            description = f" {item['description']}" if item.get("description") else ""
            lines.append(
                f"  series {item.get('number') or '?'}{description} ({item['folder']}, "
                f"{item['files']} files): {item['reason']}"
            )
        lines.append(
            "  The files are in this folder. If they should be in XNAT, ask the XNAT "
            "administrator about that configuration."
        )
    if receipt["resources"]:
        lines += ["", "Session resources:"]
        for resource in receipt["resources"]:
            lines.append(
                f"  {resource['name']}: {resource['file_count']} files, "
                f"{_size(resource['bytes'])} (from {resource['folder']})"
            )
            for path in resource.get("not_uploaded", []):
                lines.append(
                    f"    not uploaded: {path} (XNAT never lists files named *_catalog.xml or "
                    ".~lock-*; it stays in this folder)"
                )
    if receipt["excluded"]:
        lines += ["", "Not uploaded, on purpose:"]
        for item in receipt["excluded"]:
            lines.append(f"  {item['path']}: {item['message']} [{item['code']}]")
    if receipt.get("subject_fields"):
        fields = ", ".join(sorted(receipt["subject_fields"]))
        lines += ["", f"Subject details set in XNAT: {fields}."]
    done = "Nothing needs to be done." if not receipt.get("not_archived") else ""
    lines += ["", f"{done} This folder is kept as it was dropped.".strip(), ""]
    return "\n".join(lines)


def write(folder: Path, receipt: dict[str, Any]) -> None:
    """Write RECEIPT.json and RECEIPT.txt into `folder` (repeatable: they are replaced), with
    the umask's mode, like the technologist's files beside them.

    RECEIPT.json is written as it is encoded: its "files" (one row per file, 50,000 and more)
    may be records with a `to_json`, each turned into its row only when it is written, so
    neither the whole text nor a dict per file is built in memory."""
    encoder = json.JSONEncoder(indent=2, sort_keys=True, default=_row)
    atomicfile.write(folder / JSON_NAME, _with_newline(encoder.iterencode(receipt)), mode=None)
    atomicfile.write(folder / TEXT_NAME, render_text(receipt), mode=None)


class Rows(list[Any]):
    """A receipt's list of rows made as they are written: `rows()` gives them afresh each time
    the list is read, and `count` is its length. RECEIPT.json lists every file of the upload
    (50,000 and more); the manifest keeps them compactly (`pack.Manifest.entries`), and a list
    of its entries would hold an `Entry` per file while the receipt is written.

    A list to `json`, which reads a list subclass by `len` and iteration (its Python encoder,
    which `write`'s `iterencode` uses, and its C one alike): the rows encode exactly as a list
    of them would (`test_the_finish_step_holds_under_200_bytes_a_file` compares them)."""

    def __init__(self, count: int, rows: Callable[[], Iterable[Any]]) -> None:
        super().__init__()
        self._count, self._rows = count, rows

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows())


def _row(value: Any) -> Any:
    """A record of the receipt (a manifest entry) as JSON; anything else is not encodable."""
    to_json = getattr(value, "to_json", None)
    if to_json is None:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return to_json()


def _with_newline(pieces: Iterator[str], batch: int = 4096) -> Iterator[str]:
    """The encoder's pieces (a few characters each) joined a few thousand at a time, and the
    final newline."""
    while chunk := "".join(itertools.islice(pieces, batch)):
        yield chunk
    yield "\n"


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
