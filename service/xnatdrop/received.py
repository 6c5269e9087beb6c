"""Finding the prearchive session XNAT's DICOM receiver built from what we sent (§9, §4.4).

A C-STORE answers before XNAT has a session to show for it: the receiver files each instance
into the prearchive (`GradualDicomImporter`, one row per project, StudyInstanceUID and session
label, §3.4 step 4) and leaves the row RECEIVING until the rebuilder finds it idle for
`sessionXmlRebuilderInterval` (5 minutes by default) and builds it (READY), or auto-archives it
in a project whose prearchive code is 4 or 5. Where XNAT filed it is decided by the receiver's
routing (AE title, then the header's comment fields, StudyDescription, AccessionNumber), so the
row is looked for by StudyInstanceUID, in the expected project first, then wherever the account
can see (a data admin also sees Unassigned).

`find_sessions` is the one look; `wait_for_session` polls it with a deadline; `build` asks XNAT
to build a RECEIVING row now (`action=build`) rather than wait for the idle time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from xnatdrop.errors import TransientError
from xnatdrop.xnat import PrearchiveEntry, XnatClient

#: Statuses in which XNAT has filed the data and is done with it for now (§4.2).
SETTLED = frozenset({"RECEIVING", "READY", "ERROR", "CONFLICT"})


@dataclass(frozen=True)
class Found:
    """The prearchive rows of one study; `elsewhere` when none was in the expected project."""

    entries: list[PrearchiveEntry]
    elsewhere: bool = False


def find_sessions(
    client: XnatClient, project: str, study_uid: str, label: str | None = None
) -> Found:
    """The prearchive rows holding StudyInstanceUID `study_uid` (and session `label`, if given),
    oldest first: in `project`, else in any project the account may see.

    More than one row for a study means XNAT split it (data that arrived while an earlier row
    was archiving, or a different label; reference §9, pitfall 9).
    """

    def matches(entry: PrearchiveEntry) -> bool:
        return entry.tag == study_uid and (label is None or entry.name == label)

    own = sorted(filter(matches, client.prearchive_entries(project)), key=_key)
    if own:
        return Found(own)
    others = sorted(filter(matches, client.prearchive_all()), key=_key)
    return Found(others, elsewhere=bool(others))


def wait_for_session(
    client: XnatClient,
    project: str,
    study_uid: str,
    *,
    label: str | None = None,
    timeout: float = 60.0,
    poll: float = 2.0,
    statuses: frozenset[str] = SETTLED,
    stopping: threading.Event | None = None,
) -> Found:
    """Poll `find_sessions` until a row is in one of `statuses` (default: filed), at most
    `timeout` seconds; raise TransientError when none is by then."""
    stopping = stopping or threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        found = find_sessions(client, project, study_uid, label)
        if any(e.status in statuses for e in found.entries):
            return found
        left = deadline - time.monotonic()
        if left <= 0 or stopping.wait(min(poll, left)):
            seen = ", ".join(f"{shown(e)} {e.status}" for e in found.entries) or "no session"
            raise TransientError(
                f"XNAT shows {seen} for the study sent to project {project} after "
                f"{timeout:g} s (wanted {', '.join(sorted(statuses))})"
            )


def build(client: XnatClient, entry: PrearchiveEntry) -> PrearchiveEntry:
    """Build a RECEIVING row now (`POST <uri>?action=build`, §4.5) and return it re-read."""
    client.build(entry.uri)
    again = client.prearchive_entry(entry.uri)
    if again is None:
        raise TransientError(f"the prearchive session {shown(entry)} went away while building")
    return again


def shown(entry: PrearchiveEntry) -> str:
    """A received session as messages name it: project and upload timestamp, never the folder
    name, which XNAT's receiver derives from the header's PatientID (no patient data in logs)."""
    return f"prearchive {entry.project}/{entry.timestamp}"


def _key(entry: PrearchiveEntry) -> tuple[str, str]:
    return entry.timestamp, entry.folder
