"""Building a prearchive session: its session document and the move to READY (§4.4).

`build` is `PrearchiveRebuildHandler.rebuild`: the session document `{TS}/{folder}.xml` is
written from the scans and files the importer recorded (`prearchive.py`), with the session's
and each scan's xsi:type chosen by modality as dicom-xnat's session builders do. The importer
builds before answering an upload with `dest`, the endpoints on `action=build|commit`, the
archive service for an unbuilt session, and the rebuilder once a session has been idle.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from typing import Any

from xnat_sandbox import prearchive, tables
from xnat_sandbox.context import SiteContext
from xnat_sandbox.store import Store

log = logging.getLogger(__name__)


def session_xsi_type(modalities: set[str]) -> str:
    if "PT" in modalities and "MR" in modalities:
        return "xnat:petmrSessionData"
    for modality, xsi in (("MR", "mr"), ("CT", "ct"), ("PT", "pet"), ("US", "us")):
        if modality in modalities:
            return f"xnat:{xsi}SessionData"
    return "xnat:otherDicomSessionData"


def scan_xsi_type(modality: str) -> str:
    known = {"MR": "mr", "CT": "ct", "PT": "pet", "US": "us", "SR": "sr", "SC": "sc"}
    return f"xnat:{known[modality]}ScanData" if modality in known else "xnat:otherDicomScanData"


def session_node(store: Store, row: sqlite3.Row) -> dict[str, Any]:
    """The session document of a prearchive session as an item node (XML when built)."""
    scans = prearchive.scans_of(store, row["pk"])
    xsi = session_xsi_type({s["modality"] for s in scans})
    scan_nodes = [_scan_node(s) for s in scans]
    fields = {
        "label": row["name"],
        "project": row["project"],
        "subject_ID": row["subject"],
        "UID": row["tag"],
        "date": row["scan_date"],
        "time": row["scan_time"],
        "visit": row["visit"],
    }
    return tables.item(xsi, fields, [{"field": "scans/scan", "items": scan_nodes}])


def _scan_node(scan: sqlite3.Row) -> dict[str, Any]:
    scan_id = scan["scan_id"]
    catalog = tables.item(
        "xnat:resourceCatalog",
        {
            "label": "DICOM",
            "format": "DICOM",
            "content": "RAW",
            "URI": f"SCANS/{scan_id}/DICOM/scan_{scan_id}_catalog.xml",
            "file_count": scan["file_count"],
            "file_size": scan["file_size"],
        },
    )
    fields = {
        "ID": scan_id,
        "type": scan["series_description"],
        "UID": scan["series_uid"],
        "series_description": scan["series_description"],
        "modality": scan["modality"],
    }
    return tables.item(
        scan_xsi_type(scan["modality"]), fields, [{"field": "file", "items": [catalog]}]
    )


def build(sandbox: SiteContext, row: sqlite3.Row) -> sqlite3.Row | None:
    """Write the session document and make the session READY (ERROR if it holds no files).

    `PrearchiveRebuildHandler.rebuild`: QUEUED_BUILDING, then BUILDING while `buildSession`
    reads the files (the slow-build fault's delay is spent here), then READY — or RECEIVING if
    new data arrived meanwhile (RECEIVING_INTERRUPT). Returns None when the row was deleted
    while it was being built (BUILDING is not a locked status, so a DELETE may come in).
    """
    store = sandbox.store
    prearchive.set_status(store, row["pk"], "QUEUED_BUILDING")
    prearchive.set_status(store, row["pk"], "BUILDING")
    if sandbox.faults.build_delay > 0:
        sandbox.faults.build_released.wait(sandbox.faults.build_delay)
        if store.one("SELECT pk FROM prearchive WHERE pk = ?", row["pk"]) is None:
            log.info("prearchive %s: deleted while it was being built", prearchive.uri(row))
            return None
    scans = prearchive.scans_of(store, row["pk"])
    if not any(s["file_count"] for s in scans):
        prearchive.set_status(store, row["pk"], "ERROR")
        log.info("prearchive %s: build failed, no files", prearchive.uri(row))
        return prearchive.get(store, row["pk"])
    document = prearchive.session_dir(store, row).with_name(row["folder"] + ".xml")
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_bytes(tables.item_xml(session_node(store, row)))
    uploaded = datetime.datetime.strptime(row["timestamp"][:18], "%Y%m%d_%H%M%S%f").timestamp()
    with store.transaction() as db:
        current = db.execute("SELECT status FROM prearchive WHERE pk = ?", (row["pk"],)).fetchone()
        status = "RECEIVING" if current["status"] == "RECEIVING_INTERRUPT" else "READY"
        db.execute(
            "UPDATE prearchive SET status = ?, built = 1, uploaded = ? WHERE pk = ?",
            (status, uploaded, row["pk"]),
        )
    log.debug("prearchive %s: built, %d scans", prearchive.uri(row), len(scans))
    return prearchive.get(store, row["pk"])
