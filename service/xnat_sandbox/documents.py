"""Projects, subjects, experiments and scans as XNAT shows them (§7): listing rows, items
(JSON `items` / XML documents), the owners their resources hang from, and the `columns=`
selection of a listing.

Pure reads of the store: the endpoints that walk the URLs are `entities.py` (projects and
subjects) and `experiments.py` (experiments and scans).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from xnat_sandbox import resources, tables
from xnat_sandbox.store import Store
from xnat_sandbox.wire import Request

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


def field_params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Query fields to store: shortcuts (`gender`) and XML paths (`…/demographics[…]/gender`)."""
    out = {}
    for key, values in request.params.items():
        if key in _CONTROL or not values:
            continue
        short = key.rsplit("/", 1)[-1]
        if short in allowed:
            out[short] = values[-1]
    return out


def select(rows: list[dict[str, Any]], default: list[str], request: Request) -> tables.Response:
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
    """A scan's resources (DICOM, SNAPSHOTS, NIFTI …): `{session}/SCANS/{scan}/{label}`."""
    folder = store.session_folder(experiment["project"], experiment["label"]) / "SCANS" / scan_id
    uri = f"/data/experiments/{experiment['id']}/scans/{scan_id}"
    key = f"{experiment['id']}/{scan_id}"
    return resources.Owner("scan", key, experiment["project"], folder, uri, "scans", scan_id)


def experiment_owner(store: Store, experiment: sqlite3.Row) -> resources.Owner:
    """The session's own resources (behav, physio …): `{session}/RESOURCES/{label}`."""
    folder = store.session_folder(experiment["project"], experiment["label"]) / "RESOURCES"
    uri = f"/data/experiments/{experiment['id']}"
    return resources.Owner("experiment", experiment["id"], experiment["project"], folder, uri)


def subject_owner(store: Store, subject: sqlite3.Row) -> resources.Owner:
    folder = store.archive_root / subject["project"] / "subjects" / subject["id"] / "resources"
    uri = f"/data/projects/{subject['project']}/subjects/{subject['id']}"
    return resources.Owner("subject", subject["id"], subject["project"], folder, uri)


def project_owner(store: Store, project: sqlite3.Row) -> resources.Owner:
    folder = store.archive_root / project["id"] / "resources"
    uri = f"/data/projects/{project['id']}"
    return resources.Owner("project", project["id"], project["id"], folder, uri)


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
