"""One import's state: who files it, where it goes, and the files it stored but has not recorded.

`Job` is what `dicomzip` resolves from a request (or the DICOM receiver passes) and what
`importroute.store_entry` routes each entry with: the explicit routing values, the sessions and
scans this import opened, the site script and series import filters read once, and the writer
threads (`entrywriter`) that store the files. Stored files are recorded in `prearc_files` in
batches (`Job.record`), and only once their writer has closed them; the rows of a roll back
(`created`, `added`) are kept here too.
"""

from __future__ import annotations

import collections
import re
import sqlite3
from dataclasses import dataclass, field

import pydicom

from xnat_sandbox import (
    anonymize,
    bodies,
    dicomedit,
    entrywriter,
    prearchive,
    seriesfilter,
    tables,
)
from xnat_sandbox.context import SiteContext
from xnat_sandbox.users import UNASSIGNED, User

RECORD_BATCH = 256
#: files stored but not yet recorded past which `record` waits for the writers: they hold at most
#: a few hundred (`entrywriter.QUEUE_BATCHES` × `GROUP_FILES` a lane), so this is a backstop
PENDING_MAX = 8 * RECORD_BATCH


@dataclass
class Dest:
    """A parsed `dest` parameter (§3.3 templates)."""

    kind: str  # "prearchive" | "archive"
    project: str | None = None
    timestamp: str | None = None
    folder: str | None = None
    subject: str | None = None
    experiment: str | None = None


def parse_dest(value: str) -> Dest:
    path = re.sub(r"^/(data|REST)(?=/)", "", value.strip()).rstrip("/")
    match = re.fullmatch(r"/prearchive(?:/projects/([^/]+)(?:/([^/]+)(?:/([^/]+))?)?)?", path)
    if match:
        return Dest("prearchive", *match.groups())
    match = re.fullmatch(
        r"/archive(?:/projects/([^/]+)(?:/subjects/([^/]+))?(?:/experiments/([^/]+))?)?", path
    )
    if match:
        return Dest("archive", match.group(1), subject=match.group(2), experiment=match.group(3))
    raise tables.HttpError(400, "Parameter dest format error")


@dataclass
class Job:
    """One import, resolved: who, which handler, and the explicit routing values (a REST
    request's parameters, or what the DICOM receiver passes)."""

    sandbox: SiteContext
    user: User  # who files the data: the requester, or the DICOM receiver's `receivedFileUser`
    handler: str
    dest: Dest | None
    project: str | None  # an explicit project the user may write to, else None (§6 decides)
    subject: str | None
    label: str | None
    ignore_unparsable: bool
    rename: bool
    values: dict[str, str]
    sessions: dict[int, sqlite3.Row] = field(default_factory=dict)
    keys: dict[tuple[str, str, str], int] = field(default_factory=dict)
    scans: dict[tuple[int, str], str] = field(default_factory=dict)  # (session, series UID)
    stored: int = 0
    rejected: int = 0  # files a site script rejected
    answered: set[int] = field(default_factory=set)  # sessions that received a file
    #: (which filter, SeriesNumber) → instances a series import filter dropped
    filtered: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    _filters: dict[str | None, seriesfilter.Filter | None] = field(default_factory=dict)
    #: the site anonymisation script (None when off), read once per import, and its last tag
    site_script: dicomedit.Script | None = None
    script_top: int = 0
    #: stored files not yet recorded: one commit per RECORD_BATCH files, not one per file;
    #: (pk, scan, name) → (result, SOPInstanceUID, instance), result getting [size] once the
    #: writer has closed the file. No MD5: XNAT computes the digests at archive (entrywriter)
    pending: dict[tuple[int, str, str], tuple[list[object], str, int | None]] = field(
        default_factory=dict
    )
    #: sessions this import created, and files it added to sessions that existed (a roll back)
    created: set[int] = field(default_factory=set)
    #: hashes of the names this import stored in the sessions it created: no other file can be
    #: there, so a name not in it needs no database look-up (`owner`)
    named: set[int] = field(default_factory=set)
    added: list[tuple[int, str, str]] = field(default_factory=list)
    #: (session, scan) → its DICOM folder, made by this import (a string: the hot path)
    folders: dict[tuple[int, str], str] = field(default_factory=dict)
    entries: int = 0  # archive entries met so far
    _writer: entrywriter.EntryWriter | None = None
    #: files whose header (or anonymisation) pydicom had to do: the walker could not
    read_by_pydicom: int = 0
    anonymised_by_pydicom: int = 0
    _since_record: int = 0  # files stored since the last attempt to record

    def __post_init__(self) -> None:
        self.site_script = anonymize.site_script(self.sandbox.store)
        self.script_top = max(self.site_script.tags(), default=0) if self.site_script else 0

    @property
    def writer(self) -> entrywriter.EntryWriter:
        """The worker writing this import's files, started on first use."""
        if self._writer is None:
            lanes = 1 if self.handler == "gradual-DICOM" else entrywriter.LANES  # one file
            self._writer = entrywriter.EntryWriter(lanes)
        return self._writer

    def hand_over_before_wait(self, body: bodies.Body) -> None:
        """Before a read of `body` that would wait for the client, hand the writer's group of
        whole files to a worker: nothing that has arrived waits on the client's next bytes."""
        writer = self._writer
        if writer is not None and writer.holding and not body.ready():
            writer.hand_over()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def record(
        self, key: tuple[int, str, str], result: list[object], sop: str, number: int | None
    ) -> None:
        self.pending[key] = (result, sop, number)
        if key[0] not in self.created:
            self.added.append(key)
        else:
            self.named.add(hash(key))
        self._since_record += 1
        if self._since_record >= RECORD_BATCH:
            self._since_record = 0
            if len(self.pending) >= PENDING_MAX:
                self.flush()  # the writers are far behind: wait for them (memory stays flat)
            else:
                self._record_written()

    def _record_written(self) -> None:
        """Record the files at the front of `pending` that their writer has closed, in the
        order they were stored, without waiting for the rest.

        Waiting for every queued file (`flush`) every RECORD_BATCH files stalled the request
        thread until both writers were idle: 21 % of its time in a 500 MB import (py-spy),
        while the client's bytes waited in the socket. The rows are the same and in the same
        order; only the commit happens when the files are already written.
        """
        rows: list[prearchive.FileRow] = []
        for (pk, scan, name), (result, sop, number) in self.pending.items():
            if not result:  # not written yet (or its writer failed: `flush` raises that)
                break
            rows.append((pk, scan, name, int(result[0]), "", sop, number))  # type: ignore[call-overload]
        if rows:
            prearchive.record_files(self.sandbox.store, rows)
            for pk, scan, name, *_ in rows:
                del self.pending[(pk, scan, name)]

    def flush(self) -> None:
        """Record every stored file (before anything reads prearc_files, and at the end), once
        the writer has written them."""
        if self.pending:
            if self._writer is not None:
                self._writer.drain()
            rows: list[prearchive.FileRow] = [
                (pk, scan, name, int(result[0]), "", sop, number)  # type: ignore[call-overload]
                for (pk, scan, name), (result, sop, number) in self.pending.items()
            ]
            prearchive.record_files(self.sandbox.store, rows)
            self.pending.clear()
        self._since_record = 0

    def owner(self, pk: int, scan_id: str, name: str) -> str | None:
        """The SOPInstanceUID stored under this name in the scan, by this import or before."""
        key = (pk, scan_id, name)
        row = self.pending.get(key)
        if row is not None:
            return row[1]
        if pk in self.created and hash(key) not in self.named:
            return None
        return prearchive.file_owner(self.sandbox.store, pk, scan_id, name)

    def filter_for(self, project: str | None) -> seriesfilter.Filter | None:
        """The site filter (project None) or a project's, read once per import."""
        if project not in self._filters:
            store = self.sandbox.store
            if project is None:
                self._filters[None] = seriesfilter.site_filter(store)
            else:
                self._filters[project] = (
                    None if project == UNASSIGNED else seriesfilter.project_filter(store, project)
                )
        return self._filters[project]

    def filter_tags(self, project: str | None) -> list[int]:
        tags = []
        for scope in (None, project) if project else (None,):
            found = self.filter_for(scope)
            tags.extend(found.tags() if found else [])
        return tags

    def excluded_by(self, project: str, dataset: pydicom.Dataset) -> str | None:
        """ "site" or "project" when that filter drops the instance, else None."""
        site = self.filter_for(None)
        if site is not None and not site.includes(dataset):
            return "site"
        own = self.filter_for(project)
        if own is not None and not own.includes(dataset):
            return "project"
        return None
