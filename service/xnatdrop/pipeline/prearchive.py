"""This drop's copy in XNAT's prearchive: finding it, waiting for it, deleting it.

Statuses follow the reference §4.2; an underscore prefix (`_BUILDING`) means XNAT holds a lock
on the session, so it is busy with it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from xnatdrop import ledger, planstream, xnat
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline.context import Context

log = logging.getLogger(__package__)

READY = "READY"
RECEIVING = frozenset({"RECEIVING", "RECEIVING_INTERRUPT", "_RECEIVING", "_RECEIVING_INTERRUPT"})
BUILDING_NOW = frozenset({"BUILDING", "QUEUED_BUILDING", "_BUILDING"})
BUILDING = RECEIVING | BUILDING_NOW  # not READY yet: wait for it
FAILED = frozenset({"ERROR", "_ERROR"})
CONFLICT = frozenset({"CONFLICT", "_CONFLICT"})


def ours(context: Context, drop: ledger.Drop, planned: planstream.Sendable) -> list[Any]:
    """Prearchive sessions of this project that hold (parts of) this drop."""
    studies = planned.study_uids()
    return [
        entry
        for entry in context.client().prearchive_entries(context.project)
        if entry.name == drop.label and (not studies or not entry.tag or entry.tag in studies)
    ]


def quiet(context: Context, entry: Any) -> bool:
    """True if a RECEIVING copy stays unchanged for `push.receiving_quiet_seconds`: a leftover
    of a cut upload. XNAT touches `lastmod` while it stores files (at most every 15 s,
    GradualDicomImporter.updateSessionLastMod), so a copy it still writes to changes."""
    context.wait(context.config.push.receiving_quiet_seconds)
    again = context.client().prearchive_entry(entry.uri)
    return again is None or (again.status, again.lastmod) == (entry.status, entry.lastmod)


def delete(context: Context, uri: str) -> None:
    """Delete a prearchive copy of ours. A refusal is retried later, never a quarantine: the
    data is fine, XNAT is busy with the session or permissions need fixing."""
    try:
        context.client().delete_prearchive(uri)
    except PermanentError as error:
        raise TransientError(f"XNAT refused to delete the prearchive copy {uri}: {error}") from None


def wait_ready(context: Context, drop: ledger.Drop) -> Any | None:
    """Wait until the prearchive session is READY and return it; None if it is gone.

    CONFLICT and ERROR end the wait. A session still RECEIVING or BUILDING is waited for up to
    `push.ready_timeout_seconds`; then XNAT is asked to build it (a 409 "session document
    locked" means it is busy: later).
    """
    client = context.client()
    deadline = time.monotonic() + context.config.push.ready_timeout_seconds
    rebuilt = False
    while True:
        entry = client.prearchive_entry(drop.prearchive_uri)
        if entry is None or entry.status == READY:
            return entry
        if entry.status in CONFLICT:
            raise PermanentError(
                "XNAT_CONFLICT",
                f"XNAT marked the prearchive session of {drop.label} as CONFLICT",
            )
        if entry.status in FAILED:
            if rebuilt:
                raise xnat.XnatAnswer(
                    "XNAT_BUILD_ERROR",
                    f"XNAT could not build the session {drop.label} from the upload (ERROR)",
                    answer="prearchive ERROR after a rebuild",
                )
            client.build(entry.uri)
            rebuilt = True
            continue
        if time.monotonic() > deadline:
            if not rebuilt:
                client.build(entry.uri)
            raise TransientError(f"prearchive session still {entry.status}; asked XNAT to build")
        context.wait(context.config.push.poll_seconds)
