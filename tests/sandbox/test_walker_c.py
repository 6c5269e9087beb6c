"""The sandbox's compiled header walker against its Python walker: same answers, same refusals.

`dicomwalk.walk` and `dicomwalk.texts` are the C extension `_dicomwalk_c` when it is built (CI
builds it with `pip install -e .`), `walk_python` and `texts_python` otherwise. Both run here on
every file of ../shared/dicom (whole, cut at 64 KiB and cut inside the file meta) and on
generated headers: explicit and implicit VR, big endian and deflated syntaxes, odd and undefined
lengths, unordered and duplicate tags, unknown VRs, nested sequences and items of either length,
truncated anywhere, with bytes changed at random. Whatever one walker answers (a walk, NeedMore,
CannotWalk and its reason), the other must answer too.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_data import SHARED_DICOM
from xnat_sandbox import dicomheader, dicomwalk


def test_the_compiled_walker_is_built_and_used() -> None:
    """Not skipped when the extension is missing: a missing build is a failure here."""
    from xnat_sandbox import _dicomwalk_c  # noqa: F401  (ImportError: not built)

    env = {k: v for k, v in os.environ.items() if k != "XNAT_SANDBOX_WALKER"}
    code = "from xnat_sandbox import dicomwalk as w; print(w.IMPLEMENTATION, w.walk.__name__)"
    used = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert used.stdout.split() == ["c", "walk_c"]
    forced = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "XNAT_SANDBOX_WALKER": "python"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert forced.stdout.split() == ["python", "walk_python"]


def _element(e: Any) -> tuple[Any, ...]:
    return (e.tag, e.vr, e.start, e.value, e.length, e.end, e.canonical)


def outcome(walker: Callable[..., dicomwalk.Walk], texts: Callable[..., Any], *args: Any) -> Any:
    """Everything a walk says, comparable across implementations (and the fields it reads)."""
    try:
        walked = walker(*args)
    except dicomwalk.NeedMore:
        return "NeedMore"
    except dicomwalk.CannotWalk as error:
        return ("CannotWalk", str(error))
    return (
        walked.implicit,
        walked.transfer_syntax,
        [(tag, _element(e)) for tag, e in walked.meta.items()],
        walked.meta_end,
        [_element(e) for e in walked.elements],
        walked.stop,
        walked.keep_to,
        walked.boundary,
        texts(walked, dicomheader._TEXT_SPECS),
    )


def same(data: bytes, last: int, eof: bool, keep_to: int, wanted: frozenset[int]) -> Any:
    args = (data, last, eof, keep_to, wanted)
    python = outcome(dicomwalk.walk_python, dicomwalk.texts_python, *args)
    compiled = outcome(dicomwalk.walk_c, dicomwalk.texts_c, *args)
    assert compiled == python
    return python


SHARED_FILES = sorted(p for p in SHARED_DICOM.rglob("*") if p.is_file())


def test_every_shared_file_walks_the_same() -> None:
    assert len(SHARED_FILES) > 1000  # the shared data is there (never skipped)
    walked = 0
    for path in SHARED_FILES:
        data = path.read_bytes()
        for last, keep_to, wanted in [
            (dicomheader.LAST_NEEDED_TAG, 0x00101010, dicomheader.WANTED),
            (0xFFFFFFFF, 0x00200000, frozenset()),
            (0x00080100, 0, dicomheader.WANTED),
        ]:
            answer = same(data, last, True, keep_to, wanted)
            walked += isinstance(answer, tuple) and len(answer) > 2
            same(data[: dicomheader.HEADER_START], last, len(data) <= 65536, keep_to, wanted)
        same(data[:200], dicomheader.LAST_NEEDED_TAG, True, 0, dicomheader.WANTED)
        same(data[:200], dicomheader.LAST_NEEDED_TAG, False, 0, dicomheader.WANTED)
    assert walked > 1000  # most real files are walked, not refused


# -- generated headers -------------------------------------------------------------------------

VRS = ["AE", "CS", "DA", "DS", "IS", "LO", "LT", "PN", "SH", "SQ", "ST", "TM", "UI", "UL", "US",
       "OB", "OW", "UN", "UT", "XX", "ox"]  # fmt: skip
SYNTAXES = [
    b"1.2.840.10008.1.2.1\0",
    b"1.2.840.10008.1.2\0",
    b"1.2.840.10008.1.2.2\0",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.4.50\0",
    b" 1.2.840.10008.1.2 ",
]
VALUES = [b"", b"A", b"AB", b"1.2.3\0", b"ISO_IR 100", b"A\\B", b"\xc3\xa9t\xc3\xa9", b" x \0",
          b"\x1b$B", b"\t5 \x1c"]  # fmt: skip
TAGS = [0x00080000, 0x00080005, 0x00080016, 0x00080018, 0x00080060, 0x00081140, 0x00089215,
        0x00100010, 0x00100020, 0x00101002, 0x00110010, 0x00111001, 0x0020000D, 0x00200011,
        0x00324000, 0x00400275, 0x7FE00010, 0xFFFEE000]  # fmt: skip


def explicit_element(tag: int, vr: str, value: bytes, undefined: bool = False) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT") or vr not in VRS[:-2]:
        length = 0xFFFFFFFF if undefined else len(value)
        return head + b"\0\0" + struct.pack("<L", length) + value
    return head + struct.pack("<H", len(value) & 0xFFFF) + value


def implicit_element(tag: int, value: bytes, undefined: bool = False) -> bytes:
    length = 0xFFFFFFFF if undefined else len(value)
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length) + value


@st.composite
def elements(draw: st.DrawFn, implicit: bool, depth: int = 0) -> bytes:
    """A run of elements, mostly ascending, some sequences with items of either length."""
    out = []
    tags = sorted(draw(st.lists(st.sampled_from(TAGS), min_size=1, max_size=8, unique=depth == 0)))
    if depth == 0 and draw(st.integers(0, 9)) == 0:
        tags.insert(0, 0x00020010)  # file meta in the data set
    if draw(st.integers(0, 4)) == 0:
        tags = draw(st.permutations(tags))
    for tag in tags:
        vr = draw(st.sampled_from(VRS))
        if vr == "SQ" or (tag in (0x00081140, 0x00101002, 0x00400275) and depth < 3):
            items = []
            for _ in range(draw(st.integers(0, 2))):
                body = draw(elements(implicit, depth + 1)) if depth < 3 else b""
                if draw(st.booleans()):
                    items.append(struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body)
                else:
                    end = struct.pack("<HHL", 0xFFFE, 0xE00D, draw(st.sampled_from([0, 0, 4])))
                    items.append(struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + end)
            end = struct.pack("<HHL", 0xFFFE, 0xE0DD, draw(st.sampled_from([0, 0, 2])))
            value = b"".join(items) + end
            undefined = True
        else:
            value = draw(st.sampled_from(VALUES))
            undefined = draw(st.integers(0, 9)) == 0
        if implicit:
            out.append(implicit_element(tag, value, undefined))
        else:
            out.append(explicit_element(tag, "SQ" if undefined and vr != "UN" else vr, value,
                                        undefined))  # fmt: skip
    return b"".join(out)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    syntax = draw(st.sampled_from(SYNTAXES[:2] * 3 + SYNTAXES))
    implicit = syntax.strip(b"\0 ") == b"1.2.840.10008.1.2"
    meta_elements = [
        explicit_element(0x00020001, "OB", b"\0\1"),
        explicit_element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.4\0"),
        explicit_element(0x00020003, "UI", b"1.2.3.4\0"),
        explicit_element(0x00020010, "UI", syntax),
    ]
    if draw(st.integers(1, 8)) == 5:
        meta_elements = draw(st.permutations(meta_elements))
    if draw(st.integers(0, 9)) == 0:
        meta_elements = meta_elements[:3]
    meta = b"".join(meta_elements)
    group_length = explicit_element(0x00020000, "UL", struct.pack("<L", len(meta)))
    body = draw(elements(implicit))
    data = bytes(128) + b"DICM" + group_length + meta + body
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # bytes changed at random
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    cut = draw(st.integers(0, 3)) == 0
    at = 128 + draw(st.integers(0, 1 << 16)) % (len(data) - 127)  # a cut anywhere past 128
    return data[:at] if cut else data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=headers(),
    last=st.sampled_from([0x00080060, 0x00100020, 0x00324000, 0x7FE00010, 0xFFFFFFFF]),
    keep_to=st.sampled_from([0, 0x00080018, 0x00101002, 0x00200011]),
    eof=st.sampled_from([True, True, True, False]),
    wanted=st.sampled_from([frozenset(), dicomheader.WANTED, frozenset(TAGS)]),
)
def test_generated_headers_walk_the_same(data, last, keep_to, eof, wanted) -> None:
    same(data, last, eof, keep_to, wanted)


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(SHARED_FILES) - 1),
    cut=st.integers(128, 6000),
    changes=st.lists(st.tuples(st.integers(128, 6000), st.integers(0, 255)), max_size=4),
)
def test_real_headers_mutated_walk_the_same(index, cut, changes) -> None:
    data = bytearray(SHARED_FILES[index].read_bytes()[:cut])
    for at, value in changes:
        if at < len(data):
            data[at] = value
    same(bytes(data), dicomheader.LAST_NEEDED_TAG, False, 0x00101010, dicomheader.WANTED)
    same(bytes(data), dicomheader.LAST_NEEDED_TAG, True, 0x00101010, dicomheader.WANTED)


def test_nesting_past_the_bound_is_refused_by_both() -> None:
    item = b""
    for _ in range(dicomwalk.MAX_DEPTH + 1):
        sequence = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + item
        sequence += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        item = explicit_element(
            0x00081140, "SQ", sequence + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0), True
        )
    meta = explicit_element(0x00020010, "UI", b"1.2.840.10008.1.2.1\0")
    data = bytes(128) + b"DICM" + meta + item
    assert same(data, 0xFFFFFFFF, True, 0, frozenset()) == (
        "CannotWalk",
        "sequences nested too deep",
    )
