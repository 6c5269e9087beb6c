"""The MD5s of files sixteen or eight at a time (`xnatdrop._md5lanes.Engine`, wrapped by
`md5lanes.Lanes`) against hashlib, span by span, in both lane widths where the CPU has both;
and `packread.read_run` handing a run's files to the lanes.

The engine is given each case's spans at once and drained: sizes in every padding class (the
last block with room for the length, or a block more), spans that start anywhere, overlap or
repeat, one long span among many short ones (a lane refilled while another keeps its span) and
the real scanner files. test_md5lanes_engine.py hands files over in batches, as an upload does,
and tries bad arguments.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_data import SHARED_DICOM
from xnatdrop import buffers, md5lanes, pack, packread
from xnatdrop.packplan import Run

DATA = random.Random(1321).randbytes(5 << 20)  # 5 MiB that every span is taken from
# Around each block boundary: the last block holds the length (rest < 56) or needs one more.
PADDING = sorted({64 * k + r for k in range(4) for r in (0, 1, 55, 56, 57, 63)} | {119, 120})


def compiled():  # type: ignore[no-untyped-def]
    """One call's spans hashed by the extension's Engine in each width the CPU has (sixteen
    lanes and eight with AVX-512), which must agree, drained at once: a failure (not a skip)
    when it is not built. On a CPU without AVX2 (where no Engine can be made) hashlib's, as
    `md5lanes.Lanes` then does."""
    from xnatdrop import _md5lanes

    if not cpu_has("avx2"):
        return expected

    def every_width(
        buffer: Any, starts: list[int], sizes: list[int], pieces: list[int] | None = None
    ) -> bytes:
        found = []
        for width in (16, 8) if cpu_has("avx512f") else (8,):
            engine = _md5lanes.Engine(width)
            engine.add(range(len(starts)), spans_of(buffer, starts, sizes, pieces))
            done = dict(engine.run(drain=True))
            found.append(b"".join(done[i] for i in range(len(starts))))
        assert all(one == found[0] for one in found)
        return found[0]

    return every_width


def expected(
    buffer: Any, starts: list[int], sizes: list[int], pieces: list[int] | None = None
) -> bytes:
    return b"".join(
        hashlib.md5(span, usedforsecurity=False).digest()
        for span in spans_of(buffer, starts, sizes, pieces)
    )


def spans_of(
    buffer: Any, starts: list[int], sizes: list[int], pieces: list[int] | None = None
) -> list[memoryview]:
    """buffer[start : start + size] for each start and size, or with `pieces`, of
    buffer[piece] (then a sequence of buffers)."""
    views = [memoryview(b) for b in (buffer if pieces is not None else [buffer])]
    which = pieces if pieces is not None else [0] * len(starts)
    return [views[p][s : s + n] for s, n, p in zip(starts, sizes, which, strict=True)]


def cpu_has(flag: str) -> bool:
    flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if "flags" in line]
    return bool(flags) and flag in flags[0].split()


def cpu_has_avx2() -> bool:
    return cpu_has("avx2")


def test_the_md5_lanes_are_built_and_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails (does not skip) when the extension is missing (`pip install -e .` builds it) or
    when the CPU has AVX2 and the module says it has not; and read_run hands a run's files to
    the lanes in one call, the compiled engine hashing them."""
    from xnatdrop import _md5lanes  # an ImportError here: the extension was not built

    assert _md5lanes.AVX2 is cpu_has_avx2()
    assert md5lanes.COMPILED is cpu_has_avx2()
    lanes = (16 if cpu_has("avx512f") else 8) if cpu_has_avx2() else 0
    assert lanes == _md5lanes.LANES
    assert pack.LANES == md5lanes.LANES == (_md5lanes.LANES or 8)
    calls: list[tuple[list[int], list[int]]] = []
    monkeypatch.setattr(md5lanes.Lanes, "feed", counted_feed(calls))
    contents = [DATA[i * 1000 : i * 1000 + 100 + 37 * i] for i in range(20)]
    lanes = md5lanes.Lanes()
    assert (lanes._engine is not None) is cpu_has_avx2()  # the compiled engine hashes
    _, digests, _, _ = _read_run(tmp_path, contents, buffers.Buffers(2, 1 << 16), lanes)
    assert calls == [(list(range(20)), [len(c) for c in contents])]
    assert digests == b"".join(hashlib.md5(c).digest() for c in contents)


def test_a_run_of_few_large_files_fills_several_pieces_and_is_hashed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven files of 300 KB (`pack._runs` makes such a run: fewer than eight files go on past
    RUN) in pieces of the pool's 1 MiB buffers, three entries each; handed to the lanes at
    once."""
    calls: list[tuple[list[int], list[int]]] = []
    monkeypatch.setattr(md5lanes.Lanes, "feed", counted_feed(calls))
    contents = [DATA[i * 300_001 : (i + 1) * 300_001] for i in range(7)]
    pool = buffers.Buffers(8, (1 << 20) + 4096)
    pieces, digests, crcs, lengths = _read_run(tmp_path, contents, pool, md5lanes.Lanes(), 5)
    assert [len(p) for p in pieces] == [sum(lengths[0:3]), sum(lengths[3:6]), lengths[6]]
    assert calls == [(list(range(5, 12)), [300_001] * 7)]
    assert digests == b"".join(hashlib.md5(c).digest() for c in contents)
    assert crcs == [zlib.crc32(c) for c in contents]
    body, at = b"".join(pieces), 0
    for content, length in zip(contents, lengths, strict=True):
        assert body[at + length - len(content) : at + length] == content
        at += length


def counted_feed(calls: list[tuple[list[int], list[int]]]) -> Any:
    """Lanes.feed, noting each call's tags and file sizes."""
    real = md5lanes.Lanes.feed

    def feed(self: md5lanes.Lanes, tags: Any, files: Any) -> None:
        calls.append((list(tags), [len(f) for f in files]))
        real(self, tags, files)

    return feed


def _read_run(
    folder: Path,
    contents: list[bytes],
    pool: buffers.Buffers,
    lanes: md5lanes.Lanes,
    first: int = 0,
) -> tuple[list[bytearray], bytes, list[int], list[int]]:
    """`packread.read_run` of one run of files f0, f1, … holding `contents`, written to
    `folder`, none opened ahead, its files tagged from `first`; the lanes drained after it for
    their digests, in order."""
    names = [f"f{i}" for i in range(len(contents))]
    for name, content in zip(names, contents, strict=True):
        (folder / name).write_bytes(content)
    run = Run(names, [len(c) for c in contents], names, [0.0] * len(contents))
    opened: concurrent.futures.Future[list[int | None]] = concurrent.futures.Future()
    opened.set_result([None] * len(contents))
    pieces, crcs, lengths = packread.read_run(str(folder), run, pool, opened, lanes, first)
    lanes.drain()
    found = dict(lanes.take())
    assert sorted(found) == list(range(first, first + len(contents)))
    return pieces, b"".join(found[first + i] for i in range(len(contents))), crcs, lengths


@st.composite
def spans(draw: st.DrawFn, most: int = 40) -> tuple[list[int], list[int]]:
    """1 to `most` spans of DATA: padding-class sizes, any size up to 5000, now and then one of
    up to 3 MB; any start (unaligned); a span now and then repeated."""
    size = st.one_of(st.sampled_from(PADDING), st.integers(0, 5000))
    long = st.integers(0, 3 << 20)
    starts: list[int] = []
    sizes: list[int] = []
    for _ in range(draw(st.integers(1, most))):
        if starts and draw(st.integers(0, 5)) == 0:  # a span again
            pick = draw(st.integers(0, len(starts) - 1))
            starts.append(starts[pick])
            sizes.append(sizes[pick])
            continue
        n = draw(long if draw(st.integers(0, 19)) == 0 else size)
        starts.append(draw(st.integers(0, len(DATA) - n)))
        sizes.append(n)
    return starts, sizes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans())
def test_every_span_is_hashlibs_md5(case: tuple[list[int], list[int]]) -> None:
    starts, sizes = case
    assert compiled()(DATA, starts, sizes) == expected(DATA, starts, sizes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans(), st.data())
def test_spans_in_several_pieces(case: tuple[list[int], list[int]], data: st.DataObject) -> None:
    """As `read_run` hands over a run of several pieces: each span in a buffer of its own."""
    starts, sizes = case
    pieces = [DATA, bytearray(DATA[7:]), memoryview(DATA)[1:]]
    which = [
        data.draw(st.integers(0, 2)) if start + size <= len(DATA) - 7 else 0
        for start, size in zip(starts, sizes, strict=True)
    ]
    wanted = b"".join(
        hashlib.md5(memoryview(pieces[p])[s : s + n]).digest()
        for s, n, p in zip(starts, sizes, which, strict=True)
    )
    assert compiled()(pieces, starts, sizes, which) == wanted


@pytest.mark.parametrize("size", PADDING)
def test_each_padding_class_in_every_lane(size: int) -> None:
    """Seventeen spans of one size: all sixteen (or eight) lanes end together, and one lane
    takes the seventeenth (eight: twice more)."""
    starts = [1 + 7 * i for i in range(17)]
    assert compiled()(DATA, starts, [size] * 17) == expected(DATA, starts, [size] * 17)


def test_one_long_span_among_many_short_ones() -> None:
    """Lanes refilled many times while one keeps its 3 MB span, and the long one last too."""
    sizes = [3 << 20] + [random.Random(i).randrange(0, 9000) for i in range(60)]
    starts = [random.Random(-i).randrange(0, len(DATA) - n) for i, n in enumerate(sizes)]
    assert compiled()(DATA, starts, sizes) == expected(DATA, starts, sizes)
    assert compiled()(DATA, starts[::-1], sizes[::-1]) == expected(DATA, starts[::-1], sizes[::-1])


def test_buffers_of_every_kind_and_no_spans() -> None:
    view = memoryview(bytearray(DATA[:100_000]))[3:]  # an unaligned slice
    starts, sizes = [0, 5, 99_000, 10], [1000, 99_990, 997, 0]
    for buffer in (bytes(view), bytearray(view), view):
        assert compiled()(buffer, starts, sizes) == expected(view, starts, sizes)
        assert compiled()(buffer, tuple(starts), tuple(sizes)) == expected(view, starts, sizes)
    assert compiled()(DATA, [], []) == b""


def test_the_scanner_files_read_into_one_buffer() -> None:
    """Each shared set's files (2,418 in all, 0 bytes to 50 MB) end to end in one buffer."""
    count = 0
    for folder in sorted(p for p in SHARED_DICOM.iterdir() if p.is_dir()):
        data = bytearray()
        starts, sizes = [], []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            content = path.read_bytes()
            starts.append(len(data))
            sizes.append(len(content))
            data += content
        assert compiled()(data, starts, sizes) == expected(memoryview(data), starts, sizes)
        count += len(sizes)
    assert count > 2000


def test_a_run_of_fewer_than_eight_files_goes_on_past_run_bytes() -> None:
    """`pack._runs`: 44 KB files stop at RUN bytes (23 of them, as before); files of 615 KB,
    one a run before, go on up to JOB bytes (6 of them), a job each."""
    assert list(pack._runs([44_000] * 50)) == [(0, 23), (23, 46), (46, 50)]
    assert list(pack._runs([615_000] * 20)) == [(0, 6), (6, 12), (12, 18), (18, 20)]
    assert list(pack._runs([615_000, 2 << 20, 1, 1])) == [(0, 1), (1, 2), (2, 4)]
