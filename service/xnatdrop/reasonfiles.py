"""QUARANTINE.txt and QUARANTINE.json, the reason files: why a folder was not archived, what to do.

A quarantined folder is moved, untouched, to `quarantine/<label>__<time>/`; the two reason files
are added beside the technologist's files. QUARANTINE.txt speaks to the technologist: what is
wrong, which files, how to fix it, how to resubmit. QUARANTINE.json has the stable codes and
details for scripts and for `xnatdrop status`.

This module is the files' format: their names, their text, and how to recognise our own in a
folder that came back (`find_own`, used by the rules and the check step). Quarantining itself,
the move and the reason it records, is `pipeline.quarantine`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from xnatdrop import atomicfile, receipt

log = logging.getLogger(__name__)

TEXT_NAME = "QUARANTINE.txt"
JSON_NAME = "QUARANTINE.json"

RESUBMIT = (
    "To resubmit: fix the problem in this folder (or in a fresh copy), remove QUARANTINE.txt "
    "and QUARANTINE.json, and copy the folder back into the drop folder {drop_root} under its "
    "name {label}. xnatdrop picks it up again on its own."
)


# How each QUARANTINE.txt of ours begins: `find_own` recognises our own reason files by them.
TEXT_STARTS = ("xnatdrop did NOT archive ", "xnatdrop stopped ")


def render_text(reason: dict[str, Any]) -> str:
    """The technologist's note: what, which files, how to fix, how to resubmit."""
    if reason.get("in_xnat") and reason.get("code") == "ARCHIVE_MISMATCH":
        lines = [
            f"{TEXT_STARTS[1]}{reason['label']} (project {reason['project']}) AFTER it reached "
            "XNAT: the session IS in XNAT, but it does not match this folder.",
            f"The session in XNAT: {reason['in_xnat']}",
            "",
            f"What differs: {reason['message']}",
        ]
    elif reason.get("in_xnat"):
        lines = [
            f"{TEXT_STARTS[0]}{reason['label']} (project {reason['project']}): XNAT "
            "already holds a session with this label and other data.",
            f"The session in XNAT: {reason['in_xnat']}",
            "",
            f"What is wrong: {reason['message']}",
        ]
    else:
        lines = [
            f"{TEXT_STARTS[0]}{reason['label']} (project {reason['project']}).",
            "",
            f"What is wrong: {reason['message']}",
        ]
    if reason.get("fix"):
        lines.append(f"How to fix it: {reason['fix']}")
    problems = [f for f in reason.get("findings", []) if f.get("action") == "block"]
    if problems:
        lines += ["", "Files and folders that stop the upload:"]
        for finding in problems:
            lines.append(f"  {finding.get('path') or '(folder)'}: {finding['message']}")
            if finding.get("fix") and "fix:" not in finding["message"].lower():
                lines.append(f"      fix: {finding['fix']}")
            lines.append(f"      rule: {finding['code']}")
    others = [f for f in reason.get("findings", []) if f.get("action") != "block"]
    if others:
        lines += ["", "Also noted (these alone would not stop the upload):"]
        for finding in others:
            lines.append(
                f"  {finding.get('path') or '(folder)'}: {finding['message']} "
                f"[{finding['code']}, {finding.get('action', '')}]"
            )
    lines += [
        "",
        RESUBMIT.format(drop_root=reason["drop_root"], label=reason["label"]),
        "",
        f"Quarantined on {reason['time']}; code {reason['code']}. Nothing in this folder was "
        "changed or deleted; only these two QUARANTINE files were added.",
        "",
    ]
    return "\n".join(lines)


def write(folder: Path, reason: dict[str, Any]) -> None:
    """Write QUARANTINE.json and QUARANTINE.txt into `folder` (repeatable)."""
    text = json.dumps(reason, indent=2, sort_keys=True) + "\n"
    atomicfile.write(folder / JSON_NAME, text, mode=None)
    atomicfile.write(folder / TEXT_NAME, render_text(reason), mode=None)


def find_own(folder: Path) -> list[Path]:
    """xnatdrop's own QUARANTINE.txt/.json at the top of `folder`, recognised by content, and
    the `.part` leftovers of our reason files and receipts (`PARTIAL_STARTS`).

    A folder copied back from quarantine together with its reason files was misdiagnosed (the
    JSON as a BIDS sidecar, both as loose files). Only files that are really ours count: the
    JSON with our keys, the text with our first words; anything else with those names is
    judged like any other file.
    """
    found = []
    text, data = folder / TEXT_NAME, folder / JSON_NAME
    try:
        with open(text, "rb") as handle:
            first = handle.read(max(map(len, TEXT_STARTS)))
            if first.startswith(tuple(start.encode() for start in TEXT_STARTS)):
                found.append(text)
    except OSError:
        pass
    try:
        with open(data, "rb") as handle:
            reason = json.loads(handle.read(1 << 20))
        if isinstance(reason, dict) and {"label", "code", "drop_root"} <= set(reason):
            found.append(data)
    except (OSError, ValueError):
        pass
    for name, starts in PARTIAL_STARTS.items():
        part = folder / f"{name}.part"  # atomicfile.write's temporary name
        try:
            with open(part, "rb") as handle:
                first = handle.read(64)
        except OSError:
            continue
        if any(first[: len(start)] == start[: len(first)] for start in starts):
            found.append(part)
    return found


# How xnatdrop's own reason files and receipts begin. A write of one that was cut short (a full
# share, a kill -9) leaves `NAME.part`, empty or holding the start of that text; it is ours and
# must not be judged as the technologist's file (found by the campaign: a full share left an
# empty QUARANTINE.json.part, and the folder's next check reported EMPTY_FILE and LOOSE_FILE).
PARTIAL_STARTS: dict[str, tuple[bytes, ...]] = {
    TEXT_NAME: tuple(start.encode() for start in TEXT_STARTS),
    JSON_NAME: (b'{\n  "',),
    receipt.TEXT_NAME: (b"xnatdrop receipt for ",),
    receipt.JSON_NAME: (b'{\n  "',),
}
