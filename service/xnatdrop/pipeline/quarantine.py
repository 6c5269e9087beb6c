"""Quarantine: a drop that retrying cannot help goes, untouched, to
`quarantine/<LABEL>__<time>/` with QUARANTINE.txt and QUARANTINE.json (`reasonfiles`); and
`xnatdrop requeue` sends it back into its drop root once fixed.

The reason is kept in the spool before the folder moves and the ledger records the start of
the move (`running = "quarantine"`), so a quarantine cut short by a kill -9 is finished on the
next call with the same reason (`finish`). The move itself is `destination`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from xnatdrop import config, ledger, reasonfiles, receipt, rules
from xnatdrop.errors import AuthenticationError, PermanentError, TransientError
from xnatdrop.pipeline import crash, destination, prearchive, spool
from xnatdrop.pipeline.context import Context
from xnatdrop.pipeline.outcome import Kind, Outcome

log = logging.getLogger(__package__)


def quarantine(context: Context, drop: ledger.Drop, failure: PermanentError) -> Outcome:
    """Move the folder, untouched, to quarantine/ with both reason files, for `failure`."""
    folder = context.spool(drop)
    checked = spool.load(folder, spool.CheckRecord, files=False)
    reason = spool.QuarantineReason(
        label=drop.label,
        project=context.project,
        code=failure.code,
        message=str(failure),
        fix=failure.fix,
        step=drop.running or drop.next_step,
        findings=checked.findings if checked is not None else (),
        drop_root=str(context.drop_settings.path),
        time=receipt.now_text(),
        in_xnat=failure.in_xnat,
    )
    spool.save(folder, reason)
    drop = context.book.begin(
        drop, "quarantine", last_error_code=failure.code, last_error=str(failure)
    )
    return finish(context, drop, reason)


def stored_reason(context: Context, drop: ledger.Drop) -> spool.QuarantineReason:
    """The reason a quarantine under way started with; the ledger's last error if it is lost."""
    found = spool.load(context.spool(drop), spool.QuarantineReason)
    if found is not None:
        return found
    return spool.QuarantineReason(
        label=drop.label,
        project=context.project,
        code=drop.last_error_code or "QUARANTINE",
        message=drop.last_error or "",
        fix="",
        step=None,
        findings=(),
        drop_root=str(context.drop_settings.path),
        time=receipt.now_text(),
    )


def finish(context: Context, drop: ledger.Drop, reason: spool.QuarantineReason) -> Outcome:
    """Write the reason files, move the folder and record it; repeatable after a kill -9."""
    stored = Path(drop.target) if drop.target else None
    # A target is chosen free (`destination.aim`): if it exists, the folder was moved there
    # before a crash, and a folder of that label in the drop root now is a new copy, not ours.
    moved = stored is not None and stored.is_dir() and (stored / reasonfiles.JSON_NAME).is_file()
    folder = next(
        (Path(p) for p in (drop.work, drop.source) if p and Path(p).is_dir() and Path(p) != stored),
        None,
    )
    if moved:
        folder = None
    if folder is not None:
        drop = destination.aim(context, drop, context.config.paths.quarantine)
    target = Path(drop.target or "")
    if folder is not None:
        reasonfiles.write(folder, reason.to_json())
        crash.point("quarantine", "before")
        target.parent.mkdir(parents=True, exist_ok=True)
        destination.move(folder, target)
    crash.point("quarantine", "after")
    if drop.prearchive_uri and context.connected:
        # Our upload would otherwise sit in the prearchive; the data is safe in quarantine/.
        with contextlib.suppress(TransientError, PermanentError, AuthenticationError):
            prearchive.delete(context, drop.prearchive_uri)
    destination.tidy(context, drop)
    drop = context.book.quarantine(
        drop, reason.code, reason.message, final_path=target if target.is_dir() else None
    )
    log.error("quarantined (%s): %s -> %s", reason.code, reason.message, target)
    return Outcome(Kind.QUARANTINED, drop.label, drop.id, reason.message, reason.code, path=target)


# -- requeue: back into the drop root ---------------------------------------------------------


def set_aside(files: list[Path], state: Path, name: str) -> Path:
    """Move our reason files out of a folder going back to XNAT, into
    `<state>/requeued/<name>/` (0700, each file 0600); return that folder.

    They are not the technologist's data: they would travel into done/ beside the receipt and
    contradict it. Copied, then removed: the state folder is often on another file system.
    """
    kept = ledger.private_dir(state / "requeued" / name)
    for path in files:
        target = kept / path.name
        shutil.copyfile(path, target)
        os.chmod(target, 0o600)
        path.unlink()
    return kept


class RequeueError(Exception):
    """Why a folder cannot go back; the message says what to do instead."""


class BadLabel(RequeueError):
    """NEWLABEL is not a label this drop root accepts."""


def check_label(drop: config.DropSettings, settings: config.Config, label: str) -> None:
    """Refuse a NEWLABEL that the rules would block (LABEL_PATTERN), before anything moves."""
    if settings.rules_for(drop).label_source != "folder":
        raise BadLabel(
            f"drop root {drop.path} takes labels from the DICOM "
            f"{settings.rules_for(drop).label_source}, not from the folder name; renaming the "
            "folder does not change the label"
        )
    if not rules.XNAT_LABEL.fullmatch(label) or label.upper() in rules.PLACEHOLDER_LABELS:
        raise BadLabel(
            f"{label!r} is not a usable XNAT label: use letters, digits, '_' and '-' only"
        )
    if drop.label_pattern and not re.fullmatch(drop.label_pattern, label):
        raise BadLabel(
            f"{label!r} does not match the label pattern {drop.label_pattern!r} of drop root "
            f"{drop.path}"
        )


def find(quarantine_root: Path, name: str) -> Path:
    """The quarantined folder called `name`, or the only one for label `name`."""
    exact = quarantine_root / name
    if name and "/" not in name and exact.is_dir():
        return exact
    try:
        matches = sorted(
            p for p in quarantine_root.iterdir() if p.is_dir() and p.name.startswith(f"{name}__")
        )
    except FileNotFoundError:
        matches = []
    if not matches:
        raise RequeueError(f"nothing called {name!r} in {quarantine_root}")
    if len(matches) > 1:
        listing = ", ".join(p.name for p in matches)
        raise RequeueError(
            f"{len(matches)} quarantined folders for {name!r} ({listing}); "
            "give the full name of the one you fixed"
        )
    return matches[0]


def requeue(settings: config.Config, name: str, new_label: str | None = None) -> Path:
    """Move the quarantined folder back into its drop root (as `new_label` if given); return
    its new path.

    Its reason files are moved to `<state>/requeued/<name>/` (they would travel with the
    session and contradict its receipt), and the ledger marks the quarantined drop `requeued`.
    Raise RequeueError (BadLabel for `new_label`) when it cannot go back, saying why.
    """
    folder = find(settings.paths.quarantine, name)
    try:
        reason = json.loads((folder / reasonfiles.JSON_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        reason = {}
    label = reason.get("label") or folder.name.split("__")[0]
    project = reason.get("project")
    roots = [d for d in settings.drop if project is None or d.project == project]
    if reason.get("drop_root"):
        roots = [d for d in roots if str(d.path) == reason["drop_root"]] or roots
    if len(roots) != 1:
        raise RequeueError(
            f"cannot tell which drop root {folder.name} came from (project "
            f"{project!r}); move it back by hand: mv {folder} <drop root>/{label}"
        )
    drop = roots[0]
    if new_label is not None:
        check_label(drop, settings, new_label)
        label = new_label
    target = drop.path / label
    if target.exists():
        raise RequeueError(
            f"{target} already exists: a newer copy of {label} is in the drop "
            "folder; remove one of the two first"
        )
    with ledger.Ledger(settings.paths.state) as book:
        active = book.active(drop.project, label)
        if active is not None:
            raise RequeueError(
                f"drop {active.id} of {label} is still {active.state}; wait until it "
                "finishes (see: xnatdrop status)"
            )
        ours = [folder / n for n in (reasonfiles.TEXT_NAME, reasonfiles.JSON_NAME)]
        set_aside([p for p in ours if p.exists()], settings.paths.state, folder.name)
        os.rename(folder, target)  # same file system as the drop root (see `xnatdrop doctor`)
        quarantined = book.quarantined_at(folder)
        if quarantined is not None:
            book.requeue(quarantined, target, label)
    log.info("%s: requeued from %s into %s", label, folder, drop.path)
    return target
