"""Sniffing one file: is it DICOM, which converted format if not, its header fields, truncation.

`sniff(path)` returns a `FileFacts` for any file and never raises: a file that cannot be read
or parsed is described (kind `unreadable`, `corrupt`, …), not an exception. The rules that use
these facts, and the order they are evaluated in, are in `shared/reference/dicom-rules.md`
(sections A, B and E); each check below names its rule id.

Why a hand-written header walker instead of `pydicom.dcmread`: the check runs over every file
of every session before upload, on a 2-core host, often on a network share. pydicom builds a
full Dataset (thousands of Python objects per file) and runs at about 500 files/s for a full
read, 1,900 files/s when it stops after group 0020. The walker below reads the first 64 KiB
(one I/O, as much as a cold share serves in one round trip), steps over elements by their
length without decoding them, decodes only the ~30 tags the rules need and stops at Pixel Data.
Truncation is then decided from the file size and, for encapsulated data, the last bytes of the
file (PS3.5 A.4) — the pixel data itself is never read.

Why stop early for classic files: after group 0028 a classic image holds only private groups
(Siemens CSA, GE 0043, Philips 2005) and Pixel Data. When the expected pixel length is known,
the 8 or 12 bytes just before the last `expected` bytes of the file must be the Pixel Data
element header; finding it there proves the file complete without walking the private groups.
Anything else falls back to the exact walk.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import errno
import logging
import multiprocessing
import operator
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

log = logging.getLogger(__name__)

HEAD_BYTES = 64 * 1024  # first read; the cold-read baseline reads the same amount
MAX_VALUE = 1 << 20  # longest value the walker decodes; longer "strings" mean a corrupt file
MAX_DEPTH = 12  # nesting limit for sequences; real MR headers use 4
MAX_DEFLATED = 256 << 20  # inflated dataset limit for Deflate transfer syntax
PARALLEL_MIN_FILES = 1000  # below this a process pool costs more than it saves
PROGRESS_EVERY = 200

# Transfer syntaxes (PS3.6 Annex A)
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
# Lossy transfer syntaxes: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, MPEG, HEVC,
# HTJ2K (lossy-capable) — rule C8.
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
        "1.2.840.10008.1.2.4.203",
    }
)

MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"
# SOP classes whose objects must carry pixel data (rule A6c): image classes an MR drop can hold.
PIXEL_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.128",  # PET
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    }
)

PREAMBLE_MAGIC = b"DICM"
SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) length 0, little endian

# Explicit VRs that use a reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN"})
LONG_VRS |= {b"SV", b"UV"}

ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQ_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

# Top-level tags the rules need, as (group << 16 | element).
TAG_META_SOP_CLASS = 0x00020002
TAG_META_SOP_INSTANCE = 0x00020003
TAG_TRANSFER_SYNTAX = 0x00020010
TAG_DIRECTORY_RECORDS = 0x00041220
TAG_REFERENCED_FILE_ID = 0x00041500
TAG_IMAGE_TYPE = 0x00080008
TAG_SOP_CLASS = 0x00080016
TAG_SOP_INSTANCE = 0x00080018
TAG_MODALITY = 0x00080060
TAG_MANUFACTURER = 0x00080070
TAG_SERIES_DESCRIPTION = 0x0008103E
TAG_DERIVATION_DESCRIPTION = 0x00082111
TAG_FRAME_TYPE = 0x00089007
TAG_PIXEL_PRESENTATION = 0x00089205
TAG_VOLUME_CALCULATION = 0x00089207
TAG_PATIENT_NAME = 0x00100010
TAG_PATIENT_ID = 0x00100020
TAG_SEQUENCE_NAME = 0x00180024
TAG_DIFFUSION_DIRECTIONALITY = 0x00189075
TAG_STUDY_UID = 0x0020000D
TAG_SERIES_UID = 0x0020000E
TAG_SERIES_NUMBER = 0x00200011
TAG_INSTANCE_NUMBER = 0x00200013
TAG_TEMPORAL_POSITIONS = 0x00200105  # NumberOfTemporalPositions
TAG_IMAGES_IN_ACQUISITION = 0x00201002
TAG_GE_RELA_CREATOR = 0x00210010  # "GEMS_RELA_01" owns block 0x10 of group 0021
TAG_GE_LOCATIONS = 0x0021104F  # GE LocationsInAcquisition (SS), in that block
TAG_SAMPLES = 0x00280002
TAG_FRAMES = 0x00280008
TAG_ROWS = 0x00280010
TAG_COLUMNS = 0x00280011
TAG_BITS_ALLOCATED = 0x00280100
TAG_LOSSY = 0x00282110
TAG_PHILIPS_CREATOR = 0x20010010
TAG_PHILIPS_DIFFUSION_DIRECTION = 0x20011004  # "Philips Imaging DD 001" block 0x10, rule C5
TAG_SHARED_GROUPS = 0x52009229
TAG_PER_FRAME_GROUPS = 0x52009230
TAG_FLOAT_PIXELS = 0x7FE00008
TAG_PIXEL_DATA = 0x7FE00010

TOP_TAGS = frozenset(
    {
        TAG_IMAGE_TYPE,
        TAG_SOP_CLASS,
        TAG_SOP_INSTANCE,
        TAG_MODALITY,
        TAG_MANUFACTURER,
        TAG_SERIES_DESCRIPTION,
        TAG_DERIVATION_DESCRIPTION,
        TAG_PIXEL_PRESENTATION,
        TAG_VOLUME_CALCULATION,
        TAG_PATIENT_NAME,
        TAG_PATIENT_ID,
        TAG_SEQUENCE_NAME,
        TAG_STUDY_UID,
        TAG_SERIES_UID,
        TAG_SERIES_NUMBER,
        TAG_INSTANCE_NUMBER,
        TAG_TEMPORAL_POSITIONS,
        TAG_IMAGES_IN_ACQUISITION,
        TAG_GE_RELA_CREATOR,
        TAG_GE_LOCATIONS,
        TAG_SAMPLES,
        TAG_FRAMES,
        TAG_ROWS,
        TAG_COLUMNS,
        TAG_BITS_ALLOCATED,
        TAG_LOSSY,
        TAG_PHILIPS_CREATOR,
        TAG_PHILIPS_DIFFUSION_DIRECTION,
    }
)
# Sequences the walker descends into at the top level, and what it collects inside them.
DESCEND = frozenset({TAG_DIRECTORY_RECORDS, TAG_SHARED_GROUPS, TAG_PER_FRAME_GROUPS})
NESTED_TAGS = frozenset({TAG_FRAME_TYPE, TAG_DIFFUSION_DIRECTIONALITY, TAG_REFERENCED_FILE_ID})
US_TAGS = frozenset({TAG_SAMPLES, TAG_ROWS, TAG_COLUMNS, TAG_BITS_ALLOCATED})


class Kind(enum.StrEnum):
    """What a file is, by content (rules A1–A8, B)."""

    EMPTY = "empty"  # A1
    DICOM = "dicom"  # A2/A3 with a usable header (A5 passed); may still be truncated (A6)
    CORRUPT = "corrupt"  # A2/A3 whose header is unusable (A5)
    ARCHIVE = "archive"  # A7
    CONVERTED = "converted"  # B1–B10
    OTHER = "other"  # A8
    UNREADABLE = "unreadable"  # permission denied, I/O error, not a regular file


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesFields:
    """The header fields the rules use that the files of one series share, decoded as plain
    strings (trailing spaces/NULs removed). One object serves every file whose values are all
    equal (`sniff_folder`): a series of 5,000 files holds it once, not 5,000 times."""

    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    series_number: str = ""
    series_description: str = ""
    modality: str = ""
    manufacturer: str = ""
    image_type: tuple[str, ...] = ()  # normalised: split on '\', stripped, upper-cased
    frame_types: tuple[tuple[str, ...], ...] = ()  # distinct FrameType values (shared/per-frame)
    diffusion_directions: tuple[str, ...] = ()  # Philips (2001,1004) and (0018,9075) values
    patient_name: str = ""
    patient_id: str = ""
    transfer_syntax: str = ""
    lossy: bool = False  # (0028,2110) == "01" or a lossy transfer syntax
    derivation_description: str = ""
    pixel_presentation: str = ""
    volume_calculation: str = ""
    sequence_name: str = ""
    referenced_files: tuple[tuple[str, ...], ...] = ()  # DICOMDIR (0004,1500) values
    # What a series should hold, for telling a copy still under way from a complete one
    # (rules, INCOMPLETE_SERIES): 0 when the header does not say.
    frames: int = 1  # NumberOfFrames
    images_in_acquisition: int = 0  # (0020,1002)
    temporal_positions: int = 0  # (0020,0105)
    ge_locations: int = 0  # GE (0021,104F) LocationsInAcquisition

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class_uid == MEDIA_DIRECTORY_CLASS or bool(self.referenced_files)


class Header:
    """The header fields the rules use: the two that differ from file to file of a series
    (SOPInstanceUID, InstanceNumber) and the `SeriesFields` shared with the others, whose
    fields read as the header's own (`header.series_instance_uid`).

    Why split: the check keeps the header of every file until the verdict (55,000 in an 8 GB
    session); one object of 25 fields per file was its largest per-file cost (232 bytes).
    """

    __slots__ = ("fields", "instance_number", "sop_instance_uid")

    def __init__(
        self, fields: SeriesFields, sop_instance_uid: str = "", instance_number: int = 0
    ) -> None:
        self.fields = fields
        self.sop_instance_uid = sop_instance_uid
        self.instance_number = instance_number

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        return (self.sop_instance_uid, self.instance_number, self.fields) == (
            other.sop_instance_uid, other.instance_number, other.fields,
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.sop_instance_uid, self.instance_number, self.fields))

    def __repr__(self) -> str:
        return (
            f"Header(sop_instance_uid={self.sop_instance_uid!r}, "
            f"instance_number={self.instance_number!r}, fields={self.fields!r})"
        )

    @property
    def is_dicomdir(self) -> bool:
        return self.fields.is_dicomdir

    if TYPE_CHECKING:  # the shared fields, read through (set below)
        sop_class_uid: str
        study_instance_uid: str
        series_instance_uid: str
        series_number: str
        series_description: str
        modality: str
        manufacturer: str
        image_type: tuple[str, ...]
        frame_types: tuple[tuple[str, ...], ...]
        diffusion_directions: tuple[str, ...]
        patient_name: str
        patient_id: str
        transfer_syntax: str
        lossy: bool
        derivation_description: str
        pixel_presentation: str
        volume_calculation: str
        sequence_name: str
        referenced_files: tuple[tuple[str, ...], ...]
        frames: int
        images_in_acquisition: int
        temporal_positions: int
        ge_locations: int


_SERIES_FIELDS = tuple(field.name for field in dataclasses.fields(SeriesFields))
for _name in _SERIES_FIELDS:
    setattr(Header, _name, property(operator.attrgetter(f"fields.{_name}")))


@dataclasses.dataclass(frozen=True, slots=True)
class FileFacts:
    """Everything the rules need to know about one file, gathered in one visit.

    `detail` says in words what was found (the format, or why the header is unusable);
    `truncated` is empty for a complete file and otherwise says what is missing (rule A6).
    `inode` identifies hard links of one file, so duplicates can be told apart cheaply; it is
    NO_INODE for a file with a single link (no other path can share it).
    """

    path: Path
    size: int
    kind: Kind
    detail: str = ""
    header: Header | None = None
    preamble: bool = True  # False for DICOM without the 128-byte preamble and "DICM" (A3)
    truncated: str = ""
    inode: tuple[int, int] = (0, 0)


NO_INODE = (0, 0)  # FileFacts.inode of a file that has no other link


class _Short(Exception):
    """The file ends before the element being read."""


class _Bad(Exception):
    """The bytes are not a valid DICOM encoding."""


class _Window:
    """Byte ranges of an open file (or of a bytes object), read ahead in 64 KiB chunks.

    A class because it has a lifetime: the open file and the current chunk. The walkers read
    `buf`/`base` directly in their inner loop and call `refill` only on a miss.
    """

    def __init__(self, handle, size: int, first: bytes) -> None:
        self.handle = handle
        self.size = size
        self.buf = first
        self.base = 0

    def refill(self, pos: int, count: int = HEAD_BYTES) -> None:
        """Make the chunk start at `pos` (it is shorter than `count` only at the end of file)."""
        if self.handle is None or pos < 0 or pos >= self.size:
            raise _Short
        self.handle.seek(pos)
        self.buf = self.handle.read(max(count, HEAD_BYTES))
        self.base = pos

    def get(self, pos: int, count: int) -> bytes:
        if pos < 0 or count < 0 or pos + count > self.size:
            raise _Short
        start = pos - self.base
        if start >= 0 and start + count <= len(self.buf):
            return self.buf[start : start + count]
        self.refill(pos, count)
        if len(self.buf) < count:
            raise _Short
        return self.buf[:count]

    def peek(self, pos: int, count: int) -> bytes:
        """`count` bytes from `pos`, as `get` gives them, but read exactly (not a chunk) when
        the chunk lacks them, and leaving the chunk as it is.

        Why: the jumps to the end of the header (`_tail_confirms`: 12 bytes just before the
        pixel data; the per-frame groups up to it) read 64 KiB chunks with `get`, most of them
        pixel data the check never looks at. On a cold disk that chunk often ran past what the
        kernel had read ahead after the first 64 KiB, and the parser waited for a disk read
        (~0.7 ms) for bytes it did not need.
        """
        if pos < 0 or count < 0 or pos + count > self.size:
            raise _Short
        start = pos - self.base
        if start >= 0 and start + count <= len(self.buf):
            return self.buf[start : start + count]
        if self.handle is None:
            raise _Short
        kept = self.buf[start:] if 0 <= start < len(self.buf) else b""  # the part it holds
        self.handle.seek(pos + len(kept))
        data = kept + self.handle.read(count - len(kept))
        if len(data) < count:
            raise _Short
        return data


@dataclasses.dataclass(slots=True)
class _Walk:
    """Mutable state of one header walk: byte order, VR mode and what has been collected."""

    little: bool
    explicit: bool
    top: dict[int, bytes] = dataclasses.field(default_factory=dict)
    nested: dict[int, list[bytes]] = dataclasses.field(default_factory=dict)
    pixel_tag: int = 0
    pixel_offset: int = -1  # file offset of the Pixel Data value
    pixel_length: int = -1  # UNDEFINED for encapsulated data
    stop_after_0028: bool = False
    stop_after_tag: int = 0x0028FFFF  # early stopping is considered only past this tag
    stopped_early: bool = False
    early_resume: int = 0


_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_IMPLICIT = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}
_EXPLICIT = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())


def _is_vr(code: bytes) -> bool:
    return len(code) == 2 and 65 <= code[0] <= 90 and 65 <= code[1] <= 90


def _walk_items(win: _Window, pos: int, end: int, walk: _Walk, depth: int, collect: bool) -> int:
    """Walk the items of a sequence value from `pos`; return the offset after it.

    `end` is the sequence end for a defined length, or -1 for undefined length (then the walk
    stops after the Sequence Delimitation Item).
    """
    if depth > MAX_DEPTH:
        raise _Bad("sequences nested too deeply")
    unpack = _IMPLICIT[walk.little].unpack
    while end < 0 or pos < end:
        group, element, length = unpack(win.get(pos, 8))
        tag = group << 16 | element
        pos += 8
        if tag == SEQ_END:
            if end >= 0:
                raise _Bad("sequence delimiter in a defined-length sequence")
            return pos
        if tag != ITEM:
            raise _Bad(f"expected an item at byte {pos - 8}")
        if length == UNDEFINED:
            pos = _walk(win, pos, -1, walk, depth + 1, collect)
        else:
            if pos + length > win.size:
                raise _Short
            if collect:
                _walk(win, pos, pos + length, walk, depth + 1, collect)
            pos += length
    return pos


def _walk(win: _Window, pos: int, end: int, walk: _Walk, depth: int, collect: bool) -> int:
    """Walk a data set from `pos`; return the offset after it.

    Depth 0 is the top level: it runs to Pixel Data or the end of the file, keeps TOP_TAGS and
    descends only into DESCEND sequences. Deeper levels are items (`end` == -1: undefined
    length, ending at an Item Delimitation Item) and keep NESTED_TAGS when `collect`.
    The element header is decoded inline from the window's chunk: this loop runs for every
    element of every file, and a function call per element would double its cost.
    """
    little, explicit = walk.little, walk.explicit
    unpack_explicit = _EXPLICIT[little].unpack_from
    unpack_implicit = _IMPLICIT[little].unpack_from
    unpack_u32 = _U32[little].unpack_from
    size = win.size
    top = depth == 0
    keep = TOP_TAGS if top else NESTED_TAGS
    first = top
    skim = top and explicit and little
    while end < 0 or pos < end:
        buf = win.buf
        blen = len(buf)
        off = pos - win.base
        if off < 0 or (off + 12 > blen and win.base + blen < size):
            if top and pos >= size:
                return pos
            win.refill(pos)
            buf = win.buf
            blen = len(buf)
            off = 0
        if skim:
            stop = walk.stop_after_tag if walk.stop_after_0028 else TAG_FLOAT_PIXELS - 1
            skimmed = _skim(buf, off, min(blen, size - win.base), min(stop, _SKIM_LAST), walk.top)
            if skimmed != off:
                first = False
                pos = win.base + skimmed
                continue
        if off + 8 > blen:
            if top and pos >= size:
                return pos
            raise _Short
        if explicit:
            group, element, vr, length = unpack_explicit(buf, off)
            value = pos + 8
            if group == 0xFFFE:
                length = unpack_u32(buf, off + 4)[0]
                vr = b""
            elif vr in LONG_VRS:
                if off + 12 > blen:
                    raise _Short
                length = unpack_u32(buf, off + 8)[0]
                value = pos + 12
            elif vr not in SHORT_VRS and not _is_vr(vr):
                if first:
                    # Some writers declare explicit VR but write implicit VR; pydicom
                    # tolerates it, and so do we, for the whole data set.
                    walk.explicit = explicit = False
                    first = skim = False
                    continue
                raise _Bad(f"invalid VR at byte {pos}")
        else:
            group, element, length = unpack_implicit(buf, off)
            vr = b""
            value = pos + 8
        first = False
        tag = group << 16 | element
        if top:
            if tag >= TAG_FLOAT_PIXELS:
                if tag in (TAG_PIXEL_DATA, TAG_FLOAT_PIXELS, TAG_FLOAT_PIXELS + 1):
                    walk.pixel_tag, walk.pixel_offset, walk.pixel_length = tag, value, length
                return pos
            if walk.stop_after_0028 and tag > walk.stop_after_tag and _may_stop(walk, tag):
                walk.stopped_early = True
                walk.early_resume = pos
                return pos
            if tag == TAG_PER_FRAME_GROUPS and _scan_frames(win, value, walk):
                return pos
        elif tag == ITEM_END:
            if end >= 0:
                raise _Bad("item delimiter in a defined-length item")
            return value
        if length == UNDEFINED or vr == b"SQ":
            descend = collect if not top else tag in DESCEND
            if skim and vr == b"SQ" and (descend or length == UNDEFINED):
                found: list[tuple[int, bytes]] = []
                after = _skim_sequence(win, value, length, descend, found)
                if after >= 0:
                    for tag, raw in found:
                        walk.nested.setdefault(tag, []).append(raw)
                    pos = after
                    continue
            if vr == b"UN" and length == UNDEFINED:
                # PS3.5 6.2.2: an undefined-length UN holds an implicit-VR LE sequence.
                inner = _Walk(little=True, explicit=False, nested=walk.nested)
                pos = _walk_items(win, value, -1, inner, depth + 1, descend)
            elif length == UNDEFINED:
                pos = _walk_items(win, value, -1, walk, depth + 1, descend)
            else:
                pos = value + length
                if pos > size:
                    raise _Short
                if descend:
                    _walk_items(win, value, pos, walk, depth + 1, descend)
            continue
        pos = value + length
        if pos > size:
            raise _Short
        if tag in keep and length <= MAX_VALUE and (top or collect):
            if top:
                walk.top[tag] = win.get(value, length)
            else:
                walk.nested.setdefault(tag, []).append(win.get(value, length))
    return pos


# `_skim` reads the VR as a number: no 2-byte bytes object per element.
_UNPACK_EXPLICIT_LE = struct.Struct("<HHHH").unpack_from
_UNPACK_U32_LE = _U32[True].unpack_from
_SKIM_SHORT = frozenset(_U16[True].unpack(vr)[0] for vr in SHORT_VRS)
# Long VRs whose defined-length value `_skim` steps over (SQ and undefined lengths: `_walk`).
_SKIM_LONG = frozenset(_U16[True].unpack(vr)[0] for vr in LONG_VRS - {b"SQ"})
# The last tag `_skim` handles: the per-frame groups (5200,9230) and what follows them, Pixel
# Data and the item tags (FFFE,xxxx) are `_walk`'s.
_SKIM_LAST = TAG_PER_FRAME_GROUPS - 1


def _skim(buf: bytes, off: int, limit: int, last: int, top: dict[int, bytes]) -> int:
    """Step over the plain top-level elements of explicit VR little endian data in `buf` from
    `off`; keep the TOP_TAGS values in `top`; return the offset of the first element it leaves
    to `_walk` (`off` itself when that is the first).

    Why: a classic image has 200-300 elements before Pixel Data, most of them private, and the
    general loop of `_walk` (both byte orders, both VR modes, sequences, chunk refills, early
    stop) cost about 0.6 µs of CPU per element: most of the check's CPU. This loop does only
    what the common element needs, and stops at anything else, which `_walk` then handles
    exactly as before: a sequence or undefined length, an unknown or invalid VR, an element
    past `last` (the early-stop point, per-frame groups, Pixel Data, items) or one that does
    not lie wholly before `limit` (the end of the chunk or of the file).
    """
    short, long_vrs, keep = _SKIM_SHORT, _SKIM_LONG, TOP_TAGS
    unpack, unpack_u32 = _UNPACK_EXPLICIT_LE, _UNPACK_U32_LE
    while off + 12 <= limit:
        group, element, vr, length = unpack(buf, off)
        tag = group << 16 | element
        if tag > last:
            return off
        if vr in short:
            value = off + 8
        elif vr in long_vrs:
            length = unpack_u32(buf, off + 8)[0]
            if length == UNDEFINED:
                return off
            value = off + 12
        else:
            return off
        following = value + length
        if following > limit:
            return off
        if tag in keep and length <= MAX_VALUE:
            top[tag] = buf[value:following]
        off = following
    return off


# SQ as `_skim_sequence` reads VRs: a number, like `_skim`'s.
_SKIM_SQ = _U16[True].unpack(b"SQ")[0]
_SEQUENCES_DEEPEST = (MAX_DEPTH + 1) // 2  # `_walk_items` refuses a sequence nested deeper


def _skim_sequence(win: _Window, pos: int, length: int, collect: bool, found: list) -> int:
    """Step over a whole explicit VR little endian sequence whose value starts at `pos`
    (`length` bytes, or UNDEFINED); when `collect`, append (tag, value) of each NESTED_TAGS
    element inside it, at any depth, to `found`; return the offset after the sequence, or -1
    to leave the whole sequence to `_walk_items`, which then walks it as before.

    Why: an enhanced image's header is mostly sequences: the shared functional groups (with
    Siemens's private groups, ~300 elements in an XA30 DWI file) and a few undefined-length
    sequences the walk must step through item by item only to find their end. The general walk
    spent two recursive calls per item and ~0.6 µs per element on them; this one flat loop over
    element, item and delimiter headers keeps a stack of the open sequences and items instead
    and decodes only what the rules need (an XA30 DWI file's sequences: ~100 µs, about 40 % of
    the general walk's time). Like `_skim` it declines anything not plain (an unknown VR, a UN
    or other non-SQ value of undefined length, a stray delimiter, an element that overruns its
    item or the file, nesting as deep as `_walk_items` refuses), and `found` is then ignored:
    the general walk gives the exact result or error.
    """
    size = win.size
    if length != UNDEFINED and pos + length > size:
        return -1
    buf, base = win.buf, win.base
    blen = len(buf)
    short, long_vrs, keep = _SKIM_SHORT, _SKIM_LONG, NESTED_TAGS
    unpack, unpack_u32 = _UNPACK_EXPLICIT_LE, _UNPACK_U32_LE
    # The innermost open container: a sequence (items expected) or an item (elements
    # expected), and its end offset (-1: undefined length); the enclosing ones on `stack`.
    in_sequence, end = True, (-1 if length == UNDEFINED else pos + length)
    stack: list[tuple[bool, int]] = []
    sequences = 1
    off = pos - base
    while True:
        if end >= 0 and base + off >= end:
            if base + off != end:
                return -1
            if not stack:
                return end
            sequences -= in_sequence
            in_sequence, end = stack.pop()
            continue
        if off < 0 or off + 12 > blen:
            pos = base + off
            if pos + 8 > size:
                return -1
            if off < 0 or base + blen < size:
                win.refill(pos)
                buf, base = win.buf, pos
                blen = len(buf)
                off = 0
            if off + 8 > blen:
                return -1
        group, element, vr, value_length = unpack(buf, off)
        if group == 0xFFFE:  # an item or a delimiter: its 4-byte length is vr, value_length
            if element == 0xE000 and in_sequence:
                off += 8
                item_length = vr | value_length << 16
                if item_length == UNDEFINED:
                    stack.append((in_sequence, end))
                    in_sequence, end = False, -1
                elif base + off + item_length > size:
                    return -1
                elif collect:
                    stack.append((in_sequence, end))
                    in_sequence, end = False, base + off + item_length
                else:
                    off += item_length
            elif element == 0xE00D and not in_sequence and end < 0:
                off += 8
                in_sequence, end = stack.pop()
            elif element == 0xE0DD and in_sequence and end < 0:
                off += 8
                if not stack:
                    return base + off
                sequences -= 1
                in_sequence, end = stack.pop()
            else:
                return -1
            continue
        if in_sequence:
            return -1
        if vr in short:
            value = off + 8
        elif off + 12 > blen:
            return -1
        elif vr == _SKIM_SQ:
            value_length = unpack_u32(buf, off + 8)[0]
            if sequences == _SEQUENCES_DEEPEST:
                return -1
            off += 12
            if value_length == UNDEFINED:
                stack.append((in_sequence, end))
                in_sequence, end = True, -1
                sequences += 1
            elif base + off + value_length > size:
                return -1
            elif collect:
                stack.append((in_sequence, end))
                in_sequence, end = True, base + off + value_length
                sequences += 1
            else:
                off += value_length
            continue
        elif vr in long_vrs:
            value_length = unpack_u32(buf, off + 8)[0]
            if value_length == UNDEFINED:
                return -1
            value = off + 12
        else:
            return -1
        following = value + value_length
        if following <= blen:
            if collect and (group << 16 | element) in keep and value_length <= MAX_VALUE:
                found.append((group << 16 | element, buf[value:following]))
            off = following
            continue
        # A value that runs past the chunk: step over it, reading it only if it is kept.
        following += base
        if following > size:
            return -1
        if collect and (group << 16 | element) in keep and value_length <= MAX_VALUE:
            found.append((group << 16 | element, win.get(base + value, value_length)))
            buf, base = win.buf, win.base
            blen = len(buf)
        off = following - base


# Explicit VR LE element headers of the per-frame tags, for the byte scan below.
_SCAN_PATTERNS = {
    TAG_FRAME_TYPE: b"\x08\x00\x07\x90CS",
    TAG_DIFFUSION_DIRECTIONALITY: b"\x18\x00\x75\x90CS",
}
_SCAN_SEARCHES = {tag: re.compile(re.escape(raw)).finditer for tag, raw in _SCAN_PATTERNS.items()}


def _scan_frames(win: _Window, value: int, walk: _Walk) -> bool:
    """Collect per-frame FrameType and Diffusion Directionality by a byte scan; True if done.

    The Per-Frame Functional Groups Sequence holds ~80 elements per frame (2,700 for a
    33-slice XA30 fMRI volume), and walking them costs far more than the rest of the header.
    When the file is explicit VR little endian and ends with native Pixel Data of the expected
    length, everything between here and Pixel Data is this sequence (and perhaps overlays), so
    searching it for the two element headers finds every value at C speed. A 6-byte pattern
    that includes the VR does not occur by chance in the few MB of a header. Otherwise (a
    compressed or odd file) return False and let the exact walk do the work.
    """
    if not walk.explicit or not walk.little:
        return False
    expected = _expected_pixel_bytes(walk)
    if not expected or not _tail_confirms(win, walk, expected):
        return False
    region = win.peek(value, walk.pixel_offset - 12 - value)
    for tag, pattern in _SCAN_SEARCHES.items():
        # Every match from one C pass; one found inside the value of the previous kept one is
        # skipped, as searching again after that value would (the pattern cannot overlap
        # itself: its first byte occurs in it only once). Two passes of `re` cost about 2/3 of
        # a `bytes.find` per match (~90 µs for an XA30 DWI file's 59 KB of frames).
        after = 0
        for match in pattern(region):
            found = match.start()
            if found < after:
                continue
            after = found + 8 + (region[found + 6] | region[found + 7] << 8)
            walk.nested.setdefault(tag, []).append(region[found + 8 : after])
    return True


def _may_stop(walk: _Walk, tag: int) -> bool:
    """True when nothing the rules need can follow `tag` (classic objects only).

    A reason that cannot change later in the file switches early stopping off for this walk,
    so the test runs once per file rather than once per private element.
    """
    top = walk.top
    if (
        TAG_ROWS not in top
        or TAG_BITS_ALLOCATED not in top
        or _text(top.get(TAG_SOP_CLASS, b"")) not in _EARLY_STOP_CLASSES
    ):
        walk.stop_after_0028 = False
        return False
    if (
        tag <= TAG_PHILIPS_DIFFUSION_DIRECTION
        and b"PHILIPS" in top.get(TAG_MANUFACTURER, b"").upper()
    ):
        walk.stop_after_tag = TAG_PHILIPS_DIFFUSION_DIRECTION  # do not ask again before it
        return False
    return tag < TAG_SHARED_GROUPS


# Classic single-frame classes only: enhanced objects need the functional groups at 5200.
_EARLY_STOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"})


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \x00")


def _values(raw: bytes) -> tuple[str, ...]:
    """Multi-valued CS, normalised as rule C asks: split on '\\', strip, upper-case."""
    return tuple(v.strip(" \x00").upper() for v in raw.decode("latin-1").split("\\"))


def _us(raw: bytes, little: bool) -> int:
    return _U16[little].unpack_from(raw)[0] if len(raw) >= 2 else 0


def _int(raw: bytes) -> int:
    try:
        return int(_text(raw) or "1")
    except ValueError:
        return 1


def _meta(win: _Window, pos: int) -> tuple[dict[int, bytes], int]:
    """Read group 0002 (always explicit VR little endian, PS3.10 7.1) from `pos`."""
    found: dict[int, bytes] = {}
    while pos + 8 <= win.size:
        group, element, vr, length = _EXPLICIT[True].unpack(win.get(pos, 8))
        if group != 0x0002:
            break
        value = pos + 8
        if vr in LONG_VRS:
            length = _U32[True].unpack(win.get(pos + 8, 4))[0]
            value = pos + 12
        elif not _is_vr(vr):
            raise _Bad("unusable file meta information")
        if length == UNDEFINED or value + length > win.size or length > MAX_VALUE:
            raise _Bad("unusable file meta information")
        found[group << 16 | element] = win.get(value, length)
        pos = value + length
    return found, pos


# The SeriesFields of the last few distinct headers a process decoded, by the raw values they
# were decoded from. Files come series by series, so this is almost always a hit.
_RECENT_FIELDS: collections.OrderedDict[tuple, SeriesFields] = collections.OrderedDict()
RECENT_FIELDS = 8


def _decode(walk: _Walk, meta: dict[int, bytes], syntax: str) -> Header:
    """The header of a walked file: its two own values and the SeriesFields, decoded once per
    distinct set of raw values (the files of a series share theirs) rather than once a file.

    Why: decoding ~25 values is about a tenth of a small file's CPU; comparing raw bytes
    costs less than decoding them, and the parent receives the same objects again (pickled
    once per batch, and equal, so shared there too).
    """
    top = walk.top
    sop_instance = _text(top.get(TAG_SOP_INSTANCE, b""))
    number = _count(top.get(TAG_INSTANCE_NUMBER, b""))
    key = (
        syntax,
        walk.little,
        meta.get(TAG_META_SOP_CLASS, b""),
        *[(tag, raw) for tag, raw in top.items() if tag not in _PER_FILE_TAGS],
        *[(tag, *raws) for tag, raws in walk.nested.items()],
    )
    fields = _RECENT_FIELDS.get(key)
    if fields is None:
        fields = _RECENT_FIELDS[key] = _decode_fields(walk, meta, syntax)
        if len(_RECENT_FIELDS) > RECENT_FIELDS:
            _RECENT_FIELDS.popitem(last=False)
    return Header(fields, sop_instance, number)


_PER_FILE_TAGS = frozenset({TAG_SOP_INSTANCE, TAG_INSTANCE_NUMBER})


def _decode_fields(walk: _Walk, meta: dict[int, bytes], syntax: str) -> SeriesFields:
    top, nested = walk.top, walk.nested
    frame_types = tuple(dict.fromkeys(_values(v) for v in nested.get(TAG_FRAME_TYPE, [])))
    directions = [_text(v).upper() for v in nested.get(TAG_DIFFUSION_DIRECTIONALITY, [])]
    creator = _text(top.get(TAG_PHILIPS_CREATOR, b"")).upper()
    if TAG_PHILIPS_DIFFUSION_DIRECTION in top and "PHILIPS" in creator:
        directions.append(_text(top[TAG_PHILIPS_DIFFUSION_DIRECTION]).upper())
    references = tuple(
        tuple(p.strip(" \x00") for p in v.decode("latin-1").split("\\"))
        for v in nested.get(TAG_REFERENCED_FILE_ID, [])
    )
    sop_class = _text(top.get(TAG_SOP_CLASS, b"")) or _text(meta.get(TAG_META_SOP_CLASS, b""))
    image_type = _values(top[TAG_IMAGE_TYPE]) if top.get(TAG_IMAGE_TYPE) else ()
    return SeriesFields(
        sop_class_uid=sop_class,
        study_instance_uid=_text(top.get(TAG_STUDY_UID, b"")),
        series_instance_uid=_text(top.get(TAG_SERIES_UID, b"")),
        series_number=_text(top.get(TAG_SERIES_NUMBER, b"")),
        series_description=_text(top.get(TAG_SERIES_DESCRIPTION, b"")),
        modality=_text(top.get(TAG_MODALITY, b"")).upper(),
        manufacturer=_text(top.get(TAG_MANUFACTURER, b"")),
        image_type=image_type,
        frame_types=frame_types,
        diffusion_directions=tuple(dict.fromkeys(d for d in directions if d)),
        patient_name=_text(top.get(TAG_PATIENT_NAME, b"")),
        patient_id=_text(top.get(TAG_PATIENT_ID, b"")),
        transfer_syntax=syntax,
        lossy=_text(top.get(TAG_LOSSY, b"")) == "01" or syntax in LOSSY_SYNTAXES,
        derivation_description=_text(top.get(TAG_DERIVATION_DESCRIPTION, b"")),
        pixel_presentation=_text(top.get(TAG_PIXEL_PRESENTATION, b"")).upper(),
        volume_calculation=_text(top.get(TAG_VOLUME_CALCULATION, b"")).upper(),
        sequence_name=_text(top.get(TAG_SEQUENCE_NAME, b"")),
        referenced_files=references,
        frames=max(_int(top.get(TAG_FRAMES, b"")), 1),
        images_in_acquisition=_count(top.get(TAG_IMAGES_IN_ACQUISITION, b"")),
        temporal_positions=_count(top.get(TAG_TEMPORAL_POSITIONS, b"")),
        ge_locations=_ge_locations(top, walk.little),
    )


def _count(raw: bytes) -> int:
    """An IS value as a non-negative count; 0 when absent or not a plain number."""
    text = _text(raw)
    return int(text) if text.isdigit() else 0


def _ge_locations(top: dict[int, bytes], little: bool) -> int:
    """GE's LocationsInAcquisition, only when GEMS_RELA_01 owns the block (PS3.5 7.8.1)."""
    if _text(top.get(TAG_GE_RELA_CREATOR, b"")).upper() != "GEMS_RELA_01":
        return 0
    raw = top.get(TAG_GE_LOCATIONS, b"")
    if len(raw) == 2:  # SS, explicit or implicit VR
        return max(struct.unpack("<h" if little else ">h", raw)[0], 0)
    return _count(raw)


def _expected_pixel_bytes(walk: _Walk) -> int:
    """Rows·Columns·SamplesPerPixel·NumberOfFrames·BitsAllocated/8 (rule A6a), 0 if unknown."""
    top, little = walk.top, walk.little
    rows = _us(top.get(TAG_ROWS, b""), little)
    columns = _us(top.get(TAG_COLUMNS, b""), little)
    bits = _us(top.get(TAG_BITS_ALLOCATED, b""), little)
    samples = _us(top.get(TAG_SAMPLES, b""), little) or 1
    frames = max(_int(top.get(TAG_FRAMES, b"")), 1)
    if not rows or not columns or not bits:
        return 0
    return (rows * columns * samples * frames * bits + 7) // 8


def _tail_confirms(win: _Window, walk: _Walk, expected: int) -> bool:
    """True if the file ends with a Pixel Data element of exactly the expected length."""
    padded = expected + (expected & 1)
    head = 12 if walk.explicit else 8
    start = win.size - padded - head
    if start < 0:
        return False
    data = win.peek(start, head)
    group, element = _TAG[walk.little].unpack_from(data)
    if (group << 16 | element) != TAG_PIXEL_DATA:
        return False
    length = _U32[walk.little].unpack_from(data, head - 4)[0]
    if length != padded:
        return False
    walk.pixel_tag = TAG_PIXEL_DATA
    walk.pixel_offset = start + head
    walk.pixel_length = length
    return True


def _truncation(win: _Window, walk: _Walk, header: Header, syntax: str) -> str:
    """Rule A6: say what is missing, or return "" for a complete file."""
    if walk.pixel_offset < 0:
        if header.sop_class_uid in PIXEL_CLASSES:
            return "no Pixel Data (7FE0,0010) before the end of the file"
        return ""
    size = win.size
    if walk.pixel_length == UNDEFINED:
        tail = win.peek(max(size - 64, walk.pixel_offset), min(64, size - walk.pixel_offset))
        if tail.endswith(SEQ_DELIMITER):
            return ""
        return _walk_fragments(win, walk.pixel_offset)
    end = walk.pixel_offset + walk.pixel_length
    if end > size:
        return f"file ends {end - size} bytes before the end of Pixel Data"
    if syntax in NATIVE_SYNTAXES and walk.pixel_tag == TAG_PIXEL_DATA:
        expected = _expected_pixel_bytes(walk)
        if expected and walk.pixel_length < expected:
            return (
                f"Pixel Data holds {walk.pixel_length} bytes; Rows×Columns×Samples×Frames×Bits "
                f"needs {expected}"
            )
    return ""


def _walk_fragments(win: _Window, pos: int) -> str:
    """Step over encapsulated fragments to the Sequence Delimitation Item (PS3.5 A.4)."""
    size = win.size
    while pos + 8 <= size:
        group, element, length = _IMPLICIT[True].unpack(win.get(pos, 8))
        tag = group << 16 | element
        if tag == SEQ_END:
            return ""
        if tag != ITEM or length == UNDEFINED:
            return f"encapsulated Pixel Data is damaged at byte {pos}"
        pos += 8 + length
        if pos > size:
            return f"file ends {pos - size} bytes inside a Pixel Data fragment"
    return "encapsulated Pixel Data has no Sequence Delimitation Item (FFFE,E0DD)"


def _parse_dicom(win: _Window, start: int, preamble: bool) -> tuple[Header, str]:
    """Parse meta and data set from `start`; return the header and the truncation note.

    Raise _Bad/_Short (or struct.error) when the header itself is unusable.
    """
    win, walk, meta, syntax = _walk_file(win, start)
    header = _decode(walk, meta, syntax)
    return header, _truncation(win, walk, header, syntax)


def _walk_file(win: _Window, start: int) -> tuple[_Window, _Walk, dict[int, bytes], str]:
    """Walk meta and data set from `start` to Pixel Data: (window, walk, meta, syntax).

    The window is a new one (the inflated data set) for Deflated Explicit VR LE.
    """
    meta: dict[int, bytes] = {}
    pos = start
    head = win.get(pos, 8)
    if _TAG[True].unpack_from(head)[0] == 0x0002:
        meta, pos = _meta(win, pos)
    syntax = _text(meta.get(TAG_TRANSFER_SYNTAX, b""))
    if syntax:
        little = syntax != EXPLICIT_BE
        explicit = syntax != IMPLICIT_LE
    else:  # no meta (A3 group 0008 start): guess the VR mode from the first element
        little = True
        explicit = _is_vr(win.get(pos + 4, 2)) if pos + 6 <= win.size else False
        syntax = EXPLICIT_LE if explicit else IMPLICIT_LE
    if syntax == DEFLATED_LE:
        win, pos = _inflate(win, pos)
    walk = _Walk(little=little, explicit=explicit, stop_after_0028=syntax in NATIVE_SYNTAXES)
    _walk(win, pos, -1, walk, 0, True)
    if walk.stopped_early:
        expected = _expected_pixel_bytes(walk)
        if not (expected and _tail_confirms(win, walk, expected)):
            walk.stopped_early = walk.stop_after_0028 = False
            _walk(win, walk.early_resume, -1, walk, 0, True)
    return win, walk, meta, syntax


# ---- Where the Pixel Data value lies (for comparing XNAT's copy with the file sent) ---------


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


def pixel_span(source: bytes | BinaryIO, size: int | None = None) -> PixelSpan | None:
    """Find the Pixel Data value of a DICOM file (bytes, or an open binary file of `size`
    bytes) with the header walker; None when the walker declines.

    Why: the pixel comparison after archiving (`verify.pixel_digest`) reads one downloaded and
    one local file per scan; `pydicom.dcmread` builds the whole data set first, thousands of
    objects for an enhanced multi-frame header, and cost most of the verification's time.
    The walker steps over the header as the check does. It declines, and the caller parses
    with pydicom, where it would have to guess or where it stops short of certainty: no file
    meta transfer syntax, big endian or deflated data sets, Float Pixel Data instead of Pixel
    Data, no Pixel Data, a value that runs past the end of the file or damaged fragments.
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
        if (
            not meta.get(TAG_TRANSFER_SYNTAX)
            or syntax in (EXPLICIT_BE, DEFLATED_LE)
            or walk.pixel_tag != TAG_PIXEL_DATA
            or walk.pixel_offset < 0
        ):
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


def _inflate(win: _Window, pos: int) -> tuple[_Window, int]:
    """Deflated Explicit VR LE: the data set after the meta is a raw deflate stream."""
    raw = win.get(pos, win.size - pos)
    engine = zlib.decompressobj(-zlib.MAX_WBITS)
    data = engine.decompress(raw, MAX_DEFLATED)
    return _Window(None, len(data), data), 0


def _missing_uids(header: Header) -> list[str]:
    """Rule A5: the identifiers without which a file cannot be archived."""
    if header.is_dicomdir:
        return []
    names = {
        "SOPClassUID (0008,0016)": header.sop_class_uid,
        "SOPInstanceUID (0008,0018)": header.sop_instance_uid,
        "StudyInstanceUID (0020,000D)": header.study_instance_uid,
        "SeriesInstanceUID (0020,000E)": header.series_instance_uid,
    }
    return [name for name, value in names.items() if not value]


# ---- Section B: converted and container formats (first 4 KiB) ------------------------------

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


def _looks_like_bare_dicom(data: bytes) -> bool:
    """Rule A3: no preamble, first tag group 0002 or 0008, little endian [dcm2niix]."""
    return len(data) >= 8 and data[0] in (0x02, 0x08) and data[1] == 0 and data[3] == 0


_PARSE_ERRORS = (_Bad, _Short, struct.error, ValueError, IndexError, OverflowError, zlib.error)


def sniff(path: Path) -> FileFacts:
    """Describe one file by its content; never raise.

    Symbolic links are not followed (the caller reports them); special files are `unreadable`
    and never read (see `_open_head` for how a FIFO is kept from blocking).
    """
    return _facts(path, *_open_head(str(path)))


# Opening with O_NOFOLLOW refuses a link; O_NONBLOCK keeps the open of a FIFO from waiting for a
# writer (it has no effect on the reads of a regular file); O_NOCTTY keeps a terminal device from
# becoming ours. The type is then taken from fstat of the open file: one round trip fewer than
# a stat before the open, which a share charges about 1 ms for.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_head(path: str) -> tuple[int, int, tuple[int, int], bytes, str]:
    """Open `path` and read its first HEAD_BYTES: (fd, size, inode, head, problem).

    The metadata operations a file costs are the minimum: one open, one fstat of the open file
    (served from the open's reply on a share), one read. `fd` is -1 when nothing more is to be
    read (the file could not be opened, is not a regular file or is empty), WHOLE when the head
    is the whole file (closed here); otherwise it is left open for the parser (which reads on
    only for headers longer than HEAD_BYTES or to confirm the file's end) and `_facts` closes
    it. Runs in an I/O thread (`sniff_folder`): it only does
    system calls, which release the GIL, so many of them wait on a slow share at once.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symbolic link (O_NOFOLLOW)
            return -1, 0, (0, 0), b"", "not a regular file"
        return -1, 0, (0, 0), b"", f"cannot read: {error.strerror}"
    try:
        info = os.fstat(fd)
        # Only a file with another link can share its inode with another path (the duplicate
        # rule's shortcut); the others keep no identity, which saves ~120 bytes a file.
        inode = (info.st_dev, info.st_ino) if info.st_nlink > 1 else NO_INODE
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return -1, 0, inode, b"", "not a regular file"
        if info.st_size == 0:
            os.close(fd)
            return -1, 0, inode, b"", ""
        head = os.read(fd, HEAD_BYTES)
    except OSError as error:
        os.close(fd)
        return -1, 0, (0, 0), b"", f"cannot read: {error.strerror}"
    if not head:
        os.close(fd)
        return -1, 0, inode, b"", ""
    if len(head) >= info.st_size:  # the whole file: nothing more to read, close it here
        os.close(fd)
        return WHOLE, len(head), inode, head, ""
    return fd, info.st_size, inode, head, ""


# `_open_head`'s fd for a file it read whole and closed. Why close it there: in the I/O threads
# that read ahead, a close is one more system call beside the open and the read; in the parser
# each one gave the GIL away to a waiting I/O thread and waited to get it back (~30-50 µs).
WHOLE = -2


def _facts(
    path: Path, fd: int, size: int, inode: tuple[int, int], head: bytes, problem: str
) -> FileFacts:
    """The facts of one file from what `_open_head` got; closes `fd`; never raises."""
    if fd < 0 and fd != WHOLE:
        if problem:
            return FileFacts(path, 0, Kind.UNREADABLE, problem, inode=inode)
        return FileFacts(path, 0, Kind.EMPTY, "0 bytes", inode=inode)
    try:
        return _sniff_content(path, _Positioned(fd) if fd >= 0 else None, size, head, inode)
    except OSError as error:
        return FileFacts(path, size, Kind.UNREADABLE, f"cannot read: {error.strerror}")
    finally:
        if fd >= 0:
            os.close(fd)


class _Positioned:
    """The `seek`/`read` a `_Window` uses, as positioned reads of a bare descriptor: wrapping
    each file's descriptor in a file object cost more than the few reads most files need
    after their first 64 KiB (none)."""

    __slots__ = ("fd", "pos")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, count: int) -> bytes:
        return os.pread(self.fd, count, self.pos)


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


def sniff_folder(
    folder: Path | None,
    names: list[Path],
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    texts: list[str] | None = None,
) -> list[FileFacts]:
    """Sniff `folder / name` for every name (each name a full path when `folder` is None), in
    input order; each FileFacts' path is the name as given (the caller's object, not a copy),
    and equal header values share one string.

    Why processes: the walk is pure Python, so threads would share one core. Why a threshold:
    starting workers and sending results back costs about as much as sniffing a few hundred
    files, so small folders are done in this process. Why two start methods: a plain fork
    starts workers in ~10 ms but is only safe while this process has a single thread; the
    daemon runs threads (scheduler, watcher) whose locks a fork would copy in an unknown
    state, so there the workers come from a "forkserver" (~100-200 ms per pool; like spawn,
    its workers import the main module once: keep entry scripts light and guarded).
    Why I/O threads besides (`_sniff_stream`): on a share every open and read waits a round
    trip; each process keeps IO_THREADS of them in flight while it parses.
    Why the workers send tuples of plain values (`_wire`) and no paths: the parent holds the
    facts of every file of the session until the verdict is made, and unpickling a Path and a
    dataclass per file cost the parent more CPU than its share of the judging. The parent
    rebuilds each FileFacts with the name it already has, one SeriesFields per series and
    the other header strings shared through one table: about 0.65 KB a file at the check's
    peak (tracemalloc, 10,000 small files; 2.1 KB two rounds ago).
    `texts`, when given, are the names as text (`str(name)` each), used to open the files
    instead of `str(name)`, which would keep a copy of the text in each Path object.
    `progress(done, total)` is called every PROGRESS_EVERY files and at the end.
    """
    total = len(names)
    if texts is None:
        texts = [str(name) for name in names]
    base = f"{folder}{os.sep}" if folder is not None else ""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    shared: dict = {}
    results: list[FileFacts] = []
    if workers < 2 or total < PARALLEL_MIN_FILES:
        with concurrent.futures.ThreadPoolExecutor(IO_THREADS, "xnatdrop-read") as reader:
            for wire in _sniff_stream(base, texts, reader, _Pace()):
                results.append(_rebuild(names[len(results)], wire, shared))
                if progress is not None and (
                    len(results) % PROGRESS_EVERY == 0 or len(results) == total
                ):
                    progress(len(results), total)
        return results
    single = threading.active_count() == 1
    context = multiprocessing.get_context("fork" if single else "forkserver")
    size = max(16, min(PROGRESS_EVERY, total // (workers * 8)))
    batches = ((base, texts[i : i + size]) for i in range(0, total, size))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for batch in pool.map(_sniff_batch, batches):
            for wire in batch:
                results.append(_rebuild(names[len(results)], wire, shared))
            if progress is not None:
                progress(len(results), total)
    return results


IO_THREADS = 8  # header reads in flight per process (open + fstat + read each)
READ_CHUNK = 4  # files one I/O thread opens and reads in one task
READ_AHEAD = 2 * IO_THREADS * READ_CHUNK  # files opened ahead: each holds an fd and ≤ 64 KiB

# A file's facts as a worker sends them: (size, kind, detail, the SeriesFields values or None,
# SOPInstanceUID, InstanceNumber, preamble, truncated, inode). The path is not sent: the parent
# has it.
_Wire = tuple[int, str, str, tuple | None, str, int, bool, str, tuple[int, int]]
_series_values = operator.attrgetter(*_SERIES_FIELDS)
_reader: tuple[int, concurrent.futures.ThreadPoolExecutor, _Pace] | None = None


def _wire(facts: FileFacts) -> _Wire:
    header = facts.header
    if header is None:
        return (
            facts.size, facts.kind.value, facts.detail, None, "", 0, facts.preamble,
            facts.truncated, facts.inode,
        )  # fmt: skip
    return (
        facts.size, facts.kind.value, facts.detail, _series_values(header.fields),
        header.sop_instance_uid, header.instance_number, facts.preamble, facts.truncated,
        facts.inode,
    )  # fmt: skip


def _rebuild(path: Path, wire: _Wire, shared: dict) -> FileFacts:
    """FileFacts from a wire tuple, its SeriesFields shared with every earlier file whose
    values are equal (one object per series, keyed by its values in `shared`), and its other
    strings shared by value, so a 50,000-file session does not hold 50,000 copies of them."""
    size, kind, detail, values, sop, number, preamble, truncated, inode = wire
    header = None
    if values is not None:
        key = (SeriesFields, values)  # never equal to a plain value of the table
        fields = shared.get(key)
        if fields is None:
            fields = shared[key] = SeriesFields(
                *[shared.setdefault(value, value) for value in values]
            )
        header = Header(fields, sop, number)
    return FileFacts(
        path, size, _KINDS[kind], shared.setdefault(detail, detail), header, preamble,
        shared.setdefault(truncated, truncated), NO_INODE if inode == NO_INODE else inode,
    )  # fmt: skip


_KINDS = {kind.value: kind for kind in Kind}


def _sniff_batch(batch: tuple[str, list[str]]) -> list[_Wire]:
    """In a worker process: the wire tuples of one batch of names under a base path."""
    global _reader
    if _reader is None or _reader[0] != os.getpid():  # threads do not survive a fork
        _reader = (os.getpid(), concurrent.futures.ThreadPoolExecutor(IO_THREADS), _Pace())
    base, names = batch
    return list(_sniff_stream(base, names, _reader[1], _reader[2]))


@dataclasses.dataclass(slots=True)
class _Pace:
    """Whether the files of this check are read by I/O threads ahead of the parser.

    Why not always: with the files in the page cache an open and a 64 KiB read take ~20 µs,
    and handing them to threads cost ~40 µs of CPU a file more (each system call of a thread
    gives the GIL back and takes it again from the busy parser). So the parser reads inline,
    timing each chunk, and turns the threads on as soon as a chunk is slow (a cold disk, a
    share: 1-3 ms a file); while threaded, one chunk in PROBE_EVERY is read inline again to
    see whether the reads became fast (a thread's own timing would include its wait for the
    GIL, so it cannot tell).
    """

    threaded: bool = False
    since_probe: int = 0


SLOW_READ = 150e-6  # seconds per file (open + fstat + 64 KiB read) above which threads read
PROBE_EVERY = 256  # while threaded, chunks between two inline (timed) reads


def _sniff_stream(
    base: str, names: list[str], reader: concurrent.futures.Executor, pace: _Pace
) -> Iterator[_Wire]:
    """Sniff `base + name` for each name, in order, the files opened and read READ_CHUNK at a
    time, by I/O threads up to READ_AHEAD files ahead of the parser when reads are slow.

    Why: each file costs an open and a read, and on a cold disk or a share each waits a round
    trip (about 1 ms on a site's share). Done one after the other by the parser, those waits
    add up to more than the parsing; done by I/O threads ahead of it (system calls release
    the GIL), they overlap with it and with each other. Why chunks: a task per file cost a
    future, a lock and a thread switch per file. The window bounds what waits: READ_AHEAD open
    files and their first 64 KiB. `pace` decides inline or threaded (see `_Pace`).
    """
    chunks = (names[i : i + READ_CHUNK] for i in range(0, len(names), READ_CHUNK))
    pending: collections.deque[tuple[list[str], concurrent.futures.Future]] = collections.deque()
    heads: list = []

    def read_ahead() -> None:
        while pace.threaded and pace.since_probe < PROBE_EVERY:
            if len(pending) >= READ_AHEAD // READ_CHUNK or (more := next(chunks, None)) is None:
                return
            pending.append((more, reader.submit(_open_heads, base, more)))

    try:
        while True:
            read_ahead()  # a new batch of a threaded worker starts its reads at once
            if pending:
                chunk, opened = pending.popleft()
                heads = opened.result()
                pace.since_probe += 1
            else:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                started = time.perf_counter()
                heads = _open_heads(base, chunk)
                pace.threaded = time.perf_counter() - started > SLOW_READ * len(chunk)
                pace.since_probe = 0
            read_ahead()
            for index, name in enumerate(chunk):
                # The parser needs only the name (formats are told by suffix too), not a Path.
                yield _wire(_facts(name, *heads[index]))  # type: ignore[arg-type]
                heads[index] = _CLOSED
    finally:  # the consumer stopped early: close what was opened and not parsed
        _close_all(heads)
        for _, opened in pending:
            _close_all(opened.result())


_CLOSED = (-1, 0, (0, 0), b"", "")


def _open_heads(base: str, names: list[str]) -> list[tuple[int, int, tuple[int, int], bytes, str]]:
    return [_open_head(base + name) for name in names]


def _close_all(heads: list[tuple[int, int, tuple[int, int], bytes, str]]) -> None:
    for fd, *_ in heads:
        if fd >= 0:
            os.close(fd)
