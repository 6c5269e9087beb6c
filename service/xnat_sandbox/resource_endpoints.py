"""`…/resources[/{label}[/files[/{path}]]]` under every owner, and `…/files` listings (§7, §8).

Uploads are raw bodies or multipart; a missing resource is created on upload; `extract=true`
unpacks zip/tar/tgz/gz into the resource root; an existing file without `overwrite=true` is kept
and reported in `{"duplicates": […]}` with 200. The resources themselves are `resources.py`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sqlite3
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from xnat_sandbox import bodies, catalog, resources, tables
from xnat_sandbox.resources import Owner
from xnat_sandbox.store import Store, remove_empty_parents
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

NO_PERMISSION = "User account doesn't have permission to modify this session."
COMPRESSED = (".zip", ".zar", ".tar", ".xar", ".tgz", ".tar.gz", ".gz")


def listing(request: Request, owners: list[Owner]) -> tables.Response:
    """`…/files` over every resource of the given owners (`scans/ALL/files`, `…/files`)."""
    store = request.sandbox.store
    found = [(owner, r) for owner in owners for r in resources.of_owner(store, owner)]
    if request.fmt == "zip":
        return _zip(request, [resource for _, resource in found])
    rows = [row for owner, r in found for row in resources.file_rows(store, owner, r)]
    return resources.files_table(rows, request.fmt)


def _zip(request: Request, chosen: list[sqlite3.Row]) -> tables.Response:
    """The catalogued files of these resources as one stored zip, `{label}/{path}` each."""
    store = request.sandbox.store
    fd, tmp = tempfile.mkstemp(dir=store.spool_root, suffix=".zip")
    with open(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for resource in chosen:
            folder = store.root / resource["path"]
            for entry in store.all(
                "SELECT relpath FROM files WHERE resource_id = ?", resource["id"]
            ):
                bundle.write(folder / entry["relpath"], f"{resource['label']}/{entry['relpath']}")
    return tables.Response(200, "application/zip", file=Path(tmp), delete_file_after=True)


def handle(request: Request, owner: Owner, rest: list[str]) -> tables.Response:
    """`{owner}/resources[/{label}[/files[/{path}]]]` for every method (§8)."""
    store = request.sandbox.store
    if not rest:
        if request.method != "GET":
            raise tables.HttpError(405, "Method Not Allowed")
        rows = [resources.resource_row(store, owner, r) for r in resources.of_owner(store, owner)]
        return tables.table(rows, resources.RESOURCE_COLUMNS, request.fmt, title="Resources")
    label = rest[0]
    resource = resources.find(store, owner, label)
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
                return _zip(request, [resource])
            return resources.files_table(resources.file_rows(store, owner, resource), request.fmt)
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
        _create(request, owner, label)
        return tables.text("")
    if request.method == "DELETE":
        if resource is None:
            raise tables.HttpError(404, f"Unable to find resource {label}.")
        resources.remove(store, resource)
        return tables.text("")
    raise tables.HttpError(405, "Method Not Allowed")


def _create(request: Request, owner: Owner, label: str) -> sqlite3.Row:
    """The resource a PUT or POST names, with the attributes it gives (a `format` that names a
    representation, `json` … `zip`, is not the resource's format)."""
    fmt = request.param("format")
    return resources.create(
        request.sandbox.store,
        owner,
        label,
        fmt if fmt not in ("json", "xml", "html", "csv", "txt", "zip") else None,
        request.param("content"),
        request.param("description"),
        request.param("tags"),
    )


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
        resource = _create(request, owner, label)
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
                if not resources.catalogable(safe):  # stored, never catalogued: not in any listing
                    continue
                resources.record(store, resource, safe, size, md5)
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
        resources.record(store, resource, safe, upload.size, upload.md5)
        stored += 1
    log.debug("resource %s: %d file(s) stored, %d duplicate(s)", label, stored, len(duplicates))
    if duplicates:
        return tables.Response(200, tables.HTML, json.dumps({"duplicates": duplicates}).encode())
    return tables.text("")


def _exists(store: Store, resource: sqlite3.Row, relpath: str) -> bool:
    return (
        store.one(
            "SELECT 1 FROM files WHERE resource_id = ? AND relpath = ?", resource["id"], relpath
        )
        is not None
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
