"""The daily digest: what happened since the last one, for the people who run the scanner and
XNAT, in one e-mail with a plain-text and an HTML part.

Four lists: sessions archived (scan and file counts, the XNAT link), folders quarantined (the
reason and the fix, where the folder is), drops still waiting (and for how long), and errors
(failed attempts, alerts). Its input is a plain record, `Digest`, so the rendering does not
depend on where the facts come from; `from_ledger` builds it from the ledger's public queries
(`Ledger.drops`, `Ledger.recent_failures`) and the RECEIPT.json / QUARANTINE.json files the
pipeline leaves with each finished drop. The daemon adds what only it knows: folders the watcher
holds (settling, waiting for the upload window) as `Waiting`, alerts as `Problem`.

Nothing here reads DICOM or holds patient data: labels, counts, codes, paths and URLs only.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import time
from collections.abc import Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

from xnatdrop.config import MailSettings
from xnatdrop.notify import mail

log = logging.getLogger(__name__)

RECEIPT_NAME = "RECEIPT.json"  # receipt.JSON_NAME; read, never written, here
REASON_NAME = "QUARANTINE.json"  # quarantine.JSON_NAME


@dataclasses.dataclass(frozen=True)
class Archived:
    label: str
    project: str
    at: float
    scans: int
    files: int
    url: str


@dataclasses.dataclass(frozen=True)
class Quarantined:
    label: str
    project: str
    at: float
    reason: str
    fix: str
    where: str


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A drop or folder not finished yet; `why` in plain words ("waiting for the upload window
    20:00-06:00", "XNAT did not answer; next try at 03:10")."""

    label: str
    project: str
    since: float
    why: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """An error worth a look: a failed attempt (with how often it repeated) or an alert."""

    at: float
    text: str
    label: str = ""
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Digest:
    """Everything one digest says; `start`/`end` bound the period (epoch seconds)."""

    start: float
    end: float
    host: str
    archived: list[Archived] = dataclasses.field(default_factory=list)
    quarantined: list[Quarantined] = dataclasses.field(default_factory=list)
    waiting: list[Waiting] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.archived or self.quarantined or self.waiting or self.problems)


# -- building it from the ledger and the receipts ------------------------------------------


class _Drop(Protocol):
    id: int
    project: str
    label: str
    state: str
    created: float
    updated: float
    attempts: int
    next_attempt: float
    last_error_code: str | None
    last_error: str | None
    final_path: str | None

    @property
    def final(self) -> bool: ...


class LedgerQueries(Protocol):
    """The public queries of `xnatdrop.ledger.Ledger` the digest needs."""

    def drops(self, project: str | None = None, label: str | None = None) -> list[Any]: ...

    def recent_failures(self, limit: int = 10) -> list[Any]: ...


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def archived_from(drop: _Drop) -> Archived:
    """A finished drop as the digest lists it, from its RECEIPT.json in done/."""
    receipt = _read_json(Path(drop.final_path) / RECEIPT_NAME) if drop.final_path else None
    if receipt is None:
        return Archived(drop.label, drop.project, drop.updated, 0, 0, "")
    return Archived(
        drop.label,
        drop.project,
        drop.updated,
        len(receipt.get("scans", [])),
        int(receipt.get("file_count", 0)),
        str(receipt.get("xnat_url", "")),
    )


def quarantined_from(drop: _Drop) -> Quarantined:
    """A quarantined drop as the digest lists it, from its QUARANTINE.json."""
    reason = _read_json(Path(drop.final_path) / REASON_NAME) if drop.final_path else None
    reason = reason or {}
    return Quarantined(
        drop.label,
        drop.project,
        drop.updated,
        str(reason.get("message") or drop.last_error or ""),
        str(reason.get("fix") or ""),
        drop.final_path or "",
    )


def waiting_from(drop: _Drop, now: float) -> Waiting:
    """An unfinished ledger drop: the step it is at, and why it waits if it failed."""
    why = f"at step {drop.state}"
    if drop.last_error:
        why += f"; last error: {drop.last_error}"
    if drop.next_attempt == float("inf"):
        why += "; waits for a person"
    elif drop.next_attempt > now:
        why += f"; next try at {_clock(drop.next_attempt)}"
    return Waiting(drop.label, drop.project, drop.created, why)


def from_ledger(
    book: LedgerQueries,
    start: float,
    end: float,
    host: str,
    waiting: Iterable[Waiting] = (),
    problems: Iterable[Problem] = (),
    failures: int = 500,
) -> Digest:
    """The digest of the period [start, end) from the ledger, plus the daemon's own records.

    Archived and quarantined: drops that reached `done` or `quarantined` in the period.
    Waiting: every unfinished drop (whenever it began), then `waiting`. Problems: failed
    attempts in the period, one line per drop and error code with how often it happened, then
    `problems`.
    """
    archived, quarantined, pending = [], [], []
    for drop in book.drops():
        if drop.state == "done" and start <= drop.updated < end:
            archived.append(archived_from(drop))
        elif drop.state == "quarantined" and start <= drop.updated < end:
            quarantined.append(quarantined_from(drop))
        elif not drop.final:
            pending.append(waiting_from(drop, end))
    grouped: dict[tuple[str, str], Problem] = {}
    for event in reversed(book.recent_failures(failures)):  # oldest first
        if event.event != "failed" or not start <= event.at < end:
            continue
        code = str(event.detail.get("code") or "")
        message = str(event.detail.get("message") or "")
        key = (event.label, code)
        previous = grouped.get(key)
        count = previous.count + 1 if previous else 1
        grouped[key] = Problem(event.at, f"{event.step}: {message}", event.label, count)
    return Digest(
        start,
        end,
        host,
        sorted(archived, key=lambda a: a.at),
        sorted(quarantined, key=lambda q: q.at),
        sorted([*pending, *waiting], key=lambda w: w.since),
        sorted([*grouped.values(), *problems], key=lambda p: p.at),
    )


# -- rendering ----------------------------------------------------------------------------------


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M", time.localtime(epoch))


def _when(epoch: float) -> str:
    return time.strftime("%a %d %b %H:%M", time.localtime(epoch))


def duration(seconds: float) -> str:
    """'3 min', '5 h 12 min', '2 days 4 h': how long something has waited, in plain words."""
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"


def subject(digest: Digest) -> str:
    parts = [
        f"{len(digest.archived)} archived",
        f"{len(digest.quarantined)} quarantined",
        f"{len(digest.waiting)} waiting",
    ]
    if digest.problems:
        parts.append(f"{len(digest.problems)} error(s)")
    return f"[xnatdrop {digest.host}] daily digest: {', '.join(parts)}"


def _period(digest: Digest) -> str:
    zone = time.strftime("%Z", time.localtime(digest.end))
    return f"{_when(digest.start)} to {_when(digest.end)} ({zone})"


def render_text(digest: Digest) -> str:
    """The plain-text part."""
    lines = [f"xnatdrop on {digest.host}: what happened from {_period(digest)}.", ""]
    if digest.empty:
        lines += ["Nothing was archived, quarantined or waiting, and there were no errors.", ""]
    lines.append(f"Archived: {len(digest.archived)}")
    for item in digest.archived:
        lines.append(
            f"  {item.label} ({item.project}) at {_clock(item.at)}: {item.scans} scans, "
            f"{item.files} files"
        )
        if item.url:
            lines.append(f"      {item.url}")
    lines += ["", f"Not archived (quarantined): {len(digest.quarantined)}"]
    for item in digest.quarantined:
        lines.append(f"  {item.label} ({item.project}) at {_clock(item.at)}: {item.reason}")
        if item.fix:
            lines.append(f"      fix: {item.fix}")
        if item.where:
            lines.append(f"      the folder and its QUARANTINE.txt: {item.where}")
    lines += ["", f"Waiting: {len(digest.waiting)}"]
    for item in digest.waiting:
        waited = duration(max(0.0, digest.end - item.since))
        lines.append(f"  {item.label} ({item.project}), for {waited}: {item.why}")
    lines += ["", f"Errors: {len(digest.problems)}"]
    for item in digest.problems:
        who = f"{item.label}: " if item.label else ""
        times = f" ({item.count} times)" if item.count > 1 else ""
        lines.append(f"  {_clock(item.at)} {who}{item.text}{times}")
    lines += [
        "",
        "--",
        "`xnatdrop status` shows the current state; `xnatdrop audit` checks XNAT.",
        "",
    ]
    return "\n".join(lines)


def render_html(digest: Digest) -> str:
    """The HTML part: the same facts as the text, as headings and tables with links."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"></head>',
        '<body style="font-family: sans-serif">',
        f"<p>xnatdrop on <b>{e(digest.host)}</b>: what happened from {e(_period(digest))}.</p>",
    ]
    if digest.empty:
        out.append("<p>Nothing was archived, quarantined or waiting, and there were no errors.</p>")

    def table(title: str, count: int, header: list[str], rows: list[list[str]]) -> None:
        out.append(f"<h3>{e(title)}: {count}</h3>")
        if not rows:
            return
        out.append('<table border="1" cellpadding="4" style="border-collapse: collapse">')
        out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
        out.append("</table>")

    table(
        "Archived",
        len(digest.archived),
        ["session", "project", "at", "scans", "files", "in XNAT"],
        [
            [
                e(a.label),
                e(a.project),
                e(_clock(a.at)),
                str(a.scans),
                str(a.files),
                f'<a href="{e(a.url)}">open</a>' if a.url else "",
            ]
            for a in digest.archived
        ],
    )
    table(
        "Not archived (quarantined)",
        len(digest.quarantined),
        ["folder", "project", "at", "why", "fix", "where"],
        [
            [e(q.label), e(q.project), e(_clock(q.at)), e(q.reason), e(q.fix), e(q.where)]
            for q in digest.quarantined
        ],
    )
    table(
        "Waiting",
        len(digest.waiting),
        ["folder", "project", "for", "why"],
        [
            [e(w.label), e(w.project), e(duration(max(0.0, digest.end - w.since))), e(w.why)]
            for w in digest.waiting
        ],
    )
    table(
        "Errors",
        len(digest.problems),
        ["at", "folder", "what", "times"],
        [[e(_clock(p.at)), e(p.label), e(p.text), str(p.count)] for p in digest.problems],
    )
    out.append("</body></html>")
    return "\n".join(out)


def message(digest: Digest, settings: MailSettings) -> EmailMessage:
    """The digest as an e-mail to `mail.to`: multipart/alternative, text first."""
    return mail.build(
        settings, list(settings.to), subject(digest), render_text(digest), render_html(digest)
    )
