"""The walk's fast paths: shortcuts that give the facts of the general walk (`walk.py`) at a
fraction of its CPU, and decline (the general walk then goes on as before) whenever they
cannot be sure.

- `_skim` steps over the plain top-level elements of explicit VR little endian data, and over
  the sequences the walk does not descend into (`_step_sequence` for undefined lengths).
- `_skim_sequence` steps over a whole explicit VR little endian sequence in one flat loop.
- `_scan_frames` finds the per-frame FrameType and Diffusion Directionality by a byte scan.
- `_may_stop` and `_tail_confirms` end the walk of a classic file early.

`_skim` (with `_step_sequence`), `_skim_sequence` and `_scan_values` (the scan's search) are
compiled (`_skim_c.c`, `_skim_parts.c`, built by `pip install`) when the extension is there, and
are these Python functions (`_skim_py`, `_step_sequence_py`, `_skim_sequence_py`,
`_scan_values_py`) otherwise: both give the same results (tests/rules/test_skim_compiled.py),
and the compiled ones take about a third of the check's CPU per file off on a CPU-bound machine.

Why stop early for classic files: after group 0028 a classic image holds only private groups
(Siemens CSA, GE 0043, Philips 2005) and Pixel Data. When the expected pixel length is known,
the 8 or 12 bytes just before the last `expected` bytes of the file must be the Pixel Data
element header; finding it there proves the file complete without walking the private groups.
Anything else falls back to the exact walk.

`walk._walk` looks these names up in `walk`'s namespace: a test that makes a fast path
decline patches them there.
"""

from __future__ import annotations

import re
import struct

from xnatdrop.dicomfiles.decode import _expected_pixel_bytes, _text
from xnatdrop.dicomfiles.tags import (
    _TAG,
    _U16,
    _U32,
    DESCEND,
    LONG_VRS,
    MAX_DEPTH,
    MAX_VALUE,
    NESTED_TAGS,
    SHORT_VRS,
    TAG_BITS_ALLOCATED,
    TAG_DIFFUSION_DIRECTIONALITY,
    TAG_FRAME_TYPE,
    TAG_MANUFACTURER,
    TAG_PER_FRAME_GROUPS,
    TAG_PHILIPS_DIFFUSION_DIRECTION,
    TAG_PIXEL_DATA,
    TAG_ROWS,
    TAG_SHARED_GROUPS,
    TAG_SOP_CLASS,
    TOP_TAGS,
    UNDEFINED,
)
from xnatdrop.dicomfiles.window import _Walk, _Window

# `_skim` reads the VR as a number: no 2-byte bytes object per element.
_UNPACK_EXPLICIT_LE = struct.Struct("<HHHH").unpack_from
_UNPACK_U32_LE = _U32[True].unpack_from
_SKIM_SHORT = frozenset(_U16[True].unpack(vr)[0] for vr in SHORT_VRS)
# Long VRs whose defined-length value `_skim` steps over (SQ and undefined lengths: `_walk`).
_SKIM_LONG = frozenset(_U16[True].unpack(vr)[0] for vr in LONG_VRS - {b"SQ"})
# SQ as `_skim` and `_skim_sequence` read VRs: a number. `_skim` steps over one whose tag is
# not in DESCEND (the others: `_walk`, then `_skim_sequence`).
_SKIM_SQ = _U16[True].unpack(b"SQ")[0]
_SEQUENCES_DEEPEST = (MAX_DEPTH + 1) // 2  # `_walk_items` refuses a sequence nested deeper
# The last tag `_skim` handles: the per-frame groups (5200,9230) and what follows them, Pixel
# Data and the item tags (FFFE,xxxx) are `_walk`'s.
_SKIM_LAST = TAG_PER_FRAME_GROUPS - 1


def _skim_py(buf: bytes, off: int, limit: int, last: int, top: dict[int, bytes]) -> int:
    """Step over the plain top-level elements of explicit VR little endian data in `buf` from
    `off`; keep the TOP_TAGS values in `top`; return the offset of the first element it leaves
    to `_walk` (`off` itself when that is the first).

    Why: a classic image has 200-300 elements before Pixel Data, most of them private, and the
    general loop of `_walk` (both byte orders, both VR modes, sequences, chunk refills, early
    stop) cost about 0.6 µs of CPU per element: most of the check's CPU. This loop does only
    what the common element needs (defined-length sequences the walk does not descend into
    included: a GE header has six, and each was a decline, a turn of `_walk` and a new call),
    and stops at anything else, which `_walk` then handles exactly as before: a DESCEND
    sequence or undefined length, an unknown or invalid VR, an element past `last` (the
    early-stop point, per-frame groups, Pixel Data, items) or one that does not lie wholly
    before `limit` (the end of the chunk or of the file).
    """
    short, long_vrs, keep, descend = _SKIM_SHORT, _SKIM_LONG, TOP_TAGS, DESCEND
    unpack, unpack_u32 = _UNPACK_EXPLICIT_LE, _UNPACK_U32_LE
    while off + 12 <= limit:
        group, element, vr, length = unpack(buf, off)
        tag = group << 16 | element
        if tag > last:
            return off
        if vr in short:
            value = off + 8
        elif vr in long_vrs or (vr == _SKIM_SQ and tag not in descend):
            # A long VR, or a sequence `_walk` only steps over (keeping nothing of it, even
            # for a TOP_TAGS tag): by its length, or to its delimiter.
            length = unpack_u32(buf, off + 8)[0]
            if length == UNDEFINED:
                if vr != _SKIM_SQ:
                    return off
                following = _step_sequence_py(buf, off + 12, limit)
                if following < 0:
                    return off
                off = following
                continue
            value = off + 12
        else:
            return off
        following = value + length
        if following > limit:
            return off
        if tag in keep and length <= MAX_VALUE and vr != _SKIM_SQ:
            top[tag] = buf[value:following]
        off = following
    return off


def _step_sequence_py(buf: bytes, off: int, limit: int) -> int:
    """The end of the undefined-length sequence whose value starts at `off` in `buf`, where
    `_skim_sequence` (not collecting) would find it without reading past `limit`; else -1.

    Why: a GE classic header has four such sequences before the early-stop point; each was a
    decline of `_skim`, a turn of `_walk`'s general loop, a `_skim_sequence` call and a new
    `_skim` call. This is `_skim_sequence_py`'s loop for what `_walk` gives it there (an
    undefined length, nothing collected: only undefined-length sequences and items are ever
    open, and they alternate, so a count is the whole stack), on the chunk alone: it declines
    all it declines, and anything that lies past `limit` (`_skim_sequence` would refill).
    """
    short, long_vrs = _SKIM_SHORT, _SKIM_LONG
    unpack, unpack_u32 = _UNPACK_EXPLICIT_LE, _UNPACK_U32_LE
    depth = 0  # open undefined-length items and sequences inside it: odd: in an item
    sequences = 1
    while off + 12 <= limit:
        group, element, vr, length = unpack(buf, off)
        if group == 0xFFFE:  # an item or a delimiter: its 4-byte length is vr, length
            off += 8
            if element == 0xE000 and not depth & 1:
                if vr | length << 16 == UNDEFINED:
                    depth += 1
                else:
                    off += vr | length << 16
            elif element == 0xE00D and depth & 1:
                depth -= 1
            elif element == 0xE0DD and not depth & 1:
                if not depth:
                    return off
                depth -= 1
                sequences -= 1
            else:
                return -1
        elif not depth & 1:
            return -1  # an element where an item belongs
        elif vr in short:
            off += 8 + length
        elif vr == _SKIM_SQ:
            if sequences == _SEQUENCES_DEEPEST:
                return -1
            length = unpack_u32(buf, off + 8)[0]
            off += 12
            if length == UNDEFINED:
                depth += 1
                sequences += 1
            else:
                off += length
        elif vr in long_vrs:
            length = unpack_u32(buf, off + 8)[0]
            if length == UNDEFINED:
                return -1
            off += 12 + length
        else:
            return -1
    return -1


def _skim_sequence_py(win: _Window, pos: int, length: int, collect: bool, found: list) -> int:
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


try:
    from xnatdrop.dicomfiles import _skim_c  # type: ignore[attr-defined]
except ImportError:  # not built (a source tree without `pip install -e .`): the Python loops
    _skim_c = None

COMPILED = _skim_c is not None
if _skim_c is not None:
    _skim_c.configure(
        sorted(_SKIM_SHORT),
        sorted(_SKIM_LONG),
        _SKIM_SQ,
        sorted(TOP_TAGS),
        sorted(NESTED_TAGS),
        sorted(DESCEND),
        MAX_VALUE,
        _SEQUENCES_DEEPEST,
    )
    _skim = _skim_c.skim
    _skim_sequence = _skim_c.skim_sequence
else:
    _skim, _skim_sequence = _skim_py, _skim_sequence_py


# Explicit VR LE element headers of the per-frame tags, for the byte scan below.
_SCAN_PATTERNS = {
    TAG_FRAME_TYPE: b"\x08\x00\x07\x90CS",
    TAG_DIFFUSION_DIRECTIONALITY: b"\x18\x00\x75\x90CS",
}
_SCAN_SEARCHES = {raw: re.compile(re.escape(raw)).finditer for raw in _SCAN_PATTERNS.values()}


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
    for tag, pattern in _SCAN_PATTERNS.items():
        values = _scan_values(region, pattern)
        if values:
            walk.nested.setdefault(tag, []).extend(values)
    return True


def _scan_values_py(region: bytes, pattern: bytes) -> list[bytes]:
    """The value of each element whose header (tag, VR; the 2-byte length follows) is `pattern`
    in `region`, but for one found inside the value of the previous one kept.

    Every match from one C pass; one found inside the value of the previous kept one is
    skipped, as searching again after that value would (the pattern cannot overlap itself: its
    first byte occurs in it only once). Two passes of `re` cost about 2/3 of a `bytes.find` per
    match (~90 µs for an XA30 DWI file's 59 KB of frames); the compiled `_scan_values` (a
    `memmem` per match) about a tenth of that.
    """
    values = []
    after = 0
    for match in _SCAN_SEARCHES[pattern](region):
        found = match.start()
        if found < after:
            continue
        after = found + 8 + (region[found + 6] | region[found + 7] << 8)
        values.append(region[found + 8 : after])
    return values


_scan_values = _skim_c.scan_values if _skim_c is not None else _scan_values_py


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
