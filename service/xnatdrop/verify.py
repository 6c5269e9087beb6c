"""What XNAT may change in an upload, and how what it holds is compared with what was sent.

A fresh XNAT rewrites every file it imports: its site-wide anonymisation script is on by default
and sets PatientName, PatientID and StudyDescription (xnat-stock.md row 1); a project script
runs again at archive time (row 2); a series import filter drops whole series without a word
(row 6). So sizes and MD5s prove nothing there, and a verification that relies on them
quarantines every drop of a stock XNAT. What survives the rewriting, and is checked always:

- the instances: every archived scan's SOPInstanceUIDs, read from the scan's DICOM catalog
  (`cat:dcmEntry UID`, `xnat.XnatClient.scan_catalog`), matched to the manifest and counted;
  a missing or extra instance is named with its file and series;
- the pixel data, on a sample: the smallest file of each scan is downloaded and the MD5 of its
  Pixel Data element compared with the local file's (catches transcoding and corruption);
- before archiving, when XNAT exposes no UIDs (the prearchive lists names and sizes only),
  the number of files of each scan.

Sizes and MD5s are compared only where XNAT is known to keep the bytes: its scripts are off, or
the import sent prevent_anon=true. That is read from XNAT at push time (`Rewriting`), never
assumed; what the account may not read counts as "XNAT may rewrite". Only DICOM resources
count (`xnat.DICOM_RESOURCES`): SNAPSHOTS or NIFTI that automation adds to a scan never read as
a difference.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from xnatdrop import dicomfiles, pack, xnat

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
HASH_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Rewriting:
    """What XNAT may do to this drop's files, as it said at push time.

    `site` and `project`: whether the site-wide and the project's anonymisation scripts are on
    (None: XNAT would not tell this account). `*_rejects` / `*_alters_pixels`: whether the
    script has a `reject` or an `alterPixels` statement (None: unknown). `filters`: the enabled
    series import filters ("site: blacklist", …; None: unknown). `checksums`: XNAT's
    `checksums` preference (None: unknown), without which archived files have no MD5.
    `receiver`: the files went by C-STORE (`transport = "dicom"`), so XNAT's DICOM receiver
    wrote each one with a file meta of its own (dcm4che's `DicomOutputStream`, XNAT's
    implementation UID): sizes and MD5s never match the files as dropped, the pixel data does.
    """

    prevent_anon: bool
    site: bool | None
    project: bool | None
    site_rejects: bool | None = None
    project_rejects: bool | None = None
    site_alters_pixels: bool | None = None
    project_alters_pixels: bool | None = None
    filters: tuple[str, ...] | None = ()
    checksums: bool | None = None
    receiver: bool = False

    # -- what XNAT may change, and when ----------------------------------------------------

    @property
    def site_runs(self) -> bool:
        return not self.prevent_anon and self.site is not False

    @property
    def project_runs(self) -> bool:
        return not self.prevent_anon and self.project is not False

    def rewrites_at_import(self) -> bool:
        """The prearchive copy may differ in bytes from the upload."""
        return self.site_runs or self.receiver

    def rewrites_at_archive(self) -> bool:
        """The archived copy may differ in bytes from the upload."""
        return self.site_runs or self.project_runs or self.receiver

    def drops_at_import(self) -> str:
        """Why XNAT may leave whole series out at import ('' if nothing would)."""
        reasons = []
        if self.filters is None:
            reasons.append("a series import filter (this account may not read them)")
        elif self.filters:
            reasons.append(f"the series import filter ({'; '.join(self.filters)})")
        if self.site_runs and self.site_rejects is not False:
            reasons.append("a reject statement in the site anonymisation script")
        return " or ".join(reasons)

    def drops_at_archive(self) -> str:
        """Why XNAT may leave instances out at archive time ('' if nothing would)."""
        if self.project_runs and self.project_rejects is not False:
            return "a reject statement in the project's anonymisation script"
        return ""

    def alters_pixels(self) -> bool:
        """An anonymisation script that ran may edit pixel data (DicomEdit alterPixels)."""
        return (self.site_runs and bool(self.site_alters_pixels)) or (
            self.project_runs and bool(self.project_alters_pixels)
        )

    def why_bytes_differ(self) -> str:
        """Why sizes and MD5s of the archived files are not compared ('' if they are)."""
        scripts = []
        if self.site_runs:
            scripts.append(("XNAT's site anonymisation script", self.site))
        if self.project_runs:
            scripts.append(("the project's anonymisation script", self.project))
        known = [name for name, on in scripts if on]
        unknown = [name for name, on in scripts if on is None]
        parts = []
        if self.receiver:
            parts.append("each file rewritten with a file meta of XNAT's DICOM receiver")
        if known:
            parts.append(f"headers rewritten by {' and '.join(known)}")
        if unknown:
            verb = "it is" if len(unknown) == 1 else "they are"
            parts.append(
                f"headers possibly rewritten by {' and '.join(unknown)} (XNAT would not say "
                f"whether {verb} on)"
            )
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["filters"] = None if self.filters is None else list(self.filters)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rewriting:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        if values.get("filters") is not None:
            values["filters"] = tuple(values["filters"])
        return cls(**values)


def read_rewriting(
    client: Any, project: str, prevent_anon: bool, receiver: bool = False
) -> Rewriting:
    """Ask XNAT what it may change in an upload to `project` (a handful of small GETs).

    `receiver`: the files go by C-STORE; XNAT's receiver then decides prevent_anon itself (not
    its `anonymizationEnabled`, CStoreService.doCStore), so pass prevent_anon False with it.
    """
    anonymization = client.anonymization(project)
    site_script = project_script = None
    if not prevent_anon and anonymization.site is not False:
        site_script = client.anonymization_script()
    if not prevent_anon and anonymization.project is not False:
        project_script = client.anonymization_script(project)
    filters = client.series_import_filters(project)
    checksums = client.site_preference("checksums")
    return Rewriting(
        prevent_anon=prevent_anon,
        site=anonymization.site,
        project=anonymization.project,
        site_rejects=_has(site_script, "reject"),
        project_rejects=_has(project_script, "reject"),
        site_alters_pixels=_has(site_script, "alterPixels"),
        project_alters_pixels=_has(project_script, "alterPixels"),
        filters=None
        if filters is None
        else tuple(f"{f.scope}: {f.mode or 'filter'}" for f in filters if f.enabled),
        checksums=xnat.as_bool(checksums) if checksums is not None else None,
        receiver=receiver,
    )


def _has(script: str | None, statement: str) -> bool | None:
    """Whether a DicomEdit script has `statement` outside comments (None: script unknown)."""
    if script is None:
        return None
    code = "\n".join(line.split("//", 1)[0] for line in script.splitlines())
    return re.search(rf"\b{statement}\b", code, re.I) is not None


# -- series of the manifest ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Series:
    """One series of the upload, for messages and receipts."""

    uid: str
    number: str
    files: int
    folder: str

    def name(self) -> str:
        return f"series {self.number or '?'} ({self.folder}, {self.files} files)"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def series_of(entries: Iterable[pack.Entry]) -> list[Series]:
    groups: dict[str, list[pack.Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.series_instance_uid, []).append(entry)
    return [
        Series(uid, group[0].series_number, len(group), str(Path(group[0].path).parent))
        for uid, group in groups.items()
    ]


def scan_folder(entry: pack.Entry) -> str:
    """The prearchive scan XNAT files an instance under (Restructurer.determineScanSubdir):
    its SeriesNumber if that is a usable file name, else its SeriesInstanceUID made safe."""
    if entry.series_number and re.fullmatch(r"[\w.-]+", entry.series_number):
        return entry.series_number
    if entry.series_instance_uid:
        return re.sub(r"[^\w-]", "_", entry.series_instance_uid)
    return "NA"


# -- before archiving: the prearchive ---------------------------------------------------------


@dataclasses.dataclass
class PrearchiveCheck:
    """The prearchive copy against the manifest.

    `missing`: series none of whose files arrived (a filter may have dropped them);
    `incomplete`: other count differences (an interrupted upload: send again);
    `changed`: sizes differ although XNAT was expected to keep the bytes.
    """

    missing: list[Series]
    incomplete: str
    changed: str


def check_prearchive(
    manifest: pack.Manifest, files: list[xnat.RemoteFile], compare_sizes: bool
) -> PrearchiveCheck:
    """Counts per scan always; sizes (the prearchive lists no MD5) only with `compare_sizes`."""
    by_scan: dict[str, list[pack.Entry]] = collections.defaultdict(list)
    for entry in manifest.files:
        by_scan[scan_folder(entry)].append(entry)
    found = collections.Counter(f.scan for f in files)
    missing_scans = [scan for scan in by_scan if scan not in found]
    missing = [s for scan in missing_scans for s in series_of(by_scan[scan])]
    differences = []
    for scan in sorted(set(by_scan) | set(found)):
        expected = len(by_scan.get(scan, []))
        if scan in found and found[scan] != expected:
            differences.append(f"scan {scan}: {found[scan]} of {expected} files")
    incomplete = ""
    if differences:
        incomplete = "; ".join(differences[:5])
    changed = ""
    if compare_sizes and not differences:
        present = [e for e in manifest.files if scan_folder(e) in found]
        local = collections.Counter(e.size for e in present)
        if collections.Counter(f.size for f in files) != local:
            changed = "file sizes in XNAT differ from the upload"
    return PrearchiveCheck(missing, incomplete, changed)


# -- after archiving: instance UIDs, bytes where kept, pixel data -----------------------------


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
    """One DICOM resource of one scan as the session's file listing gave it, kept small: a size
    per file name, the MD5 only where the listing had one, and the listing URI as the part all
    its files share (`prefix`) plus the name; a URI that is not `prefix + path` is kept whole.

    About 150 bytes a file instead of a `RemoteFile` (700 bytes, mostly its URI): a session of
    50,000 files is held whole between the listing and its scans' catalogs."""

    __slots__ = ("digests", "prefix", "resource", "scan", "sizes", "uris")

    def __init__(self, scan: str, resource: str) -> None:
        self.scan, self.resource, self.prefix = scan, resource, ""
        self.sizes: dict[str, int] = {}
        self.digests: dict[str, str] = {}
        self.uris: dict[str, str] = {}

    def add(self, file: xnat.RemoteFile) -> None:
        """Keep `file`'s row (a name listed twice: its last row, as a dict of rows would)."""
        path = file.path
        self.sizes[path] = file.size
        if file.digest:
            self.digests[path] = file.digest
        else:
            self.digests.pop(path, None)
        head, sep, tail = file.uri.partition("/files/")
        if not self.prefix and sep:
            self.prefix = head + sep
        if not sep or head + sep != self.prefix or tail != path:
            self.uris[path] = file.uri
        else:
            self.uris.pop(path, None)

    def file(self, path: str) -> xnat.RemoteFile | None:
        """The listing's row for `path` (None: not listed), as `xnat.RemoteFile`."""
        size = self.sizes.get(path)
        if size is None:
            return None
        uri = self.uris.get(path) or self.prefix + path
        name = path.rsplit("/", 1)[-1]
        digest = self.digests.get(path, "")
        return xnat.RemoteFile(self.scan, self.resource, name, path, size, digest, uri)


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
        # Not matched yet, by UID: an entry leaves when its instance is found (as before, a
        # UID twice in the manifest is one instance).
        self._pending = {e.sop_instance_uid: e for e in manifest.files}
        self._listing = listing
        self._compare = compare_bytes
        self._expected = frozenset(expected)
        self._keep = keep_catalog
        self._uids: set[str] = set()
        self._names: dict[str, set[str]] = collections.defaultdict(set)
        self._samples: dict[str, tuple[pack.Entry, xnat.RemoteFile]] = {}
        self.extra: list[xnat.CatalogEntry] = []
        self._changed: list[tuple[str, str, str]] = []  # (scan, resource, what differs)
        self.matched = 0
        self.matched_bytes = 0
        self.md5_compared = compare_bytes

    def add(self, scan: str, resource: str, catalog: Iterable[xnat.CatalogEntry]) -> None:
        """Compare one scan resource's catalog entries; its listing is dropped afterwards."""
        listed = self._listing.pop((scan, resource), None) or ScanListing(scan, resource)
        best = self._samples.get(scan)
        for entry in catalog:
            if self._keep:
                self._uids.add(entry.uid)
                self._names[entry.scan].add(entry.path.rsplit("/", 1)[-1])
            mine = self._pending.pop(entry.uid, None)
            if mine is None:  # not in the manifest, or catalogued twice
                if entry.uid not in self._expected:
                    self.extra.append(entry)
                continue
            self.matched += 1
            self.matched_bytes += mine.size
            size = listed.sizes.get(entry.path)
            if size is not None and (
                best is None or (size, entry.path) < (best[1].size, best[1].path)
            ):
                best = (mine, listed.file(entry.path))  # type: ignore[assignment]
            if not self._compare:
                continue
            digest = (entry.digest or listed.digests.get(entry.path, "")).lower()
            if size is not None and size != mine.size:
                what = f"{mine.path} ({size} bytes in XNAT, {mine.size} sent)"
                self._changed.append((scan, resource, what))
            elif digest and digest != mine.md5:
                self._changed.append((scan, resource, f"{mine.path} (MD5 differs)"))
            elif not digest:
                self.md5_compared = False
        if best is not None:
            self._samples[scan] = best

    def result(self, watch: Iterable[str] = ()) -> ArchiveCheck:
        """The comparison once every scan is added. `watch`: UIDs of the manifest whose
        presence the caller asks about (`ArchiveCheck.found`: those catalogued)."""
        missing = list(self._pending.values())
        found = frozenset(uid for uid in watch if uid not in self._pending)
        samples = [self._samples[scan] for scan in sorted(self._samples, key=_scan_order)]
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


def check_archive(
    manifest: pack.Manifest,
    catalog: Iterable[xnat.CatalogEntry],
    files: Iterable[xnat.RemoteFile],
    compare_bytes: bool,
) -> ArchiveCheck:
    """`ArchiveTally` over a whole catalog at once (a small session, a test)."""
    listing = dicom_listing(files)
    tally = ArchiveTally(manifest, listing, compare_bytes)
    by_scan: dict[tuple[str, str], list[xnat.CatalogEntry]] = collections.defaultdict(list)
    for entry in catalog:
        by_scan[(entry.scan, entry.resource)].append(entry)
    for (scan, resource), entries in by_scan.items():
        tally.add(scan, resource, entries)
    return tally.result()


def whole_series_missing(check: ArchiveCheck, manifest: pack.Manifest) -> list[Series]:
    """The series of which no instance was catalogued."""
    missing_uids = {e.sop_instance_uid for e in check.missing}
    series = []
    for item in series_of(manifest.files):
        members = [e for e in manifest.files if e.series_instance_uid == item.uid]
        if all(e.sop_instance_uid in missing_uids for e in members):
            series.append(item)
    return series


def pixel_digest(source: bytes | Path | BinaryIO) -> tuple[str, str] | None:
    """(transfer syntax UID, MD5 of the Pixel Data element's value) of one DICOM file, or None
    when it has no pixel data. Anonymisation rewrites headers, never these bytes; a transcoded
    or damaged copy differs (xnat-stock "lacks entirely": decompression on import).

    `source` is the file's bytes, its path, or an open binary file (read from its start; a
    download spooled to disk, so a large file is hashed a piece at a time, never held whole).
    The header walker (`dicomfiles.pixel_span`) finds the value and only its bytes are hashed;
    where the walker declines, pydicom parses the file: the same digest either way."""
    if isinstance(source, bytes):
        span = dicomfiles.pixel_span(source)
        if span is not None:
            value = memoryview(source)[span.offset : span.offset + span.length]
            return span.transfer_syntax, hashlib.md5(value, usedforsecurity=False).hexdigest()
        return _pydicom_pixel_digest(io.BytesIO(source))
    if not isinstance(source, Path):
        return _handle_pixel_digest(source)
    with open(source, "rb") as handle:
        return _handle_pixel_digest(handle)


def _handle_pixel_digest(handle: BinaryIO) -> tuple[str, str] | None:
    span = dicomfiles.pixel_span(handle, os.fstat(handle.fileno()).st_size)
    if span is not None:
        return span.transfer_syntax, _md5_of_range(handle, span.offset, span.length)
    handle.seek(0)
    return _pydicom_pixel_digest(handle)


def _md5_of_range(handle: BinaryIO, offset: int, length: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    handle.seek(offset)
    left = length
    while left > 0:
        chunk = handle.read(min(left, HASH_CHUNK))
        if not chunk:
            raise ValueError("not readable as DICOM (the file ended inside Pixel Data)")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _pydicom_pixel_digest(source: BinaryIO | Path) -> tuple[str, str] | None:
    """`pixel_digest` by a full parse, for the files the header walker declines."""
    import pydicom
    import pydicom.errors

    try:
        dataset = pydicom.dcmread(source, force=True)
        elements = [dataset[tag] for tag in PIXEL_TAGS if tag in dataset]
    except (
        pydicom.errors.InvalidDicomError,
        struct.error,
        ValueError,
        IndexError,
        KeyError,
        EOFError,
        OverflowError,
    ) as error:
        raise ValueError(f"not readable as DICOM ({type(error).__name__})") from None
    syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
    for element in elements:
        if isinstance(element.value, bytes):
            return syntax, hashlib.md5(element.value, usedforsecurity=False).hexdigest()
    return None


def _scan_order(scan: str) -> tuple[int, str]:
    match = re.match(r"\d+", scan)
    return (int(match.group()) if match else 1 << 30, scan)
