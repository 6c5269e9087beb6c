"""The archive's entities, projects and subjects (§7): the URL walk from `/data/projects`,
`/data/subjects` and `/data/experiments` down to where `experiments.py` and `resources.py` take
over.

The URL is walked segment by segment, as Restlet's prefix routes do:
`/projects/P/subjects/S/experiments/E/scans/1/resources/DICOM/files/x.dcm`, with the short forms
`/subjects/{ID}` and `/experiments/{ID}`. Labels and IDs both work where XNAT accepts both. A GET
on something the user may not read answers 404 (hidden, §1.8); a write without permission 403.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable
from typing import Any

from xnat_sandbox import documents, experiments, resource_endpoints, resources, seriesfilter, tables
from xnat_sandbox.store import Store
from xnat_sandbox.wire import Request, hidden

log = logging.getLogger(__name__)

_VALID_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def ensure_project(store: Store, project_id: str, now: float, user: str) -> None:
    """Create a project if it does not exist (startup `--project` and PUT)."""
    store.run(
        "INSERT OR IGNORE INTO projects (id, secondary_id, name, insert_date, insert_user) "
        "VALUES (?, ?, ?, ?, ?)",
        project_id,
        project_id,
        project_id,
        now,
        user,
    )


# -- the walk ----------------------------------------------------------------------------------


def handle(request: Request) -> tables.Response:
    """Everything under `/data/projects`, `/data/subjects` and `/data/experiments`."""
    parts = [p for p in request.path.split("/") if p]
    store = request.sandbox.store
    head = parts[0]
    if head == "projects":
        if len(parts) == 1:
            return _project_list(request)
        return _project(request, parts[1], parts[2:])
    if head == "subjects":
        if len(parts) == 1:
            return _subject_list(request)
        subject = store.one("SELECT * FROM subjects WHERE id = ?", parts[1])
        if subject is None or not request.user.can_read(subject["project"]):
            raise hidden()
        project = store.project(subject["project"])
        assert project is not None
        return _subject(request, project, parts[1], parts[2:])
    if len(parts) == 1:
        return experiments.query(request)
    experiment = store.experiment(None, parts[1])
    if experiment is None or not request.user.can_read(experiment["project"]):
        raise hidden()
    return experiments.handle(request, experiment, parts[2:])


def _project_list(request: Request) -> tables.Response:
    """`GET /data/projects`: every project the user can read."""
    return _readable(request, "projects", "id", documents.project_row, documents.PROJECT_COLUMNS)


def _subject_list(request: Request) -> tables.Response:
    """`GET /data/subjects`: every subject the user can read (xnatpy `session.subjects`)."""
    return _readable(
        request, "subjects", "project", documents.subject_row, documents.SUBJECT_COLUMNS
    )


def _readable(
    request: Request,
    table: str,
    project_column: str,
    to_row: Callable[[sqlite3.Row], dict[str, Any]],
    columns: list[str],
) -> tables.Response:
    """The rows of `table` in the projects the user may read, as a listing (`columns=` kept)."""
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    rows = [
        to_row(row)
        for row in request.sandbox.store.all(f"SELECT * FROM {table} ORDER BY id")
        if request.user.can_read(row[project_column])
    ]
    return documents.select(rows, columns, request)


def _project(request: Request, ref: str, rest: list[str]) -> tables.Response:
    store = request.sandbox.store
    project = store.project(ref)
    if project is None or not request.user.can_read(project["id"]):
        if request.method == "PUT" and not rest:
            return _put_project(request, ref, None)
        if request.method != "GET" and project is not None:
            raise tables.HttpError(
                403, "Specified user account has insufficient privileges for this project."
            )
        raise hidden()
    if not rest:
        if request.method == "GET":
            return tables.item_in_format(documents.project_node(store, project), request.fmt)
        if request.method == "PUT":
            return _put_project(request, ref, project)
        raise tables.HttpError(405, "Method Not Allowed")
    if rest[0] in ("prearchive_code", "quarantine_code"):
        return _project_code(request, project, rest)
    if rest[0] == "config":
        return seriesfilter.handle_project(request, project, rest[1:])
    if rest[0] == "resources":
        return resource_endpoints.handle(request, documents.project_owner(store, project), rest[1:])
    if rest[0] == "subjects":
        if len(rest) == 1:
            if request.method != "GET":
                raise tables.HttpError(405, "Method Not Allowed")
            rows = [
                documents.subject_row(s)
                for s in store.all(
                    "SELECT * FROM subjects WHERE project = ? ORDER BY id", project["id"]
                )
            ]
            return documents.select(rows, documents.SUBJECT_COLUMNS, request)
        return _subject(request, project, rest[1], rest[2:])
    if rest[0] == "experiments":
        if len(rest) == 1:
            return experiments.listing(request, "project = ?", project["id"])
        experiment = store.experiment(project["id"], rest[1])
        if experiment is None:
            if request.method == "PUT":
                raise tables.HttpError(
                    400,
                    "Creating an experiment needs its subject: PUT "
                    f"/data/projects/{project['id']}/subjects/S/experiments/E",
                )
            raise hidden()
        return experiments.handle(request, experiment, rest[2:])
    raise tables.HttpError(404, "The requested URI was not found.")


def _put_project(request: Request, ref: str, project: sqlite3.Row | None) -> tables.Response:
    store = request.sandbox.store
    if request.user.access != "owner":
        raise tables.HttpError(
            403, "Specified user account has insufficient create privileges for projects."
        )
    request.receive()
    if project is None:
        if not _VALID_ID.match(ref):
            raise tables.HttpError(417, "Invalid character in project ID.")
        ensure_project(store, ref, request.sandbox.clock.now(), request.user.name)
        log.info("project %s created", ref)
    target = ref if project is None else project["id"]
    for column, names in (
        ("secondary_id", ("secondary_ID",)),
        ("name", ("name",)),
        ("description", ("description",)),
        ("pi_firstname", ("pi_firstname",)),
        ("pi_lastname", ("pi_lastname",)),
        ("aliases", ("alias", "aliases")),
    ):
        value = request.param(*names, *(f"xnat:projectData/{n}" for n in names))
        if value is not None:
            store.run(f"UPDATE projects SET {column} = ? WHERE id = ?", value, target)
    return tables.text("", 200 if project is not None else 201)


def _project_code(request: Request, project: sqlite3.Row, rest: list[str]) -> tables.Response:
    """`GET|PUT /data/projects/P/prearchive_code[/{code}]`: 0 Manual, 4/5 auto-archive."""
    column = rest[0]
    store = request.sandbox.store
    if request.method == "GET":
        return tables.text(str(project[column]))
    if request.method not in ("PUT", "POST"):
        raise tables.HttpError(405, "Method Not Allowed")
    if not request.user.can_write(project["id"]):
        raise tables.HttpError(
            403, "Specified user account has insufficient edit privileges for this project."
        )
    value = rest[1] if len(rest) > 1 else request.param("code", "value") or ""
    allowed = ("0", "4", "5") if column == "prearchive_code" else ("0", "1")
    if value not in allowed:
        raise tables.HttpError(400, f"Invalid {column}: {value}")
    store.run(f"UPDATE projects SET {column} = ? WHERE id = ?", int(value), project["id"])
    return tables.text("")


def _subject(request: Request, project: sqlite3.Row, ref: str, rest: list[str]) -> tables.Response:
    store = request.sandbox.store
    subject = store.subject(project["id"], ref)
    if not rest:
        if request.method == "GET":
            if subject is None:
                raise hidden()
            return tables.item_in_format(documents.subject_node(store, subject), request.fmt)
        if not request.user.can_write(project["id"]):
            raise tables.HttpError(
                403,
                "Specified user account has insufficient create "
                "privileges for subjects in this project.",
            )
        if request.method == "PUT":
            request.receive()
            return _put_subject(request, project, ref, subject)
        if request.method == "DELETE":
            if subject is None:
                raise hidden()
            for experiment in store.all(
                "SELECT * FROM experiments WHERE subject_id = ?", subject["id"]
            ):
                experiments.delete(store, experiment)
            for resource in resources.of_owner(store, documents.subject_owner(store, subject)):
                resources.remove(store, resource)
            store.run("DELETE FROM subjects WHERE id = ?", subject["id"])
            return tables.text("")
        raise tables.HttpError(405, "Method Not Allowed")
    if rest[0] == "experiments":
        if len(rest) == 1:
            if subject is None:
                raise hidden()
            return experiments.listing(request, "subject_id = ?", subject["id"])
        experiment = store.experiment(project["id"], rest[1])
        if (
            experiment is not None
            and subject is not None
            and (experiment["subject_id"] != subject["id"])
            and request.method == "GET"
        ):
            raise hidden()
        if len(rest) == 2 and request.method == "PUT":
            if not request.user.can_write(project["id"]):
                raise tables.HttpError(
                    403,
                    "Specified user account has insufficient create "
                    "privileges for experiments in this project.",
                )
            request.receive()
            if subject is None:
                _put_subject(request, project, ref, None)
                subject = store.subject(project["id"], ref)
            assert subject is not None
            return experiments.put(request, project, subject, rest[1], experiment)
        if experiment is None:
            raise hidden()
        return experiments.handle(request, experiment, rest[2:])
    if subject is None:
        raise hidden()
    if rest[0] == "resources":
        return resource_endpoints.handle(request, documents.subject_owner(store, subject), rest[1:])
    raise tables.HttpError(404, "The requested URI was not found.")


def _put_subject(
    request: Request, project: sqlite3.Row, ref: str, subject: sqlite3.Row | None
) -> tables.Response:
    """PUT a subject: 201 + new `XNAT_S#####` ID, or 200 + the existing ID (§7)."""
    store = request.sandbox.store
    fields = documents.field_params(request, documents.SUBJECT_FIELDS)
    if subject is not None:
        merged = store.fields(subject) | fields
        store.run("UPDATE subjects SET fields = ? WHERE id = ?", json.dumps(merged), subject["id"])
        return tables.text(subject["id"], 200)
    with store.transaction() as db:
        subject_id = store.next_id(db, "S")
        db.execute(
            "INSERT INTO subjects (id, project, label, insert_date, insert_user, fields) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                subject_id,
                project["id"],
                ref,
                request.sandbox.clock.now(),
                request.user.name,
                json.dumps(fields),
            ),
        )
    return tables.text(subject_id, 201)
