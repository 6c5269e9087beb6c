"""What XNAT may change in an upload, and how what it holds is compared with what was sent.

A fresh XNAT rewrites every file it imports: its site-wide anonymisation script is on by default
and sets PatientName, PatientID and StudyDescription (xnat-stock.md row 1); a project script
runs again at archive time (row 2); a series import filter drops whole series without a word
(row 6). So sizes and MD5s prove nothing there, and a verification that relies on them
quarantines every drop of a stock XNAT. What survives the rewriting, and is checked always:

- the instances: every archived scan's SOPInstanceUIDs, read from the scan's DICOM catalog
  (`cat:dcmEntry UID`, `xnat.XnatClient.scan_catalog`), matched to the manifest and counted;
  a missing or extra instance is named with its file and series;
- the pixel data, on a sample: the smallest file of each scan is downloaded and its Pixel Data
  value compared with the local file's, byte for byte (`compare_pixels`; catches transcoding
  and corruption);
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
COMPARE_PIECE = 256 * 1024  # per side and sample in flight (`_same_range`)


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
    """The series of `entries`, in first-seen order (each with its first entry and a count:
    the entries themselves may be made as they are read, and are not kept)."""
    groups: dict[str, list[Any]] = {}
    for entry in entries:
        group = groups.get(entry.series_instance_uid)
        if group is None:
            groups[entry.series_instance_uid] = [entry, 1]
        else:
            group[1] += 1
    return [
        Series(uid, first.series_number, count, str(Path(first.path).parent))
        for uid, (first, count) in groups.items()
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
class PrearchiveTally:
    """What the prearchive check needs of XNAT's listing of the copy: the number of files of
    each scan and, for the size comparison, the number of files of each size.

    Kept instead of the listing: a `xnat.RemoteFile` per file (its URI, name and path, ~370
    bytes) was, at 50,000 files, the largest thing a push held (its peak, at the verify step).
    Each scan's listing is tallied as it arrives (`add`) and dropped."""

    per_scan: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    sizes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)

    @classmethod
    def of(cls, files: Iterable[xnat.RemoteFile]) -> PrearchiveTally:
        tally = cls()
        tally.add(files)
        return tally

    def add(self, files: Iterable[xnat.RemoteFile]) -> None:
        for file in files:
            self.per_scan[file.scan] += 1
            self.sizes[file.size] += 1

    @property
    def file_count(self) -> int:
        return sum(self.per_scan.values())


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
    manifest: pack.Manifest, tally: PrearchiveTally, compare_sizes: bool
) -> PrearchiveCheck:
    """Counts per scan always; sizes (the prearchive lists no MD5) only with `compare_sizes`.
    `tally`: XNAT's listing of the copy, tallied scan by scan (`readback.prearchive_files`)."""
    # Counted, not grouped: a list of entries per scan held every file's `Entry` at once; the
    # scan is found once per series (`Manifest.shared`), not per file.
    expected_per_scan = collections.Counter(scan for scan, _ in manifest.shared(scan_folder))
    found = tally.per_scan
    missing_scans = {scan: [] for scan in expected_per_scan if scan not in found}
    if missing_scans:  # grouped scan by scan, in the manifest's order, as the series are named
        lost: dict[str, list[pack.Entry]] = missing_scans
        for position, (scan, _) in enumerate(manifest.shared(scan_folder)):
            if scan in lost:
                lost[scan].append(manifest.entry(position))
    missing = [s for group in missing_scans.values() for s in series_of(group)]
    differences = []
    for scan in sorted(set(expected_per_scan) | set(found)):
        expected = expected_per_scan.get(scan, 0)
        if scan in found and found[scan] != expected:
            differences.append(f"scan {scan}: {found[scan]} of {expected} files")
    incomplete = ""
    if differences:
        incomplete = "; ".join(differences[:5])
    changed = ""
    if compare_sizes and not differences:
        local = collections.Counter(
            size for scan, size in manifest.shared(scan_folder) if scan in found
        )
        local.subtract(tally.sizes)  # not `+tally.sizes != local`: a copy of the tally
        if any(local.values()):
            changed = "file sizes in XNAT differ from the upload"
    return PrearchiveCheck(missing, incomplete, changed)


# -- after archiving: instance UIDs, bytes where kept, pixel data -----------------------------


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


@dataclasses.dataclass(frozen=True)
class PixelComparison:
    """The Pixel Data of a local file against XNAT's copy (`compare_pixels`): each side's
    transfer syntax (None: that file has no pixel data) and whether the values are the same."""

    local: str | None
    remote: str | None
    same: bool


def compare_pixels(local: BinaryIO, remote: BinaryIO) -> PixelComparison:
    """Compare the Pixel Data values of two open DICOM files (the local one and XNAT's copy).

    Where the header walker answers for both files (`dicomfiles.pixel_value`, nearly every
    file: where the value lies, or that there is none), the two values' bytes are compared
    piece by piece: equal bytes are a stronger answer than equal MD5s, and cost a memory
    compare instead of hashing both (the pixel sample of a 2 GB session is about 340 MB a side,
    so two MD5s were ~1.2 s of CPU, most of the comparison's). Where the walker declines either
    file, both are digested as `pixel_digest` does (the same pydicom fallback, imported only
    then). ValueError: XNAT's copy is not readable as DICOM; OSError: the local file cannot be
    read (or ended inside its Pixel Data)."""
    ours = dicomfiles.pixel_value(local, os.fstat(local.fileno()).st_size)
    theirs = dicomfiles.pixel_value(remote, os.fstat(remote.fileno()).st_size)
    if ours is None or theirs is None:
        remote.seek(0)
        digest_theirs = _handle_pixel_digest(remote)
        local.seek(0)
        try:
            digest_ours = _handle_pixel_digest(local)
        except ValueError as error:
            raise OSError(f"not readable as DICOM: {error}") from None
        return PixelComparison(
            digest_ours[0] if digest_ours else None,
            digest_theirs[0] if digest_theirs else None,
            digest_ours == digest_theirs,
        )
    local_syntax = ours.transfer_syntax if isinstance(ours, dicomfiles.PixelSpan) else None
    remote_syntax = theirs.transfer_syntax if isinstance(theirs, dicomfiles.PixelSpan) else None
    if not isinstance(ours, dicomfiles.PixelSpan) or not isinstance(theirs, dicomfiles.PixelSpan):
        # Neither has pixel data: the same ("no pixel data"); one only: they differ.
        return PixelComparison(local_syntax, remote_syntax, local_syntax == remote_syntax)
    same = (
        ours.transfer_syntax == theirs.transfer_syntax
        and ours.length == theirs.length
        and _same_range(local, ours.offset, remote, theirs.offset, ours.length)
    )
    return PixelComparison(local_syntax, remote_syntax, same)


def _same_range(local: BinaryIO, at: int, remote: BinaryIO, remote_at: int, length: int) -> bool:
    """Whether `length` bytes of `local` from `at` equal those of `remote` from `remote_at`,
    read a piece (COMPARE_PIECE) at a time into two buffers made once; OSError if the local
    file ends early (the walker saw the whole value within both files' sizes, so only a file
    changed meanwhile can).

    Why two fixed buffers of 256 KiB: the samples are compared a few at once (`xnat.READERS`),
    each in its own thread, whose allocator arena keeps what it once held. A new 1 MiB `bytes`
    per piece and side left several MB resident per reader, the archive read-back's transient
    peak (issue 13); `readinto` reuses the same memory for every piece of every sample."""
    local.seek(at)
    remote.seek(remote_at)
    piece = min(length, COMPARE_PIECE)
    ours, theirs = bytearray(piece), bytearray(piece)
    left = length
    while left > 0:
        want = min(left, piece)
        if want < piece:  # the last piece: buffers of its size (one small copy per file)
            ours, theirs = bytearray(want), bytearray(want)
        got = _read_fully(local, ours)
        if got != want:
            raise OSError("the file ended inside its Pixel Data")
        if _read_fully(remote, theirs) != want or ours != theirs:
            return False
        left -= want
    return True


def _read_fully(handle: BinaryIO, buffer: bytearray) -> int:
    """Fill `buffer` from `handle` (a buffered file may return a short read before the end);
    the bytes read, fewer only at the end of the file."""
    view = memoryview(buffer)
    done = 0
    while done < len(buffer):
        got = handle.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return done


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
