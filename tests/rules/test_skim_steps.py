"""The walk's cheaper steps of issue 13 (s18): `_skim` stepping over the top-level
defined-length sequences the walk does not descend into, one `_skim` call per run of plain
elements, and group 0002 read from the window's chunk.

Each is checked against what the general walk gives (the fast paths declining), on real files
re-encoded with defined-length sequences and on made-up elements, in both skims (compiled and
Python), which must agree call by call (tests/rules/test_skim_compiled.py).
"""

from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path
from typing import Any

import pydicom
import pytest

from shared_data import dataset, with_defined_lengths
from xnatdrop import dicomfiles
from xnatdrop.dicomfiles import skim, walk
from xnatdrop.dicomfiles.tags import (
    TAG_DIRECTORY_RECORDS,
    TAG_MANUFACTURER,
    TAG_MODALITY,
    TAG_PATIENT_ID,
    TAG_SHARED_GROUPS,
    TOP_TAGS,
)
from xnatdrop.dicomfiles.window import _PARSE_ERRORS, _Window

GE_FILE = min(p for p in (dataset("ge_signa_premier_table") / "In/GE").rglob("*") if p.is_file())
GE_DEFINED_BYTES = with_defined_lengths(GE_FILE)
LAST = 0x0028FFFF  # the early-stop point of a classic image: the walk's usual `last`


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _sequence(tag: int, length: int | None = None) -> bytes:
    """A sequence of one defined-length item holding one element, of its true length unless
    `length` is given (0xFFFFFFFF: undefined; then a delimiter follows)."""
    inner = _short(0x00080100, b"SH", b"T-A0100 ")
    items = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
    if length == 0xFFFFFFFF:
        items += b"\xfe\xff\xdd\xe0\0\0\0\0"
    head = struct.pack(
        "<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(items) if length is None else length
    )
    return head + items


def _both(buf: bytes, off: int, limit: int, last: int) -> tuple[int, dict[int, bytes]]:
    """Both skims on the same input: they agree; the offset and what they kept."""
    results = []
    for function in (skim._skim_py, skim._skim_c.skim):
        top: dict[int, bytes] = {}
        results.append((function(buf, off, limit, last, top), top))
    assert results[0] == results[1]
    return results[0]


BEFORE = _short(TAG_MODALITY, b"CS", b"MR") + _short(TAG_MANUFACTURER, b"LO", b"GE")
AFTER = _short(TAG_PATIENT_ID, b"LO", b"BENCH_01")


@pytest.mark.parametrize("length", [None, 0xFFFFFFFF])
@pytest.mark.parametrize("tag", [0x00081140, 0x00081111, 0x00231080])
def test_both_skims_step_over_a_sequence_in_one_call(tag: int, length: int | None) -> None:
    """Fails on the code before s18: both skims stopped at every sequence."""
    buf = BEFORE + _sequence(tag, length) + AFTER
    assert _both(buf, 0, len(buf), LAST) == (
        len(buf),
        {TAG_MODALITY: b"MR", TAG_MANUFACTURER: b"GE", TAG_PATIENT_ID: b"BENCH_01"},
    )


def test_a_sequence_is_never_kept_even_with_a_top_tag() -> None:
    """`_walk` keeps nothing of a top-level sequence it steps over, whatever its tag."""
    assert TAG_MANUFACTURER in TOP_TAGS
    buf = _sequence(TAG_MANUFACTURER) + AFTER
    assert _both(buf, 0, len(buf), LAST) == (len(buf), {TAG_PATIENT_ID: b"BENCH_01"})
    _assert_walks_agree(_file(buf))


@pytest.mark.parametrize(
    ("tag", "length", "cut", "why"),
    [
        (TAG_SHARED_GROUPS, None, 0, "a DESCEND sequence: _walk collects from it"),
        (TAG_DIRECTORY_RECORDS, None, 0, "a DESCEND sequence: _walk collects from it"),
        (0x00081140, 0xFFFFFFFF, 3, "the limit is inside its delimiter"),
        (0x00081140, 0xFFFFFFFF, 8, "the limit is before its delimiter"),
        (0x00081140, 1000, 0, "its length runs past the limit"),
        (0x00081140, 0xFFFFFFF0, 0, "its length runs past the limit (and the file)"),
        (0x00081140, None, 3, "the limit (end of the chunk) is inside it"),
    ],
)
def test_both_skims_decline_other_sequences(
    tag: int, length: int | None, cut: int, why: str
) -> None:
    sequence = _sequence(tag, length)
    buf = BEFORE + sequence + AFTER
    limit = len(BEFORE) + len(sequence) - cut if cut else len(buf)
    last = 0x52009230 - 1  # skim._SKIM_LAST: the shared groups lie before it
    assert _both(buf, 0, limit, last) == (
        len(BEFORE),
        {TAG_MODALITY: b"MR", TAG_MANUFACTURER: b"GE"},
    ), why


def _undefined(tag: int, *items: bytes) -> bytes:
    """An undefined-length sequence of `items` (each already with its item header)."""
    head = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
    return head + b"".join(items) + b"\xfe\xff\xdd\xe0\0\0\0\0"


def _item(*elements: bytes, defined: bool = False) -> bytes:
    body = b"".join(elements)
    if defined:
        return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body
    return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"


CODE = _short(0x00080100, b"SH", b"T-A0100 ")
UN_UNDEFINED = struct.pack("<HH2sHI", 0x0029, 0x1010, b"UN", 0, 0xFFFFFFFF)


def _nested(levels: int) -> bytes:
    inner = CODE
    for _ in range(levels):
        inner = _undefined(0x00081140, _item(inner))
    return inner


@pytest.mark.parametrize(
    ("sequence", "stepped"),
    [
        (_undefined(0x00081140), True),
        (_undefined(0x00081140, _item(CODE), _item(CODE, defined=True)), True),
        (_undefined(0x00081140, _item(_undefined(0x00081150, _item(CODE)), CODE)), True),
        (_undefined(0x00081140, _item(_sequence(0x00081150), CODE)), True),
        (_nested(skim._SEQUENCES_DEEPEST), True),
        (_nested(skim._SEQUENCES_DEEPEST + 1), False),  # `_walk_items` would refuse it
        (_undefined(0x00081140, CODE), False),  # an element where an item belongs
        (_undefined(0x00081140, _item(UN_UNDEFINED)), False),  # not a sequence: the walk's
        (_undefined(0x00081140, _item(_short(0x00291010, b"zz", b""))), False),  # no VR
        (_undefined(0x00081140, b"\xfe\xff\x0d\xe0\0\0\0\0"), False),  # a stray delimiter
        (_undefined(0x00081140, _item(b"\xfe\xff\xdd\xe0\0\0\0\0")), False),
        (_undefined(0x00081140, _item(b"\xfe\xff\x00\xe0\0\0\0\0")), False),  # item in item
    ],
    ids=[
        "empty",
        "undefined-and-defined-items",
        "nested-undefined",
        "nested-defined",
        "nested-to-the-limit",
        "nested-past-the-limit",
        "element-not-item",
        "undefined-UN",
        "invalid-VR",
        "stray-item-delimiter",
        "sequence-delimiter-in-item",
        "item-in-item",
    ],
)
def test_an_undefined_length_sequence_is_stepped_where_skim_sequence_takes_it(
    sequence: bytes, stepped: bool
) -> None:
    """Both skims step over it exactly when `_skim_sequence` (as `_walk` calls it there: not
    collecting) takes it whole, to the same end; and the walk of a file holding it is the
    general walk's."""
    buf = BEFORE + sequence + AFTER
    after = skim._skim_sequence_py(
        _Window(None, len(buf), buf), len(BEFORE) + 12, 0xFFFFFFFF, False, []
    )
    assert (after == len(BEFORE) + len(sequence)) == stepped, after
    off, top = _both(buf, 0, len(buf), LAST)
    assert off == (len(buf) if stepped else len(BEFORE))
    assert (TAG_PATIENT_ID in top) == stepped
    _assert_walks_agree(_file(buf))


def _file(body: bytes) -> bytes:
    """A Part 10 file of explicit VR LE `body`, without pixel data."""
    meta = _short(0x00020010, b"UI", b"1.2.840.10008.1.2.1\0")
    group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(meta))
    return b"\0" * 128 + b"DICM" + group_length + meta + body


def _general_walk_only(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(walk, "_skim", lambda buf, off, limit, last, top: off)
    patch.setattr(walk, "_skim_sequence", lambda win, pos, length, collect, found: -1)
    patch.setattr(walk, "_scan_frames", lambda win, value, walk_: False)


def _outcome(data: bytes, first: int = 1 << 30) -> tuple[str, Any]:
    win = _Window(io.BytesIO(data), len(data), data[:first])
    try:
        _, result, meta, syntax = walk._walk_file(win, 132)
    except _PARSE_ERRORS as error:
        return "raised", type(error)
    return "walked", (result, meta, syntax)


def _assert_walks_agree(data: bytes, first: int = 1 << 30) -> None:
    fast = _outcome(data, first)
    with pytest.MonkeyPatch.context() as patch:
        _general_walk_only(patch)
        assert fast == _outcome(data, first)


@pytest.mark.parametrize("data", [GE_FILE.read_bytes(), GE_DEFINED_BYTES])
def test_a_classic_file_is_skimmed_in_one_call(data: bytes) -> None:
    """The GE file as the scanner wrote it (undefined-length sequences) and re-encoded with
    defined lengths: one `_skim` call runs to the early-stop point (before s18: a decline and a
    second call at each of its sequences), and the facts are those of the general walk, of the
    file as written, and pydicom's."""
    assert data.count(b"SQ\0\0") >= 3
    calls = []
    real = skim._skim

    def counting(buf: bytes, off: int, limit: int, last: int, top: dict) -> int:
        calls.append(off)
        return real(buf, off, limit, last, top)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.dcm"
        path.write_bytes(data)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(walk, "_skim", counting)
            facts = dicomfiles.sniff(path)
        with pytest.MonkeyPatch.context() as patch:
            _general_walk_only(patch)
            general = dicomfiles.sniff(path)
    assert len(calls) == 1, calls
    assert facts == general
    assert facts.header == dicomfiles.sniff(GE_FILE).header
    reference = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert facts.header is not None and not facts.truncated
    assert facts.header.sop_instance_uid == reference.SOPInstanceUID
    assert facts.header.series_instance_uid == reference.SeriesInstanceUID
    assert facts.header.manufacturer == reference.Manufacturer
    assert facts.header.images_in_acquisition == int(reference.ImagesInAcquisition)


@pytest.mark.parametrize("data", [GE_FILE.read_bytes(), GE_DEFINED_BYTES])
def test_the_classic_file_cut_or_changed_anywhere_gives_the_same_walk(data: bytes) -> None:
    """Every 7th byte of its header changed (sequence lengths, items, delimiters too), the
    file cut at every 97th byte, and the first chunk ending at every 53rd: the same walk or
    error as the general walk's."""
    stop = data.index(b")\x00\x10\x00")  # group 0029: the early-stop point
    for offset in range(132, stop, 7):
        changed = bytearray(data)
        changed[offset] ^= 0x01 if offset % 2 else 0x80
        _assert_walks_agree(bytes(changed))
    for cut in range(140, stop + 200, 97):
        _assert_walks_agree(data[:cut])
    for first in range(140, stop + 200, 53):
        _assert_walks_agree(data, first)


def _meta_of(data: bytes, first: int) -> tuple[str, Any]:
    win = _Window(io.BytesIO(data), len(data), data[:first])
    try:
        return "read", walk._meta(win, 132)
    except _PARSE_ERRORS as error:
        return "raised", (type(error), str(error))


def _meta_end(data: bytes) -> int:
    return 144 + int.from_bytes(data[140:144], "little")


def test_meta_is_read_from_the_chunk_without_a_get_per_element() -> None:
    """Fails on the code before s18: three `win.get` calls per element."""
    data = GE_FILE.read_bytes()
    gets = []

    class Counting(_Window):
        def get(self, pos: int, count: int) -> bytes:
            gets.append(pos)
            return super().get(pos, count)

    found, end = walk._meta(Counting(None, len(data), data[:65536]), 132)
    assert end == _meta_end(data) and found[0x00020010].rstrip(b"\0") == b"1.2.840.10008.1.2.1"
    assert gets == []


@pytest.mark.parametrize("source", [GE_FILE.read_bytes(), GE_DEFINED_BYTES])
def test_meta_gives_the_same_wherever_the_chunk_ends_and_whatever_is_changed(source: bytes) -> None:
    """The first chunk ending at every byte of group 0002 (the fallback loop reads from there
    on), and every byte of it changed: the same elements, end, or error as the loop alone
    (a first chunk of 140 bytes: no element in it)."""
    end = _meta_end(source)
    reference = _meta_of(source, 140)
    assert reference[0] == "read" and reference[1][1] == end
    for first in range(140, end + 16):
        assert _meta_of(source, first) == reference, first
    for offset in range(132, end + 2):
        for flip in (0x01, 0x80, 0xFF):
            changed = bytearray(source)
            changed[offset] ^= flip
            data = bytes(changed)
            expected = _meta_of(data, 140)
            for first in (1 << 30, offset + 1, offset + 9):
                assert _meta_of(data, first) == expected, (offset, flip, first)
    assert _meta_of(source[: end - 3], 1 << 30) == _meta_of(source[: end - 3], 140)
