"""What one file's bytes are: DICOM with a preamble (A2), DICOM without one (A3), a DICOM
whose header is unusable (A5), or, failing those, what section B says (`formats.py`).

Why a module of its own: this is the one decision between the reading (`reading.py`) and the
two ways of looking at content (the walk, `walk.py`; the format tables, `formats.py`).
"""

from __future__ import annotations

import struct
from pathlib import Path

from xnatdrop.dicomfiles.facts import FileFacts, Kind
from xnatdrop.dicomfiles.formats import _classify_other
from xnatdrop.dicomfiles.tags import PREAMBLE_MAGIC, _is_vr
from xnatdrop.dicomfiles.walk import _missing_uids, _parse_dicom
from xnatdrop.dicomfiles.window import _PARSE_ERRORS, _Bad, _Short, _Window


def _looks_like_bare_dicom(data: bytes) -> bool:
    """Rule A3: no preamble, first tag group 0002 or 0008, little endian [dcm2niix]."""
    return len(data) >= 8 and data[0] in (0x02, 0x08) and data[1] == 0 and data[3] == 0


def _sniff_content(path: Path, handle, size: int, data: bytes, inode: tuple[int, int]) -> FileFacts:
    if size >= 132 and data[128:132] == PREAMBLE_MAGIC:
        return _dicom_facts(path, handle, size, data, 132, True, inode)
    if _looks_like_bare_dicom(data):
        facts = _dicom_facts(path, handle, size, data, 0, False, inode)
        if facts.kind is Kind.DICOM or facts.detail != "no DICOM structure":
            return facts
    return _classify_other(path, size, data, inode)


def _dicom_facts(
    path: Path, handle, size: int, data: bytes, start: int, preamble: bool, inode: tuple[int, int]
) -> FileFacts:
    win = _Window(handle, size, data)
    try:
        header, truncated = _parse_dicom(win, start, preamble)
    except _Short:
        if not preamble and not _plausible_start(data):
            return FileFacts(path, size, Kind.CORRUPT, "no DICOM structure", inode=inode)
        return FileFacts(
            path, size, Kind.CORRUPT, "header ends early (copy cut short?)", inode=inode
        )
    except _PARSE_ERRORS as error:
        if not preamble and not _plausible_start(data):
            return FileFacts(path, size, Kind.CORRUPT, "no DICOM structure", inode=inode)
        reason = str(error) if isinstance(error, _Bad) else "malformed header"
        return FileFacts(path, size, Kind.CORRUPT, f"unreadable header: {reason}", inode=inode)
    missing = _missing_uids(header)
    if missing:
        if not preamble and not _plausible_start(data):
            return FileFacts(path, size, Kind.CORRUPT, "no DICOM structure", inode=inode)
        detail = "header lacks " + ", ".join(missing)
        return FileFacts(path, size, Kind.CORRUPT, detail, header, preamble, inode=inode)
    return FileFacts(path, size, Kind.DICOM, "", header, preamble, truncated, inode)


def _plausible_start(data: bytes) -> bool:
    """For files without preamble: does the first element look like a real DICOM element?

    Random bytes often start with 08 00 xx 00; real files have element number < 0x0100 in
    group 0002/0008 and either a valid VR or a small implicit length.
    """
    if len(data) < 8:
        return False
    element = data[2] | data[3] << 8
    if element > 0x0100:
        return False
    if _is_vr(data[4:6]):
        return True
    return struct.unpack_from("<I", data, 4)[0] < 1024
