"""The catalog document of a resource: what `GET …/resources/{label|ID}` answers.

XNAT's `CatalogResource.represent` (XNATApplication routes `…/resources/{RESOURCE_ID}`, every
archive URI form) loads the resource's catalog with `CatalogUtils.CatalogData.getOrCreateAndClean`
and writes the bean itself (`BeanRepresentation(catalogData.catBean, TEXT_XML)`), whatever
`format` the request asks for. It is the cheapest request that lists the SOPInstanceUIDs XNAT
catalogued for a scan: one request per scan, no file read.

The shape follows XNAT's catalog schema (`xnat-data-models` `schemas/catalog/catalog.xsd`,
namespace `http://nrg.wustl.edu/catalog`) and the generated beans' `toXML` (`BaseElement`):

* a scan's DICOM resource is a `cat:DCMCatalog` (dicom-xnat `CatalogBuilder` builds a
  `CatDcmcatalogBean`) whose `UID` is the SeriesInstanceUID (`CatalogAttributes`); every file is
  `<cat:entry xsi:type="cat:dcmEntry">` with `UID` ← SOPInstanceUID and `instanceNumber` ←
  InstanceNumber (`ImageFileAttributes`), `URI` the path relative to the catalog, `ID` that same
  relative path and `format="DICOM"` (`CatalogUtils.formalizeCatalog`), and `digest` the MD5 when
  the `checksums` preference was on when the file was catalogued (`setChecksum`);
* any other resource is a `cat:Catalog` of plain `cat:entry` elements with `URI`, `ID`,
  `cachePath`, `name`, `digest`, `format`/`content` and a `SIZE` meta field
  (`CatalogUtils.populateAndAddCatEntry`);
* `getOrCreateAndClean` stamps the catalog with a `PROJECT` meta field (`setCatalogProject`).

Not written: `dimensions`/`voxelRes`/`orientation` of a DCMCatalog, the `created*` audit
attributes and a `secondary` resource for non-image SOP classes.
"""

from __future__ import annotations

import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape, quoteattr

from xnat_sandbox.store import Store

#: The namespaces every generated bean declares on its root element (`XdatInfoentryBean.toXML`).
NAMESPACES = {
    "xmlns:arc": "http://nrg.wustl.edu/arc",
    "xmlns:cat": "http://nrg.wustl.edu/catalog",
    "xmlns:pipe": "http://nrg.wustl.edu/pipe",
    "xmlns:prov": "http://www.nbirn.net/prov",
    "xmlns:scr": "http://nrg.wustl.edu/scr",
    "xmlns:val": "http://nrg.wustl.edu/val",
    "xmlns:wrk": "http://nrg.wustl.edu/workflow",
    "xmlns:xdat": "http://nrg.wustl.edu/security",
    "xmlns:xnat": "http://nrg.wustl.edu/xnat",
    "xmlns:xnat_a": "http://nrg.wustl.edu/xnat_assessments",
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
}


def is_dicom_catalog(resource: sqlite3.Row) -> bool:
    """A resource the archiver built from DICOM (it carries the series UID)."""
    return resource["uid"] is not None


def _attributes(values: dict[str, object]) -> str:
    """Attributes in a bean's order: a TreeMap, so sorted by name (upper case first)."""
    return "".join(
        f" {name}={quoteattr(str(value))}"
        for name, value in sorted(values.items())
        if value is not None and value != ""
    )


def document(store: Store, resource: sqlite3.Row, project: str) -> bytes:
    """The catalog XML of one resource, as `BeanRepresentation` writes it."""
    dicom = is_dicom_catalog(resource)
    root = "cat:DCMCatalog" if dicom else "cat:Catalog"
    head: dict[str, object] = {"UID": resource["uid"]} if dicom else {}
    head.update(NAMESPACES)
    lines = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{_attributes(head)}>']
    lines.append("\n<cat:metaFields>")
    lines.append(f'\n\t<cat:metaField name="PROJECT">{escape(project)}</cat:metaField>')
    lines.append("\n</cat:metaFields>")
    entries = store.all(
        "SELECT * FROM files WHERE resource_id = ? ORDER BY instance IS NULL, instance, relpath",
        resource["id"],
    )
    if entries:
        lines.append("\n<cat:entries>")
        lines.extend(_entry(resource, entry) for entry in entries)
        lines.append("\n</cat:entries>")
    lines.append(f"\n</{root}>")
    return "".join(lines).encode()


def _entry(resource: sqlite3.Row, entry: sqlite3.Row) -> str:
    relpath = entry["relpath"]
    if entry["uid"] is not None:
        values: dict[str, object] = {
            "ID": relpath,
            "URI": relpath,
            "UID": entry["uid"],
            "instanceNumber": entry["instance"],
            "format": "DICOM",
            "digest": entry["md5"],
        }
        return f'\n\t<cat:entry{_attributes(values)} xsi:type="cat:dcmEntry"/>'
    values = {
        "ID": relpath,
        "URI": relpath,
        "cachePath": relpath,
        "name": PurePosixPath(relpath).name,
        "format": entry["format"] or resource["format"],
        "content": entry["content"] or resource["content"],
        "digest": entry["md5"],
    }
    return (
        f"\n\t<cat:entry{_attributes(values)}>"
        f'\n\t\t<cat:metaFields>\n\t\t\t<cat:metaField name="SIZE">{entry["size"]}</cat:metaField>'
        "\n\t\t</cat:metaFields>\n\t</cat:entry>"
    )


#: threads hashing a session's files at archive: `hashlib` releases the GIL on large buffers
DIGEST_THREADS = 2
DIGEST_PIECE = 1 << 20


def digests(session_dir: Path, files: list[sqlite3.Row]) -> dict[tuple[str, str], str]:
    """(scan, name) → MD5 of each file, as `CatalogUtils.setChecksum` computes it at archive for
    every entry without one (`getHash`: the file read whole); a digest already recorded (a
    rewrite by the project script) is kept. XNAT hashes in `postSave`, after the files moved;
    the sandbox hashes just before the move (the same bytes), outside the database
    transaction."""
    known = {(f["scan_id"], f["name"]): f["md5"] for f in files if f["md5"]}
    todo = [(f["scan_id"], f["name"]) for f in files if (f["scan_id"], f["name"]) not in known]

    def digest(key: tuple[str, str]) -> str:
        md5 = hashlib.md5()
        with open(session_dir / "SCANS" / key[0] / "DICOM" / key[1], "rb", buffering=0) as f:
            while chunk := f.read(DIGEST_PIECE):
                md5.update(chunk)
        return md5.hexdigest()

    with ThreadPoolExecutor(DIGEST_THREADS, thread_name_prefix="sandbox-digest") as pool:
        known.update(zip(todo, pool.map(digest, todo), strict=True))
    return known
