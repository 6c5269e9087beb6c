"""Every code a person can see, in one table: what xnatdrop does, what it means, how to fix it.

Codes appear in `xnatdrop check`, QUARANTINE.txt/.json, `xnatdrop status`, the ledger, the logs
and the metrics; they are stable identifiers, so never rename one. `xnatdrop check --codes`
prints this table (`--json` too). Like pynetdicom's `status.py`, each code maps to a category
that says what happens next (the `Action`) and to a text; a test parses the package for every
code it raises and checks it is here.

Two kinds of code share the table:

- **finding codes** of the upload rules (`rules`), whose action is a default that `[rules.actions]`
  may change per drop root (`block`, `exclude`, `warn`, `ignore`; ids in brackets refer to
  `shared/reference/dicom-rules.md`);
- **quarantine and stop codes** of a push (`pipeline`, `xnat`, `dimse`, the circuit breaker),
  whose action is fixed: `quarantine` (moved to quarantine/ with a reason file), `retry` (tried
  again with backoff; never quarantined), `hold` (every push waits until a person fixes
  something; an ALERT says what), `settle` (moved back to the drop root to settle again).

`errors.PermanentError(code, message)` takes its fix from here; a raise passes its own fix only
where the fix depends on the case (it names a user, a file, a size or a setting's value).
"""

from __future__ import annotations

import dataclasses
import enum


class Action(enum.StrEnum):
    """What xnatdrop does when a code comes up."""

    BLOCK = "block"  # the folder is not uploaded
    EXCLUDE = "exclude"  # those files are left out and reported
    WARN = "warn"  # uploaded and reported
    IGNORE = "ignore"  # uploaded, not reported
    QUARANTINE = "quarantine"  # moved to quarantine/ with QUARANTINE.txt and .json
    RETRY = "retry"  # tried again with backoff, never quarantined
    HOLD = "hold"  # pushes wait until a person fixes the cause (an ALERT says so)
    SETTLE = "settle"  # moved back to the drop root to settle again


# The actions `[rules.actions]` may give a finding code.
RULE_ACTIONS = (Action.BLOCK, Action.EXCLUDE, Action.WARN, Action.IGNORE)


@dataclasses.dataclass(frozen=True)
class Code:
    """One row of the table: the (default) action, what the code means and how to fix it."""

    action: Action
    summary: str
    fix: str

    @property
    def is_rule(self) -> bool:
        """A finding code of the upload rules, whose action the configuration may change."""
        return self.action in RULE_ACTIONS


B, E, W, N = Action.BLOCK, Action.EXCLUDE, Action.WARN, Action.IGNORE  # N: no report
Q, R, H, S = Action.QUARANTINE, Action.RETRY, Action.HOLD, Action.SETTLE

_ASK_ADMIN_PREARCHIVE = "ask the XNAT administrator to read the prearchive log of this session"

CODES: dict[str, Code] = {
    # -- findings of the upload rules (`rules`); defaults follow the DICOM rules reference ----
    "EMPTY_FILE": Code(B, "a file has 0 bytes [A1]", "copy the session again; the copy stopped"),
    "CORRUPT_DICOM": Code(
        B,
        "a DICOM file's header is unusable or lacks its UIDs [A5]",
        "export the series again from the scanner; never edit DICOM files by hand",
    ),
    "TRUNCATED_DICOM": Code(
        B,
        "a DICOM file ends before its pixel data does [A6]",
        "the copy was interrupted: copy the session again",
    ),
    "CONVERTED_FILE": Code(
        B,
        "a converted file (NIfTI, Analyze, MGH/MGZ, MINC, NRRD, PAR/REC, AFNI, BIDS sidecar …) [B]",
        "remove converted files and drop raw DICOM only; conversion happens after archiving",
    ),
    "ARCHIVE_FILE": Code(
        B,
        "a compressed archive (zip, gzip, tar, 7z, rar) [A7]",
        "unpack it and drop the DICOM files themselves, one folder per series",
    ),
    "NOT_DICOM": Code(
        E,
        "a file that is not DICOM, outside the sidecar folders [A8, D5]",
        "move it into a sidecar folder (e.g. logs/) or delete it; it is not uploaded",
    ),
    "DICOM_NO_PREAMBLE": Code(
        W,
        "DICOM without the 128-byte preamble and 'DICM' marker: a tool rewrote it [A3]",
        "export from the scanner instead of from a tool that rewrites files",
    ),
    "DERIVED_SERIES": Code(
        E,
        "a derived or post-processed series (ADC, FA, MPR, MIP, MoCo, perfusion map, "
        "colour map, secondary capture …) [C1–C3, C6]",
        "drop only raw acquisitions; derived data is recomputed from them",
    ),
    "NON_IMAGE_OBJECT": Code(
        E,
        "a non-image DICOM object (raw data, presentation state, report, ExamCard …) [C1, D6]",
        "leave it out of the drop; it is not uploaded",
    ),
    "PROTOCOL_REPORT": Code(
        N,
        "a Siemens PhoenixZIPReport alone in its own folder, uploaded as its own scan [C9]",
        'nothing to do; set PROTOCOL_REPORT = "exclude" to leave protocol reports out',
    ),
    "LOSSY_COMPRESSED": Code(
        E,
        "lossy-compressed pixel data, not the original pixels [C8]",
        "export the series uncompressed or losslessly compressed",
    ),
    "WRONG_MODALITY": Code(
        B,
        "an image object that is not MR (CT, PET, ultrasound …) [C1]",
        "drop MR sessions only; send other modalities to their own project",
    ),
    "DERIVED_FRAMES": Code(
        W,
        "scanner-derived frames inside an original series (e.g. isotropic DWI trace) [C5]",
        "nothing to do: the series is the acquisition; converters drop those volumes",
    ),
    "SUSPECT_DESCRIPTION": Code(
        W,
        "the series description looks derived but the header says original [C4]",
        "check that the series is raw; rename the protocol if it is",
    ),
    "LOCALIZER": Code(
        N,
        "a localizer/scout series [C7]",
        'nothing to do; set LOCALIZER = "exclude" to leave localizers out',
    ),
    "MIXED_SERIES_FOLDER": Code(
        B,
        "a folder holds more than one series [D1]",
        "put each series in its own folder (one SeriesInstanceUID per folder)",
    ),
    "SPLIT_SERIES": Code(
        B,
        "one series is split over several folders [D7]",
        "put all files of the series in one folder",
    ),
    "LOOSE_FILE": Code(
        B,
        "a file lies directly in the subject folder",
        "move DICOM files into a folder per series, notes into logs/, or delete them",
    ),
    "DUPLICATE_FILE": Code(
        W,
        "the same DICOM file is in the drop more than once (identical bytes); one copy is "
        "uploaded [D2]",
        "delete the extra copies",
    ),
    "DUPLICATE_UID": Code(
        B,
        "different files share one SOPInstanceUID [D2]",
        "export the session again: the files come from different exports or were edited",
    ),
    # Also XNAT's answer when it splits one upload into several sessions (`xnat.import_zip`).
    "MULTIPLE_STUDIES": Code(
        B,
        "more than one study (StudyInstanceUID) in one subject folder [D3]",
        "put each session in its own subject folder",
    ),
    "PATIENT_MISMATCH": Code(
        B,
        "PatientName or PatientID differ between files [D4]",
        "put each subject's session in its own folder, or correct the registration",
    ),
    "LABEL_PATTERN": Code(
        B,
        "the label does not follow the project's naming convention [D4]",
        "rename the folder (or fix the registration at the scanner) to match the pattern",
    ),
    "LABEL_MISMATCH": Code(
        B,
        "the folder name, PatientName/PatientID and the label disagree [D4]",
        "make the folder name and the registration at the scanner agree",
    ),
    "INCOMPLETE_MEDIA": Code(
        B,
        "a DICOMDIR references files that are missing [A4]",
        "copy the whole media export again",
    ),
    "DICOMDIR": Code(
        N,
        "a DICOMDIR media index: checked as a manifest, never uploaded [A4]",
        "nothing to do",
    ),
    "NO_DICOM": Code(
        B,
        "no DICOM series to upload",
        "drop the raw DICOM series, one folder per series",
    ),
    "UNREADABLE": Code(
        B,
        "a file or folder cannot be read, or is not a regular file",
        "fix the permissions so that the xnatdrop service can read it; remove special files",
    ),
    "SYMLINK": Code(
        B,
        "a symbolic link (never followed)",
        "replace the link with the real files",
    ),
    "BAD_NAME": Code(
        B,
        "a file or folder name that is not valid UTF-8 (copied with another character set); "
        "the bytes that are not are shown as \\xNN",
        "rename it using letters, digits, '_', '-' and '.' only (or copy the session again "
        "with a tool that keeps names as UTF-8), then resubmit",
    ),
    "INCOMPLETE_SERIES": Code(
        B,
        "a series holds fewer files than the scanner wrote: gaps in its InstanceNumbers, or "
        "fewer files than ImagesInAcquisition or GE's LocationsInAcquisition × "
        "NumberOfTemporalPositions say [D8]",
        "let the copy finish (or copy the series again); if the scan was stopped early on "
        'purpose, set INCOMPLETE_SERIES = "warn" for this drop root',
    ),
    # -- quarantine: retrying cannot help; the folder goes to quarantine/ with a reason file ----
    "RULES_BLOCKED": Code(
        Q,
        "findings of the upload rules stop the upload (QUARANTINE.txt lists each one)",
        "fix each problem listed below",
    ),
    "FOLDER_MISSING": Code(
        Q,
        "the folder disappeared before xnatdrop could take it",
        "copy the folder into the drop folder again",
    ),
    "COPY_INTERRUPTED": Code(
        Q,
        "the folder was still being copied and the rest of the copy went into a new folder "
        "of the same name",
        "copy the whole session again into the drop folder, under a new name or after "
        "removing both partial copies",
    ),
    "SUBJECT_FILE_INVALID": Code(
        Q,
        "the subject file (push.subject_file, subject.toml by default) is not valid",
        'write it as TOML with any of: sex = "F" (M, F, O, U), handedness = "right" '
        "(right, left, ambidextrous), yob = 1990 or dob = 1990-04-01",
    ),
    "LABEL_EXISTS": Code(
        Q,
        "XNAT already holds a session with this label and other data (another study, or other "
        "content for an instance of this folder)",
        "if this is a new session, rename the folder to a new label; if it replaces the "
        "existing one, ask the XNAT administrator to delete that session first",
    ),
    "ARCHIVE_MISMATCH": Code(
        Q,
        "the session is in XNAT but differs from this folder after archiving",
        "nothing is lost: this folder is complete. Ask the XNAT administrator to compare the "
        "session in XNAT with this folder and repair or delete it there; then copy this folder "
        "back into the drop folder: xnatdrop checks the session again and finishes",
    ),
    "XNAT_CONFLICT": Code(
        Q,
        "XNAT refused to archive the session as a conflict (its label may be in use)",
        "ask the XNAT administrator to look at the prearchive; the session label may "
        "already be in use",
    ),
    "XNAT_BUILD_ERROR": Code(
        Q,
        "XNAT could not build the session from the upload (prearchive ERROR after a rebuild)",
        _ASK_ADMIN_PREARCHIVE,
    ),
    "XNAT_ARCHIVE_FAILED": Code(
        Q,
        "XNAT could not archive the session and left its prearchive copy in ERROR",
        f"{_ASK_ADMIN_PREARCHIVE}; nothing was archived and this folder is complete",
    ),
    "XNAT_CHANGED_FILES": Code(
        Q,
        "XNAT holds every file but with other bytes, although no anonymisation script runs "
        "on this upload",
        "ask the XNAT administrator why XNAT rewrites files on import (for instance it may "
        "decompress some transfer syntaxes); nothing was archived",
    ),
    "XNAT_NOTHING_IMPORTED": Code(
        Q,
        "XNAT accepted the upload but kept none of its files",
        "check that the zip holds DICOM files",
    ),
    "XNAT_ROUTED_ELSEWHERE": Code(
        Q,
        "XNAT filed the upload under another project (Unassigned), or its DICOM receiver "
        "routed the study to another project",
        "make sure the project exists and the upload account may write to it; for transport "
        '"dicom", bind the receiver to the project',
    ),
    "XNAT_DICOM_UNFILED": Code(
        Q,
        "XNAT's DICOM receiver stored every instance, but the upload account sees no prearchive "
        "session of the study (a stock receiver files data without a 'Project:' comment in "
        "Unassigned, which only data admins see)",
        "bind XNAT's DICOM receiver to the drop's project (a routing expression or a fixed "
        "project for its AE title), or give the upload account data-admin rights so xnatdrop "
        'moves the session itself, or use transport = "rest"; ask the XNAT admin to delete the '
        "session from Unassigned, then move this folder back into the drop folder",
    ),
    "XNAT_DICOM_SPLIT": Code(
        Q,
        "XNAT's DICOM receiver filed the study as more than one prearchive session",
        "ask the XNAT administrator to delete these prearchive sessions (or merge them), then "
        "move this folder back into the drop folder",
    ),
    "XNAT_FORBIDDEN": Code(
        Q,
        "XNAT answered 403: the upload account may not do this in the project",
        "give the upload account member or owner access to the project in XNAT",
    ),
    "XNAT_TOO_LARGE": Code(
        Q,
        "the upload is larger than the proxy in front of XNAT accepts (HTTP 413)",
        "ask the XNAT administrator to raise the proxy's upload limit (nginx "
        "client_max_body_size, Apache LimitRequestBody)",
    ),
    "XNAT_REJECTED": Code(
        Q,
        "XNAT refused a request with a 4xx that retrying cannot change",
        "see the XNAT message above",
    ),
    "RESOURCE_CONFLICT": Code(
        Q,
        "XNAT already holds other versions of files of a sidecar resource",
        "ask the XNAT administrator to remove the old files from the resource, or rename "
        "your files, then resubmit",
    ),
    "DICOM_AE_REFUSED": Code(
        Q,
        "XNAT's DICOM receiver refused the association for good (AE titles, protocol)",
        "set dicom.called_aet and dicom.calling_aet to AE titles the receiver knows",
    ),
    "DICOM_CONTEXT_REFUSED": Code(
        Q,
        "XNAT's DICOM receiver does not accept a SOP class or transfer syntax of the folder",
        "ask the XNAT admin to accept these SOP classes and transfer syntaxes on the receiver, "
        'or use transport = "rest" for this drop (xnatdrop never converts files)',
    ),
    "DICOM_STORE_REFUSED": Code(
        Q,
        "XNAT's DICOM receiver answered a C-STORE with a failure retrying cannot fix",
        "ask the XNAT admin what the receiver's log says about it",
    ),
    "DICOM_FILE_UNSENDABLE": Code(
        Q,
        "a file cannot be sent to the DICOM receiver as stored",
        'fix or leave out the file (re-export it from the scanner), or use transport = "rest" '
        "for this drop",
    ),
    "QUARANTINE": Code(
        Q,
        "quarantined; the detailed reason was lost with xnatdrop's state (the ledger keeps the "
        "message)",
        "read the message in xnatdrop status, fix the folder and copy it back",
    ),
    # -- stops: nothing is quarantined; xnatdrop waits, retries, or holds every push ----------
    "TRANSIENT": Code(
        R,
        "a retryable problem: XNAT unreachable, a timeout, a reset connection, a 5xx answer",
        "nothing to do: xnatdrop tries again with backoff; if it goes on, check XNAT",
    ),
    "FILESYSTEM": Code(
        R,
        "a file or folder of the drop or the share cannot be read or written",
        "the message names the file and the fix (permissions, space, a folder in the way)",
    ),
    "INTERNAL": Code(
        R,
        "an unexpected error: a bug in xnatdrop (the log has its traceback)",
        "report it with the traceback from the log; xnatdrop tries again with backoff",
    ),
    "INCOMPLETE": Code(
        S,
        "the folder is still being copied (fresh empty or truncated files, series lacking files)",
        "nothing to do: it is checked again once it settles, and quarantined if it stays "
        "incomplete for settle.max_wait_seconds",
    ),
    "AUTHENTICATION": Code(
        H,
        "XNAT refused our credentials (wrong or expired password, disabled account)",
        "fix the password or the account, then restart xnatdrop (systemctl restart xnatdrop)",
    ),
    "STATE": Code(
        H,
        "xnatdrop's own state folder cannot be written (full, read-only, failing)",
        "free space there or fix it; nothing was lost and xnatdrop carries on once it can "
        "write again",
    ),
    "HELD": Code(
        H,
        "the circuit breaker holds every push: different drops got the same suspect answer "
        "from XNAT",
        "fix XNAT (the alert names its answer), then restart xnatdrop to try at once",
    ),
    "XNAT_SUSPECT": Code(
        R,
        "XNAT gave an answer that may be its own problem; the drop waits to see whether other "
        "drops get it too",
        "nothing to do yet: the drop is tried again; if other drops get the same answer, "
        "pushes are held (HELD)",
    ),
    "DICOM_UNREACHABLE": Code(
        R,
        "XNAT's DICOM receiver cannot be reached, or the association was lost",
        "check that XNAT's DICOM receiver is running and reachable from this machine "
        "(xnatdrop doctor); xnatdrop tries again later",
    ),
    "DICOM_RECEIVER_BUSY": Code(
        R,
        "XNAT's DICOM receiver is congested or at its limit of associations",
        "nothing to do: xnatdrop tries again later",
    ),
    "DICOM_JOURNAL_UNWRITABLE": Code(
        R,
        "the journal of instances sent over DICOM cannot be written",
        "free space in xnatdrop's state folder or fix its permissions; nothing was lost",
    ),
}
del B, E, W, N, Q, R, H, S

# Finding codes about the whole folder: there are no files for `exclude` to leave out.
NO_EXCLUDE = frozenset(
    {
        "MULTIPLE_STUDIES",
        "PATIENT_MISMATCH",
        "LABEL_PATTERN",
        "LABEL_MISMATCH",
        "INCOMPLETE_MEDIA",
        "NO_DICOM",
    }
)


def rule_codes() -> list[str]:
    """The finding codes of the upload rules, in table order (the keys `[rules.actions]` takes)."""
    return [name for name, code in CODES.items() if code.is_rule]


def fix(code: str) -> str:
    """The table's fix for `code`; '' for a code that is not in the table."""
    found = CODES.get(code)
    return found.fix if found is not None else ""


def table_text() -> str:
    """The table as text for `xnatdrop check --codes`: one block per code, in two parts."""
    width = max(map(len, CODES))
    parts = (
        ("Findings of the upload rules (the default action; [rules.actions] may change it):", True),
        ("Quarantine and stop codes of a push:", False),
    )
    lines = []
    for heading, rule in parts:
        lines += [heading, ""] if not lines else ["", heading, ""]
        for name, code in CODES.items():
            if code.is_rule is rule:
                lines.append(f"{name:<{width}}  {code.action}")
                lines.append(f"    {code.summary}")
                lines.append(f"    fix: {code.fix}")
    return "\n".join(lines) + "\n"


def table_json() -> list[dict[str, str]]:
    """The table for `xnatdrop check --codes --json`."""
    return [
        {"code": name, "action": str(code.action), "summary": code.summary, "fix": code.fix}
        for name, code in CODES.items()
    ]
