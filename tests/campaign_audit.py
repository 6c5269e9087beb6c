"""The campaign's invariants, checked after every scenario.

After a scenario settles, `audit` looks at everything from the outside and compares it with what
each `Drop` says must be true:

- **files**: every original file of every drop is present, byte-identical (MD5), in exactly one
  place: done/, quarantine/ or still the drop root (our own QUARANTINE.* of a resubmitted folder
  may be moved aside under `<state>/requeued/`). A file nowhere is *lost*; in two places it is
  *duplicated*; extra files other than RECEIPT.* / QUARANTINE.* are reported;
- **XNAT** (read over HTTP as the site admin, with plain `requests`, not xnatdrop's client):
  each archived drop is one session with exactly its SOPInstanceUIDs, taken from the scan
  catalogs (the stock site anonymisation rewrites every file, so bytes cannot be compared), and
  the pixel data of one file per drop equals the local file's; nothing of a drop quarantined
  before upload is in XNAT, archived or in the prearchive (*nothing blocked sent*); no session
  that no drop explains, and no prearchive leftover;
- **verdicts**: each drop ended where it must (archived, quarantined with its code and rule
  findings, or waiting); a drop expected to finish that did not is *stuck*; one that finished
  elsewhere is a *wrong verdict*; a drop left waiting must be named by `xnatdrop status`;
- **ledger**: its rows agree with the folders and with XNAT (done ↔ done/ folder and a session,
  quarantined ↔ quarantine/ folder, at most one unfinished row per label, unfinished rows only
  for drops that are not final).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pydicom
import requests

from campaign_drops import REASON_FILES, Drop
from campaign_lab import PASSWORD, PROJECT, USER, Lab
from xnatdrop import names

RECEIPTS = ("RECEIPT.txt", "RECEIPT.json")
DICOM_RESOURCES = ("DICOM", "secondary")


@dataclasses.dataclass
class Audit:
    """What one scenario's check found. `problems` holds one line per defect."""

    drops: int = 0
    files: int = 0  # original files found byte-identical
    instances: int = 0  # SOPInstanceUIDs found in XNAT as expected
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    stuck: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def add(self, kind: str, drop: Drop | None, detail: str) -> None:
        if kind in ("lost", "duplicated", "wrong", "stuck"):
            setattr(self, kind, getattr(self, kind) + 1)
        who = names.shown(drop.label) if drop else "-"
        self.problems.append(f"{kind}: {who}: {detail}")

    def merge(self, other: Audit) -> None:
        for field in ("drops", "files", "instances", "lost", "duplicated", "wrong", "stuck"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.problems += other.problems


# -- XNAT, read independently ------------------------------------------------------------------


class XnatView:
    """What the sandbox XNAT holds for the project, over its REST API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.auth = (USER, PASSWORD)

    def close(self) -> None:
        self.http.close()

    def rows(self, path: str) -> list[dict[str, str]]:
        response = self.http.get(self.url + path, params={"format": "json"}, timeout=60)
        response.raise_for_status()
        return list(response.json()["ResultSet"]["Result"])

    def sessions(self) -> list[dict[str, str]]:
        return self.rows(f"/data/projects/{PROJECT}/experiments")

    def prearchive(self) -> list[dict[str, str]]:
        return self.rows(f"/data/prearchive/projects/{PROJECT}")

    def instances(self, experiment: str) -> list[tuple[str, str, str]]:
        """(SOPInstanceUID, scan, file URI) of every DICOM catalog entry of a session."""
        files = self.rows(f"/data/experiments/{experiment}/scans/ALL/files")
        found = []
        for scan, resource in sorted({(uri_scan(f["URI"]), f["collection"]) for f in files}):
            if resource not in DICOM_RESOURCES:
                continue
            response = self.http.get(
                f"{self.url}/data/experiments/{experiment}/scans/{scan}/resources/{resource}",
                timeout=60,
            )
            response.raise_for_status()
            root = ElementTree.fromstring(response.content)
            base = f"/data/experiments/{experiment}/scans/{scan}/resources/{resource}/files/"
            for element in root.iter():
                if element.tag.endswith("entry") and element.get("UID"):
                    found.append((element.get("UID", ""), scan, base + element.get("URI", "")))
        return found

    def download(self, uri: str) -> bytes:
        response = self.http.get(self.url + uri, timeout=60)
        response.raise_for_status()
        return response.content


def uri_scan(uri: str) -> str:
    parts = uri.split("/")
    return parts[parts.index("scans") + 1]


# -- where each drop is ------------------------------------------------------------------------


def _label_of(folder: Path, stamp: str) -> str:
    """The drop label a folder stands for: from our receipt or reason file, else its name."""
    try:
        return str(json.loads((folder / stamp).read_text(encoding="utf-8"))["label"])
    except (OSError, ValueError, KeyError):
        return folder.name


def places(lab: Lab, work_folder: str = ".xnatdrop-work") -> dict[str, list[tuple[str, Path]]]:
    """label -> [(place, folder)] over done/, quarantine/, the drop roots and work areas."""
    found: dict[str, list[tuple[str, Path]]] = {}

    def note(label: str, place: str, folder: Path) -> None:
        found.setdefault(label, []).append((place, folder))

    for folder in sorted(lab.done.glob("*/*")):
        if folder.is_dir():
            note(_label_of(folder, "RECEIPT.json"), "done", folder)
    if lab.quarantine.is_dir():
        for folder in sorted(lab.quarantine.iterdir()):
            if folder.is_dir():
                note(_label_of(folder, "QUARANTINE.json"), "quarantine", folder)
    for root in lab.roots:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name == work_folder:
                for held in sorted(folder.glob("*/*")):
                    if held.is_dir():
                        note(held.name, "work", held)
            elif folder.is_dir() and not folder.name.startswith("."):
                note(folder.name, "drop", folder)
    return found


def locate(drop: Drop, where: dict[str, list[tuple[str, Path]]]) -> list[tuple[str, Path]]:
    """The places holding this drop: those of its label that hold some of its files (two drops
    may share a label: a collision, late files), or all of its label's if none does."""
    candidates = where.get(drop.label, [])
    sample = list(drop.files.items())[:3]
    owned = [(p, f) for p, f in candidates if any(_md5(f / r) == m for r, m in sample)]
    return owned or candidates


def _md5(path: Path) -> str | None:
    try:
        return hashlib.md5(path.read_bytes()).hexdigest()
    except OSError:
        return None


# -- the audit ---------------------------------------------------------------------------------


def audit(lab: Lab, drops: list[Drop], status: tuple[int, str, dict[str, Any]] | None) -> Audit:
    """Check every invariant for `drops` in `lab` (see the module docstring)."""
    result = Audit(drops=len(drops))
    where = places(lab)
    view = XnatView(lab.sandbox.url)
    try:
        sessions = view.sessions()
        prearchive = view.prearchive()
        by_label = Counter(row["label"] for row in sessions)
        known = {d.label for d in drops}
        for label in by_label:
            if label not in known:
                result.add("duplicated", None, f"XNAT holds session {label} that no drop explains")
        for drop in drops:
            _check_drop(lab, drop, locate(drop, where), sessions, prearchive, view, result, status)
        expected_leftover = {d.label for d in drops if d.expect.kind != "archived"}
        for row in prearchive:
            if row.get("name") not in expected_leftover:
                result.add(
                    "duplicated",
                    None,
                    f"prearchive leftover {row.get('name')} ({row.get('status')})",
                )
        _check_ledger(lab, drops, where, by_label, result)
    finally:
        view.close()
    return result


def _check_drop(
    lab: Lab,
    drop: Drop,
    found: list[tuple[str, Path]],
    sessions: list[dict[str, str]],
    prearchive: list[dict[str, str]],
    view: XnatView,
    result: Audit,
    status: tuple[int, str, dict[str, Any]] | None,
) -> None:
    final = [p for p in found if p[0] in ("done", "quarantine")]
    place = final[0][0] if len(final) == 1 else (found[0][0] if len(found) == 1 else None)
    _check_files(lab, drop, found, result)
    expect = drop.expect
    want = {"archived": "done", "quarantined": "quarantine", "waiting": "drop"}[expect.kind]
    if len(final) > 1:
        where = [str(p) for _, p in final]
        result.add("duplicated", drop, f"in {len(final)} final places: {where}")
    if place != want:
        if place in ("done", "quarantine") or (
            place == "drop" and expect.kind != "waiting" and not explained(drop, status)
        ):
            kind = "wrong" if place in ("done", "quarantine") else "stuck"
        else:
            kind = "stuck"
        detail = f"expected {expect.kind}, found in {place or [p for p, _ in found] or 'nowhere'}"
        if place in ("drop", "work", None):
            detail += f"; status says: {_status_line(drop, status) or 'nothing about it'}"
        result.add(kind, drop, detail)
    if place == "quarantine":
        _check_reason(drop, final[0][1], result)
    if expect.kind == "waiting" and place == "drop" and not explained(drop, status):
        result.add(
            "stuck",
            drop,
            f"waits in the drop root but `xnatdrop status` does not say "
            f"why (expected a line naming it with {expect.why!r})",
        )
    labelled = [row for row in sessions if row["label"] == drop.label]
    if expect.kind == "archived" and place == "done":
        if len(labelled) != 1:
            result.add(
                "duplicated" if labelled else "lost", drop, f"{len(labelled)} sessions in XNAT"
            )
        else:
            _check_instances(drop, labelled[0]["ID"], final[0][1], view, result)
    elif expect.kind != "archived" and expect.code != "LABEL_EXISTS":
        if labelled:
            result.add("wrong", drop, "blocked drop was sent: a session with its label is in XNAT")
        if any(row.get("name") == drop.label for row in prearchive):
            result.add("wrong", drop, "blocked drop was sent: it is in the prearchive")


def _check_files(lab: Lab, drop: Drop, found: list[tuple[str, Path]], result: Audit) -> None:
    aside = sorted(lab.state.glob(f"requeued/{_escape_glob(drop.label)}__drop*"))
    for relative, md5 in drop.files.items():
        holders = [folder for _, folder in found if _md5(folder / relative) == md5]
        if relative in drop.aside:
            holders += [folder for folder in aside if _md5(folder / Path(relative).name) == md5]
        if not holders:
            places_ = [str(folder) for _, folder in found] or ["nowhere"]
            result.add(
                "lost",
                drop,
                f"{names.shown(relative)} not found byte-identical in {', '.join(places_)}",
            )
        elif len(holders) > 1:
            result.add("duplicated", drop, f"{names.shown(relative)} in {len(holders)} places")
        else:
            result.files += 1
    for _, folder in found:
        for path in folder.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(folder).as_posix()
            if relative in drop.files or relative in RECEIPTS or relative in REASON_FILES:
                continue
            result.add("extra", drop, f"unexpected file {names.shown(relative)} in {folder}")


def _escape_glob(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _check_reason(drop: Drop, folder: Path, result: Audit) -> None:
    try:
        reason = json.loads((folder / "QUARANTINE.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        result.add("wrong", drop, f"quarantined without a readable QUARANTINE.json ({error})")
        return
    if not (folder / "QUARANTINE.txt").is_file():
        result.add("wrong", drop, "quarantined without QUARANTINE.txt")
    codes = {f.get("code") for f in reason.get("findings", [])}
    if drop.expect.code and reason.get("code") != drop.expect.code:
        result.add(
            "wrong",
            drop,
            f"quarantined as {reason.get('code')}, expected "
            f"{drop.expect.code}: {reason.get('message')}",
        )
    elif not drop.expect.findings <= codes:
        result.add("wrong", drop, f"findings {sorted(codes)} lack {sorted(drop.expect.findings)}")
    own = [
        f.get("path", "")
        for f in reason.get("findings", [])
        if Path(str(f.get("path", ""))).name.startswith(("QUARANTINE.", "RECEIPT."))
    ]
    if own:
        result.add("wrong", drop, f"findings about xnatdrop's own files: {own}")
    if not reason.get("fix") or not reason.get("message"):
        result.add("wrong", drop, "reason file without a message and a fix")


def _check_instances(
    drop: Drop, experiment: str, folder: Path, view: XnatView, result: Audit
) -> None:
    entries = view.instances(experiment)
    uids = Counter(uid for uid, _, _ in entries)
    missing = drop.uids - set(uids)
    extra = set(uids) - drop.uids - drop.also
    twice = [uid for uid, n in uids.items() if n > 1]
    if missing:
        result.add("lost", drop, f"{len(missing)} of {len(drop.uids)} instances not in XNAT")
    if extra:
        result.add("wrong", drop, f"{len(extra)} instances in XNAT that must not be there")
    if twice:
        result.add("duplicated", drop, f"{len(twice)} instances catalogued twice")
    result.instances += len(drop.uids & set(uids))
    if not entries:
        return
    # Pixel data of one file: the local copy with the same SOPInstanceUID against XNAT's.
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name in RECEIPTS:
            continue
        try:
            local = pydicom.dcmread(path, force=False)
        except Exception:
            continue
        uid = str(local.get("SOPInstanceUID", ""))
        match = next((e for e in entries if e[0] == uid), None)
        if match is None or "PixelData" not in local:
            continue
        remote = pydicom.dcmread(pydicom.filebase.DicomBytesIO(view.download(match[2])))
        if remote.PixelData != local.PixelData:
            result.add("wrong", drop, f"pixel data of {uid} differs in XNAT")
        return


def _status_line(drop: Drop, status: tuple[int, str, dict[str, Any]] | None) -> str:
    if status is None:
        return ""
    shown = names.shown(drop.label)
    for line in status[1].splitlines():
        if shown in line or drop.label in line:
            return line.strip()
    return ""


def explained(drop: Drop, status: tuple[int, str, dict[str, Any]] | None) -> bool:
    line = _status_line(drop, status)
    if not line:
        return False
    why = drop.expect.why.lower()
    rest = line.replace(names.shown(drop.label), "").strip(" :")
    return len(rest) > 10 and (not why or why in line.lower())


def _check_ledger(
    lab: Lab,
    drops: list[Drop],
    where: dict[str, list[tuple[str, Path]]],
    sessions: Counter[str],
    result: Audit,
) -> None:
    path = lab.state / "ledger.sqlite3"
    if not path.exists():
        if any(d.expect.kind != "waiting" for d in drops):
            result.add("ledger", None, "no ledger")
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM drops ORDER BY id").fetchall()
    finally:
        conn.close()
    by_label: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    final_states = ("done", "quarantined", "requeued")
    used = set()
    for drop in drops:
        mine = by_label.get(drop.label, [])
        used.add(drop.label)
        open_rows = [r for r in mine if r["state"] not in final_states]
        if len(open_rows) > 1:
            result.add("ledger", drop, f"{len(open_rows)} unfinished ledger rows")
        folders = dict(locate(drop, where))
        if "done" in folders:
            done_rows = [r for r in mine if r["state"] == "done"]
            if not any(Path(r["final_path"] or "") == folders["done"] for r in done_rows):
                result.add(
                    "ledger",
                    drop,
                    f"in done/ but the ledger says {[(r['state'], r['final_path']) for r in mine]}",
                )
            if not sessions.get(drop.label):
                result.add("ledger", drop, "the ledger says done but XNAT has no such session")
        if "quarantine" in folders:
            rows_q = [r for r in mine if r["state"] == "quarantined"]
            if not any(Path(r["final_path"] or "") == folders["quarantine"] for r in rows_q):
                result.add(
                    "ledger",
                    drop,
                    f"in quarantine/ but the ledger says "
                    f"{[(r['state'], r['final_path']) for r in mine]}",
                )
        if open_rows and ("done" in folders or "quarantine" in folders):
            result.add(
                "ledger",
                drop,
                f"final on disk but unfinished in the ledger "
                f"({open_rows[0]['state']}, running {open_rows[0]['running']})",
            )
    for label, rest in by_label.items():
        if label not in used and any(r["state"] not in final_states for r in rest):
            result.add(
                "ledger",
                None,
                f"unfinished ledger row for {names.shown(label)}, which "
                "is no drop of this scenario",
            )
