"""Step `import` for a drop with `transport = "dicom"`: C-STORE to XNAT's receiver, then find
the prearchive session XNAT built from it.

**Routing.** XNAT's receiver files each instance by its identifier (reference §6.1, §9;
`ClassicDicomObjectIdentifier`): project from a `Project:` key in PatientComments, StudyComments
or AdditionalPatientHistory, else the whole StudyDescription or AccessionNumber if that is a
project ID, else Unassigned; subject from `Subject:` or PatientName; session from `Session:` or
PatientID. xnatdrop does **not** write those comment keys: they live in the dataset, so setting
them would send other bytes than the technologist dropped (the sender sends each instance as
stored, `dimse.sender`), and it would change clinical header fields XNAT then archives. So the
session is found by what XNAT cannot change, its StudyInstanceUID (the prearchive row's `tag`,
§4.1), in the drop's project and else wherever the account can see (`received.find_sessions`):

- in the drop's project (a receiver bound to it: a `FixedDicomProjectIdentifier` or routing
  expression, §9; or the header names the project): used as it is;
- in **Unassigned** (a stock receiver and scanner data without a `Project:` key): moved into
  the project with `action=move` (§4.5; `PrearcSessionResource.postActionMove`, synchronous),
  which is what an admin does in the prearchive page. Only a data admin sees Unassigned (§4.1),
  so for any other account nothing is found: the drop is quarantined with one sentence saying
  where the data went and how to bind the receiver (XNAT_DICOM_UNFILED), not retried forever;
- in **another project** (its StudyDescription or AccessionNumber named that project, or a site
  routing rule sent it there): not taken out of someone else's project; quarantined
  (XNAT_ROUTED_ELSEWHERE) saying where it is.

Labels are not fixed in the prearchive (there is no endpoint for it, §4.7): the archive step
sets project, subject and session at archive time as for REST (`/services/archive` with
`subject` and `session`, §5.1, `PrearcSessionArchiver.fixSessionLabel`). The site script has
run by then, at receive time, with the labels the identifier gave (`GradualDicomImporter.call`:
subject from `getSubjectLabel(dicom)` without a SUBJECT_ID parameter, then
`anonymize(file, project, subject, session name, …)`), so the archived headers carry those, not
the folder's label (the README says so).

**Building.** XNAT answers each C-STORE after it filed the instance (`CStoreService.doCStore`
→ `GradualDicomImporter.call`), and leaves the row RECEIVING until its rebuilder finds it idle
for 5 minutes (§4.4). Once every instance is answered nothing more is coming, so the session is
moved if needed and built at once (`action=build`): waiting out the idle time would only let an
auto-archive project (prearchive code 4/5) archive it under the PatientID-derived labels first.
`action=build` builds and resets the status without archiving (`PrearcSessionResource
.postActionBuild`: `PrearcDatabase.buildSession`, `PrearcUtils.resetStatus`), and the rebuilder
only takes RECEIVING sessions (`SessionXMLRebuilder`, §4.4), so a READY session waits for the
archive step. The verify step then waits for READY as for REST.

**Resuming.** What the receiver answered for each instance is in the drop's journal (`dimse`),
so a killed push sends only the rest (the instance in flight again: XNAT overwrites a re-sent
instance, `GradualDicomImporter.getSafeFile`). A journal that claims instances XNAT no longer
shows (the verify step deleted an incomplete copy and asked for a resend) is discarded and the
series are sent again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from xnatdrop import breaker, dimse, ledger, pack, received, xnat
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline import crash, late, prearchive, readback, spool
from xnatdrop.pipeline.context import Context, Done, Stopped

log = logging.getLogger(__package__)

UNASSIGNED = "Unassigned"  # the prearchive's name for "no project" (reference §4.1)
# How long to look for the row after the last C-STORE. XNAT files an instance before it
# answers, so the row exists at once for an account that can see it; this only covers a slow
# listing, never XNAT's idle time.
FILED_WAIT_SECONDS = 60.0

_BIND_RECEIVER = (
    "bind XNAT's DICOM receiver to project {project} (a receiver for this AE title with a "
    "project routing expression or a fixed project, in XNAT's DICOM SCP receivers page), or let "
    "xnatdrop's account {user} see Unassigned (a data admin; xnatdrop then moves the session "
    'itself), or use transport = "rest" for this drop folder; then ask the XNAT admin to delete '
    "the session from the prearchive and move this folder back into the drop folder"
)


def store_step(context: Context, drop: ledger.Drop) -> Done:
    """Send every series of the drop by C-STORE (only what the journal lacks), find the session
    XNAT built from it, move it into the project if it landed in Unassigned, build it, and
    record its prearchive URI for the verify step."""
    client = context.client()
    folder, work = context.spool(drop), Path(drop.work)
    found = readback.rewriting(context, drop, fresh=True)
    session = client.find_session(context.project, drop.label)
    if session is None:
        spool.update_xnat(folder, append=None)
    elif not late.join(context, drop, session, spool.manifest_for(folder, work, drop.id), found):
        return Done("already archived with every instance; nothing sent")
    manifest = late.sent(context, drop)
    study = _one_study(manifest, drop.label)
    journal = folder / spool.JOURNAL
    sent = _send(context, drop, manifest, journal)
    rows = received.find_sessions(client, context.project, study)
    if not rows.entries and sent.already:
        # The journal remembers instances XNAT no longer shows: a copy the verify step deleted
        # as incomplete, or one someone removed. Send all of it again.
        log.info("XNAT no longer shows the instances sent earlier; sending every series again")
        journal.unlink(missing_ok=True)
        sent = _send(context, drop, manifest, journal)
    entry, moved = _filed(context, drop, study)
    # A run killed between the move and this point left the intent in the spool (`_filed`).
    moved = moved or bool((spool.xnat_record(folder).sent or {}).get("moved_from_unassigned"))
    if moved or entry.status in prearchive.RECEIVING:
        # After a move too: the session document is built in the project it now belongs to.
        entry = received.build(client, entry)
    where = f"project {context.project}'s prearchive" + (" (moved from Unassigned)" * moved)
    spool.update_xnat(
        folder,
        sent={
            "transport": "dicom",
            "receiver": sent.target,
            "instances": sent.total,
            "associations": sent.associations,
            "moved_from_unassigned": moved,
        },
    )
    return Done(
        f"{sent.stored} instance(s) stored by C-STORE on {sent.target}"
        f"{f' ({sent.already} stored before)' if sent.already else ''} in {sent.seconds:.1f} s "
        f"({sent.rate:.1f}/s, {sent.associations} association(s)); XNAT filed them in {where}, "
        f"built: {entry.status}",
        {"prearchive_uri": entry.uri},
    )


def _one_study(manifest: pack.Manifest, label: str) -> str:
    """The drop's StudyInstanceUID, by which its prearchive row is found."""
    studies = manifest.study_uids()
    if len(studies) != 1:
        raise PermanentError(
            "MULTIPLE_STUDIES",
            f"{label} holds {len(studies)} studies (StudyInstanceUIDs); XNAT's receiver files "
            "each as its own session",
            "put each study in its own subject folder",
        )
    return next(iter(studies))


class _Sent:
    """What the C-STOREs of all series did, summed over `dimse.SendReport`s."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.total = self.already = self.stored = self.associations = 0
        self.seconds = 0.0

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


def _send(context: Context, drop: ledger.Drop, manifest: pack.Manifest, journal: Path) -> _Sent:
    """C-STORE each series over its own association (`dimse.send_series`); raise Stopped when
    a stop was asked for in the middle (the journal keeps what was stored)."""
    settings = context.config.dicom
    work = Path(drop.work)
    sent = _Sent(dimse.Target.of(settings).name)
    total = len(manifest.files)
    before = 0

    def progress(done: int, _of: int) -> None:
        count = before + done
        crash.point("import", "instances", sent=count)
        if context.progress is not None:
            context.progress("import", count, total)

    started = time.monotonic()
    for uid, entries in manifest.series().items():
        series = Path(entries[0].path).parent.as_posix() or uid
        try:
            report = dimse.send_series(
                [work / e.path for e in entries],
                settings,
                journal,
                context.stopping,
                progress,
                label=series,
            )
        except PermanentError as error:
            raise _suspect(error) from None
        sent.total += report.total
        sent.already += report.already
        sent.stored += report.stored
        sent.associations += report.associations
        before += report.total
        if report.stopped:
            raise Stopped
    sent.seconds = time.monotonic() - started
    if sent.stored:
        breaker.success(context.book, drop.id)  # XNAT filed what we sent: it works
    return sent


def _suspect(error: PermanentError) -> PermanentError:
    """A C-STORE failure XNAT may answer for its own reasons (0xC000 wraps a full disk or a
    database error as well as a bad file: `dimse.statuses`) goes through the circuit breaker
    like the REST importer's 400 (`breaker`): an XnatAnswer whose `answer` is the status alone,
    never the Error Comment, which may name a file."""
    status = getattr(error, "status", None)
    if not getattr(error, "suspect", False) or status is None:
        return error
    return xnat.XnatAnswer(
        error.code, str(error), error.fix, answer=f"C-STORE status 0x{status:04X}", suspect=True
    )


def _filed(context: Context, drop: ledger.Drop, study: str) -> tuple[xnat.PrearchiveEntry, bool]:
    """The one prearchive row of this study, in the project (moved there from Unassigned if
    needed); and whether it was moved."""
    client = context.client()
    try:
        rows = received.wait_for_session(
            client,
            context.project,
            study,
            timeout=min(context.config.push.ready_timeout_seconds, FILED_WAIT_SECONDS),
            poll=context.config.push.poll_seconds,
            stopping=context.stopping,
        )
    except TransientError:
        if context.stopping.is_set():
            raise Stopped from None
        raise PermanentError(
            "XNAT_DICOM_UNFILED",
            f"XNAT's DICOM receiver stored every instance of {drop.label}, but account "
            f"{context.config.xnat.username} sees no prearchive session of its study: a stock "
            "receiver files scanner data without a 'Project:' comment in Unassigned, which "
            "only data admins see",
            _BIND_RECEIVER.format(project=context.project, user=context.config.xnat.username),
        ) from None
    entries = rows.entries
    projects = sorted({e.project for e in entries})
    if rows.elsewhere and projects != [UNASSIGNED]:
        raise xnat.XnatAnswer(
            "XNAT_ROUTED_ELSEWHERE",
            f"XNAT's DICOM receiver filed {drop.label} in project {', '.join(projects)}, not "
            f"in {context.project} (its StudyDescription or AccessionNumber names that project, "
            "or a routing rule of the site sent it there); xnatdrop does not take sessions out "
            "of another project",
            _BIND_RECEIVER.format(project=context.project, user=context.config.xnat.username),
            answer="C-STORE routed to another project",
            suspect=False,
        )
    if len(entries) > 1:
        raise PermanentError(
            "XNAT_DICOM_SPLIT",
            f"XNAT filed the study of {drop.label} as {len(entries)} prearchive sessions "
            f"({', '.join(sorted(e.status for e in entries))}): it split the study, e.g. "
            "because data arrived while an earlier copy was being archived",
        )
    [entry] = entries
    settled = prearchive.RECEIVING | prearchive.FAILED | prearchive.CONFLICT
    if entry.status not in settled | {prearchive.READY}:
        raise TransientError(
            f"XNAT is busy with the prearchive session of {drop.label} ({entry.status})"
        )
    if not rows.elsewhere:
        return entry, False
    # Noted first, for the receipt of a run killed right after the move.
    spool.update_xnat(context.spool(drop), sent={"moved_from_unassigned": True})
    uri = client.move_prearchive(entry.uri, context.project)
    moved = client.prearchive_entry(uri)
    if moved is None:
        raise TransientError(f"the prearchive session of {drop.label} went away while moving")
    log.info("moved the session XNAT filed in Unassigned into project %s", context.project)
    return moved, True
