"""Archived experiments and their scans (§7): `…/experiments/E` and everything below it but
resources (`resources.py`), reached from the walk in `entities.py`.

An experiment is created or updated by PUT (`?xsiType=xnat:mrSessionData`), renamed by a new
`label` (its folder and resource paths follow), listed or queried by any known column, and
deleted with its scans and their resources. A GET on something the user may not read answers
404 (hidden, §1.8); a write without permission 403.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from typing import Any

from xnat_sandbox import documents, resource_endpoints, resources, tables
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.wire import Request, hidden, require_write

log = logging.getLogger(__name__)

EDIT_REFUSED = (
    "Specified user account has insufficient edit privileges for experiments in this project."
)


def put(
    request: Request,
    project: sqlite3.Row,
    subject: sqlite3.Row,
    ref: str,
    experiment: sqlite3.Row | None,
) -> tables.Response:
    """PUT an experiment (`?xsiType=xnat:mrSessionData`): 201 + new ID, or 200 + ID (§7)."""
    store = request.sandbox.store
    fields = documents.field_params(request, documents.EXPERIMENT_FIELDS)
    xsi_type = request.param("xsiType")
    if experiment is not None:
        new_label = request.param("label")
        if new_label and new_label != experiment["label"]:
            if store.experiment(project["id"], new_label) is not None:
                raise tables.HttpError(409, "Specified label is already in use.")
            old = store.session_folder(project["id"], experiment["label"])
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


def listing(request: Request, where: str, value: str) -> tables.Response:
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    store = request.sandbox.store
    rows = [
        documents.experiment_row(store, e)
        for e in store.all(f"SELECT * FROM experiments WHERE {where} ORDER BY id", value)
    ]
    return documents.select(rows, documents.EXPERIMENT_COLUMNS, request)


def query(request: Request) -> tables.Response:
    """`GET /data/experiments?project=P&xsiType=…&label=…`: filters on any known column."""
    if request.method != "GET":
        raise tables.HttpError(405, "Method Not Allowed")
    store = request.sandbox.store
    rows = [
        documents.experiment_row(store, e)
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
    default = [*documents.EXPERIMENT_COLUMNS[:-1], "subject_ID", "subject_label", "URI"]
    return documents.select(rows, default, request)


def handle(request: Request, experiment: sqlite3.Row, rest: list[str]) -> tables.Response:
    store = request.sandbox.store
    if not rest:
        if request.method == "GET":
            return tables.item_in_format(documents.experiment_node(store, experiment), request.fmt)
        require_write(request, experiment["project"], EDIT_REFUSED)
        if request.method == "DELETE":
            delete(store, experiment)
            return tables.text("")
        if request.method == "PUT":
            request.receive()
            subject = store.one("SELECT * FROM subjects WHERE id = ?", experiment["subject_id"])
            project = store.project(experiment["project"])
            assert subject is not None and project is not None
            return put(request, project, subject, experiment["label"], experiment)
        raise tables.HttpError(405, "Method Not Allowed")
    if rest[0] == "resources":
        return resource_endpoints.handle(
            request, documents.experiment_owner(store, experiment), rest[1:]
        )
    if rest[0] == "files":
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        return resource_endpoints.listing(request, [documents.experiment_owner(store, experiment)])
    if rest[0] == "scans":
        return _scans(request, experiment, rest[1:])
    raise tables.HttpError(404, "The requested URI was not found.")


def _scans(request: Request, experiment: sqlite3.Row, rest: list[str]) -> tables.Response:
    store = request.sandbox.store
    if rest and rest[0] != "ALL" and "," not in rest[0]:
        # One scan asked for (its catalog, a file): only its row, by the (experiment_id,
        # scan_id) index, as XNAT looks up one scan. Reading every scan of the session for each
        # such request made a read-back of N scans cost N² rows (2,236 scans: 5 million).
        scans = store.all(
            "SELECT * FROM scans WHERE experiment_id = ? AND scan_id = ?", experiment["id"], rest[0]
        )
    else:
        scans = store.all(
            "SELECT * FROM scans WHERE experiment_id = ? ORDER BY pk", experiment["id"]
        )
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
        return documents.select(rows, documents.SCAN_COLUMNS, request)
    by_id = {s["scan_id"]: s for s in scans}
    wanted = list(by_id) if rest[0] == "ALL" else rest[0].split(",")
    if len(rest) >= 2 and rest[1] == "files":
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        owners = [documents.scan_owner(store, experiment, s) for s in wanted if s in by_id]
        return resource_endpoints.listing(request, owners)
    scan_id = rest[0]
    scan = by_id.get(scan_id)
    if len(rest) == 1:
        if request.method == "GET":
            if scan is None:
                raise hidden()
            return tables.item_in_format(documents.scan_node(store, experiment, scan), request.fmt)
        require_write(request, experiment["project"], EDIT_REFUSED)
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
                raise hidden()
            for resource in resources.of_owner(
                store, documents.scan_owner(store, experiment, scan_id)
            ):
                resources.remove(store, resource)
            store.run("DELETE FROM scans WHERE pk = ?", scan["pk"])
            return tables.text("")
        raise tables.HttpError(405, "Method Not Allowed")
    if scan is None:
        raise hidden()
    if rest[1] == "resources":
        return resource_endpoints.handle(
            request, documents.scan_owner(store, experiment, scan_id), rest[2:]
        )
    raise tables.HttpError(404, "The requested URI was not found.")


def delete(store: Store, experiment: sqlite3.Row) -> None:
    folder = store.session_folder(experiment["project"], experiment["label"])
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
