"""One entry of an import routed to its prearchive file: XNAT's §6 rules, file name, site script.

For each entry the header is read straight from the entry stream (`dicomheader`: the sandbox's
walker, or pydicom for what it declines), the §6 rules pick project, subject and session
(`identify`), the series import filters may drop it, the prearchive session and scan are opened,
the file is named as `GradualDicomImporter` names it, the site script's edits are spliced in
(`anonymize.splice`, or `anonymize.rewrite` on the stored file when only pydicom can), and the
entry's bytes go to the writer threads (`entrywriter.write_entry`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import IO

import pydicom

from xnat_sandbox import anonymize, entrywriter, prearchive
from xnat_sandbox.dicomheader import (
    LAST_NEEDED_TAG,
    Header,
    HeaderTap,
    Unreadable,
    check_header,
    read_header,
    walk_header,
    walked_header,
)
from xnat_sandbox.importjob import Job
from xnat_sandbox.users import UNASSIGNED

_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_FILE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@functools.lru_cache(maxsize=1024)  # a session's files repeat the same comments
def contained(text: str, key: str) -> str | None:
    """`ContainedAssignmentExtractor`: the value of `KEY: value` inside a comment field."""
    pattern = rf"(?:\A|(?:.*[\s,;])){key}\s*:\s*([\w\-]*)(?:(?:[\s,;].*\Z)|\Z)"
    match = re.match(pattern, text, re.IGNORECASE | re.DOTALL)
    return match.group(1) if match and match.group(1) else None


def to_file_name_chars(value: str) -> str:
    """`org.nrg.xnat.Files.toFileNameChars`: anything but ASCII letters, digits, `_`, `.` and `-`
    becomes `_` (Java's `\\w` is ASCII)."""
    return _FILE_NAME_CHARS.sub("_", value)


def to_label_chars(value: str) -> str:
    """`Labels.toLabelChars`: anything but letters, digits, `_` and `-` becomes `_`."""
    return _LABEL_CHARS.sub("_", value)


def identify(job: Job, header: Header) -> tuple[str, str, str, str]:
    """(project, subject, label, autoarchive) for one file, by the §6.1 chains."""
    store = job.sandbox.store
    project = job.project
    if project is None:
        candidates = [contained(c, "Project") for c in header.comments]
        candidates += [header.study_description, header.accession]
        for candidate in candidates:
            if not candidate:
                continue
            row = store.project(candidate)
            if row is not None and job.user.can_write(row["id"]):
                project = row["id"]
                break
    subject = job.subject
    if subject is None:
        found = next((v for c in header.comments if (v := contained(c, "Subject"))), None)
        subject = to_label_chars(found or header.patient_name)
    label = job.label
    if label is None:
        found = next((v for c in header.comments if (v := contained(c, "Session"))), None)
        label = to_label_chars(found or header.patient_id) or "dicom_upload"
    autoarchive = ""
    flag = next((v for c in header.comments if (v := contained(c, "AA"))), None)
    if flag:
        autoarchive = "AutoArchive" if flag.lower() in ("t", "true") else "Manual"
    return project or UNASSIGNED, subject, label, autoarchive


def _namer(header: Header) -> str:
    """`dicomFileNameTemplate`: StudyInstanceUID-SeriesNumber-InstanceNumber-hash."""
    digest = hashlib.md5(f"{header.sop_class}{header.sop_uid}".encode()).hexdigest()[:8]
    return f"{header.study_uid}-{header.series_number}-{header.instance_number}-{digest}.dcm"


def store_entry(job: Job, source: IO[bytes], entry_name: str) -> None:
    """Parse one entry's header, route it, and copy it to its prearchive file."""
    tap = HeaderTap(source)
    store = job.sandbox.store
    last_tag = max([LAST_NEEDED_TAG, *job.filter_tags(job.project)])
    # The walker reads the header's bytes (and as far as the site script edits); pydicom reads
    # the files it cannot walk, and the header a series import filter needs.
    walked = walk_header(tap, max(last_tag, job.script_top), job.script_top)
    header = walked_header(walked) if walked is not None else None
    dataset: pydicom.Dataset | None = None
    if header is None:
        job.read_by_pydicom += 1
        header, dataset = read_header(tap, entry_name, last_tag)
    else:
        check_header(header, entry_name)
    project, subject, label, autoarchive = identify(job, header)
    filtered = job.filter_for(None) is not None or job.filter_for(project) is not None
    if filtered and (dataset is None or max(job.filter_tags(project), default=0) > last_tag):
        tags = [last_tag, *job.filter_tags(project)]  # the project came from the header
        header, dataset = read_header(tap, entry_name, max(tags))
    excluded_by = job.excluded_by(project, dataset) if dataset is not None else None
    if excluded_by:  # GradualDicomImporter.call l.193: an empty answer, nothing stored
        job.filtered[(excluded_by, header.series_number)] += 1
        return
    key = (project, header.study_uid, label)
    pk = job.keys.get(key)
    if pk is None:
        values = dict(
            job.values,
            subject=subject,
            autoarchive=autoarchive,
            scan_date=_date(header.study_date),
            scan_time=_time(header.study_time),
        )
        dest = job.dest
        explicit = dest is not None and dest.kind == "prearchive" and dest.project == project
        row, created = prearchive.open_session(
            store,
            job.sandbox.clock.now(),
            project,
            header.study_uid,
            label,
            values,
            timestamp=dest.timestamp if explicit and dest else None,
            folder=dest.folder if explicit and dest else None,
        )
        if created:
            job.created.add(row["pk"])
        else:
            prearchive.update_flags(store, row["pk"], job.values)
        pk = row["pk"]
        job.keys[key] = pk
        job.sessions[pk] = row
    row = job.sessions[pk]
    scan_id = job.scans.get((pk, header.series_uid))
    if scan_id is None:
        scan_id = prearchive.assign_scan(
            store,
            pk,
            header.series_uid,
            header.series_number,
            header.series_description,
            header.modality,
        )
        job.scans[(pk, header.series_uid)] = scan_id
    # GradualDicomImporter.getSafeFile: the whole entry name through Files.toFileNameChars, so
    # `t1_mpr/00000070.dcm` is stored as `t1_mpr_00000070.dcm`; the namer when renaming.
    name = to_file_name_chars(entry_name)
    if job.rename or not name or name in (".", ".."):
        name = _namer(header)
    owner = job.owner(pk, scan_id, name)
    if owner is not None and owner != header.sop_uid:
        name = _namer(header)
    folder = job.folders.get((pk, scan_id))
    if folder is None:
        made = prearchive.session_dir(store, row) / "SCANS" / scan_id / "DICOM"
        made.mkdir(parents=True, exist_ok=True)
        folder = job.folders[(pk, scan_id)] = str(made)
    target = os.path.join(folder, name)
    prevent_anon = job.values["prevent_anon"] or row["prevent_anon"] or ""
    # GradualDicomImporter.call l.390-411: the site script with the session's project,
    # subject and prearchive folder name (`session.getFolderName()`) as `session`.
    script = job.site_script if prevent_anon.lower() != "true" else None
    variables = {"project": project, "subject": row["subject"] or "", "session": row["folder"]}
    spliced = None
    if script is not None and walked is not None:
        spliced = anonymize.splice(walked, script, variables)
        if spliced is not None and spliced.rejected:
            job.rejected += 1  # GradualDicomImporter: nothing stored, empty answer
            job.flush()
            if prearchive.drop_scan_if_empty(store, pk, scan_id):
                job.scans.pop((pk, header.series_uid), None)
            return
    result: list[object] = []
    entrywriter.write_entry(job.writer, target, tap, spliced, result)
    if script is not None and spliced is None:  # the pydicom path, on the stored file
        job.anonymised_by_pydicom += 1
        job.writer.drain()
        try:
            outcome = anonymize.rewrite(Path(target), script, variables)
        except anonymize.Unrewritable as error:
            # handleAnonymizationError: the file is dropped, the import answers 400
            Path(target).unlink(missing_ok=True)
            job.flush()
            store.run(
                "DELETE FROM prearc_files WHERE session = ? AND scan_id = ? AND name = ?",
                pk,
                scan_id,
                name,
            )
            job.flush()
            if prearchive.drop_scan_if_empty(store, pk, scan_id):
                job.scans.pop((pk, header.series_uid), None)
            raise Unreadable(f"unable to read DICOM object {entry_name}") from error
        if outcome.rejected:
            job.rejected += 1  # GradualDicomImporter: file deleted, empty answer
            job.flush()
            if prearchive.drop_scan_if_empty(store, pk, scan_id):
                job.scans.pop((pk, header.series_uid), None)
            return
        result[:] = [outcome.size]
    job.record((pk, scan_id, name), result, header.sop_uid, _instance(header.instance_number))
    job.stored += 1
    job.answered.add(pk)


def _instance(value: str) -> int | None:
    """InstanceNumber (IS) as the catalog's integer `instanceNumber`; None when absent."""
    try:
        return int(value)
    except ValueError:
        return None


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value) else ""


def _time(value: str) -> str:
    digits = value.split(".")[0]
    if re.fullmatch(r"\d{6}", digits):
        return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    return ""
