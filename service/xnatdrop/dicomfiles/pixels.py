"""Where the Pixel Data value lies in a file (`pixel_span`), for comparing XNAT's copy with
the file sent (`verify.compare_pixels`), or that it has none (`NoPixelData`).

Why a module of its own: it is the walker's one user outside the check, with its own contract
(decline rather than guess); it reuses the walk (`walk._walk_file`) and adds only the end of
encapsulated fragments.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO

from xnatdrop.dicomfiles.content import _looks_like_bare_dicom, _plausible_start
from xnatdrop.dicomfiles.tags import (
    _IMPLICIT,
    DEFLATED_LE,
    EXPLICIT_BE,
    HEAD_BYTES,
    ITEM,
    PREAMBLE_MAGIC,
    SEQ_END,
    TAG_PIXEL_DATA,
    TAG_TRANSFER_SYNTAX,
    UNDEFINED,
)
from xnatdrop.dicomfiles.walk import _walk_file
from xnatdrop.dicomfiles.window import _PARSE_ERRORS, _Window


@dataclasses.dataclass(frozen=True, slots=True)
class PixelSpan:
    """The Pixel Data (7FE0,0010) value of one file: `length` bytes from file offset `offset`.

    For encapsulated data the value is the fragments (Basic Offset Table item included) up to,
    not including, the Sequence Delimitation Item: the bytes pydicom gives as the element's
    value, so a digest of either is the same.
    """

    transfer_syntax: str
    offset: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class NoPixelData:
    """The walker read the file's whole top-level data set, to its last byte, and met no
    element from (7FE0,0008) on: the file has no Pixel Data, Float or Double Float Pixel Data.

    Why a positive answer instead of declining: the non-image documents of a session (Siemens
    Phoenix reports, ~1 scan in 17 of the benchmark's) were each parsed by pydicom only to learn
    that, and the first such file imported pydicom into the push (~20 MB resident, the largest
    single item of the archive read-back's peak; issue 13)."""

    transfer_syntax: str


def pixel_span(source: bytes | BinaryIO, size: int | None = None) -> PixelSpan | None:
    """Find the Pixel Data value of a DICOM file (bytes, or an open binary file of `size`
    bytes) with the header walker; None when the walker declines or there is none
    (`pixel_value` tells the two apart)."""
    found = pixel_value(source, size)
    return found if isinstance(found, PixelSpan) else None


def pixel_value(
    source: bytes | BinaryIO, size: int | None = None
) -> PixelSpan | NoPixelData | None:
    """Where the Pixel Data value of a DICOM file lies (`PixelSpan`), or that it has none
    (`NoPixelData`); None when the walker declines.

    Why: the pixel comparison after archiving (`verify.compare_pixels`) reads one downloaded and
    one local file per scan; `pydicom.dcmread` builds the whole data set first, thousands of
    objects for an enhanced multi-frame header, and cost most of the verification's time.
    The walker steps over the header as the check does. It declines, and the caller parses
    with pydicom, where it would have to guess or where it stops short of certainty: no file
    meta transfer syntax, big endian or deflated data sets, Float Pixel Data instead of Pixel
    Data, a top-level element past Pixel Data's tag that is not Pixel Data, a walk that did not
    end exactly at the end of the file, a value that runs past the end of the file or damaged
    fragments.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        win = _Window(None, len(data), data)
    else:
        if size is None:
            raise ValueError("the size of an open file is needed")
        source.seek(0)
        win = _Window(source, size, source.read(HEAD_BYTES))
    data = win.buf
    if win.size >= 132 and data[128:132] == PREAMBLE_MAGIC:
        start = 132
    elif _looks_like_bare_dicom(data) and _plausible_start(data):
        start = 0
    else:
        return None
    try:
        win, walk, meta, syntax = _walk_file(win, start)
        if not meta.get(TAG_TRANSFER_SYNTAX) or syntax in (EXPLICIT_BE, DEFLATED_LE):
            return None
        if walk.pixel_offset < 0 and walk.pixel_tag == 0:
            # Read to the end: nothing at or past (7FE0,0008) anywhere at the top level.
            if not walk.stopped_early and walk.end == win.size:
                return NoPixelData(syntax)
            return None
        if walk.pixel_tag != TAG_PIXEL_DATA or walk.pixel_offset < 0:
            return None
        if walk.pixel_length == UNDEFINED:
            end = _fragments_end(win, walk.pixel_offset)
            if end < 0:
                return None
            return PixelSpan(syntax, walk.pixel_offset, end - walk.pixel_offset)
        if walk.pixel_offset + walk.pixel_length > win.size:
            return None
        return PixelSpan(syntax, walk.pixel_offset, walk.pixel_length)
    except _PARSE_ERRORS:
        return None


def _fragments_end(win: _Window, pos: int) -> int:
    """The offset of the Sequence Delimitation Item after the fragments from `pos`; -1 if the
    fragments are damaged or the file ends first (PS3.5 A.4)."""
    size = win.size
    while pos + 8 <= size:
        group, element, length = _IMPLICIT[True].unpack(win.get(pos, 8))
        tag = group << 16 | element
        if tag == SEQ_END:
            return pos
        if tag != ITEM or length == UNDEFINED:
            return -1
        pos += 8 + length
    return -1
