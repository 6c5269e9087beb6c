"""The MD5 lanes kept full across calls (`xnatdrop._md5lanes.Engine`, wrapped by
`md5lanes.Lanes`) against hashlib: files handed over in batches as an upload's runs are, hashed
only while every lane has one, drained at the end; a file in pieces (as a large one is read)
hashed as one; each file's buffers held until its digest is out, in both lane widths where the
CPU has both; and the wrapper fed by several threads at once.
"""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_md5lanes import DATA, PADDING, cpu_has
from xnatdrop import md5lanes


def engines() -> list[Any]:
    """An Engine in each width the CPU has (a failure, not a skip, when it is not built)."""
    from xnatdrop import _md5lanes

    if not cpu_has("avx2"):
        with pytest.raises(RuntimeError, match="AVX2"):
            _md5lanes.Engine()
        return []
    return [_md5lanes.Engine(width) for width in ((16, 8) if cpu_has("avx512f") else (8,))]


def md5(data: Any) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


@st.composite
def batches(draw: st.DrawFn) -> list[list[tuple[int, int, bool]]]:
    """1 to 12 batches of 0 to 40 files (start, size) of DATA, each batch then hashed with or
    without draining: padding-class sizes, any size to 5000, now and then one to 3 MB."""
    size = st.one_of(st.sampled_from(PADDING), st.integers(0, 5000))
    found = []
    for _ in range(draw(st.integers(1, 12))):
        files = []
        for _ in range(draw(st.integers(0, 40))):
            n = draw(st.integers(0, 3 << 20) if draw(st.integers(0, 29)) == 0 else size)
            files.append((draw(st.integers(0, len(DATA) - n)), n, False))
        files.append((0, 0, draw(st.booleans())))  # the last: whether to drain after it
        found.append(files)
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_every_file_once_with_hashlibs_digest(case: list[list[tuple[int, int, bool]]]) -> None:
    for engine in engines():
        wanted, got = {}, {}
        tag = 0
        view = memoryview(DATA)
        for batch in case:
            *files, (_, _, drain) = batch
            tags = list(range(tag, tag + len(files)))
            engine.add(tags, [view[s : s + n] for s, n, _ in files])
            for t, (s, n, _) in zip(tags, files, strict=True):
                wanted[t] = md5(view[s : s + n])
            tag += len(files)
            for t, digest in engine.run(drain=drain):
                assert t not in got
                got[t] = digest
        got.update(engine.run(drain=True))
        assert got == wanted
        assert len(engine) == 0 and engine.held == 0


@st.composite
def pieces(draw: st.DrawFn) -> list[tuple[int, list[int]]]:
    """1 to 40 files (start, piece sizes) of DATA: every piece but the last whole 64-byte
    blocks (none to 300, now and then 1 MiB), the last of a padding-class size or any to 5000
    (a file of one piece, or of several, as `packread.read_one` hands over a large file)."""
    files = []
    for _ in range(draw(st.integers(1, 40))):
        sizes = []
        for _ in range(draw(st.integers(0, 4))):
            blocks = 16_384 if draw(st.integers(0, 19)) == 0 else draw(st.integers(0, 300))
            sizes.append(64 * blocks)
        sizes.append(draw(st.one_of(st.sampled_from(PADDING), st.integers(0, 5000))))
        files.append((draw(st.integers(0, len(DATA) - sum(sizes))), sizes))
    return files


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces(), st.integers(1, 5))
def test_a_file_in_pieces_is_hashed_as_one(files: list[tuple[int, list[int]]], calls: int) -> None:
    """Files in pieces beside files whole, added over `calls` calls each followed by a run:
    hashlib's digest of the pieces joined, every piece held until then."""
    for engine in engines():
        view = memoryview(DATA)
        wanted, got, messages = {}, {}, []
        for tag, (start, sizes) in enumerate(files):
            ends = [start + sum(sizes[: i + 1]) for i in range(len(sizes))]
            parts = [view[a:b] for a, b in zip([start, *ends], ends, strict=False)]
            messages.append(parts[0] if len(parts) == 1 and tag % 2 else parts)
            wanted[tag] = md5(view[start : ends[-1]])
        step = -(-len(files) // calls)
        for at in range(0, len(files), step):
            engine.add(range(at, min(at + step, len(files))), messages[at : at + step])
            got.update(engine.run())
        assert engine.held == sum(sum(files[t][1]) for t in wanted if t not in got)
        got.update(engine.run(drain=True))
        assert got == wanted
        assert len(engine) == 0 and engine.held == 0


def test_the_lanes_hash_only_while_every_one_has_a_file() -> None:
    """One file fewer than the lanes: nothing is hashed until more come or it is drained; two
    more: the lanes work while every one has a file, the longest then waits in its lane."""
    for engine in engines():
        width = engine.width
        files = [DATA[i * 1000 : i * 1000 + 200 + i] for i in range(width - 1)]
        engine.add(range(width - 1), files)
        assert engine.run() == [] and len(engine) == width - 1
        more = {99: DATA[:64], 100: DATA[:5000]}
        engine.add(list(more), list(more.values()))
        done = engine.run()
        wanted = {**dict(enumerate(files)), **more}
        assert done and all(digest == md5(wanted[t]) for t, digest in done)
        assert len(engine) == width + 1 - len(done) >= 1  # the longest, 5000 bytes, goes on
        assert 100 not in dict(done)
        rest = engine.run(drain=True)
        assert sorted(t for t, _ in done + rest) == sorted(wanted)
        assert all(digest == md5(wanted[t]) for t, digest in rest)


def test_a_buffer_is_held_until_its_digest_is_out() -> None:
    """A bytearray handed over cannot be resized (nor its memory reused) until the run that
    returns its digest; then it is its own again."""
    for engine in engines():
        data = bytearray(DATA[:100_000])
        engine.add([7], [memoryview(data)[10:90_000]])
        assert engine.held == 89_990
        with pytest.raises(BufferError):
            data.extend(b"x")
        assert engine.run(drain=True) == [(7, md5(DATA[10:90_000]))]
        data.extend(b"x")
        assert engine.held == 0


@pytest.mark.parametrize(
    ("tags", "files", "error"),
    [
        ([1, 2], [b"a"], ValueError),  # lengths differ
        (["a"], [b"a"], TypeError),  # a tag that is no int
        ([1, 2], [b"a", 3], TypeError),  # a file that is no buffer
        (1, [b"a"], TypeError),
        ([1, 2], [b"a", [b"x" * 64, 3]], TypeError),  # a piece that is no buffer
        ([1, 2], [b"a", [b"x" * 65, b"y"]], ValueError),  # a piece not of whole blocks
        ([1, 2], [b"a", []], ValueError),  # a file of no piece
    ],
)
def test_bad_files_raise_and_add_nothing(tags: Any, files: Any, error: type) -> None:
    for engine in engines():
        held = bytearray(b"held")
        engine.add([0], [held])
        first = bytearray(b"first")
        with pytest.raises(error):
            engine.add(tags, [first, *files[1:]] if isinstance(files[0], bytes) else files)
        first.extend(b"!")  # released again: the call took nothing
        assert len(engine) == 1
        assert engine.run(drain=True) == [(0, md5(b"held"))]


def test_widths_that_the_cpu_lacks_or_that_do_not_exist_are_refused() -> None:
    from xnatdrop import _md5lanes

    for width in (1, 4, 12, 32, -8):
        with pytest.raises((ValueError, RuntimeError)):
            _md5lanes.Engine(width)
    if cpu_has("avx2") and not cpu_has("avx512f"):
        with pytest.raises(ValueError, match="8"):
            _md5lanes.Engine(16)


def test_a_second_thread_is_refused_while_one_hashes() -> None:
    """The engine gives the GIL up while it hashes; another thread's call meanwhile is a
    RuntimeError, never a change under the running one."""
    for engine in engines():
        big = bytes(200 << 20)  # one lane alone: ~0.5 s
        engine.add([1], [big])
        refused: list[Any] = []
        hashing = threading.Thread(target=_run_into, args=(engine, refused))
        hashing.start()
        errors = 0
        while hashing.is_alive():
            try:
                engine.add([2], [b"late"])
            except RuntimeError:
                errors += 1
            else:
                break  # the run ended between the check and the call
        hashing.join()
        assert errors > 0
        done = dict(refused[0]) | dict(engine.run(drain=True))
        assert done[1] == md5(big)


def _run_into(engine: Any, found: list[Any]) -> None:
    found.append(engine.run(drain=True))


@pytest.mark.parametrize("compiled", [True, False])
def test_lanes_fed_by_several_threads_at_once(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three threads feed runs of files (as the upload's readers do), some in two pieces, each
    hashing when the engine is free; taken while they feed and after the drain: every file
    once, hashlib's digest. Without the compiled engine, the hashlib twin."""
    if not compiled:
        monkeypatch.setattr(md5lanes, "COMPILED", False)
    elif not cpu_has("avx2"):
        return
    lanes = md5lanes.Lanes()
    assert (lanes._engine is not None) is compiled
    wanted: dict[int, bytes] = {}
    got: dict[int, bytes] = {}

    def feeder(seed: int) -> None:
        pick = random.Random(seed)
        for run in range(60):
            tags, files = [], []
            for i in range(pick.randint(1, 20)):
                start, size = pick.randrange(0, 1 << 20), pick.choice([*PADDING, 150_000])
                tags.append(seed * 100_000 + run * 100 + i)
                data = memoryview(DATA)[start : start + size]
                cut = 64 * pick.randrange(size // 64 + 1)  # every third file in two pieces
                files.append(data if i % 3 else [data[:cut], data[cut:]])
                wanted[tags[-1]] = md5(data)
            lanes.feed(tags, files)
            got.update(lanes.take()) if seed == 0 else None

    threads = [threading.Thread(target=feeder, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got.update(lanes.take())
    lanes.drain()
    got.update(lanes.take())
    assert got == wanted
