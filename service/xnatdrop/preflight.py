"""The folder checks `xnatdrop doctor` prints and `xnatdrop run` starts with.

One set of checks, two readers: doctor prints each as PASS/FAIL; the daemon refuses to start
(exit 2, the same lines) when one that it cannot work around fails, instead of starting and then
failing every drop at its last step. What the daemon *can* work around does not stop it: a drop
root that is missing or unusable is paused with an alert and picked up when it is back (an
unmounted share must not stop the other roots), and a done/ or quarantine/ folder that does not
exist while a drop root is missing too is most likely on that same unmounted share.

What stops `run`: the state folder not writable; done/ or quarantine/ not writable, a file where
a folder should be, or on another file system than a drop root (drops move by rename only, never
by copy).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from xnatdrop import config


class Check(NamedTuple):
    passed: bool
    line: str
    stops_run: bool  # when failed: `xnatdrop run` refuses to start


def nearest_existing(path: Path) -> Path:
    """The path itself or its nearest existing parent (what a mkdir would land on)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def checks(settings: config.Config) -> Iterator[Check]:
    """Every folder check, in the order a new installation fails them."""
    share_missing = any(not d.path.is_dir() for d in settings.drop)
    for drop in settings.drop:
        root = drop.path
        if not root.is_dir():
            line = f"drop root {root}: missing (mount the share, or fix [[drop]] path)"
            yield Check(False, line, False)
            continue
        usable = os.access(root, os.R_OK | os.W_OK | os.X_OK)
        yield Check(
            usable,
            f"drop root {root}: readable and writable (project {drop.project})"
            if usable
            else f"drop root {root}: the service user needs read, write and execute "
            "permission to list and move sessions",
            False,
        )
    named = {
        "quarantine": settings.paths.quarantine,
        "done": settings.paths.done,
        "state": settings.paths.state,
    }
    for name, path in named.items():
        base = nearest_existing(path)
        # A missing done/quarantine beside a missing drop root: the share is not mounted yet.
        deferred = name != "state" and base != path and share_missing
        if not base.is_dir():
            # os.access says "writable" for a file; a folder can never be made there.
            line = f"paths.{name} {path}: {base} is a file, not a folder; point it at a folder"
            yield Check(False, line, True)
            continue
        usable = os.access(base, os.W_OK | os.X_OK)
        where = "" if base == path else f" (created on first use under {base})"
        yield Check(
            usable,
            f"paths.{name} {path}: writable{where}"
            if usable
            else f"paths.{name} {path}: not writable by this user ({base})",
            not deferred,
        )
    for drop in settings.drop:
        if not drop.path.is_dir():
            continue
        device = drop.path.stat().st_dev
        for name in ("quarantine", "done"):
            path = named[name]
            base = nearest_existing(path)
            if not base.is_dir():
                continue  # said above
            same = base.stat().st_dev == device
            deferred = base != path and share_missing
            yield Check(
                same,
                f"paths.{name} is on the same file system as {drop.path}"
                if same
                else f"paths.{name} {path} is on another file system than {drop.path}: drops "
                f"move by rename, so put it on the share (e.g. {drop.path.parent}/_{name})",
                not deferred,
            )


def folder_checks(settings: config.Config) -> Iterator[tuple[bool, str]]:
    """(passed, line) for `xnatdrop doctor`."""
    for check in checks(settings):
        yield check.passed, check.line


def run_blockers(settings: config.Config) -> list[str]:
    """The failed checks that stop `xnatdrop run` at start, worded as doctor words them."""
    return [c.line for c in checks(settings) if not c.passed and c.stops_run]
