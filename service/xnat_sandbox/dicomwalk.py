"""A small walker over a DICOM file's bytes: where each top-level element of the header lies.

Why the sandbox has its own: the importer needs about fifteen header values per file and the
site anonymisation script edits three elements, yet pydicom parsed (and, for the edit, wrote
back) every element of the header of every imported file, about 1.5 ms a file and most of the
import's time. This walker reads the file meta and the top-level elements up to a stop tag
without decoding values, so that the importer reads its fields from the raw bytes and the
anonymiser splices edited elements into the byte stream (`anonymize.splice`).

It walks only what it can walk exactly as pydicom reads it: a Part 10 file (preamble, `DICM`,
explicit VR little endian file meta) whose data set is explicit or implicit VR little endian
(every compressed transfer syntax included: their header is explicit VR little endian), tags
in ascending order, known VRs, sequences of undefined length made of items. Anything else
(no preamble, big endian, deflated, a VR pydicom would guess, duplicate or unordered tags,
undefined length outside a sequence) raises `CannotWalk`, and the caller falls back to pydicom.
It decodes no value with pydicom (only pydicom's dictionary is asked for the VR of an
undefined-length element in implicit VR, as pydicom itself does), and nothing here comes from
xnatdrop: the sandbox stands in for XNAT and reads the bytes itself.

`walk` is the C extension `_dicomwalk_c` when it is built (`pip install` builds it): the same
walk transcribed line for line, with the same answers and refusals (tests/sandbox/
test_walker_c.py runs both on real and generated headers), about ten times faster, because the
per-element loop and the objects it keeps are Python's cost. Without a compiler the Python walk
below (`walk_python`) runs instead; `IMPLEMENTATION` says which one is in use.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR

PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
SPECIFIC_CHARACTER_SET = 0x00080005

IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: PS3.5 table 7.1-1: VRs with a reserved field and a 32-bit length in explicit VR.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL",
     "SS", "ST", "TM", "UI", "UL", "US"}
)  # fmt: skip
#: VR bytes → (VR, has a 32-bit length)
_VRS = {vr.encode(): (vr, vr in LONG_VRS) for vr in LONG_VRS | SHORT_VRS}
_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (explicit VR)
_IMPLICIT = struct.Struct("<HHL")  # group, element, 32-bit length (implicit VR, items)
_UL = struct.Struct("<L")
_TAG = struct.Struct("<HH")
#: Sequences nested deeper than this are not walked (pydicom reads them; the C walk has the same
#: bound where Python's recursion limit would otherwise decide).
MAX_DEPTH = 64


class CannotWalk(Exception):
    """The file is not one this walker reads exactly as pydicom would: use pydicom."""


class NeedMore(Exception):
    """The header runs past the bytes given: read more of the file and walk again."""


@dataclass(slots=True)
class Element:
    """One top-level element: where it starts, where its value starts, and where it ends."""

    tag: int
    vr: str | None  # None in implicit VR (the dictionary decides)
    start: int
    value: int
    length: int  # UNDEFINED for a sequence of undefined length
    end: int
    #: pydicom writes an undefined-length sequence back item by item; False when that would
    #: not give these very bytes (a group length or unordered tags inside, a non-zero
    #: delimiter length, ...)
    canonical: bool = True


@dataclass
class Walk:
    """The header of one file: file meta, then top-level elements up to `stop`."""

    data: bytes
    implicit: bool
    transfer_syntax: str
    meta: dict[int, Element]
    meta_end: int
    elements: list[Element] = field(default_factory=list)
    stop: int = 0  # offset of the first element past the stop tag (or the end of the file)
    keep_to: int = 0  # every element up to this tag is in `elements`
    boundary: int = 0  # offset of the first element past `keep_to` (or `stop`)
    _by_tag: dict[int, Element] | None = None

    def find(self, tag: int) -> Element | None:
        if self._by_tag is None:
            self._by_tag = {element.tag: element for element in self.elements}
        return self._by_tag.get(tag)

    def raw(self, element: Element) -> bytes:
        return self.data[element.value : element.value + element.length]


def walk_c(
    data: bytes, last: int, eof: bool, keep_to: int = 0, wanted: frozenset[int] = frozenset()
) -> Walk:
    """`walk_python`'s answer, computed by `_dicomwalk_c` (see the module's docstring)."""
    answer = _c.walk(data, last, eof, keep_to, wanted, _dictionary_sq)
    if answer is None:
        raise NeedMore
    if type(answer) is str:
        raise CannotWalk(answer)
    implicit, syntax, meta, meta_end, elements, stop, boundary = answer
    return Walk(data, implicit, syntax, meta, meta_end, elements, stop, keep_to, boundary)


def _dictionary_sq(tag: int) -> int:
    """For the C walk: 1 when pydicom's dictionary says SQ, 0 when another VR, -1 unknown."""
    try:
        return int(dictionary_VR(tag) == "SQ")
    except KeyError:
        return -1


def walk_python(
    data: bytes, last: int, eof: bool, keep_to: int = 0, wanted: frozenset[int] = frozenset()
) -> Walk:
    """Walk `data` (the first bytes of a file; all of it when `eof`) up to the first top-level
    element past `last` or at Pixel Data. Raise NeedMore or CannotWalk.

    Every element is checked and stepped over; only those up to `keep_to` (the part a script
    rewrites) and those in `wanted` are kept in `elements`, and `boundary` is where the first
    element past `keep_to` starts. Headers hold hundreds of private elements: stepping over
    them without keeping them is what makes the walk cheap.
    """
    if len(data) < 132:
        if not eof:
            raise NeedMore
        raise CannotWalk("shorter than a Part 10 preamble")
    if data[128:132] != b"DICM":
        raise CannotWalk("no DICM prefix")
    meta, pos = _meta(data, eof)
    syntax_element = meta.get(0x00020010)
    if syntax_element is None:
        raise CannotWalk("no transfer syntax")
    syntax_raw = data[syntax_element.value : syntax_element.value + syntax_element.length]
    syntax = syntax_raw.decode("ascii", "replace").rstrip("\0 ").strip()
    if syntax in (BIG_ENDIAN, DEFLATED):
        raise CannotWalk(f"transfer syntax {syntax}")
    implicit = syntax == IMPLICIT_LE
    result = Walk(data, implicit, syntax, meta, pos, keep_to=keep_to)
    kept = result.elements
    boundary = -1
    previous = -1
    size = len(data)
    if implicit and size >= pos + 6 and all(0x40 < b < 0x5B for b in data[pos + 4 : pos + 6]):
        raise CannotWalk("an implicit VR transfer syntax over explicit VR elements")
    limit = min(last, PIXEL_DATA - 1)
    while True:
        if not implicit:
            # Explicit VR: elements with a known VR and a defined length, ascending and whole
            # in `data`, in a tight loop (most of a header); anything else (a sequence of
            # undefined length, an unknown VR, the stop tag, tags out of order, a truncated
            # element) leaves it for the checks below, which decide as before.
            while pos + 12 <= size:
                group, number, vr_bytes, length = _HEADER.unpack_from(data, pos)
                tag = group << 16 | number
                if tag <= previous or tag > limit or group == 0x0002:
                    break
                known = _VRS.get(vr_bytes)
                if known is None:
                    break
                vr, long = known
                if long:
                    (length,) = _UL.unpack_from(data, pos + 8)
                    if length == UNDEFINED:
                        break
                    header = 12
                else:
                    header = 8
                end = pos + header + length
                if end > size:
                    break
                if tag <= keep_to:
                    kept.append(Element(tag, vr, pos, pos + header, length, end))
                else:
                    if boundary < 0:
                        boundary = pos
                    if tag in wanted:
                        kept.append(Element(tag, vr, pos, pos + header, length, end))
                previous = tag
                pos = end
        if pos + 12 > size:
            if not eof:
                raise NeedMore
            if pos == size:
                break
            if pos + 8 > size:
                raise CannotWalk("truncated element header")
        if implicit:
            group, number, length = _IMPLICIT.unpack_from(data, pos)
            header, vr = 8, None
        else:
            group, number, vr_bytes, length = _HEADER.unpack_from(data, pos)
            known = _VRS.get(vr_bytes)
            if known is None:
                if group << 16 | number > last:
                    break  # pydicom stops before it reads past the stop tag's VR
                raise CannotWalk(f"VR {vr_bytes!r}")
            vr, long = known
            header = 8
            if long:
                if pos + 12 > size:
                    raise CannotWalk("truncated element header")
                (length,) = _UL.unpack_from(data, pos + 8)
                header = 12
        tag = group << 16 | number
        if tag > last or tag >= PIXEL_DATA:
            break
        if tag <= previous or group in (0x0002, 0xFFFE):
            raise CannotWalk("tags out of order")
        if length == UNDEFINED:
            element = _element(data, pos, implicit, eof, 0)
        elif tag <= keep_to or tag in wanted:
            element = Element(tag, vr, pos, pos + header, length, pos + header + length)
        else:
            element = None
        end = element.end if element is not None else pos + header + length
        if end > size:
            if not eof:
                raise NeedMore
            raise CannotWalk("truncated element")
        if boundary < 0 and tag > keep_to:
            boundary = pos
        if element is not None:
            kept.append(element)
        previous = tag
        pos = end
    result.stop = pos
    result.boundary = pos if boundary < 0 else boundary
    return result


def _meta(data: bytes, eof: bool) -> tuple[dict[int, Element], int]:
    """The group 0002 elements (always explicit VR little endian) and where the data set starts."""
    meta: dict[int, Element] = {}
    pos = 132
    previous = -1
    while True:
        if pos + 8 > len(data):
            if not eof:
                raise NeedMore
            break
        if data[pos : pos + 2] != b"\x02\x00":
            break
        element = _explicit(data, pos)
        if element.tag <= previous or element.length == UNDEFINED:
            raise CannotWalk("file meta out of order")
        if element.end > len(data):
            if not eof:
                raise NeedMore
            raise CannotWalk("truncated file meta")
        meta[element.tag] = element
        previous = element.tag
        pos = element.end
    return meta, pos


def _explicit(data: bytes, pos: int) -> Element:
    if pos + 8 > len(data):
        raise NeedMore
    group, number, vr_bytes, short = _HEADER.unpack_from(data, pos)
    known = _VRS.get(vr_bytes)
    if known is None:
        raise CannotWalk(f"VR {vr_bytes!r}")
    vr, long = known
    if not long:
        return Element(group << 16 | number, vr, pos, pos + 8, short, pos + 8 + short)
    if pos + 12 > len(data):
        raise NeedMore
    (length,) = _UL.unpack_from(data, pos + 8)
    end = pos + 12 + (0 if length == UNDEFINED else length)
    return Element(group << 16 | number, vr, pos, pos + 12, length, end)


def _element(data: bytes, pos: int, implicit: bool, eof: bool, depth: int) -> Element:
    """The element at `pos`, its undefined-length sequence walked to its delimiter."""
    if pos + 8 > len(data):
        if eof:
            raise CannotWalk("truncated element header")
        raise NeedMore
    if implicit:
        group, number, length = _IMPLICIT.unpack_from(data, pos)
        tag = group << 16 | number
        element = Element(tag, None, pos, pos + 8, length, pos + 8 + length)
    else:
        element = _explicit(data, pos)
        tag = element.tag
    if element.length != UNDEFINED:
        return element
    if not _is_sequence(data, element, implicit):
        raise CannotWalk(f"undefined length outside a sequence ({tag:08X})")
    if depth >= MAX_DEPTH:
        raise CannotWalk("sequences nested too deep")
    element.end, element.canonical = _sequence(data, element.value, implicit, eof, depth + 1)
    return element


def _is_sequence(data: bytes, element: Element, implicit: bool) -> bool:
    """pydicom reads an undefined length as a sequence when the VR is SQ, or in implicit VR
    when the dictionary says SQ or, for a tag it does not know, when an item follows. Explicit
    UN is read as SQ and written back as SQ: not walked (the bytes would change)."""
    if not implicit:
        return element.vr == "SQ"
    try:
        return dictionary_VR(element.tag) == "SQ"
    except KeyError:
        pos = element.value
        return len(data) >= pos + 4 and _IMPLICIT.unpack_from(data + bytes(4), pos)[:2] == (
            0xFFFE,
            0xE000,
        )


def _sequence(data: bytes, pos: int, implicit: bool, eof: bool, depth: int) -> tuple[int, bool]:
    """Walk items to the sequence delimiter; (offset past it, written back unchanged?)."""
    canonical = True
    while True:
        if pos + 8 > len(data):
            if eof:
                raise CannotWalk("truncated sequence")
            raise NeedMore
        group, number, length = _IMPLICIT.unpack_from(data, pos)
        tag = group << 16 | number
        if tag == SEQUENCE_END:
            return pos + 8, canonical and length == 0
        if tag != ITEM:
            raise CannotWalk("a sequence holds something other than items")
        pos, item_canonical = _item(data, pos + 8, length, implicit, eof, depth)
        canonical = canonical and item_canonical


def _item(
    data: bytes, pos: int, length: int, implicit: bool, eof: bool, depth: int
) -> tuple[int, bool]:
    """Walk one item's elements; (offset past the item, written back unchanged?)."""
    end = None if length == UNDEFINED else pos + length
    canonical = True
    previous = -1
    size = len(data)
    while True:
        if end is not None and pos >= end:
            if pos != end:
                raise CannotWalk("an item's elements overrun its length")
            return pos, canonical
        if pos + 12 > size:
            if eof and pos + 8 > size:
                raise CannotWalk("truncated item")
            if not eof:
                raise NeedMore
        if implicit:
            group, number, value_length = _IMPLICIT.unpack_from(data, pos)
            header = 8
        else:
            group, number, vr_bytes, value_length = _HEADER.unpack_from(data, pos)
            header = 8
            if group == 0xFFFE:
                (value_length,) = _UL.unpack_from(data, pos + 4)
            else:
                known = _VRS.get(vr_bytes)
                if known is None:
                    raise CannotWalk(f"VR {vr_bytes!r}")
                if known[1]:
                    if pos + 12 > size:
                        raise CannotWalk("truncated item")
                    (value_length,) = _UL.unpack_from(data, pos + 8)
                    header = 12
        tag = group << 16 | number
        if group == 0xFFFE:
            if end is None and tag == ITEM_END:
                return pos + 8, canonical and value_length == 0
            raise CannotWalk("a delimiter inside an item")
        if value_length == UNDEFINED:
            element = _element(data, pos, implicit, eof, depth)
            element_canonical, pos = element.canonical, element.end
        else:
            element_canonical, pos = True, pos + header + value_length
        if pos > size:
            if eof:
                raise CannotWalk("truncated item element")
            raise NeedMore
        # pydicom writes an item's elements sorted, without group lengths (PS3.5 7.2)
        if tag <= previous or number == 0 or not element_canonical:
            canonical = False
        previous = tag


# -- the importer's header fields, read from the raw bytes ------------------------------------

#: Character sets whose ASCII bytes decode as ASCII (pydicom's default is ISO 8859-1).
ASCII_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6"})
#: VRs pydicom does not split at a backslash (PS3.5 6.2: LT, ST, UT, UR and UC hold one value).
SINGLE_VALUE_VRS = frozenset({"LT", "ST", "UT", "UR"})


def ascii_text(walked: Walk, tag: int, vr: str) -> str | None:
    """The value of a top-level string element as the importer reads it with pydicom
    (`str(value).strip()`, "" when absent), or None when only pydicom can say: bytes outside
    printable ASCII, a character set that is not ASCII-compatible, or several values."""
    return _ascii(walked, tag, vr in SINGLE_VALUE_VRS)


def _ascii(walked: Walk, tag: int, single: bool) -> str | None:
    element = walked.find(tag)
    if element is None:
        return ""
    raw = walked.raw(element)
    if not raw.isascii() or b"\x1b" in raw:
        return None
    if b"\\" in raw and not single:
        return None
    return raw.decode("ascii").rstrip("\0 ").strip()


#: (tag, the VR it must have or None for any, read as one value) for `texts`
TextSpec = tuple[int, str | None, bool]


def texts_python(walked: Walk, specs: tuple[TextSpec, ...]) -> list[str] | None:
    """`ascii_text` of each element of `specs` (single-valued: not split at a backslash), or
    None when any of them is None or has another VR than the one given (implicit VR: any)."""
    found: list[str] = []
    for tag, vr, single in specs:
        element = walked.find(tag)
        if vr is not None and element is not None and element.vr not in (None, vr):
            return None
        text = _ascii(walked, tag, single)
        if text is None:
            return None
        found.append(text)
    return found


def texts_c(walked: Walk, specs: tuple[TextSpec, ...]) -> list[str] | None:
    """`texts_python`'s answer computed by `_dicomwalk_c` from `walk_c`'s elements."""
    answer: list[str] | None = _c.texts(walked.data, walked.elements, specs)
    return answer


try:
    from xnat_sandbox import _dicomwalk_c as _c
except ImportError:  # not built (no compiler where it was installed): the Python walk
    _c = None
#: XNAT_SANDBOX_WALKER=python runs the Python walk although the C one is built: the tests run
#: the sandbox with both, and a benchmark can compare them in the same build.
if _c is None or os.environ.get("XNAT_SANDBOX_WALKER") == "python":
    walk, texts, IMPLEMENTATION = walk_python, texts_python, "python"
else:
    walk, texts, IMPLEMENTATION = walk_c, texts_c, "c"


__all__ = [
    "IMPLEMENTATION", "CannotWalk", "Element", "NeedMore", "TextSpec", "Walk", "ascii_text",
    "texts", "texts_c", "texts_python", "walk", "walk_c", "walk_python",
]  # fmt: skip
