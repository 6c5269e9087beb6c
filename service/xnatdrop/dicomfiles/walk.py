"""The general header walker: file meta, then the data set to Pixel Data, in both byte orders
and both VR modes, through sequences, deflated data sets included; then rule A5 (the UIDs a
file must have) and rule A6 (truncation).

Why a hand-written walker: see the package docstring. It steps over elements by their length
without decoding them and keeps only the values the rules need (`tags.TOP_TAGS`,
`tags.NESTED_TAGS`); the fast paths it hands plain runs of elements to are in `skim.py`, and
it is the exact walk they fall back to.
"""

from __future__ import annotations

import zlib

from xnatdrop.dicomfiles.decode import _decode, _expected_pixel_bytes, _text
from xnatdrop.dicomfiles.facts import Header
from xnatdrop.dicomfiles.skim import (
    _SKIM_LAST,
    _may_stop,
    _scan_frames,
    _skim,
    _skim_sequence,
    _tail_confirms,
)
from xnatdrop.dicomfiles.tags import (
    _EXPLICIT,
    _IMPLICIT,
    _TAG,
    _U32,
    DEFLATED_LE,
    DESCEND,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    ITEM,
    ITEM_END,
    LONG_VRS,
    MAX_DEFLATED,
    MAX_DEPTH,
    MAX_VALUE,
    NATIVE_SYNTAXES,
    NESTED_TAGS,
    PIXEL_CLASSES,
    SEQ_DELIMITER,
    SEQ_END,
    SHORT_VRS,
    TAG_FLOAT_PIXELS,
    TAG_PER_FRAME_GROUPS,
    TAG_PIXEL_DATA,
    TAG_TRANSFER_SYNTAX,
    TOP_TAGS,
    UNDEFINED,
    _is_vr,
)
from xnatdrop.dicomfiles.window import _Bad, _Short, _Walk, _Window


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
            limit = min(blen, size - win.base)
            skimmed = _skim(buf, off, limit, min(stop, _SKIM_LAST), walk.top)
            if skimmed != off:
                first = False
                pos = win.base + skimmed
                if skimmed + 12 > limit:
                    continue  # the end of the chunk: refill
                # The skim stopped at an element it leaves to this loop, and would stop there
                # again (it looks at nothing else): go on to it without a second call.
                off = skimmed
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


def _meta(win: _Window, pos: int) -> tuple[dict[int, bytes], int]:
    """Read group 0002 (always explicit VR little endian, PS3.10 7.1) from `pos`.

    The elements that lie wholly in the window's chunk (all of them, in any file seen so far)
    are read from it directly: a `win.get` per header, length and value was ~3 calls each.
    The loop below reads the rest, from the first element that does not, as it read them all
    before; the checks and errors are the same in both.
    """
    found: dict[int, bytes] = {}
    buf, base, size = win.buf, win.base, win.size
    unpack, unpack_u32 = _EXPLICIT[True].unpack_from, _U32[True].unpack_from
    off, end = pos - base, min(len(buf), size - base)
    while off >= 0 and off + 12 <= end:
        group, element, vr, length = unpack(buf, off)
        if group != 0x0002:
            return found, base + off
        value = off + 8
        if vr in LONG_VRS:
            length = unpack_u32(buf, off + 8)[0]
            value = off + 12
        elif vr not in SHORT_VRS and not _is_vr(vr):
            raise _Bad("unusable file meta information")
        if length == UNDEFINED or base + value + length > size or length > MAX_VALUE:
            raise _Bad("unusable file meta information")
        if value + length > end:
            break  # the value runs past the chunk: the loop below
        found[group << 16 | element] = buf[value : value + length]
        off = value + length
    pos = base + off if off >= 0 else pos
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
    # A walk that stopped early found Pixel Data of exactly the expected length
    # (`_tail_confirms`): nothing to compute again.
    if syntax in NATIVE_SYNTAXES and walk.pixel_tag == TAG_PIXEL_DATA and not walk.stopped_early:
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
    walk.end = _walk(win, pos, -1, walk, 0, True)
    if walk.stopped_early:
        expected = _expected_pixel_bytes(walk)
        if not (expected and _tail_confirms(win, walk, expected)):
            walk.stopped_early = walk.stop_after_0028 = False
            walk.end = _walk(win, walk.early_resume, -1, walk, 0, True)
    return win, walk, meta, syntax


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
