"""Resources (catalogs) and their files at project, subject, session and scan level (§7, §8).

A resource is a folder with a label; its files are listed from the `files` table, which holds the
size and MD5 computed while each file was written. Uploads are raw bodies or multipart; a missing
resource is created on upload; `extract=true` unpacks zip/tar/tgz/gz into the resource root; an
existing file without `overwrite=true` is kept and reported in `{"duplicates": […]}` with 200.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import sqlite3
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from xnat_sandbox import bodies, catalog, prefs, tables
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

RESOURCE_COLUMNS = [
    "xnat_abstractresource_id",
    "label",
    "element_name",
    "category",
    "cat_id",
    "cat_desc",
    "file_count",
    "file_size",
    "format",
    "content",
    "tags",
]
FILE_COLUMNS = [
    "Name",
    "Size",
    "URI",
    "collection",
    "file_tags",
    "file_format",
    "file_content",
    "cat_ID",
    "digest",
]
NO_PERMISSION = "User account doesn't have permission to modify this session."
COMPRESSED = (".zip", ".zar", ".tar", ".xar", ".tgz", ".tar.gz", ".gz")


@dataclass
class Owner:
    """What resources hang off: its kind and key in the `resources` table, folder and URI."""

    kind: str  # project | subject | experiment | scan
    key: str
    project: str
    root: Path  # resource folders are root/{label}
    uri: str  # /data/... of the owner, the parent of `resources/…` in file URIs
    category: str = "resources"
    cat_id: str = ""


def find(store: Store, owner: Owner, ref: str) -> sqlite3.Row | None:
    """A resource of an owner by label or by numeric `xnat_abstractresource_id`."""
    row = store.one(
        "SELECT * FROM resources WHERE owner_kind = ? AND owner_id = ? AND label = ?",
        owner.kind,
        owner.key,
        ref,
    )
    if row is None and ref.isdigit():
        row = store.one(
            "SELECT * FROM resources WHERE owner_kind = ? AND owner_id = ? AND id = ?",
            owner.kind,
            owner.key,
            int(ref),
        )
    return row


def of_owner(store: Store, owner: Owner) -> list[sqlite3.Row]:
    return store.all(
        "SELECT * FROM resources WHERE owner_kind = ? AND owner_id = ? ORDER BY id",
        owner.kind,
        owner.key,
    )


def create(store: Store, owner: Owner, label: str, request: Request) -> sqlite3.Row:
    folder = owner.root / label
    folder.mkdir(parents=True, exist_ok=True)
    store.run(
        "INSERT INTO resources (owner_kind, owner_id, label, format, content, description, tags, "
        "path) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        owner.kind,
        owner.key,
        label,
        request.param("format")
        if request.param("format") not in ("json", "xml", "html", "csv", "txt", "zip")
        else None,
        request.param("content"),
        request.param("description"),
        request.param("tags"),
        str(folder.relative_to(store.root)),
    )
    row = find(store, owner, label)
    assert row is not None
    return row


def ensure(
    store: Store,
    owner: Owner,
    label: str,
    format: str | None = None,
    content: str | None = None,
    description: str | None = None,
) -> sqlite3.Row:
    """A resource of `owner`, created with these attributes if it does not exist yet (the way
    XNAT's own services create one, e.g. `CatalogService.createAndInsertResourceCatalog`)."""
    row = find(store, owner, label)
    if row is not None:
        return row
    folder = owner.root / label
    folder.mkdir(parents=True, exist_ok=True)
    store.run(
        "INSERT OR IGNORE INTO resources (owner_kind, owner_id, label, format, content, "
        "description, path) VALUES (?, ?, ?, ?, ?, ?, ?)",
        owner.kind,
        owner.key,
        label,
        format,
        content,
        description,
        str(folder.relative_to(store.root)),
    )
    row = find(store, owner, label)
    assert row is not None
    return row


def store_bytes(
    store: Store,
    resource: sqlite3.Row,
    relpath: str,
    data: bytes,
    format: str | None = None,
    content: str | None = None,
) -> None:
    """Write one file into a resource and catalogue it (digest per the `checksums` preference)."""
    target = store.root / resource["path"] / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    partial.write_bytes(data)
    partial.replace(target)
    _record(store, resource, relpath, len(data), hashlib.md5(data).hexdigest())
    store.run(
        "UPDATE files SET format = ?, content = ? WHERE resource_id = ? AND relpath = ?",
        format,
        content,
        resource["id"],
        relpath,
    )


def node(store: Store, resource: sqlite3.Row) -> dict[str, object]:
    """Item JSON of a resource (the `file` child of scans and sessions)."""
    count, size = store.resource_stats(resource["id"])
    return tables.item(
        "xnat:resourceCatalog",
        {
            "label": resource["label"],
            "format": resource["format"],
            "content": resource["content"],
            "description": resource["description"],
            "tags": resource["tags"],
            "xnat_abstractresource_id": resource["id"],
            "file_count": count,
            "file_size": size,
            "URI": resource["path"],
        },
    )


def resource_row(store: Store, owner: Owner, resource: sqlite3.Row) -> dict[str, object]:
    count, size = store.resource_stats(resource["id"])
    return {
        "xnat_abstractresource_id": resource["id"],
        "label": resource["label"],
        "element_name": "xnat:resourceCatalog",
        "category": owner.category,
        "cat_id": owner.cat_id,
        "cat_desc": "",
        "file_count": count,
        "file_size": size,
        "format": resource["format"],
        "content": resource["content"],
        "tags": resource["tags"],
    }


def file_rows(store: Store, owner: Owner, resource: sqlite3.Row) -> list[dict[str, object]]:
    """Rows of the §7 file listing, with real sizes and MD5 digests."""
    out = []
    for entry in store.all(
        "SELECT * FROM files WHERE resource_id = ? ORDER BY relpath", resource["id"]
    ):
        out.append(
            {
                "Name": PurePosixPath(entry["relpath"]).name,
                "Size": entry["size"],
                "URI": f"{owner.uri}/resources/{resource['id']}/files/{entry['relpath']}",
                "collection": resource["label"],
                "file_tags": "",
                "file_format": entry["format"] or resource["format"] or "",
                "file_content": entry["content"] or resource["content"] or "",
                "cat_ID": resource["id"],
                "digest": entry["md5"],
            }
        )
    return out


def files_table(rows: list[dict[str, object]], fmt: str | None) -> tables.Response:
    return tables.table(
        rows, FILE_COLUMNS, fmt, title="Files", column_props=[{"key": "URI", "serverRoot": ""}]
    )


def listing(request: Request, owners: list[Owner]) -> tables.Response:
    """`…/files` over every resource of the given owners (`scans/ALL/files`, `…/files`)."""
    store = request.sandbox.store
    rows: list[dict[str, object]] = []
    for owner in owners:
        for resource in of_owner(store, owner):
            rows.extend(file_rows(store, owner, resource))
    if request.fmt == "zip":
        return _zip(request, owners)
    return files_table(rows, request.fmt)


def _zip(request: Request, owners: list[Owner]) -> tables.Response:
    store = request.sandbox.store
    fd, tmp = tempfile.mkstemp(dir=store.spool_root, suffix=".zip")
    with open(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for owner in owners:
            for resource in of_owner(store, owner):
                folder = store.root / resource["path"]
                for entry in store.all(
                    "SELECT relpath FROM files WHERE resource_id = ?", resource["id"]
                ):
                    arcname = f"{resource['label']}/{entry['relpath']}"
                    bundle.write(folder / entry["relpath"], arcname)
    return tables.Response(200, "application/zip", file=Path(tmp), delete_file_after=True)


def handle(request: Request, owner: Owner, rest: list[str]) -> tables.Response:
    """`{owner}/resources[/{label}[/files[/{path}]]]` for every method (§8)."""
    store = request.sandbox.store
    if not rest:
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        rows = [resource_row(store, owner, r) for r in of_owner(store, owner)]
        return tables.table(rows, RESOURCE_COLUMNS, request.fmt, title="Resources")
    label = rest[0]
    resource = find(store, owner, label)
    if len(rest) == 1:
        return _resource(request, owner, label, resource)
    if rest[1] != "files":
        if request.method in ("PUT", "POST"):
            raise tables.HttpError(
                400,
                "This resource works at the catalog level only and does not accept file paths.  "
                "To work with the resource files, append '/files' after the resource ID.",
            )
        raise tables.HttpError(404, "The requested URI was not found.")
    path = "/".join(rest[2:])
    if request.method == "GET":
        if resource is None:
            raise tables.HttpError(404, f"Unable to find resource {label}.")
        if not path:
            if request.fmt == "zip":
                return _zip_one(request, resource)
            return files_table(file_rows(store, owner, resource), request.fmt)
        entry = store.one(
            "SELECT * FROM files WHERE resource_id = ? AND relpath = ?", resource["id"], path
        )
        target = store.root / resource["path"] / path
        if entry is None or not target.is_file():
            raise tables.HttpError(404, f"Unable to find file {path}.")
        return tables.Response(200, "application/octet-stream", file=target)
    if not request.user.can_write(owner.project):
        raise tables.HttpError(403, NO_PERMISSION)
    if request.method == "DELETE":
        if resource is None or not path:
            raise tables.HttpError(404, f"Unable to find file {path} in resource {label}.")
        return _delete_file(store, resource, path)
    if request.method in ("PUT", "POST"):
        return _upload(request, owner, label, resource, path)
    raise tables.HttpError(405, "Method Not Allowed")


def _zip_one(request: Request, resource: sqlite3.Row) -> tables.Response:
    store = request.sandbox.store
    fd, tmp = tempfile.mkstemp(dir=store.spool_root, suffix=".zip")
    folder = store.root / resource["path"]
    with open(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for entry in store.all("SELECT relpath FROM files WHERE resource_id = ?", resource["id"]):
            bundle.write(folder / entry["relpath"], f"{resource['label']}/{entry['relpath']}")
    return tables.Response(200, "application/zip", file=Path(tmp), delete_file_after=True)


def _resource(
    request: Request, owner: Owner, label: str, resource: sqlite3.Row | None
) -> tables.Response:
    store = request.sandbox.store
    if request.method == "GET":
        # `CatalogResource.represent`: the catalog document itself, text/xml, whatever `format`.
        if resource is None:
            raise tables.HttpError(404, "Unable to find the specified catalog.")
        return tables.Response(200, "text/xml", catalog.document(store, resource, owner.project))
    if not request.user.can_write(owner.project):
        raise tables.HttpError(403, NO_PERMISSION)
    if request.method in ("PUT", "POST"):
        if resource is not None:
            raise tables.HttpError(409, "Specified resource already exists.")
        request.receive()
        create(store, owner, label, request)
        return tables.text("")
    if request.method == "DELETE":
        if resource is None:
            raise tables.HttpError(404, f"Unable to find resource {label}.")
        remove(store, resource)
        return tables.text("")
    raise tables.HttpError(405, "Method Not Allowed")


def remove(store: Store, resource: sqlite3.Row) -> None:
    folder = store.root / resource["path"]
    shutil.rmtree(folder, ignore_errors=True)
    with store.transaction() as db:
        db.execute("DELETE FROM files WHERE resource_id = ?", (resource["id"],))
        db.execute("DELETE FROM resources WHERE id = ?", (resource["id"],))
    remove_empty_parents(folder.parent, store.archive_root)


def _delete_file(store: Store, resource: sqlite3.Row, path: str) -> tables.Response:
    entry = store.one(
        "SELECT * FROM files WHERE resource_id = ? AND relpath = ?", resource["id"], path
    )
    if entry is None:
        raise tables.HttpError(404, f"Unable to find file {path}.")
    target = store.root / resource["path"] / path
    target.unlink(missing_ok=True)
    store.run("DELETE FROM files WHERE resource_id = ? AND relpath = ?", resource["id"], path)
    remove_empty_parents(target.parent, store.root / resource["path"])
    return tables.text("")


def _safe(relpath: str) -> str | None:
    parts = [p for p in PurePosixPath(relpath.replace("\\", "/")).parts if p not in ("", "/")]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    return "/".join(parts)


def _upload(
    request: Request, owner: Owner, label: str, resource: sqlite3.Row | None, path: str
) -> tables.Response:
    """PUT/POST files: raw or multipart, auto-create, extract, duplicates (§8.2)."""
    store = request.sandbox.store
    received = request.receive(
        raw_name=PurePosixPath(path).name if path else None, raw_any_type=True
    )
    if not received.uploads:
        raise tables.HttpError(
            400,
            "You tried to PUT to this service, but didn't provide any data (found request entity "
            "size of 0). Perhaps you meant to use the inbody=true parameter, or you can try to PUT "
            "with the query-string parameter inbody=true or use multipart/form-data encoding.",
        )
    if resource is None:
        resource = create(store, owner, label, request)
    overwrite = request.flag("overwrite")
    folder = store.root / resource["path"]
    duplicates: list[str] = []
    stored = 0
    for upload in received.uploads:
        name = path if path and len(received.uploads) == 1 else upload.name
        if request.flag("extract") and name.lower().endswith(COMPRESSED):
            for relpath, stream in _extract(upload.path, name):
                safe = _safe(relpath)
                if safe is None:
                    continue
                # FileExtractor: a file already on disk is a duplicate (catalogued or not)
                if (folder / safe).exists() and not overwrite:
                    duplicates.append(safe)
                    continue
                size, md5 = _write_stream(folder / safe, stream)
                if not catalogable(safe):  # stored, never catalogued: not in any listing
                    continue
                _record(store, resource, safe, size, md5)
                stored += 1
            continue
        safe = _safe(name)
        if safe is None:
            raise tables.HttpError(400, f"Invalid file name {name}")
        if _exists(store, resource, safe) and not overwrite:
            duplicates.append(safe)
            continue
        (folder / safe).parent.mkdir(parents=True, exist_ok=True)
        upload.path.replace(folder / safe)
        _record(store, resource, safe, upload.size, upload.md5)
        stored += 1
    log.debug("resource %s: %d file(s) stored, %d duplicate(s)", label, stored, len(duplicates))
    if duplicates:
        return tables.Response(200, tables.HTML, json.dumps({"duplicates": duplicates}).encode())
    return tables.text("")


def catalogable(relpath: str) -> bool:
    """`CatalogUtils.XNAT_CATALOGABLE_FILE_FILTER`: a `*_catalog.xml` is never catalogued (an
    extracted one is written to disk but listed nowhere)."""
    return not PurePosixPath(relpath).name.endswith("_catalog.xml")


def _exists(store: Store, resource: sqlite3.Row, relpath: str) -> bool:
    return (
        store.one(
            "SELECT 1 FROM files WHERE resource_id = ? AND relpath = ?", resource["id"], relpath
        )
        is not None
    )


def _record(store: Store, resource: sqlite3.Row, relpath: str, size: int, md5: str) -> None:
    """Catalogue one uploaded file; its digest only while the `checksums` preference is on
    (`CatalogUtils.updateExistingCatEntry`: `digest = getChecksumConfiguration() ? getHash(f)`)."""
    if not prefs.flag(store, "checksums"):
        md5 = ""
    store.run(
        "INSERT OR REPLACE INTO files (resource_id, relpath, size, md5) VALUES (?, ?, ?, ?)",
        resource["id"],
        relpath,
        size,
        md5,
    )


def _write_stream(target: Path, stream: IO[bytes]) -> tuple[int, str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    size = 0
    with target.open("wb") as out:
        while chunk := stream.read(bodies.CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def _extract(archive: Path, name: str) -> Iterator[tuple[str, IO[bytes]]]:
    """Entries of an uploaded archive, by the name's extension (`ZipUtils`)."""
    lower = name.lower()
    try:
        if lower.endswith((".zip", ".zar")):
            with zipfile.ZipFile(archive) as bundle:
                for info in bundle.infolist():
                    if not info.is_dir():
                        with bundle.open(info) as stream:
                            yield info.filename, stream
        elif lower.endswith((".tar", ".xar", ".tgz", ".tar.gz")):
            mode = "r:" if lower.endswith((".tar", ".xar")) else "r:gz"
            with tarfile.open(archive, mode) as bundle:
                for member in bundle:
                    stream = bundle.extractfile(member) if member.isfile() else None
                    if stream is not None:
                        with stream:
                            yield member.name, stream
        else:
            with gzip.open(archive, "rb") as stream:
                yield PurePosixPath(name).name[: -len(".gz")], stream  # type: ignore[misc]
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as error:
        raise tables.HttpError(400, f"Unable to extract {name}: {error}") from error
