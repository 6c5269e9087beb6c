"""Step `freeze`: take the folder out of the drop root into the work area, by one rename; and
its way back, `thaw`, for a folder that turns out to be still being copied.

Freeze renames `<drop root>/<LABEL>` into `<drop root>/<push.work_folder>/<drop id>/<LABEL>`
(same file system, checked). A repeat after a kill -9 finds it there; a new copy that the
technologist made in the drop root meanwhile is left there, to be pushed after this drop as a
drop of its own. Before each later step the runner makes sure the folder is where the ledger
says (`locate`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from xnatdrop import ledger
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline import crash, quarantine
from xnatdrop.pipeline.context import Context, Done
from xnatdrop.pipeline.outcome import Kind, Outcome

log = logging.getLogger(__package__)


def freeze(context: Context, drop: ledger.Drop) -> Done:
    """Rename the folder into the working area: one atomic rename on the same file system."""
    source, work = Path(drop.source), work_path(context, drop)
    context.book.update(drop, work=work)
    if work.is_dir():
        # Renamed before a crash. A folder now in the drop root under the same name is a new
        # copy (the technologist saw the folder vanish and copied it again): it stays there and
        # becomes a drop of its own once this one is finished (see `locate`).
        if source.is_dir():
            log.warning(
                "a new copy appeared in the drop root while this drop was being frozen; "
                "it is left there and pushed after this one as a drop of its own"
            )
        return Done("already frozen", {"work": work})
    if not source.is_dir():
        raise PermanentError(
            "FOLDER_MISSING", f"the folder {source} disappeared before xnatdrop could take it"
        )
    work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if work.parent.stat().st_dev != source.stat().st_dev:
        raise TransientError(
            f"working area {work.parent} is on another file system than {source}; "
            "xnatdrop only moves drops by rename"
        )
    os.rename(source, work)
    return Done(f"moved into {work.parent}", {"work": work})


def work_path(context: Context, drop: ledger.Drop) -> Path:
    return context.drop_settings.path / context.config.push.work_folder / str(drop.id) / drop.label


def locate(context: Context, drop: ledger.Drop) -> ledger.Drop:
    """Make sure the frozen folder is where the ledger says before a step needs it.

    A folder moved back into the drop root by hand while its drop was under way is taken back
    into the work area (the later steps compare it with what was checked and sent). A folder
    that is in neither place waits with one clear sentence: an unmounted share looks exactly
    like that, and forgetting the drop would leave the folder hidden once the share is back.
    """
    if drop.state in ("new", "done", "quarantined", "requeued") or not drop.work:
        return drop
    work, source = Path(drop.work), Path(drop.source)
    if work.is_dir():
        return drop
    target = Path(drop.target) if drop.target else None
    if drop.state == "attached" and target is not None and target.is_dir():
        return drop  # finish renamed it into done/ before a crash: finish completes
    if source.is_dir():
        log.warning(
            "the folder was moved back into the drop root while drop %d was %s; taking it "
            "back into the work area to carry on",
            drop.id,
            drop.state,
        )
        work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(source, work)
        return drop
    raise TransientError(
        f"the folder of {drop.label} is neither in the work area ({work}) nor in the drop root "
        f"({source}); if the share is unmounted it waits for it, else put the folder back at "
        f"{work}"
    )


def thaw(context: Context, drop: ledger.Drop, reason: str) -> Outcome:
    """Move a frozen folder back to the drop root to settle again; quarantine if it can't.

    Written to the ledger before the rename (`running = "thaw"`) and after it (state `new`):
    a kill -9 between the two once left the ledger pointing at a work folder that no longer
    existed, and every later attempt failed with "is not a directory". `finish_thaw` finishes
    a thaw that was cut short.
    """
    drop = context.book.begin(drop, "thaw")
    crash.point("thaw", "before")
    return finish_thaw(context, drop, reason)


def was_thawed(drop: ledger.Drop) -> bool:
    """A frozen drop whose folder is back in the drop root and gone from the work area: a thaw
    that a kill -9 cut short before the ledger recorded its start (an older xnatdrop)."""
    return (
        drop.state == "frozen"
        and bool(drop.work)
        and not Path(drop.work).exists()
        and Path(drop.source).is_dir()
    )


def finish_thaw(context: Context, drop: ledger.Drop, reason: str) -> Outcome:
    """The move back and its record; the two halves of a copy that went on elsewhere are
    quarantined (COPY_INTERRUPTED)."""
    work, source = Path(drop.work), Path(drop.source)
    if work.is_dir() and source.exists():
        # The copy went on into a new folder of the same name: the two halves cannot be joined
        # safely by a program.
        return quarantine.quarantine(
            context,
            drop,
            PermanentError(
                "COPY_INTERRUPTED",
                f"the folder was still being copied ({reason}) and the rest of the copy went "
                f"into a new folder {source.name}",
            ),
        )
    if work.is_dir():
        os.rename(work, source)
        crash.point("thaw", "after")
    drop = context.book.thaw(drop, reason)
    with contextlib.suppress(OSError):  # the empty <work folder>/<drop id>
        work.parent.rmdir()
    log.info("%s; back in the drop root to settle again", reason)
    return Outcome(Kind.INCOMPLETE, drop.label, drop.id, reason, code="INCOMPLETE")
