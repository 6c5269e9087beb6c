"""`xnatdrop requeue NAME [--as NEWLABEL] [--config FILE]`: send a fixed quarantined folder back.

NAME is the quarantined folder's name (`<label>__<time>`) or just the label, when only one
quarantined folder has it. The folder is renamed (same file system, never copied) to
`<drop root>/<label>`, or `<drop root>/<NEWLABEL>` with `--as` (the way to fix a wrong label:
NEWLABEL must follow the drop root's label pattern), where the daemon settles it and pushes it
as a new drop; its reason files (QUARANTINE.txt/.json) are moved to `<state>/requeued/<name>/`
so they do not travel with the session and the record is kept. The ledger marks the quarantined
drop `requeued`, so `xnatdrop status` no longer counts it as in quarantine. Refused, with the
reason, when the label is already waiting in the drop root or unfinished in the ledger.
Exit 0 requeued, 1 refused, 2 for a NEWLABEL that is not a valid label.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from xnatdrop import commands, config, ledger, reasonfiles, rules
from xnatdrop.exitcodes import Exit

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "requeue", help="send a fixed quarantined folder back into the drop folder"
    )
    parser.add_argument("name", metavar="NAME", help="quarantined folder name, or its label")
    parser.add_argument(
        "--as",
        dest="new_label",
        metavar="NEWLABEL",
        help="put it back under this label (the fix for LABEL_PATTERN and LABEL_EXISTS)",
    )
    commands.add_config_argument(parser)
    parser.set_defaults(func=handle)


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
    its new path."""
    folder = find(settings.paths.quarantine, name)
    reason_file = folder / reasonfiles.JSON_NAME
    try:
        reason = json.loads(reason_file.read_text(encoding="utf-8"))
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
        kept = ledger.private_dir(settings.paths.state / "requeued" / folder.name)
        for reason_name in (reasonfiles.TEXT_NAME, reasonfiles.JSON_NAME):
            if (folder / reason_name).exists():
                shutil.copyfile(folder / reason_name, kept / reason_name)
                os.chmod(kept / reason_name, 0o600)
                (folder / reason_name).unlink()
        os.rename(folder, target)  # same file system as the drop root (see `xnatdrop doctor`)
        quarantined = book.quarantined_at(folder)
        if quarantined is not None:
            book.requeue(quarantined, target, label)
    log.info("%s: requeued from %s into %s", label, folder, drop.path)
    return target


def handle(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    try:
        target = requeue(settings, args.name, args.new_label)
    except BadLabel as error:
        print(f"requeue: {error}", file=sys.stderr)
        return Exit.USAGE
    except RequeueError as error:
        print(f"requeue: {error}", file=sys.stderr)
        return Exit.BLOCKED
    except OSError as error:
        print(f"requeue: {error.filename}: {error.strerror}", file=sys.stderr)
        return Exit.BLOCKED
    renamed = f" under the new label {target.name}" if args.new_label else ""
    print(
        f"{args.name}: back in the drop folder{renamed} as {target}; it is pushed once it settles"
    )
    return Exit.OK
