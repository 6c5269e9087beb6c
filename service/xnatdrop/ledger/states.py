"""The states of a drop and the transition table: the one place that says where a drop can go.

States move only along `NEXT`, a transition table in the manner of pynetdicom's `fsm.py`:
`(state, step) -> next state`. Any other pair raises `InvalidTransition`. The pipeline's runner
keeps its table of step functions beside this one; `STEP_FROM` says which step runs next from
each unfinished state.
"""

from __future__ import annotations

STATES: dict[str, str] = {
    "new": "registered; the folder is still in the drop root",
    "frozen": "moved into the working area; later changes in the drop root do not affect it",
    "checked": "the rules passed (no block finding)",
    "packed": "upload zip planned (names, sizes, length)",
    "imported": "sent to the XNAT prearchive",
    "verified": "the prearchive session is READY and its file counts match the manifest",
    "archived": "archived in XNAT and read back: instance UIDs, pixel data of one file per scan, "
    "sizes and MD5s where XNAT keeps the bytes",
    "attached": "sidecar folders uploaded as session resources and verified",
    "done": "moved to done/ with a receipt (final)",
    "quarantined": "moved to quarantine/ with a reason file (final)",
    "requeued": "was quarantined, then sent back into the drop root by `xnatdrop requeue` "
    "(final: it comes back as a new drop)",
}
FINAL = frozenset({"done", "quarantined", "requeued"})
UNFINISHED = "state NOT IN ('done', 'quarantined', 'requeued')"  # SQL for "not in FINAL"

STEPS = ("freeze", "check", "pack", "import", "verify", "archive", "attach", "finish")

NEXT: dict[tuple[str, str], str] = {
    ("new", "freeze"): "frozen",
    ("frozen", "check"): "checked",
    ("checked", "pack"): "packed",
    ("packed", "import"): "imported",
    ("imported", "verify"): "verified",
    ("verified", "archive"): "archived",
    ("archived", "attach"): "attached",
    ("attached", "finish"): "done",
    # The prearchive copy vanished or is incomplete and nothing is archived: send it again.
    ("imported", "resend"): "packed",
    ("verified", "resend"): "packed",
    # Late sidecars (`pipeline.late`): the folder holds only sidecar folders for a session XNAT
    # has archived already; nothing is uploaded as DICOM, so the upload steps are skipped.
    ("checked", "sidecars"): "archived",
    # The check found files still being copied: the folder goes back to the drop root to settle.
    ("frozen", "thaw"): "new",
    # Any permanent failure before the end.
    **{(state, "quarantine"): "quarantined" for state in STATES if state not in FINAL},
    # A person fixed the folder and sent it back (`xnatdrop requeue`): it is no longer in
    # quarantine/, and it will be a new drop.
    ("quarantined", "requeue"): "requeued",
}

# The step to run next from each unfinished state.
STEP_FROM = {state: step for (state, step) in NEXT if step in STEPS}


class InvalidTransition(Exception):
    """A (state, step) pair outside `NEXT`: a bug in the caller, never a drop's fault."""
