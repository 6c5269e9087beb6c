"""Scan snapshots: the SNAPSHOTS resource XNAT adds to a scan the first time someone views it.

Viewing a session in XNAT's web UI renders its scan table, whose script asks for each scan's
snapshot and thumbnail (`scanTable.js` `loadSnapshotImageNoBlocking`: HEAD
`/xapi/projects/{P}/experiments/{E}/scan/{S}/snapshot`, then the `/thumbnail` image). The
`SnapshotGenerationApi` answers from the scan's SNAPSHOTS resource and, when the image is not
there yet, `SnapshotProvider` creates the resource (label SNAPSHOTS, format GIF, content
SNAPSHOTS, "Snapshots for session E scan S") and catalogues the generated GIF in it:
`{E}_{S}_qc.gif` (content ORIGINAL) and `{E}_{S}_qc_t.gif` (THUMBNAIL), or with a montage view
`{E}_{S}_{cols}x{rows}_qc.gif` (`{cols}X{rows}`) (`SnapshotResourceGenerator` name templates).

From then on the scan's file listings (`scans/ALL/files`) include those GIFs with `collection`
SNAPSHOTS: a client that counts every row as its own DICOM would see extra files.

The sandbox's GIF is a 1×1 image whose grey level is derived from the series; XNAT renders a
montage of the real slices. `Sandbox.view_session` stands for a browser showing the session.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3

from xnat_sandbox import anonymize, documents, resources, tables
from xnat_sandbox.store import Store
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

LABEL = "SNAPSHOTS"
FORMAT = "GIF"

_PATH = re.compile(
    r"^/xapi(?:/projects/(?P<project>[^/]+)(?:/subjects/(?P<subject>[^/]+))?)?"
    r"/experiments/(?P<session>[^/]+)/scan/(?P<scan>[^/]+)/(?P<kind>snapshot|thumbnail)"
    r"(?:/(?P<view>[^/]+))?/?$"
)
_VIEW = re.compile(r"^\s*(\d+)\s*X\s*(\d+)\s*$")


def gif(shade: int) -> bytes:
    """A 1×1 GIF89a whose single pixel has grey level `shade` (0-255)."""
    level = bytes([shade & 0xFF]) * 3
    return (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00"  # 1×1, global colour table of 2 entries
        + level
        + b"\xff\xff\xff"
        + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # image descriptor
        + b"\x02\x02\x44\x01\x00"  # LZW: clear, index 0, end
        + b";"
    )


def names(session_id: str, scan_id: str, kind: str, view: str | None) -> tuple[str, str]:
    """(file name, content) as `SnapshotResourceGenerator` names them; `view` is `{cols}X{rows}`."""
    match = _VIEW.match(view or "")
    cols, rows = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
    single = cols == 1 and rows == 1
    dims = "" if single else f"_{cols}x{rows}"
    if kind == "snapshot":
        return f"{session_id}_{scan_id}{dims}_qc.gif", "ORIGINAL" if single else f"{cols}X{rows}"
    content = "THUMBNAIL" if single else f"{cols}X{rows}_THUMBNAIL"
    return f"{session_id}_{scan_id}{dims}_qc_t.gif", content


def provide(
    store: Store, experiment: sqlite3.Row, scan_id: str, kind: str, view: str | None
) -> bytes | None:
    """The snapshot or thumbnail of one scan, created in its SNAPSHOTS resource if missing.

    None when the scan has no DICOM to render (`isUnsnapshottable`).
    """
    owner = documents.scan_owner(store, experiment, scan_id)
    dicom = resources.find(store, owner, "DICOM")
    if dicom is None or store.resource_stats(dicom["id"])[0] == 0:
        return None
    name, content = names(experiment["id"], scan_id, kind, view)
    snapshots = resources.ensure(
        store,
        owner,
        LABEL,
        format=FORMAT,
        content=LABEL,
        description=f"Snapshots for session {experiment['id']} scan {scan_id}",
    )
    existing = store.root / snapshots["path"] / name
    known = store.one(
        "SELECT 1 FROM files WHERE resource_id = ? AND relpath = ?", snapshots["id"], name
    )
    if known is not None and existing.is_file():
        return existing.read_bytes()
    scan = store.one(
        "SELECT uid FROM scans WHERE experiment_id = ? AND scan_id = ?", experiment["id"], scan_id
    )
    shade = hashlib.md5(((scan["uid"] if scan else "") or scan_id).encode()).digest()[0]
    data = gif(shade)
    resources.store_bytes(store, snapshots, name, data, FORMAT, content)
    log.info("snapshot %s of %s scan %s created", content, experiment["id"], scan_id)
    return data


def view_session(store: Store, experiment: sqlite3.Row) -> list[str]:
    """What a browser showing the session does: snapshot and thumbnail of every scan.

    Returns the scans that got them (scans without DICOM have none, as in XNAT).
    """
    done = []
    for scan in store.all(
        "SELECT scan_id FROM scans WHERE experiment_id = ? ORDER BY pk", experiment["id"]
    ):
        if provide(store, experiment, scan["scan_id"], "snapshot", None) is not None:
            provide(store, experiment, scan["scan_id"], "thumbnail", None)
            done.append(scan["scan_id"])
    return done


def handle(request: Request) -> tables.Response | None:
    """`GET /xapi/[projects/P/[subjects/S/]]experiments/E/scan/S/{snapshot|thumbnail}[/VIEW]`."""
    match = _PATH.match(request.path)
    if match is None:
        return None
    try:
        if request.method != "GET":
            raise anonymize.XapiError(405, f"Request method '{request.method}' not supported")
        store = request.sandbox.store
        experiment = store.experiment(match["project"], match["session"])
        if experiment is None:
            raise anonymize.XapiError(
                404, f"Unable to find requested file or resource: experiment {match['session']}"
            )
        if not request.user.can_read(experiment["project"]):
            raise anonymize.XapiError(403)
        data = provide(store, experiment, match["scan"], match["kind"], match["view"])
        if data is None:
            raise anonymize.XapiError(
                404,
                f"Unable to find requested file or resource: {match['kind']} SessionId: "
                f"{experiment['id']}, ScanId: {match['scan']}",
            )
    except anonymize.XapiError as error:
        return error.response()
    return tables.Response(200, "image/gif", data)
