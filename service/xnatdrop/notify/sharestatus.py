"""`_XNATDROP_STATUS.txt`: what xnatdrop is doing with each folder, where technologists look.

A technologist copies a session into the drop folder and sees it vanish into a hidden work
folder; until now they learnt nothing more unless a QUARANTINE.txt appeared. This file, at the
top of each drop root (`notify.status_file`), lists every folder as they know it, in plain words
and the machine's local time: still being copied, waiting for the upload window (and when it
opens), waiting its turn, uploading (with a percentage), paused on an XNAT problem (and when it
is tried again), archived today (with its XNAT link), or not archived (why, what to do, where
the folder went). No rule codes, no regular expressions, no patient data: labels, times, links.

Its input is a plain record per folder, `FolderStatus`; `from_ledger` makes the records for
drops the ledger knows (archived or quarantined today, in progress) and the daemon adds the
folders its watcher holds (copying, waiting for the window). `StatusFile` writes atomically (a
hidden temporary file renamed over the old one, so a reader never sees half a file), only when
something changed or every `refresh_seconds` (so the "updated" time shows the daemon is alive
without a write, and a file event, on every scan), and readable by all (mode 0644, whatever the
service's umask): it exists to be read over the share.

The watcher must ignore this file: it is a top-level *file* of the drop root, which
`watch.Watcher` reports once as a loose file unless told otherwise, and its rename is a file
event that brings a scan forward (see the daemon notes in `service`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from xnatdrop.notify import outbox

log = logging.getLogger(__name__)

FILE_NAME = "_XNATDROP_STATUS.txt"
MODE = 0o644
REFRESH_SECONDS = 600.0


class Stage(StrEnum):
    COPYING = "copying"  # the watcher sees it change, or it has not been quiet long enough
    WAITING_WINDOW = "waiting-window"  # complete; the upload window is closed
    QUEUED = "queued"  # complete; waiting for its turn (other uploads, held pushes)
    UPLOADING = "uploading"  # the pipeline is working on it
    RETRYING = "retrying"  # a transient problem; tried again at `next_time`
    ARCHIVED = "archived"  # done today
    QUARANTINED = "quarantined"  # not archived; moved to quarantine/


@dataclasses.dataclass(frozen=True)
class FolderStatus:
    """One folder as the technologist knows it (by its name in the drop root).

    `since`: when it entered this stage (archived, quarantined: when that happened);
    `percent`: uploading, how much was sent; `next_time`: waiting for the window, when it opens,
    retrying, when it is tried again; `url`: archived, the session's page in XNAT; `reason`,
    `fix`: plain words; `where`: the folder it was moved to.
    """

    name: str
    stage: Stage
    since: float | None = None
    percent: int | None = None
    next_time: float | None = None
    url: str = ""
    reason: str = ""
    fix: str = ""
    where: str = ""


HEADINGS = {
    Stage.QUARANTINED: "NOT archived: these need you",
    Stage.UPLOADING: "Uploading now",
    Stage.RETRYING: "Upload paused; xnatdrop tries again by itself",
    Stage.QUEUED: "Complete, waiting for their turn",
    Stage.WAITING_WINDOW: "Complete, waiting for the upload window",
    Stage.COPYING: "Still being copied (or changed recently)",
    Stage.ARCHIVED: "Archived in XNAT today",
}


def _clock(epoch: float, now: float) -> str:
    moment, today = time.localtime(epoch), time.localtime(now)
    hour = time.strftime("%H:%M", moment)
    if moment[:3] == today[:3]:
        return f"{hour} today"
    if time.localtime(now + 86400)[:3] == moment[:3]:
        return f"{hour} tomorrow"
    if time.localtime(now - 86400)[:3] == moment[:3]:
        return f"{hour} yesterday"
    return time.strftime("%H:%M on %a %d %b", moment)


def _line(item: FolderStatus, now: float) -> list[str]:
    """The lines of one folder: its name, then what is happening, indented."""
    said: list[str]
    if item.stage is Stage.COPYING:
        said = [
            "files are still arriving or changed recently; it is picked up once nothing has "
            "changed for a while"
        ]
    elif item.stage is Stage.WAITING_WINDOW:
        opens = f" at {_clock(item.next_time, now)}" if item.next_time else ""
        said = [f"complete; uploads start{opens}"]
    elif item.stage is Stage.QUEUED:
        said = ["complete; it is uploaded after the ones before it"]
    elif item.stage is Stage.UPLOADING:
        done = f"{item.percent}% sent" if item.percent is not None else "being checked and sent"
        said = [f"uploading: {done}"]
    elif item.stage is Stage.RETRYING:
        again = f"; next try at {_clock(item.next_time, now)}" if item.next_time else ""
        said = [f"{item.reason or 'XNAT could not take it just now'}{again}. Nothing to do."]
    elif item.stage is Stage.ARCHIVED:
        when = f"at {_clock(item.since, now)}" if item.since else "today"
        said = [f"archived {when}", f"in XNAT: {item.url}" if item.url else ""]
    else:
        when = f" at {_clock(item.since, now)}" if item.since else ""
        said = [f"not archived{when}: {item.reason or 'see QUARANTINE.txt in the folder'}"]
        if item.fix:
            said.append(f"what to do: {item.fix}")
        if item.where:
            said.append(f"the folder is now in {item.where} (QUARANTINE.txt there explains)")
    return [f"  {item.name}", *(f"      {text}" for text in said if text)]


def render(
    root: Path,
    project: str,
    folders: Sequence[FolderStatus],
    now: float | None = None,
    notice: str = "",
) -> str:
    """The whole file: a heading, an optional notice for everyone (uploads held, XNAT down),
    then one section per stage that has folders, most urgent first."""
    now = time.time() if now is None else now
    stamp = time.strftime("%A %d %B %Y at %H:%M (%Z)", time.localtime(now))
    lines = [
        f"What xnatdrop is doing with the folders in {root} (XNAT project {project})",
        f"Updated {stamp}. xnatdrop rewrites this file by itself; changes to it are lost.",
        "",
    ]
    if notice:
        lines += [f"NOTE: {notice}", ""]
    if not folders:
        lines += [
            "There are no folders here right now. Copy each session as one folder, named by "
            "its label; xnatdrop takes it from there.",
            "",
        ]
    for stage in HEADINGS:
        items = sorted((f for f in folders if f.stage is stage), key=lambda f: f.name)
        if not items:
            continue
        lines.append(f"{HEADINGS[stage]} ({len(items)}):")
        for item in items:
            lines += _line(item, now)
        lines.append("")
    return "\n".join(lines)


class StatusFile:
    """The status file of one drop root. A class because it remembers what it last wrote."""

    def __init__(self, root: Path, project: str, refresh_seconds: float = REFRESH_SECONDS):
        self.root = root
        self.project = project
        self.path = root / FILE_NAME
        self.refresh_seconds = refresh_seconds
        self.channel = outbox.Channel(f"the status file {self.path}")
        self._last: tuple[tuple[FolderStatus, ...], str] | None = None
        self._written = 0.0

    def update(
        self, folders: Iterable[FolderStatus], notice: str = "", now: float | None = None
    ) -> bool:
        """Rewrite the file if the folders or the notice changed, or it is `refresh_seconds`
        old. Return True if it was written. A failure is logged once (monitoring never fails
        the job) and tried again on the next call."""
        now = time.time() if now is None else now
        content = (tuple(sorted(folders, key=lambda f: (f.name, f.stage))), notice)
        if content == self._last and now - self._written < self.refresh_seconds:
            return False
        text = render(self.root, self.project, content[0], now, notice)
        try:
            write_atomic(self.path, text)
        except OSError as error:
            self.channel.failed(f"cannot write it: {error.strerror or error}")
            self._last = None
            return False
        self.channel.worked()
        self._last, self._written = content, now
        return True


def write_atomic(path: Path, text: str) -> None:
    """Write via a hidden temporary file in the same folder and a rename; mode 0644."""
    part = path.with_name(f".{path.name}.part")  # hidden: the watcher skips dot names
    descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MODE)
    try:
        os.fchmod(descriptor, MODE)  # whatever the umask: technologists read it on the share
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            descriptor = -1
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
    finally:
        if descriptor >= 0:
            os.close(descriptor)
        if part.exists():
            part.unlink()


# -- plain words for a quarantine reason ----------------------------------------------------

# Codes that do not come from the upload rules: (what happened, what the technologist does).
PLAIN = {
    "LABEL_EXISTS": (
        "XNAT already has a session with this name, holding other scans",
        "if this is a new session, rename the folder and copy it back; otherwise ask the XNAT "
        "administrator",
    ),
    "ARCHIVE_MISMATCH": (
        "it reached XNAT, but XNAT's copy differs from the folder",
        "ask the XNAT administrator to look at it; the folder is complete and safe",
    ),
    "XNAT_TOO_LARGE": (
        "it is too large for the web server in front of XNAT",
        "ask the XNAT administrator to raise the upload limit, then copy the folder back",
    ),
    "XNAT_FORBIDDEN": (
        "the upload account may not add sessions to this XNAT project",
        "ask the XNAT administrator to give the account access, then copy the folder back",
    ),
    "INCOMPLETE": (
        "some files were still incomplete long after the copy began",
        "copy the folder again, completely",
    ),
}
GENERIC = (
    "XNAT did not accept it",
    "ask the XNAT administrator; QUARANTINE.txt in the folder has the details",
)
_REFERENCE = re.compile(r"\s*\[[A-Z]\d*[a-z]?\]")  # "[D4]", "[B]": the rules reference


def plain_reason(reason: Mapping[str, Any]) -> tuple[str, str]:
    """(what is wrong, what to do) for a QUARANTINE.json, in words for a technologist.

    Blocking rule findings give their summaries and fixes (without references to the rules
    document); other codes a fixed sentence from `PLAIN`. Never the raw message, which may
    hold an HTTP status, a pattern or a path.
    """
    blocks = [f for f in reason.get("findings", []) if f.get("action") == "block"]
    if blocks:
        summaries = list(
            dict.fromkeys(_REFERENCE.sub("", str(f.get("summary", ""))) for f in blocks)
        )
        fixes = list(dict.fromkeys(str(f.get("fix", "")) for f in blocks if f.get("fix")))
        summary = "; ".join(s for s in summaries[:3] if s) or GENERIC[0]
        return summary, "; ".join(fixes[:3]) + (
            " (QUARANTINE.txt lists the files)" if fixes else ""
        )
    return PLAIN.get(str(reason.get("code", "")), GENERIC)


# -- records from the ledger -----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start_of_day(now: float) -> float:
    """Local midnight before `now`."""
    moment = time.localtime(now)
    return time.mktime((*moment[:3], 0, 0, 0, 0, 0, -1))


def from_ledger(
    drops: Iterable[Any],
    root: Path,
    now: float | None = None,
    progress: Mapping[str, int] | None = None,
) -> list[FolderStatus]:
    """Records for the ledger's drops of one drop root (`Ledger.drops()` rows).

    Archived and quarantined today, from their RECEIPT.json and QUARANTINE.json; unfinished
    ones as uploading (`progress`: label -> percent, from the pipeline's progress callback),
    paused on a problem (with the next try), or queued. Older finished drops are left out.
    """
    now = time.time() if now is None else now
    today = start_of_day(now)
    progress = progress or {}
    records = []
    for drop in drops:
        if Path(drop.source).parent != root:
            continue
        if drop.state == "done":
            if drop.updated < today:
                continue
            receipt = _read_json(Path(drop.final_path) / "RECEIPT.json") if drop.final_path else {}
            url = str(receipt.get("xnat_url", ""))
            records.append(FolderStatus(drop.label, Stage.ARCHIVED, since=drop.updated, url=url))
        elif drop.state == "quarantined":
            if drop.updated < today:
                continue
            path = Path(drop.final_path) / "QUARANTINE.json" if drop.final_path else None
            reason, fix = plain_reason(_read_json(path) if path else {})
            records.append(
                FolderStatus(
                    drop.label,
                    Stage.QUARANTINED,
                    since=drop.updated,
                    reason=reason,
                    fix=fix,
                    where=drop.final_path or "",
                )
            )
        elif drop.final:
            continue  # requeued and the like: the folder is a new drop now
        elif drop.running or drop.label in progress:
            records.append(
                FolderStatus(drop.label, Stage.UPLOADING, percent=progress.get(drop.label))
            )
        elif drop.last_error:
            due = drop.next_attempt > now and drop.next_attempt != float("inf")
            records.append(
                FolderStatus(
                    drop.label,
                    Stage.RETRYING,
                    since=drop.updated,
                    next_time=drop.next_attempt if due else None,
                    reason="XNAT could not take it just now",
                )
            )
        else:
            records.append(FolderStatus(drop.label, Stage.QUEUED, since=drop.created))
    return records
