"""The archive's entities: projects, subjects, experiments and scans (§7), and where their
resources hang (handed on to `resources`).

The URL is walked segment by segment, as Restlet's prefix routes do:
`/projects/P/subjects/S/experiments/E/scans/1/resources/DICOM/files/x.dcm`, with the short forms
`/subjects/{ID}` and `/experiments/{ID}`. Labels and IDs both work where XNAT accepts both. A GET
on something the user may not read answers 404 (hidden, §1.8); a write without permission 403.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
from typing import Any

from xnat_sandbox import resources, seriesfilter, tables
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.wire import NOT_FOUND, Request

log = logging.getLogger(__name__)

PROJECT_COLUMNS = [
    "ID",
    "secondary_ID",
    "name",
    "description",
    "pi_firstname",
    "pi_lastname",
    "URI",
]
SUBJECT_COLUMNS = ["ID", "project", "label", "insert_date", "insert_user", "URI"]
EXPERIMENT_COLUMNS = ["ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
SCAN_COLUMNS = [
    "xnat_imagescandata_id",
    "ID",
    "type",
    "quality",
    "xsiType",
    "note",
    "series_description",
    "URI",
]
DEMOGRAPHICS = (
    "gender",
    "handedness",
    "yob",
    "dob",
    "age",
    "education",
    "race",
    "ethnicity",
    "height",
    "weight",
)
SUBJECT_FIELDS = (*DEMOGRAPHICS, "group", "src", "initials")
EXPERIMENT_FIELDS = (
    "date",
    "time",
    "visit",
    "visit_id",
    "note",
    "session_type",
    "scanner",
    "acquisition_site",
    "operator",
)
_VALID_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTROL = {
    "format",
    "xsiType",
    "event_reason",
    "event_type",
    "event_action",
    "inbody",
    "columns",
    "XNAT_CSRF",
    "req_format",
    "label",
    "ID",
    "subject_ID",
    "project",
}


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


def _hidden() -> tables.HttpError:
    return tables.HttpError(404, NOT_FOUND)


def _field_params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Query fields to store: shortcuts (`gender`) and XML paths (`…/demographics[…]/gender`)."""
    out = {}
    for key, values in request.params.items():
        if key in _CONTROL or not values:
            continue
        short = key.rsplit("/", 1)[-1]
        if short in allowed:
            out[short] = values[-1]
    return out


def _select(rows: list[dict[str, Any]], default: list[str], request: Request) -> tables.Response:
    """Honour `columns=a,b` where the column is known (URI is always kept)."""
    wanted = request.param("columns")
    columns = list(default)
    if wanted and wanted != "DEFAULT":
        known = set(rows[0]) if rows else set(default)
        columns = [c for c in wanted.split(",") if c in known or c in default]
        if "URI" not in columns:
            columns.append("URI")
    return tables.table(rows, columns, request.fmt)


# -- rows and items ------------------------------------------------------------------------------


def project_row(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": row["id"],
        "secondary_ID": row["secondary_id"],
        "name": row["name"],
        "description": row["description"],
        "pi_firstname": row["pi_firstname"],
        "pi_lastname": row["pi_lastname"],
        "URI": f"/data/projects/{row['id']}",
    }


def subject_row(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": row["id"],
        "project": row["project"],
        "label": row["label"],
        "insert_date": tables.java_timestamp(row["insert_date"]),
        "insert_user": row["insert_user"],
        "URI": f"/data/subjects/{row['id']}",
    }


def experiment_row(store: Store, row: sqlite3.Row) -> dict[str, Any]:
    subject = store.one("SELECT label FROM subjects WHERE id = ?", row["subject_id"])
    return {
        "ID": row["id"],
        "project": row["project"],
        "date": row["date"] or "",
        "xsiType": row["xsi_type"],
        "label": row["label"],
        "insert_date": tables.java_timestamp(row["insert_date"]),
        "subject_ID": row["subject_id"],
        "subject_label": subject["label"] if subject else "",
        "time": row["time"] or "",
        "UID": row["uid"] or "",
        "modality": row["modality"] or "",
        "URI": f"/data/experiments/{row['id']}",
    }


def scan_owner(store: Store, experiment: sqlite3.Row, scan_id: str) -> resources.Owner:
    return resources.Owner(
        "scan",
        f"{experiment['id']}/{scan_id}",
        experiment["project"],
        store.archive_root
        / experiment["project"]
        / "arc001"
        / experiment["label"]
        / "SCANS"
        / scan_id,
        f"/data/experiments/{experiment['id']}/scans/{scan_id}",
        "scans",
        scan_id,
    )


def experiment_owner(store: Store, experiment: sqlite3.Row) -> resources.Owner:
    return resources.Owner(
        "experiment",
        experiment["id"],
        experiment["project"],
        store.archive_root / experiment["project"] / "arc001" / experiment["label"] / "RESOURCES",
        f"/data/experiments/{experiment['id']}",
        "resources",
        experiment["id"],
    )


def subject_owner(store: Store, subject: sqlite3.Row) -> resources.Owner:
    return resources.Owner(
        "subject",
        subject["id"],
        subject["project"],
        store.archive_root / subject["project"] / "subjects" / subject["id"] / "resources",
        f"/data/projects/{subject['project']}/subjects/{subject['id']}",
        "resources",
        subject["id"],
    )


def project_owner(store: Store, project: sqlite3.Row) -> resources.Owner:
    return resources.Owner(
        "project",
        project["id"],
        project["id"],
        store.archive_root / project["id"] / "resources",
        f"/data/projects/{project['id']}",
        "resources",
        project["id"],
    )


def _resource_nodes(store: Store, owner: resources.Owner) -> list[dict[str, Any]]:
    return [resources.node(store, r) for r in resources.of_owner(store, owner)]


def scan_node(store: Store, experiment: sqlite3.Row, scan: sqlite3.Row) -> dict[str, Any]:
    files = _resource_nodes(store, scan_owner(store, experiment, scan["scan_id"]))
    return tables.item(
        scan["xsi_type"] or "xnat:otherDicomScanData",
        {
            "ID": scan["scan_id"],
            "type": scan["type"],
            "series_description": scan["series_description"],
            "UID": scan["uid"],
            "quality": scan["quality"],
            "note": scan["note"],
            "modality": scan["modality"],
            "image_session_ID": experiment["id"],
            "xnat_imagescandata_id": scan["pk"],
        },
        [{"field": "file", "items": files}] if files else [],
    )


def experiment_node(store: Store, experiment: sqlite3.Row) -> dict[str, Any]:
    scans = store.all("SELECT * FROM scans WHERE experiment_id = ? ORDER BY pk", experiment["id"])
    children = []
    if scans:
        children.append(
            {"field": "scans/scan", "items": [scan_node(store, experiment, s) for s in scans]}
        )
    files = _resource_nodes(store, experiment_owner(store, experiment))
    if files:
        children.append({"field": "resources/resource", "items": files})
    data = {
        "ID": experiment["id"],
        "label": experiment["label"],
        "project": experiment["project"],
        "subject_ID": experiment["subject_id"],
        "date": experiment["date"],
        "time": experiment["time"],
        "UID": experiment["uid"],
        "modality": experiment["modality"],
    }
    data.update(store.fields(experiment))
    meta = {"start_date": tables.java_timestamp(experiment["insert_date"])}
    return tables.item(experiment["xsi_type"], data, children, meta)


def subject_node(store: Store, subject: sqlite3.Row) -> dict[str, Any]:
    fields = store.fields(subject)
    demographics = {k: _typed(v) for k, v in fields.items() if k in DEMOGRAPHICS}
    children = (
        [{"field": "demographics", "items": [tables.item("xnat:demographicData", demographics)]}]
        if demographics
        else []
    )
    experiments = store.all(
        "SELECT * FROM experiments WHERE subject_id = ? ORDER BY id", subject["id"]
    )
    if experiments:
        children.append(
            {
                "field": "experiments/experiment",
                "items": [experiment_node(store, e) for e in experiments],
            }
        )
    files = _resource_nodes(store, subject_owner(store, subject))
    if files:
        children.append({"field": "resources/resource", "items": files})
    data = {"ID": subject["id"], "label": subject["label"], "project": subject["project"]}
    data.update({k: v for k, v in fields.items() if k not in DEMOGRAPHICS})
    meta = {"start_date": tables.java_timestamp(subject["insert_date"])}
    return tables.item("xnat:subjectData", data, children, meta)


def _typed(value: str) -> Any:
    return int(value) if value.isdigit() else value


def project_node(store: Store, project: sqlite3.Row) -> dict[str, Any]:
    files = _resource_nodes(store, project_owner(store, project))
    aliases = [a for a in project["aliases"].split(",") if a]
    children = [{"field": "resources/resource", "items": files}] if files else []
    if aliases:
        children.append(
            {
                "field": "aliases/alias",
                "items": [tables.item("xnat:projectData_alias", {"alias": a}) for a in aliases],
            }
        )
    return tables.item(
        "xnat:projectData",
        {
            "ID": project["id"],
            "secondary_ID": project["secondary_id"],
            "name": project["name"],
            "description": project["description"],
        },
        children,
    )


def describe_archive(store: Store) -> list[dict[str, Any]]:
    out = []
    for experiment in store.all("SELECT * FROM experiments ORDER BY id"):
        subject = store.one("SELECT label FROM subjects WHERE id = ?", experiment["subject_id"])
        scans = store.all("SELECT scan_id FROM scans WHERE experiment_id = ?", experiment["id"])
        count = store.one(
            "SELECT COUNT(*) AS n FROM files f JOIN resources r ON r.id = f.resource_id "
            "WHERE r.owner_kind = 'scan' AND r.owner_id LIKE ?",
            experiment["id"] + "/%",
        )
        out.append(
            {
                "project": experiment["project"],
                "subject": subject["label"] if subject else "",
                "label": experiment["label"],
                "id": experiment["id"],
                "xsiType": experiment["xsi_type"],
                "scans": len(scans),
                "files": int(count["n"]) if count else 0,
            }
        )
    return out


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
            raise _hidden()
        project = store.project(subject["project"])
        assert project is not None
        return _subject(request, project, parts[1], parts[2:])
    if len(parts) == 1:
        return _experiment_query(request)
    experiment = store.experiment(None, parts[1])
    if experiment is None or not request.user.can_read(experiment["project"]):
        raise _hidden()
    return _experiment(request, experiment, parts[2:])


def _project_list(request: Request) -> tables.Response:
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    rows = [
        project_row(p)
        for p in request.sandbox.store.all("SELECT * FROM projects ORDER BY id")
        if request.user.can_read(p["id"])
    ]
    return _select(rows, PROJECT_COLUMNS, request)


def _subject_list(request: Request) -> tables.Response:
    """`GET /data/subjects`: every subject the user can read (xnatpy `session.subjects`)."""
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    rows = [
        subject_row(s)
        for s in request.sandbox.store.all("SELECT * FROM subjects ORDER BY id")
        if request.user.can_read(s["project"])
    ]
    return _select(rows, SUBJECT_COLUMNS, request)


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
        raise _hidden()
    if not rest:
        if request.method == "GET":
            return tables.item_in_format(project_node(store, project), request.fmt)
        if request.method == "PUT":
            return _put_project(request, ref, project)
        raise tables.HttpError(405, "Method Not Allowed")
    if rest[0] in ("prearchive_code", "quarantine_code"):
        return _project_code(request, project, rest)
    if rest[0] == "config":
        return seriesfilter.handle_project(request, project, rest[1:])
    if rest[0] == "resources":
        return resources.handle(request, project_owner(store, project), rest[1:])
    if rest[0] == "subjects":
        if len(rest) == 1:
            if request.method != "GET":
                raise tables.HttpError(405, "Method Not Allowed")
            rows = [
                subject_row(s)
                for s in store.all(
                    "SELECT * FROM subjects WHERE project = ? ORDER BY id", project["id"]
                )
            ]
            return _select(rows, SUBJECT_COLUMNS, request)
        return _subject(request, project, rest[1], rest[2:])
    if rest[0] == "experiments":
        if len(rest) == 1:
            return _experiment_list(request, "project = ?", project["id"])
        experiment = store.experiment(project["id"], rest[1])
        if experiment is None:
            if request.method == "PUT":
                raise tables.HttpError(
                    400,
                    "Creating an experiment needs its subject: PUT "
                    f"/data/projects/{project['id']}/subjects/S/experiments/E",
                )
            raise _hidden()
        return _experiment(request, experiment, rest[2:])
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
                raise _hidden()
            return tables.item_in_format(subject_node(store, subject), request.fmt)
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
                raise _hidden()
            for experiment in store.all(
                "SELECT * FROM experiments WHERE subject_id = ?", subject["id"]
            ):
                _delete_experiment(store, experiment)
            for resource in resources.of_owner(store, subject_owner(store, subject)):
                resources.remove(store, resource)
            store.run("DELETE FROM subjects WHERE id = ?", subject["id"])
            return tables.text("")
        raise tables.HttpError(405, "Method Not Allowed")
    if rest[0] == "experiments":
        if len(rest) == 1:
            if subject is None:
                raise _hidden()
            return _experiment_list(request, "subject_id = ?", subject["id"])
        experiment = store.experiment(project["id"], rest[1])
        if (
            experiment is not None
            and subject is not None
            and (experiment["subject_id"] != subject["id"])
            and request.method == "GET"
        ):
            raise _hidden()
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
            return _put_experiment(request, project, subject, rest[1], experiment)
        if experiment is None:
            raise _hidden()
        return _experiment(request, experiment, rest[2:])
    if subject is None:
        raise _hidden()
    if rest[0] == "resources":
        return resources.handle(request, subject_owner(store, subject), rest[1:])
    raise tables.HttpError(404, "The requested URI was not found.")


def _put_subject(
    request: Request, project: sqlite3.Row, ref: str, subject: sqlite3.Row | None
) -> tables.Response:
    """PUT a subject: 201 + new `XNAT_S#####` ID, or 200 + the existing ID (§7)."""
    store = request.sandbox.store
    fields = _field_params(request, SUBJECT_FIELDS)
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


def _put_experiment(
    request: Request,
    project: sqlite3.Row,
    subject: sqlite3.Row,
    ref: str,
    experiment: sqlite3.Row | None,
) -> tables.Response:
    """PUT an experiment (`?xsiType=xnat:mrSessionData`): 201 + new ID, or 200 + ID (§7)."""
    store = request.sandbox.store
    fields = _field_params(request, EXPERIMENT_FIELDS)
    xsi_type = request.param("xsiType")
    if experiment is not None:
        new_label = request.param("label")
        if new_label and new_label != experiment["label"]:
            if store.experiment(project["id"], new_label) is not None:
                raise tables.HttpError(409, "Specified label is already in use.")
            old = store.archive_root / project["id"] / "arc001" / experiment["label"]
            new = old.with_name(new_label)
            if old.exists():
                old.rename(new)
            _rebase_resources(store, old, new)
            store.run("UPDATE experiments SET label = ? WHERE id = ?", new_label, experiment["id"])
        extra = {k: v for k, v in fields.items() if k not in ("date", "time")}
        merged = store.fields(experiment) | extra
        store.run(
            "UPDATE experiments SET fields = ?, date = COALESCE(?, date), "
            "time = COALESCE(?, time) WHERE id = ?",
            json.dumps(merged),
            fields.get("date"),
            fields.get("time"),
            experiment["id"],
        )
        return tables.text(experiment["id"], 200)
    if not xsi_type:
        raise tables.HttpError(417, "Need PUT Contents")
    label = request.param("label") or ref
    with store.transaction() as db:
        experiment_id = store.next_id(db, "E")
        extra = {k: v for k, v in fields.items() if k not in ("date", "time")}
        db.execute(
            "INSERT INTO experiments (id, project, subject_id, label, xsi_type, date, time, uid, "
            "modality, insert_date, insert_user, fields) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?)",
            (
                experiment_id,
                project["id"],
                subject["id"],
                label,
                xsi_type,
                fields.get("date"),
                fields.get("time"),
                request.param("UID"),
                request.param("modality"),
                request.sandbox.clock.now(),
                request.user.name,
                json.dumps(extra),
            ),
        )
    return tables.text(experiment_id, 201)


def _rebase_resources(store: Store, old: Any, new: Any) -> None:
    old_rel, new_rel = str(old.relative_to(store.root)), str(new.relative_to(store.root))
    for resource in store.all("SELECT id, path FROM resources WHERE path LIKE ?", old_rel + "/%"):
        store.run(
            "UPDATE resources SET path = ? WHERE id = ?",
            new_rel + resource["path"][len(old_rel) :],
            resource["id"],
        )


def _experiment_list(request: Request, where: str, value: str) -> tables.Response:
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    store = request.sandbox.store
    rows = [
        experiment_row(store, e)
        for e in store.all(f"SELECT * FROM experiments WHERE {where} ORDER BY id", value)
    ]
    return _select(rows, EXPERIMENT_COLUMNS, request)


def _experiment_query(request: Request) -> tables.Response:
    """`GET /data/experiments?project=P&xsiType=…&label=…`: filters on any known column."""
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    store = request.sandbox.store
    rows = [
        experiment_row(store, e)
        for e in store.all("SELECT * FROM experiments ORDER BY id")
        if request.user.can_read(e["project"])
    ]
    for key, values in request.query.items():
        if key in ("format", "columns") or not values:
            continue
        short = key.rsplit("/", 1)[-1]
        column = next((c for c in (rows[0] if rows else {}) if c.lower() == short.lower()), None)
        if column is not None:
            wanted = values[-1]
            rows = [r for r in rows if str(r[column]).lower() == wanted.lower()]
    default = [*EXPERIMENT_COLUMNS[:-1], "subject_ID", "subject_label", "URI"]
    return _select(rows, default, request)


def _experiment(request: Request, experiment: sqlite3.Row, rest: list[str]) -> tables.Response:
    store = request.sandbox.store
    if not rest:
        if request.method == "GET":
            return tables.item_in_format(experiment_node(store, experiment), request.fmt)
        if not request.user.can_write(experiment["project"]):
            raise tables.HttpError(
                403,
                "Specified user account has insufficient edit "
                "privileges for experiments in this project.",
            )
        if request.method == "DELETE":
            _delete_experiment(store, experiment)
            return tables.text("")
        if request.method == "PUT":
            request.receive()
            subject = store.one("SELECT * FROM subjects WHERE id = ?", experiment["subject_id"])
            project = store.project(experiment["project"])
            assert subject is not None and project is not None
            return _put_experiment(request, project, subject, experiment["label"], experiment)
        raise tables.HttpError(405, "Method Not Allowed")
    if rest[0] == "resources":
        return resources.handle(request, experiment_owner(store, experiment), rest[1:])
    if rest[0] == "files":
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        return resources.listing(request, [experiment_owner(store, experiment)])
    if rest[0] == "scans":
        return _scans(request, experiment, rest[1:])
    raise tables.HttpError(404, "The requested URI was not found.")


def _scans(request: Request, experiment: sqlite3.Row, rest: list[str]) -> tables.Response:
    store = request.sandbox.store
    scans = store.all("SELECT * FROM scans WHERE experiment_id = ? ORDER BY pk", experiment["id"])
    if not rest:
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        rows = [
            {
                "xnat_imagescandata_id": s["pk"],
                "ID": s["scan_id"],
                "type": s["type"],
                "quality": s["quality"],
                "xsiType": s["xsi_type"],
                "note": s["note"],
                "series_description": s["series_description"],
                # Not populated by the sandbox (null prints as ""), but a valid column: pyxnat's
                # Scan repr asks for `columns=ID,type,frames,quality` and indexes `frames`.
                "frames": "",
                "URI": f"/data/experiments/{experiment['id']}/scans/{s['scan_id']}",
            }
            for s in scans
        ]
        return _select(rows, SCAN_COLUMNS, request)
    by_id = {s["scan_id"]: s for s in scans}
    wanted = list(by_id) if rest[0] == "ALL" else rest[0].split(",")
    if len(rest) >= 2 and rest[1] == "files":
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        owners = [scan_owner(store, experiment, s) for s in wanted if s in by_id]
        return resources.listing(request, owners)
    scan_id = rest[0]
    scan = by_id.get(scan_id)
    if len(rest) == 1:
        if request.method == "GET":
            if scan is None:
                raise _hidden()
            return tables.item_in_format(scan_node(store, experiment, scan), request.fmt)
        if not request.user.can_write(experiment["project"]):
            raise tables.HttpError(
                403,
                "Specified user account has insufficient edit "
                "privileges for experiments in this project.",
            )
        if request.method == "PUT":
            request.receive()
            if scan is not None:
                for column in ("type", "series_description", "quality", "note"):
                    value = request.param(column, f"{scan['xsi_type']}/{column}")
                    if value is not None:
                        store.run(f"UPDATE scans SET {column} = ? WHERE pk = ?", value, scan["pk"])
                return tables.text("", 200)
            store.run(
                "INSERT INTO scans (experiment_id, scan_id, type, series_description, xsi_type, "
                "quality, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                experiment["id"],
                scan_id,
                request.param("type"),
                request.param("series_description"),
                request.param("xsiType") or "xnat:otherDicomScanData",
                request.param("quality") or "usable",
                request.param("note"),
            )
            return tables.text("", 201)
        if request.method == "DELETE":
            if scan is None:
                raise _hidden()
            for resource in resources.of_owner(store, scan_owner(store, experiment, scan_id)):
                resources.remove(store, resource)
            store.run("DELETE FROM scans WHERE pk = ?", scan["pk"])
            return tables.text("")
        raise tables.HttpError(405, "Method Not Allowed")
    if scan is None:
        raise _hidden()
    if rest[1] == "resources":
        return resources.handle(request, scan_owner(store, experiment, scan_id), rest[2:])
    raise tables.HttpError(404, "The requested URI was not found.")


def _delete_experiment(store: Store, experiment: sqlite3.Row) -> None:
    folder = store.archive_root / experiment["project"] / "arc001" / experiment["label"]
    with store.transaction() as db:
        owners = [experiment["id"]] + [
            f"{experiment['id']}/{s['scan_id']}"
            for s in db.execute(
                "SELECT scan_id FROM scans WHERE experiment_id = ?", (experiment["id"],)
            ).fetchall()
        ]
        for owner in owners:
            for resource in db.execute(
                "SELECT id FROM resources WHERE owner_id = ? AND owner_kind IN "
                "('experiment', 'scan')",
                (owner,),
            ).fetchall():
                db.execute("DELETE FROM files WHERE resource_id = ?", (resource["id"],))
                db.execute("DELETE FROM resources WHERE id = ?", (resource["id"],))
        db.execute("DELETE FROM scans WHERE experiment_id = ?", (experiment["id"],))
        db.execute("DELETE FROM experiments WHERE id = ?", (experiment["id"],))
    shutil.rmtree(folder, ignore_errors=True)
    remove_empty_parents(folder.parent, store.archive_root)
    log.info("experiment %s deleted", experiment["id"])
