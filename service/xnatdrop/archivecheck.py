"""The archived session's DICOM against the manifest, one scan's catalog at a time.

`verify` says what is compared and why (instances by SOPInstanceUID from each scan's DICOM
catalog, sizes and MD5s where XNAT keeps the bytes, the pixel data of a sample); this module
does the matching in memory that does not grow with the catalogs: the session's file listing
is kept as a size (and MD5) per name with one URI prefix per scan resource (`ScanListing`), and
each scan's catalog is compared as it arrives and dropped (`ArchiveTally`). At 50,000 files a
`RemoteFile` per listed file and a `CatalogEntry` per instance, held together with the dicts
that joined them, took about 1.3 KB a file; this keeps about 300 bytes.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

from xnatdrop import pack, packrecords, xnat


@dataclasses.dataclass
class ArchiveCheck:
    """The archived session's DICOM against the manifest (`ArchiveTally.result`).

    `missing`: manifest entries XNAT did not catalogue, `extra`: catalogued instances that are
    not in the manifest, `changed`: files whose size or MD5 differ (only when compared),
    `matched` / `matched_bytes`: how many manifest entries were found by SOPInstanceUID and
    their size, `samples`: the smallest matched file of each scan with its manifest entry (the
    pixel sample). `catalog_uids` / `names`: every catalogued UID and each scan's file names,
    only when the tally was asked to keep them (`late.join`); empty otherwise.
    """

    missing: list[pack.Entry]
    extra: list[xnat.CatalogEntry]
    changed: list[str]
    matched: int = 0
    matched_bytes: int = 0
    samples: list[tuple[pack.Entry, xnat.RemoteFile]] = dataclasses.field(default_factory=list)
    md5_compared: bool = False
    catalog_uids: frozenset[str] = frozenset()
    names: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    found: frozenset[str] = frozenset()

    def describe(self, limit: int = 5) -> str:
        """What differs, naming files and series; '' when nothing does."""
        parts = []
        if self.missing:
            names = ", ".join(Path(e.path).as_posix() for e in self.missing[:limit])
            more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
            parts.append(
                f"{len(self.missing)} instance(s) of the upload are missing: {names}{more}"
            )
        if self.extra:
            names = ", ".join(f"scan {c.scan} {c.path} (UID {c.uid})" for c in self.extra[:limit])
            more = f" and {len(self.extra) - limit} more" if len(self.extra) > limit else ""
            parts.append(f"{len(self.extra)} instance(s) are not from this upload: {names}{more}")
        if self.changed:
            more = f" and {len(self.changed) - limit} more" if len(self.changed) > limit else ""
            parts.append(
                f"{len(self.changed)} file(s) have other bytes: "
                f"{', '.join(self.changed[:limit])}{more}"
            )
        return "; ".join(parts)


class ScanListing:
    """One DICOM resource of one scan as the session's file listing gave it, kept small: the
    file names in `packrecords.Texts` (indexed), a size per name in an array, the MD5 as 16
    bytes where the listing had one (32 hexadecimal digits; any other text kept as given), and
    the listing URI as the part all its files share (`prefix`) plus the name; a URI that is not
    `prefix + path` is kept whole.

    About 100 bytes a file instead of a `RemoteFile` (700 bytes, mostly its URI) or a dict of
    sizes and MD5s by name (300): a session of 50,000 files is held whole between the listing
    and its scans' catalogs."""

    __slots__ = (
        "_digests",
        "_has",
        "_names",
        "_odd",
        "_sizes",
        "prefix",
        "resource",
        "scan",
        "uris",
    )

    def __init__(self, scan: str, resource: str) -> None:
        self.scan, self.resource, self.prefix = scan, resource, ""
        self._names = packrecords.Texts()
        self._sizes = array.array("q")
        self._digests = bytearray()
        self._has = bytearray()  # per row: 0 no MD5, 1 in _digests, 2 in _odd
        self._odd: dict[int, str] = {}
        self.uris: dict[str, str] = {}

    def add(self, file: xnat.RemoteFile) -> None:
        """Keep `file`'s row (a name listed twice: its last row, as a dict of rows would)."""
        path = file.path
        row = self._names.append(path)  # a name listed again: `row` finds its last row
        self._sizes.append(file.size)
        if _HEX.fullmatch(file.digest):
            self._digests += bytes.fromhex(file.digest)
            self._has.append(1)
        else:
            self._digests += bytes(16)
            self._has.append(2 if file.digest else 0)
            if file.digest:
                self._odd[row] = file.digest
        head, sep, tail = file.uri.partition("/files/")
        if not self.prefix and sep:
            self.prefix = head + sep
        if not sep or head + sep != self.prefix or tail != path:
            self.uris[path] = file.uri
        else:
            self.uris.pop(path, None)

    def row(self, path: str) -> int:
        """The row of `path`, -1 if it is not listed."""
        return self._names.index(path)

    def size(self, row: int) -> int | None:
        return self._sizes[row] if row >= 0 else None

    def digest(self, row: int) -> str:
        """The listing's MD5 of the file in `row` ('' if none, or not listed)."""
        has = self._has[row] if row >= 0 else 0
        if has == 1:
            return self._digests[16 * row : 16 * row + 16].hex()
        return self._odd[row] if has == 2 else ""

    def file(self, path: str) -> xnat.RemoteFile | None:
        """The listing's row for `path` (None: not listed), as `xnat.RemoteFile`."""
        row = self.row(path)
        if row < 0:
            return None
        uri = self.uris.get(path) or self.prefix + path
        name = path.rsplit("/", 1)[-1]
        size = self._sizes[row]
        return xnat.RemoteFile(self.scan, self.resource, name, path, size, self.digest(row), uri)


_HEX = re.compile(r"[0-9a-f]{32}")


def dicom_listing(files: Iterable[xnat.RemoteFile]) -> dict[tuple[str, str], ScanListing]:
    """The files of XNAT's DICOM resources by (scan, resource), read as they come (an iterator
    over a streamed listing holds one row at a time); SNAPSHOTS, NIFTI and the like are left
    out."""
    listing: dict[tuple[str, str], ScanListing] = {}
    for file in files:
        if file.resource not in xnat.DICOM_RESOURCES:
            continue
        key = (file.scan, file.resource)
        scan = listing.get(key)
        if scan is None:
            scan = listing[key] = ScanListing(file.scan, file.resource)
        scan.add(file)
    return listing


class ArchiveTally:
    """Instances matched by SOPInstanceUID, one scan's catalog at a time (`add`), so no catalog
    entry outlives its scan: what is kept is a mark per manifest entry, the smallest matched
    file per scan, and what differs. With `compare_bytes`, sizes and MD5s too.

    `expected`: UIDs that may be catalogued though not in the manifest (a session appended to:
    what it held before), not counted as extra. `keep_catalog`: also keep every catalogued UID
    and each scan's file names (`ArchiveCheck.catalog_uids`, `.names`), for `late.join`.
    `add` is not thread-safe: callers reading scans at once hold a lock around it.
    """

    def __init__(
        self,
        manifest: pack.Manifest,
        listing: dict[tuple[str, str], ScanListing],
        compare_bytes: bool,
        expected: Iterable[str] = (),
        keep_catalog: bool = False,
    ) -> None:
        # Matched so far, a byte per manifest file (found by UID: `Manifest.position`, the last
        # file of a UID, so a UID twice in the manifest is one instance, as ever).
        self._manifest = manifest
        self._matched = bytearray(len(manifest))
        self._listing = listing
        self._compare = compare_bytes
        self._expected = frozenset(expected)
        self._keep = keep_catalog
        self._uids: set[str] = set()
        self._names: dict[str, set[str]] = collections.defaultdict(set)
        self._samples: dict[str, tuple[int, xnat.RemoteFile]] = {}  # manifest position
        self.extra: list[xnat.CatalogEntry] = []
        self._changed: list[tuple[str, str, str]] = []  # (scan, resource, what differs)
        self.matched = 0
        self.matched_bytes = 0
        self.md5_compared = compare_bytes

    def add(self, scan: str, resource: str, catalog: Iterable[xnat.CatalogEntry]) -> None:
        """Compare one scan resource's catalog entries; its listing is dropped afterwards."""
        listed = self._listing.pop((scan, resource), None) or ScanListing(scan, resource)
        best = self._samples.get(scan)
        manifest, matched = self._manifest, self._matched
        for entry in catalog:
            if self._keep:
                self._uids.add(entry.uid)
                self._names[entry.scan].add(entry.path.rsplit("/", 1)[-1])
            mine = manifest.position(entry.uid)
            if mine < 0 or matched[mine]:  # not in the manifest, or catalogued twice
                if entry.uid not in self._expected:
                    self.extra.append(entry)
                continue
            matched[mine] = 1
            self.matched += 1
            sent = manifest.size(mine)
            self.matched_bytes += sent
            row = listed.row(entry.path)
            size = listed.size(row)
            if size is not None and (
                best is None or (size, entry.path) < (best[1].size, best[1].path)
            ):
                best = (mine, listed.file(entry.path))  # type: ignore[assignment]
            if not self._compare:
                continue
            digest = (entry.digest or listed.digest(row)).lower()
            if size is not None and size != sent:
                what = f"{manifest.entry(mine).path} ({size} bytes in XNAT, {sent} sent)"
                self._changed.append((scan, resource, what))
            elif digest and digest != manifest.md5(mine):
                path = manifest.entry(mine).path
                self._changed.append((scan, resource, f"{path} (MD5 differs)"))
            elif not digest:
                self.md5_compared = False
        if best is not None:
            self._samples[scan] = best

    def result(self, watch: Iterable[str] = ()) -> ArchiveCheck:
        """The comparison once every scan is added. `watch`: UIDs of the manifest whose
        presence the caller asks about (`ArchiveCheck.found`: those catalogued)."""
        manifest, matched = self._manifest, self._matched
        missing = [
            manifest.entry(i)
            for i in range(len(manifest))
            if not matched[i] and manifest.position(manifest.entry(i).sop_instance_uid) == i
        ]
        found = frozenset(uid for uid in watch if _matched(manifest, matched, uid))
        samples = [
            (manifest.entry(self._samples[scan][0]), self._samples[scan][1])
            for scan in sorted(self._samples, key=_scan_order)
        ]
        # Scans arrive in any order (read a few at once): what differs is named in scan order.
        extra = sorted(self.extra, key=lambda entry: (entry.scan, entry.resource))
        changed = [what for *_, what in sorted(self._changed, key=lambda c: (c[0], c[1]))]
        return ArchiveCheck(
            missing,
            extra,
            changed,
            self.matched,
            self.matched_bytes,
            samples,
            self.md5_compared,
            frozenset(self._uids),
            dict(self._names),
            found,
        )


def _matched(manifest: pack.Manifest, matched: bytearray, uid: str) -> bool:
    position = manifest.position(uid)
    return position < 0 or bool(matched[position])  # as ever: a UID not sent is not awaited


def _scan_order(scan: str) -> tuple[int, str]:
    match = re.match(r"\d+", scan)
    return (int(match.group()) if match else 1 << 30, scan)
