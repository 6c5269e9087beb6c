"""Where a drop's folder goes at the end, done/ or quarantine/, and the move there.

Both ends of a drop (`finish`, `quarantine`) choose a free target, write it to the ledger before
the rename (so a kill -9 between the two is finished on the next call), rename the folder in one
step on the same file system, and then remove xnatdrop's own files of the drop (`tidy`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path

from xnatdrop import ledger, names
from xnatdrop.errors import TransientError
from xnatdrop.pipeline import spool
from xnatdrop.pipeline.context import Context

log = logging.getLogger(__package__)


def aim(context: Context, drop: ledger.Drop, base: Path, day: str = "") -> ledger.Drop:
    """Record where the folder goes (`base`: done/ or quarantine/) before it is moved there.

    The target stored by an earlier attempt is kept while it lies under `base` as configured
    *now* and is still free; otherwise a new one is chosen: `base/<day>/<LABEL>` for done/,
    `base/<LABEL>__<time>` for quarantine/. So an operator who fixes a wrong done or quarantine
    path (another file system, no permission) sees drops under way use the new path at their
    next attempt, instead of retrying the old one forever. Only called while the folder has not
    moved yet (it is still in the work area or the drop root).
    """
    if drop.target:
        stored = Path(drop.target)
        if stored.is_relative_to(base) and not stored.exists():
            return drop
    if day:
        target = free_target(base / day, drop.label)
    else:
        target = free_target(base, drop.label, f"__{time.strftime('%Y%m%d-%H%M%S')}")
    if drop.target and Path(drop.target) != target:
        log.info("now goes to %s (was %s)", target, drop.target)
    return context.book.update(drop, target=target)


def free_target(folder: Path, name: str, suffix: str = "") -> Path:
    """`folder/<name><suffix>`, or with `__2`, `__3`, … if a folder of that name exists; each
    name shortened to fit NAME_MAX (`names.fit`), so a 255-byte label still finds a place."""
    target, number = folder / names.fit(name, suffix), 1
    while target.exists():
        number += 1
        target = folder / names.fit(name, f"{suffix}__{number}")
    return target


def move(source: Path, target: Path) -> None:
    """Rename `source` to `target`; another file system is a wait naming the fix, never a copy."""
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise TransientError(
                f"{target.parent} is on another file system than the drop root; xnatdrop moves "
                "drops only by rename: put done/ and quarantine/ on the drop share"
            ) from None
        raise


def tidy(context: Context, drop: ledger.Drop) -> None:
    """Remove xnatdrop's own files of a finished drop: its spool and its empty work folder."""
    spool.clear(context.spool(drop))
    if drop.work:
        folder = Path(drop.work).parent  # <drop root>/<work folder>/<drop id>
        with contextlib.suppress(OSError):  # not empty or already gone: leave it
            for zipped in folder.glob("*.zip"):  # written by versions that zipped to disk
                zipped.unlink()
            folder.rmdir()
