"""The MD5 digests of many spans of one buffer: a run of the upload zip (`packread.read_run`).

Compiled (`xnatdrop._md5lanes`, where it is built and the CPU has AVX2) the spans are hashed
eight at a time, one in each 32-bit lane of an AVX2 register: 2.5 GB/s on one core for a run of
44 KB files, against 0.55 GB/s for hashlib's MD5 (OpenSSL's hashes one message at a time, each
step waiting for the one before), and MD5 was 43 % of the upload's CPU (issue 13). Where the CPU
has AVX-512, sixteen at a time, each step's function one ternary-logic instruction and its
rotation one more (see `LANES`): 6.3 GB/s against 2.3 in eight lanes for sixteen 2 MB spans,
2.98 against 1.96 GB/s on the runs of the benchmark's 500 MB session (many of its runs hold
eight files of 0.5 MB), and pack+send's CPU for that session 0.60-0.64 → 0.52-0.53 s.
Elsewhere the twin below hashes each span with hashlib: the same digests, as fast as before.

A single span goes to hashlib either way: alone in the lanes it would get an eighth of them,
slower than hashlib's one stream.

The upload hashes through `Lanes` (the compiled `Engine`): files are handed over run by run
and the lanes stay full across runs, where `md5_spans` hashes one call's spans and leaves lanes
idle when they are fewer than the lanes.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence

try:
    from xnatdrop import _md5lanes
except ImportError:  # not built (no compiler at install): the twin
    _md5lanes = None  # type: ignore[assignment]

Buffer = bytes | bytearray | memoryview  # collections.abc.Buffer is Python 3.12's

COMPILED: bool = _md5lanes is not None and bool(_md5lanes.AVX2)
"""Whether `md5_spans` hashes in SIMD lanes (built, and the CPU has AVX2)."""

LANES: int = _md5lanes.LANES if COMPILED else 8
"""How many spans a call hashes at once (16 with AVX-512, 8 with AVX2); `pack` makes its runs
of at least that many files where it can. (8 for the twin: runs as before.)"""


def md5_spans_hashlib(
    buffer: Buffer | Sequence[Buffer],
    starts: Sequence[int],
    sizes: Sequence[int],
    pieces: Sequence[int] | None = None,
) -> bytes:
    """The twin: each span's digest from hashlib (which releases the GIL on spans over 2 KiB),
    with the compiled function's checks, so that both fail alike."""
    several = list(buffer) if pieces is not None else [buffer]  # type: ignore[arg-type]
    pieces = pieces if pieces is not None else [0] * len(starts)
    if not len(starts) == len(sizes) == len(pieces):
        raise ValueError(f"{len(starts)} starts but {len(sizes)} sizes or another number of pieces")
    digests = bytearray()
    md5 = hashlib.md5
    views = [memoryview(one).cast("B") for one in several]
    for index, (start, size, piece) in enumerate(zip(starts, sizes, pieces, strict=True)):
        if start < 0 or size < 0 or piece < 0:
            raise ValueError(f"span {index} ({start} + {size} bytes, piece {piece}) is negative")
        if piece >= len(views):
            raise ValueError(f"span {index} is in piece {piece} of {len(views)}")
        if start + size > len(views[piece]):
            end = len(views[piece])
            raise ValueError(f"span {index} ({start} + {size} bytes) is past the end ({end})")
        digests += md5(views[piece][start : start + size], usedforsecurity=False).digest()
    for view in views:
        view.release()
    return bytes(digests)


def md5_spans(
    buffer: Buffer | Sequence[Buffer],
    starts: Sequence[int],
    sizes: Sequence[int],
    pieces: Sequence[int] | None = None,
) -> bytes:
    """The MD5 digests of buffer[start : start + size] for each start and size, 16 bytes each,
    concatenated in order; with `pieces`, `buffer` is a sequence of buffers and each span is in
    buffer[piece]. ValueError for mismatched lengths, a negative number, a span past the end
    or a piece that is not there. The GIL is released while it hashes (the buffers cannot be
    resized meanwhile)."""
    if COMPILED and len(starts) > 1:
        return _md5lanes.md5_spans(buffer, starts, sizes, pieces)
    return md5_spans_hashlib(buffer, starts, sizes, pieces)


class Lanes:
    """The MD5s of a stream of files (an upload's), hashed in the SIMD lanes as the readers
    hand them over, the lanes kept full across runs (`_md5lanes.Engine`): `feed` a run's files,
    `take` the digests finished so far (in no set order), `drain` to finish the rest.

    Why: hashed a run at a time (`md5_spans`), a run of six 600 kB files kept six of sixteen
    lanes busy; the lanes were busy half the time on the benchmark's 500 MB session, and the
    push's upload took 0.57 s against 0.51 s with every run hashed in full lanes (issue 13).
    Any reader thread hashes: the one that feeds takes the engine if it is free, and whatever
    the other fed meanwhile; it hashes only while every lane has a file, so a file may wait in
    its lane for the next run. Each file's buffer is held until its digest is taken from the
    engine (its pool buffer is not reused meanwhile). Without the compiled engine each file is
    hashed by hashlib as it is fed.
    """

    def __init__(self) -> None:
        self._engine = _md5lanes.Engine() if COMPILED else None
        self._inbox: collections.deque[tuple[Sequence[int], Sequence[Buffer]]]
        self._inbox = collections.deque()
        self._finished: collections.deque[tuple[int, bytes]] = collections.deque()
        self._lock = threading.Lock()

    def feed(self, tags: Sequence[int], files: Sequence[Buffer]) -> None:
        """Hand over files to hash, each named by its tag; hash what keeps every lane busy,
        unless another thread is hashing (it takes these files too)."""
        if self._engine is None:
            md5 = hashlib.md5
            for tag, data in zip(tags, files, strict=True):
                self._finished.append((tag, md5(data, usedforsecurity=False).digest()))
            return
        self._inbox.append((tags, files))
        self._hash(drain=False)

    def drain(self) -> None:
        """Hash every file fed so far to the end (waiting for a thread that is hashing)."""
        if self._engine is not None:
            self._hash(drain=True)

    def take(self) -> list[tuple[int, bytes]]:
        """The (tag, digest) of each file finished since the last call."""
        finished = []
        while self._finished:
            finished.append(self._finished.popleft())
        return finished

    def _hash(self, *, drain: bool) -> None:
        engine = self._engine
        assert engine is not None
        # Loop: what another thread fed while this one hashed is in the inbox, its feeder gone.
        while self._inbox or drain:
            if not self._lock.acquire(blocking=drain):
                return
            try:
                while self._inbox:
                    engine.add(*self._inbox.popleft())
                self._finished.extend(engine.run(drain=drain))
            finally:
                self._lock.release()
            drain = drain and bool(self._inbox)
