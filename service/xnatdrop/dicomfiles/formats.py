"""Section B of the rules and A7/A8: what a file that is not DICOM is, from its first 4 KiB
and its name (converted formats, containers, OS litter).

Why a module of its own: none of it reads DICOM; it is a table of magic numbers and
suffixes, consulted only once the content is known not to be DICOM (`content.py`).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from xnatdrop.dicomfiles.facts import FileFacts, Kind
from xnatdrop.dicomfiles.tags import PREAMBLE_MAGIC

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".7z", ".rar", ".bz2", ".xz", ".zst")
# B10: converted or raw-data formats recognised by name only.
CONVERTED_SUFFIXES = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI (gzip)",
    ".hdr": "Analyze/NIfTI header",
    ".img": "Analyze/NIfTI image",
    ".mgh": "FreeSurfer MGH",
    ".mgz": "FreeSurfer MGZ",
    ".mnc": "MINC",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD header",
    ".par": "Philips PAR",
    ".rec": "Philips REC",
    ".brik": "AFNI BRIK",
    ".brik.gz": "AFNI BRIK",
    ".head": "AFNI HEAD",
    ".bval": "b-values (dcm2niix/BIDS)",
    ".bvec": "b-vectors (dcm2niix/BIDS)",
    ".gii": "GIFTI",
    ".trk": "TrackVis",
    ".tck": "MRtrix tracks",
    ".mif": "MRtrix image",
    ".mif.gz": "MRtrix image",
    ".dat": "Siemens raw k-space (TWIX)",
    ".sin": "Philips raw data",
    ".lab": "Philips raw data",
    ".raw": "raw data",
    ".raw.gz": "raw data",
    ".mat": "MATLAB",
    ".tsv": "BIDS table",
}
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", ".directory"})


def is_os_litter(name: str) -> bool:
    """OS litter that is ignored everywhere (rule A8): .DS_Store, Thumbs.db, AppleDouble `._*`."""
    return name.lower() in JUNK_NAMES or name.startswith("._")


def _suffix_match(name: str, table) -> str:
    lower = name.lower()
    for suffix in sorted(table, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return ""


def _magic_format(data: bytes, name: str) -> str:
    """Rules B1–B9 on the first 4 KiB; return the format name or ""."""
    if len(data) >= 348:
        for order in ("<", ">"):
            first = struct.unpack_from(order + "i", data)[0]
            if first == 348:
                magic = data[344:348]
                if magic == b"n+1\x00":
                    return "NIfTI-1"
                if magic == b"ni1\x00":
                    return "NIfTI-1 header (.hdr/.img pair)"
                return "Analyze 7.5 header"
            if first == 540 and data[4:8] in (b"n+2\x00", b"ni2\x00"):
                return "NIfTI-2"
    lower = name.lower()
    if (
        lower.endswith((".mgh", ".mgz"))
        and len(data) >= 32
        and struct.unpack_from(">i", data)[0] == 1
        and struct.unpack_from(">i", data, 28)[0] in (0, 1, 3, 4)
    ):
        return "FreeSurfer MGH"
    hdf5 = b"\x89HDF\r\n\x1a\n"
    if any(data[o : o + 8] == hdf5 for o in (0, 512, 1024, 2048)):
        return "MINC-2 (HDF5)"
    if data[:4] in (b"CDF\x01", b"CDF\x02"):
        return "MINC-1 (netCDF)"
    if data[:7] == b"NRRD000" and data[7:8].isdigit():
        return "NRRD"
    if data.startswith(b"# === DATA DESCRIPTION FILE ==="):
        return "Philips PAR"
    if lower.endswith(".json") and data.lstrip()[:1] == b"{":
        return "JSON sidecar (BIDS/dcm2niix)"
    if b"type = " in data and b"-attribute" in data:
        return "AFNI HEAD"
    if data.startswith(b"TRACK\x00"):
        return "TrackVis"
    if data.startswith(b"mrtrix "):
        return "MRtrix"
    if b"<GIFTI" in data:
        return "GIFTI"
    if data.startswith(b"MATLAB 5.0 MAT-file"):
        return "MATLAB"
    if data.startswith(b"MATRIX7"):
        return "ECAT 7"
    return ""


def _archive_format(data: bytes, name: str) -> str:
    """Rule A7: container magic numbers (gzip is handled separately)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if data[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z"
    if data[:6] == b"Rar!\x1a\x07":
        return "rar"
    if data[257:262] == b"ustar":
        return "tar"
    if data[:3] == b"BZh":
        return "bzip2"
    if data[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    suffix = _suffix_match(name, ARCHIVE_SUFFIXES)
    return suffix.lstrip(".") if suffix else ""


def _gunzip_head(data: bytes) -> bytes:
    """The first 4 KiB of a gzip stream (A7 asks to name what is inside); b"" if unreadable."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 4096)
    except zlib.error:
        return b""


def _inner_name(name: str) -> str:
    return (
        name[:-3] if name.lower().endswith(".gz") else name[:-4] if name.endswith(".tgz") else name
    )


def _classify_other(path: Path, size: int, data: bytes, inode: tuple[int, int]) -> FileFacts:
    """Non-DICOM content: archive, converted format or other (rules A7, B, A8)."""
    name = os.path.basename(path)
    if data[:2] == b"\x1f\x8b":
        inner = _gunzip_head(data)
        inner_name = _inner_name(name)
        inside = ""
        if len(inner) >= 132 and inner[128:132] == PREAMBLE_MAGIC:
            inside = "DICOM"
        elif inner[:2] == b"\x1f\x8b":
            inside = "gzip"
        else:
            inside = _magic_format(inner, inner_name) or _archive_format(inner, inner_name)
            by_name = _suffix_match(inner_name, CONVERTED_SUFFIXES)
            if (inside and inside not in ("zip", "tar", "7z", "rar")) or by_name:
                fmt = inside or CONVERTED_SUFFIXES[by_name] + " (by name)"
                return FileFacts(path, size, Kind.CONVERTED, f"gzip containing {fmt}", inode=inode)
        detail = f"gzip containing {inside}" if inside else "gzip"
        return FileFacts(path, size, Kind.ARCHIVE, detail, inode=inode)
    container = _archive_format(data, name)
    if container:
        return FileFacts(path, size, Kind.ARCHIVE, container, inode=inode)
    found = _magic_format(data[:4096], name)
    if found:
        return FileFacts(path, size, Kind.CONVERTED, found, inode=inode)
    suffix = _suffix_match(name, CONVERTED_SUFFIXES)
    if suffix:
        return FileFacts(
            path, size, Kind.CONVERTED, f"{CONVERTED_SUFFIXES[suffix]} (by name)", inode=inode
        )
    if data.startswith(b"%PDF"):
        return FileFacts(path, size, Kind.OTHER, "PDF document", inode=inode)
    return FileFacts(path, size, Kind.OTHER, "not DICOM", inode=inode)
