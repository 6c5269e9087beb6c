"""Resources (catalogs) and their files at project, subject, session and scan level (§7, §8).

A resource is a folder with a label, owned by a project, subject, experiment or scan (`Owner`);
its files are listed from the `files` table, which holds the size and MD5 computed while each
file was written. This is the model; the `…/resources/…` endpoints, uploads and extraction are
`resource_endpoints.py`.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xnat_sandbox import prefs, tables
from xnat_sandbox.store import Store, remove_empty_parents

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


@dataclass
class Owner:
    """What resources hang off: its kind and key in the `resources` table, folder and URI."""

    kind: str  # project | subject | experiment | scan
    key: str
    project: str
    root: Path  # resource folders are root/{label}
    uri: str  # /data/... of the owner, the parent of `resources/…` in file URIs
    category: str = "resources"
    #: The listings' `cat_id`: the owner's key, but a scan's own ID (its key names the session).
    cat_id: str = ""

    def __post_init__(self) -> None:
        self.cat_id = self.cat_id or self.key


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


def create(
    store: Store,
    owner: Owner,
    label: str,
    format: str | None = None,
    content: str | None = None,
    description: str | None = None,
    tags: str | None = None,
    exists_ok: bool = False,
) -> sqlite3.Row:
    """A new resource of `owner`: its folder and its row, returned as stored. `exists_ok` keeps
    a row another request inserted meanwhile instead of failing on the unique label."""
    folder = owner.root / label
    folder.mkdir(parents=True, exist_ok=True)
    store.run(
        f"INSERT {'OR IGNORE ' if exists_ok else ''}INTO resources (owner_kind, owner_id, label, "
        "format, content, description, tags, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        owner.kind,
        owner.key,
        label,
        format,
        content,
        description,
        tags,
        str(folder.relative_to(store.root)),
    )
    row = find(store, owner, label)
    assert row is not None
    return row


def ensure(store: Store, owner: Owner, label: str, **attributes: str | None) -> sqlite3.Row:
    """A resource of `owner`, created with these attributes if it does not exist yet (the way
    XNAT's own services create one, e.g. `CatalogService.createAndInsertResourceCatalog`);
    `attributes` are `create`'s: format, content, description, tags."""
    row = find(store, owner, label)
    if row is not None:
        return row
    return create(store, owner, label, exists_ok=True, **attributes)


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
    record(store, resource, relpath, len(data), hashlib.md5(data).hexdigest())
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


def remove(store: Store, resource: sqlite3.Row) -> None:
    folder = store.root / resource["path"]
    shutil.rmtree(folder, ignore_errors=True)
    with store.transaction() as db:
        db.execute("DELETE FROM files WHERE resource_id = ?", (resource["id"],))
        db.execute("DELETE FROM resources WHERE id = ?", (resource["id"],))
    remove_empty_parents(folder.parent, store.archive_root)


def catalogable(relpath: str) -> bool:
    """`CatalogUtils.XNAT_CATALOGABLE_FILE_FILTER`: a `*_catalog.xml` is never catalogued (an
    extracted one is written to disk but listed nowhere)."""
    return not PurePosixPath(relpath).name.endswith("_catalog.xml")


def record(store: Store, resource: sqlite3.Row, relpath: str, size: int, md5: str) -> None:
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
