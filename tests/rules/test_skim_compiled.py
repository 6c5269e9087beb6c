"""The compiled element loops (`dicomfiles._skim_c`) against their Python twins
(`skim._skim_py`, `skim._skim_sequence_py`): call by call, the same return value, the same
`top`/`found` contents, the same exception and the same window afterwards.

Why call by call: comparing only a file's facts would miss a compiled loop that declines where
the Python one does not (the general walk then still gives the right facts, only slower), or
that differs in what a later step overwrites. `_Twin` runs both on every call a walk makes.
"""

from __future__ import annotations

import contextlib
import io
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_data import SHARED_DICOM, dataset, with_defined_lengths
from xnatdrop import dicomfiles
from xnatdrop.dicomfiles import skim, walk
from xnatdrop.dicomfiles.window import _Window


def test_the_compiled_loops_are_built_and_used() -> None:
    """Fails (does not skip) when the extension is missing: `pip install -e .` builds it."""
    from xnatdrop.dicomfiles import _skim_c  # an ImportError here: the extension was not built

    assert skim.COMPILED
    assert skim._scan_values is _skim_c.scan_values
    assert walk._skim is _skim_c.skim is skim._skim
    assert walk._skim_sequence is _skim_c.skim_sequence is skim._skim_sequence


def _outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", function(*args)
    except Exception as error:  # the same exception, with the same message, from both
        return "raised", (type(error), str(error))


def _copy(win: _Window) -> _Window:
    """The window as it is (the same file, chunk and base): a twin for the other loop."""
    twin = _Window(win.handle, win.size, win.buf)
    twin.base = win.base
    return twin


class _Twin:
    """Patched in as `walk._skim` and `walk._skim_sequence`: runs the Python loop and then the
    compiled one on the same input, asserts they agree, and goes on with the compiled result."""

    def __init__(self) -> None:
        self.skims = self.sequences = self.taken = self.scans = 0

    def skim(self, buf: bytes, off: int, limit: int, last: int, top: dict) -> int:
        expected_top = dict(top)
        expected = _outcome(skim._skim_py, buf, off, limit, last, expected_top)
        got = _outcome(skim._skim_c.skim, buf, off, limit, last, top)
        assert got == expected, (off, limit, last)
        assert top == expected_top
        self.skims += 1
        return got[1]

    def sequence(self, win: _Window, pos: int, length: int, collect: bool, found: list) -> int:
        twin, expected_found = _copy(win), list(found)
        expected = _outcome(skim._skim_sequence_py, twin, pos, length, collect, expected_found)
        got = _outcome(skim._skim_c.skim_sequence, win, pos, length, collect, found)
        assert got == expected, (pos, length, collect)
        assert found == expected_found
        assert (win.base, win.buf) == (twin.base, twin.buf)
        self.sequences += 1
        if got[0] == "raised":
            raise got[1][0](got[1][1])
        self.taken += got[1] >= 0
        return got[1]

    def scan(self, region: bytes, pattern: bytes) -> list[bytes]:
        expected = _outcome(skim._scan_values_py, region, pattern)
        got = _outcome(skim._skim_c.scan_values, region, pattern)
        assert got == expected, pattern
        self.scans += 1
        if got[0] == "raised":
            raise got[1][0](got[1][1])
        return got[1]

    def patch(self, patch: pytest.MonkeyPatch) -> None:
        patch.setattr(walk, "_skim", self.skim)
        patch.setattr(walk, "_skim_sequence", self.sequence)
        patch.setattr(skim, "_scan_values", self.scan)


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> _Twin:
    made = _Twin()
    made.patch(monkeypatch)
    return made


def test_both_loops_agree_on_every_shared_file(twin: _Twin) -> None:
    """Every file of ../shared/dicom read as the check reads it (64 KiB first, then positioned
    reads of the open file: the refills of long enhanced headers)."""
    for path in sorted(p for p in SHARED_DICOM.rglob("*") if p.is_file()):
        dicomfiles.sniff(path)
    # Since s18 one `_skim` call steps over a classic file's sequences too (`_step_sequence`):
    # fewer calls, and `_skim_sequence` mostly for what the walk collects from.
    assert twin.skims > 3_000 and twin.taken > 100, (twin.skims, twin.taken)
    assert twin.scans > 100, twin.scans


def _walk_all(data: bytes, first: int) -> None:
    """Walk `data` as a file whose first chunk is its first `first` bytes: every later read is
    a refill from the file at wherever the walk is (chunk boundaries anywhere)."""
    win = _Window(io.BytesIO(data), len(data), data[: max(first, 140)])
    with contextlib.suppress(*dicomfiles.window._PARSE_ERRORS):
        dicomfiles.walk._walk_file(win, 132)


CLASSIC = min(p for p in (dataset("ge_signa_premier_table") / "In/GE").rglob("*") if p.is_file())
ENHANCED = min((dataset("siemens_xa30_enhanced") / "In/10_DWI_dir80_PA").iterdir())


SOURCES = [
    CLASSIC.read_bytes(),
    ENHANCED.read_bytes()[:400_000],
    with_defined_lengths(ENHANCED, pixels=False),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(SOURCES),
    cut=st.integers(min_value=0, max_value=400_000),
    first=st.integers(min_value=0, max_value=70_000),
    flips=st.lists(
        st.tuples(st.integers(min_value=132, max_value=60_000), st.integers(0, 255)), max_size=6
    ),
)
def test_both_loops_agree_on_cut_and_changed_headers(
    source: bytes, cut: int, first: int, flips: list[tuple[int, int]]
) -> None:
    """Real headers cut anywhere (truncation at every kind of offset), bytes changed (tags,
    VRs, lengths, items and delimiters) and the first chunk ending anywhere."""
    data = bytearray(source[: cut or None])
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    with pytest.MonkeyPatch.context() as patch:
        _Twin().patch(patch)
        _walk_all(bytes(data), first)


# Element headers for made-up data sets: known short and long VRs, SQ, odd ones.
_VRS = [b"CS", b"UI", b"US", b"LO", b"OB", b"UN", b"UT", b"SQ", b"OW", b"ZZ", b"cs", b"\x00\x01"]
_NESTED = [0x00089007, 0x00189075, 0x00041500, 0x00080008, 0x00080016, 0x00280010, 0x00291010]


_ITEM_UNDEFINED = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_END = b"\xfe\xff\x0d\xe0\0\0\0\0"


@st.composite
def _elements(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Explicit VR LE elements: plain, odd-length, undefined-length, unknown VRs, and sequences
    (defined or undefined length, items of either) nested up to past the walk's limit."""
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        tag = draw(st.sampled_from(_NESTED) | st.integers(0, 0xFFFFFFFF))
        vr = draw(st.sampled_from(_VRS))
        head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr)
        if vr == b"SQ" and depth < 8:
            items = b""
            for _ in range(draw(st.integers(0, 2))):
                inner = draw(_elements(depth + 1))
                if draw(st.booleans()):
                    items += b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
                else:
                    items += (
                        b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\0\0\0\0"
                    )
            if draw(st.booleans()):
                out += head + b"\0\0" + struct.pack("<I", len(items)) + items
            else:
                out += head + b"\0\0\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\0\0\0\0"
            continue
        value = draw(st.binary(max_size=12))
        length = draw(st.sampled_from([len(value), len(value) + 3, 0xFFFFFFFF, 0]))
        if vr in (b"OB", b"UN", b"UT", b"SQ", b"OW"):
            out += head + b"\0\0" + struct.pack("<I", length) + value
        else:
            out += head + struct.pack("<H", length & 0xFFFF) + value
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_elements(),
    undefined=st.booleans(),
    collect=st.booleans(),
    first=st.integers(0, 400),
    cut=st.integers(0, 2000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
)
def test_both_sequence_loops_agree_on_made_up_sequences(
    body: bytes, undefined: bool, collect: bool, first: int, cut: int, flips: list
) -> None:
    """A sequence of made-up items and elements, given to `_skim_sequence` directly from a
    window whose chunk starts and ends anywhere around it."""
    items = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body
    if undefined:
        items = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"
    data = bytearray(b"\0" * 12 + items + b"\xfe\xff\xdd\xe0\0\0\0\0" + b"\0" * 4)
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    data = data[: cut or None]
    length = 0xFFFFFFFF if undefined else len(items)
    win = _Window(io.BytesIO(bytes(data)), len(data), bytes(data[first : first + 64]))
    win.base = first
    with contextlib.suppress(*dicomfiles.window._PARSE_ERRORS):
        _Twin().sequence(win, 12, length, collect, [])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_elements(),
    off=st.integers(0, 40),
    limit=st.integers(0, 3000),
    last=st.sampled_from([0x0028FFFF, 0x52009229, 0x7FE00007, 0x00100000]),
)
def test_both_element_loops_agree_on_made_up_elements(
    body: bytes, off: int, limit: int, last: int
) -> None:
    """`_skim` from any offset (mid-element too) to any limit inside the chunk."""
    top: dict[int, bytes] = {}
    _Twin().skim(body, min(off, len(body)), min(limit, len(body)), last, top)


def _nested(levels: int, undefined: bool) -> bytes:
    """`levels` sequences, each the only element of an item of the one around it, around one
    FrameType element."""
    inner = struct.pack("<HH2sH", 0x0008, 0x9007, b"CS", 8) + b"ORIGINAL"
    for _ in range(levels):
        if undefined:
            item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\0\0\0\0"
            inner = b"\x29\x00\x10\x10SQ\0\0\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\0\0\0\0"
        else:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
            inner = b"\x29\x00\x10\x10SQ\0\0" + struct.pack("<I", len(item)) + item
    return inner


@pytest.mark.parametrize("undefined", [True, False])
@pytest.mark.parametrize("levels", range(1, 10))
def test_both_sequence_loops_agree_on_nesting_up_to_past_the_limit(
    levels: int, undefined: bool
) -> None:
    """Sequences nested one to nine deep: both loops take them up to `_walk_items`'s limit and
    decline past it, at the same depth (unless they need not look inside: defined lengths,
    nothing collected)."""
    data = _nested(levels, undefined)
    length = 0xFFFFFFFF if undefined else len(data) - 12
    for collect in (True, False):
        found: list = []
        after = _Twin().sequence(_Window(None, len(data), data), 12, length, collect, found)
        taken = levels <= skim._SEQUENCES_DEEPEST or not (undefined or collect)
        assert after == (len(data) if taken else -1), (levels, after)
        assert (found == [(0x00089007, b"ORIGINAL")]) == (taken and collect)


_FRAME_TYPE = b"\x08\x00\x07\x90CS"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(
        st.tuples(
            st.binary(max_size=20),
            st.sampled_from([_FRAME_TYPE, _FRAME_TYPE[:5], b"\x18\x00\x75\x90CS"]),
            st.integers(0, 40),
        ),
        max_size=8,
    ),
    tail=st.binary(max_size=3),
)
def test_both_scans_agree_on_made_up_regions(
    pieces: list[tuple[bytes, bytes, int]], tail: bytes
) -> None:
    """Element headers between random bytes, with lengths that run into the next one or past
    the region, and one cut off at the region's end (its length missing: IndexError)."""
    region = b"".join(gap + head + length.to_bytes(2, "little") for gap, head, length in pieces)
    for end in (len(region), len(region) - 1, len(region) - 2):
        data = region[: max(end, 0)] + tail
        with contextlib.suppress(IndexError):
            _Twin().scan(data, _FRAME_TYPE)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_elements(),
    limit=st.integers(0, 3000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
)
def test_both_skims_step_a_sequence_only_where_skim_sequence_takes_it(
    body: bytes, limit: int, flips: list
) -> None:
    """An undefined-length sequence of made-up items (changed anywhere, the limit anywhere):
    where `_skim` steps over it (`_step_sequence`, in both skims alike), `_skim_sequence` as
    `_walk` calls it there (not collecting) takes it whole, to the same end."""
    items = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"
    head = b"\x08\x00\x40\x11SQ\0\0\xff\xff\xff\xff"  # (0008,1140): not in DESCEND
    data = bytearray(head + items + b"\xfe\xff\xdd\xe0\0\0\0\0" + b"\x10\x00\x20\x00LO\x02\x00ID")
    for offset, value in flips:
        if 12 <= offset < len(data):
            data[offset] = value
    buf = bytes(data)
    limit = min(limit, len(buf))
    stepped = _Twin().skim(buf, 0, limit, 0x0028FFFF, {})
    if stepped:
        found: list = []
        after = skim._skim_sequence_py(_Window(None, len(buf), buf), 12, 0xFFFFFFFF, False, found)
        assert after > 0 and found == []
        assert stepped in (after, len(buf))  # the sequence, or it and the element after it
