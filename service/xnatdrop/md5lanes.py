"""The MD5 digests of an upload's files (`pack`), many at a time: `Lanes`.

Compiled (`xnatdrop._md5lanes`, where it is built and the CPU has AVX2) the files are hashed
eight at a time, one in each 32-bit lane of an AVX2 register, or sixteen with AVX-512 (each
step's function one ternary-logic instruction, its rotation one more; see `LANES`): 6.3 GB/s on
one core for sixteen 2 MB files against 2.3 in eight lanes and about 0.6-0.9 GB/s for hashlib's
MD5, whose one message at a time has each step wait for the one before. MD5 was 43 % of the
upload's CPU (issue 13). The lanes are kept full across the upload's runs (`Lanes`, over the
extension's `Engine`); hashed one run at a time they were busy half the time on the
benchmark's 500 MB session, whose runs hold six files of 600 kB. Elsewhere `Lanes` hashes each
file with hashlib as it is handed over: the same digests.
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
File = Buffer | Sequence[Buffer]
"""A file to hash: its bytes, or its pieces in order (each but the last whole 64-byte blocks)."""

COMPILED: bool = _md5lanes is not None and bool(_md5lanes.AVX2)
"""Whether `Lanes` hashes in SIMD lanes (built, and the CPU has AVX2)."""

LANES: int = _md5lanes.LANES if COMPILED else 8
"""How many files the lanes hash at once (16 with AVX-512, 8 with AVX2); `pack` makes its runs
of at least that many files where it can. (8 for the twin: runs as before.)"""


class Lanes:
    """The MD5s of a stream of files (an upload's), hashed in the SIMD lanes as the readers
    hand them over, the lanes kept full across runs (`_md5lanes.Engine`): `feed` a run's files,
    `take` the digests finished so far (in no set order), `drain` to finish the rest.

    Why: hashed a run at a time, a run of six 600 kB files kept six of sixteen lanes busy;
    the lanes were busy half the time on the benchmark's 500 MB session, and the push's upload
    took 0.57 s against 0.51 s with every run hashed in full lanes (issue 13).
    Any reader thread hashes: the one that feeds takes the engine if it is free, and whatever
    the other fed meanwhile; it hashes only while every lane has a file, so a file may wait in
    its lane for the next run. Each file's buffer is held until its digest is taken from the
    engine (its pool buffer is not reused meanwhile). A file may come in pieces, as a large
    one is read (`packread.read_one`): one message in several buffers, hashed in one lane.
    Without the compiled engine each file is hashed by hashlib as it is fed.
    """

    def __init__(self) -> None:
        self._engine = _md5lanes.Engine() if COMPILED else None
        self._inbox: collections.deque[tuple[Sequence[int], Sequence[File]]]
        self._inbox = collections.deque()
        self._finished: collections.deque[tuple[int, bytes]] = collections.deque()
        self._lock = threading.Lock()

    def feed(self, tags: Sequence[int], files: Sequence[File]) -> None:
        """Hand over files to hash, each named by its tag; hash what keeps every lane busy,
        unless another thread is hashing (it takes these files too)."""
        if self._engine is None:
            for tag, data in zip(tags, files, strict=True):
                digest = hashlib.md5(usedforsecurity=False)
                for piece in [data] if isinstance(data, Buffer) else data:
                    digest.update(piece)
                self._finished.append((tag, digest.digest()))
            return
        self._inbox.append((tags, files))
        self._hash(drain=False)

    @property
    def held(self) -> int:
        """Bytes of the files the engine holds, in a lane or queued for one (0 without it)."""
        return self._engine.held if self._engine is not None else 0

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
