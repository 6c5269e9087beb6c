"""Reading and hashing the files of the upload zip, in `pack`'s reader threads.

`read_run` reads a run of small files into one piece (each file's local header, then its data),
`read_one` a file up to `pack.WHOLE_FILE` into CHUNK pieces, `digest_file` and `copy` a larger
one in two passes (its CRC must precede its data: a STORED entry cannot have a data descriptor
for XNAT's ZipInputStream). Each returns or yields pieces taken from `pack`'s buffer pool, with
the MD5 digests (a run's, and a large file's while the lanes hold little, through
`md5lanes.Lanes`) and CRC-32s the body and its manifest need; a file that differs from the plan
raises `Changed`, any other OSError `FileError` (see `pack` for why neither is an OSError).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from xnatdrop import buffers, md5lanes, zipformat
from xnatdrop.errors import TransientError
from xnatdrop.packplan import Planned, Run

CHUNK = 1 << 20  # the piece of a file larger than a run: what one read, hash and send take
LANES_HELD = 16 << 20  # a file larger than a run goes to the MD5 lanes while they hold less
# (16 MiB: pack+send of 500 MB took about the user CPU it took with 32 or 64 MiB, 0.15-0.19 s
# against 0.20 s with none, and its peak rose 6 MB, not 36 or 52 MB.)


class Changed(TransientError):
    """A file of the frozen folder changed size or vanished after the plan was made."""


class FileError(TransientError):
    """Reading a file of the upload or saving the manifest failed while the body was being
    sent: `error` is the OSError. Raised as a TransientError, never as an OSError, because
    urllib3 would take an OSError from a body for a broken connection ("cannot connect")."""

    def __init__(self, error: OSError) -> None:
        super().__init__(f"{error.filename}: {error.strerror or error}")
        self.error = error


def failed(path: str, error: OSError, when: str) -> TransientError:
    """The error a reader raises for an OSError on a file: Changed if it vanished."""
    if isinstance(error, FileNotFoundError):
        return Changed(f"{path} vanished {when}")
    return FileError(error)


def read_run(
    base: str,
    run: Run,
    pool: buffers.Buffers,
    opened: concurrent.futures.Future[list[int | None]],
    lanes: md5lanes.Lanes,
    first: int,
) -> tuple[list[bytearray], list[int], list[int]]:
    """Read a run of small files (in a reader thread) into pieces of the zip, and hand them to
    `lanes` to hash, tagged by their place in the plan (`first` is the run's first file's).

    A piece is each file's local header followed by its data, the data read straight into
    place (`readv`) and the header written in place once its CRC is known: one buffer, one
    send, one future per run instead of per file. A run longer than the pool's buffers
    (`pack._runs`: one of fewer than `LANES` files) fills several, each with whole entries.
    `run` is the files' columns (`Plan.columns`: paths, sizes, zip names, mtimes), every file
    at most RUN bytes (no ZIP64 header). `opened` gives each file's descriptor, opened ahead
    by a reader (`prefetch`, `Prefetches`), or None for one to open now (its error
    raised here, in order); read_run closes them all.
    Returns the pieces, the CRC-32s and each entry's length in the zip (header and data). The
    files go to the lanes after the loop, all at once (`md5lanes.Lanes`: sixteen or eight at a
    time in SIMD lanes, the lanes kept full across runs, the GIL released): their digests come
    from the lanes, maybe after a later run's. The header needs only the CRC (ISA-L's holds
    the GIL, about 0.03 ns a byte).

    Per file this is the loop the whole upload runs 50,000 times and more, so it does only
    what must be done per file: a path is joined only to open a file the prefetch could not or
    to name one in an error, and the header is packed into the piece, not built and copied.
    """
    descriptors = opened.result()
    try:
        paths, sizes, names, mtimes = run
        length = zipformat.local_length
        lengths = [length(name, size) for name, size in zip(names, sizes, strict=True)]
        fills = [0]  # each piece's size: whole entries, up to the pool's buffers
        for entry in map(sum, zip(lengths, sizes, strict=True)):
            if fills[-1] and fills[-1] + entry > pool.size:
                fills.append(0)
            fills[-1] += entry
        pieces = [pool.take(fill) for fill in fills]
        views = [memoryview(piece) for piece in pieces]
        starts, which, crcs = [], [], []
        number, view, at = 0, views[0], 0
        readv, read, close_file = os.readv, os.read, os.close
        crc32, put_header = zipformat.crc32, zipformat.put_local_header
        for index, size in enumerate(sizes):
            if at == len(view):  # on to the next piece
                number += 1
                view, at = views[number], 0
            start = at + lengths[index]
            data = view[start : start + size]
            descriptor = descriptors[index]
            descriptors[index] = None  # ours to close from here on
            try:
                if descriptor is None:
                    descriptor = os.open(f"{base}/{paths[index]}", os.O_RDONLY)
                try:
                    done = 0
                    while done < size:
                        got = readv(descriptor, (data[done:],) if done else (data,))
                        if not got:
                            break
                        done += got
                    # Has it grown since the plan? One byte more than planned says so.
                    more = read(descriptor, 1)
                finally:
                    close_file(descriptor)
            except OSError as error:
                path = os.path.join(base, paths[index])
                raise failed(path, error, "after the upload was planned") from error
            if done != size or more:
                path = os.path.join(base, paths[index])
                raise Changed(
                    f"{path} is {'more' if more else done} bytes, planned {size}; it changed "
                    "after planning"
                )
            starts.append(start)
            which.append(number)
            crc = crc32(data)
            crcs.append(crc)
            put_header(view, at, names[index], size, crc, mtimes[index])
            at = start + size
            lengths[index] += size
        spans = zip(which, starts, sizes, strict=True)
        lanes.feed(range(first, first + len(sizes)), [views[w][a : a + n] for w, a, n in spans])
    finally:
        close(descriptors)
    for view in views:
        view.release()
    return pieces, crcs, lengths


def close(descriptors: Iterable[int | None]) -> None:
    """Close the descriptors `prefetch` opened (None: none was)."""
    for descriptor in descriptors:
        if descriptor is not None:
            os.close(descriptor)


def prefetch(base: str, run: Run) -> list[int | None]:
    """Open the files of a run ahead of its turn and ask the kernel to read each in the
    background (POSIX_FADV_WILLNEED); their descriptors, None for one that cannot be opened
    now (`read_run` opens it again in its turn, and reports the error then, in order).
    `pack`'s readers do it for every run handed out, before their next job
    (`Prefetches`): the whole window.

    Why: read one after the other, each small file of a cold folder waited for its own read
    from disk, with one request in flight per reader. Asked for many files ahead, the disk
    (or the share) gets them all at once while the reader hashes: the cold 2,000-file folder
    read and hashed in 0.27-0.34 s instead of 0.35-0.62, and with less CPU (89-91 µs a file
    instead of 102-123: fewer sleeps and wake-ups in the read path). Asked only within each
    run (a reader prefetching its own run's files), the disk idled at the start of every run
    and a reader waited for that run's first file while the sender waited for that reader.
    One call per run, the path joined by concatenation (`os.path.join` cost 0.5 µs a file).
    """
    descriptors: list[int | None] = []
    open_file, advise, willneed = os.open, os.posix_fadvise, os.POSIX_FADV_WILLNEED
    for path, size in zip(run.paths, run.sizes, strict=True):
        try:
            descriptor = open_file(f"{base}/{path}", os.O_RDONLY)
        except OSError:
            descriptors.append(None)
            continue
        descriptors.append(descriptor)
        with contextlib.suppress(OSError):  # advice only: a file system may not take it
            advise(descriptor, 0, size, willneed)
    return descriptors


class Prefetches:
    """The runs handed out whose files are still to be opened and asked for from the kernel
    (`prefetch`), done by whichever reader starts its next job first (`then`): the
    first job of an upload asks for the whole window, each later one for the runs handed out
    since, so the disk still has the window's files to read, as when a thread of its own
    (an `opener`) did it.

    Why not that thread: a fourth thread taking the GIL back after each `open` and
    `posix_fadvise` made the GIL change hands between the readers, the sender and it about
    three times per file (36,900 futex calls for 10,000 files of 41 kB against 11,200 without
    it, and 770 for the read+MD5 baseline), each a sleep and a wake-up, several µs of CPU a
    file. The readers hold the GIL for little else.
    """

    def __init__(self, base: str) -> None:
        self._base = base
        self._waiting: collections.deque[tuple[concurrent.futures.Future[list[int | None]], Run]]
        self._waiting = collections.deque()

    def add(self, run: Run) -> concurrent.futures.Future[list[int | None]]:
        """The descriptors of `run`'s files, once a reader has opened them (None for one it
        could not); cancel it to drop the run (it is then never opened)."""
        future: concurrent.futures.Future[list[int | None]] = concurrent.futures.Future()
        self._waiting.append((future, run))
        return future

    def then(self, job: Callable[..., Any], *arguments: Any) -> Any:
        """Open and ask for every waiting run's files, in order, then run `job`."""
        while True:
            try:
                future, run = self._waiting.popleft()
            except IndexError:
                break
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(prefetch(self._base, run))
                except BaseException as error:
                    # As an executor's worker does: whatever went wrong reaches the run's own
                    # reader (read_run waits on this future), in order; never a future left
                    # running that a reader would wait on for ever.
                    future.set_exception(error)
        return job(*arguments)


def read_one(
    base: str, planned: Planned, pool: buffers.Buffers, lanes: md5lanes.Lanes, first: int
) -> tuple[list[bytearray], bytes | None, list[int], list[int]]:
    """Read one file larger than a run, up to WHOLE_FILE (in a reader thread), into pieces of
    CHUNK bytes from the pool, its local header at the head of the first: the same result as
    `read_run`'s, with the file's MD5, or None where `lanes` hash it (tagged `first`, its place
    in the plan), as its pieces: they do while they hold less than LANES_HELD bytes.

    Why the lanes: hashlib hashes one file at a time at about 0.9 GB/s; the lanes hash sixteen
    at 6 GB/s. Why the limit: a file in a lane keeps its pieces from the pool until its digest
    is out, and a lane holds a large file while the others hash some fifteen times its bytes.
    (A buffer of its own per file was mapped and faulted in afresh each time, 1 ns a byte.)"""
    path = os.path.join(base, planned.entry.path)
    header = zipformat.local_length(planned.zip_name, planned.size)
    digest = None if lanes.held < LANES_HELD else hashlib.md5(usedforsecurity=False)
    pieces: list[bytearray] = []
    data: list[memoryview] = []  # each piece's file data: whole CHUNKs but the last
    crc = done = 0
    more = b""
    try:
        with open(path, "rb", buffering=0) as handle:
            with contextlib.suppress(OSError):  # read it all in the background (`prefetch`)
                os.posix_fadvise(handle.fileno(), 0, planned.size, os.POSIX_FADV_WILLNEED)
            while done < planned.size:
                lead = header if not pieces else 0
                want = min(CHUNK, planned.size - done)
                pieces.append(pool.take(lead + want))
                view = memoryview(pieces[-1])[lead:]
                got = 0
                while got < want and (read := handle.readinto(view[got:])):
                    got += read
                data.append(view[:got])
                crc = zipformat.crc32(data[-1], crc)
                if digest is not None:
                    digest.update(data[-1])
                done += got
                if got < want:
                    break
            more = handle.read(1)
    except OSError as error:
        raise failed(path, error, "after the upload was planned") from error
    if done != planned.size or more:
        size = "more" if more else done
        raise Changed(f"{path} is {size} bytes, planned {planned.size}; it changed after planning")
    zipformat.put_local_header(pieces[0], 0, planned.zip_name, planned.size, crc, planned.mtime)
    if digest is None:
        lanes.feed([first], [data])
        return pieces, None, [crc], [header + planned.size]
    return pieces, digest.digest(), [crc], [header + planned.size]


def digest_file(path: str, size: int) -> tuple[bytes, int]:
    """The first pass over a large file: its MD5 digest and CRC-32, in CHUNK pieces."""
    digest = hashlib.md5(usedforsecurity=False)
    crc = done = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as handle:
            while got := handle.readinto(buffer):
                digest.update(view[:got])
                crc = zipformat.crc32(view[:got], crc)
                done += got
    except OSError as error:
        raise failed(path, error, "after the upload was planned") from error
    if done != size:
        raise Changed(f"{path} is {done} bytes, planned {size}; it changed after planning")
    return digest.digest(), crc


def copy(
    path: str, size: int, crc: int, header: bytes, pool: buffers.Buffers
) -> Iterator[bytearray]:
    """The second pass over a large file, its local header first, in pieces of about CHUNK
    bytes read into reused buffers; Changed if it differs from the first pass."""
    check = done = 0
    try:
        with open(path, "rb", buffering=0) as handle:
            while True:
                lead = len(header)
                want = min(CHUNK, size - done) if done < size else 1  # 1: has it grown?
                buffer = pool.take(lead + want)
                with memoryview(buffer) as view:
                    view[:lead] = header
                    got = handle.readinto(view[lead:])
                    check = zipformat.crc32(view[lead : lead + got], check)
                if not got:
                    break
                done += got
                if done > size:
                    break
                if got < want:
                    buffers.resize(buffer, lead + got)
                yield buffer
                header = b""
    except OSError as error:
        raise failed(path, error, "while it was sent") from error
    if (done, check) != (size, crc):
        raise Changed(f"{path} changed while it was sent")


class Digests:
    """The MD5s of the plan's files, run by run in order, as they are found: a large file's
    with its read, a run's files' from the lanes (`md5lanes.Lanes`), which finish them in no
    set order and maybe only after a later run's read."""

    def __init__(self) -> None:
        self.lanes = md5lanes.Lanes()
        self._found: dict[int, bytes] = {}
        self._runs: collections.deque[tuple[int, int]] = collections.deque()

    def read(self, start: int, stop: int, md5: bytes | None) -> None:
        """Note the run `start`-`stop` as read: a large file's `md5` comes with its read, a
        run's files' (None) from the lanes."""
        if md5 is not None:
            self._found[start] = md5
        self._runs.append((start, stop))

    def ready(self) -> Iterator[tuple[int, int, bytes]]:
        """(start, stop, their digests) of each run read whose files are all hashed, in order,
        not given before."""
        found = self._found
        for tag, md5 in self.lanes.take():
            found[tag] = md5
        while self._runs:
            start, stop = self._runs[0]
            if not all(index in found for index in range(start, stop)):
                return
            self._runs.popleft()
            yield start, stop, b"".join([found.pop(index) for index in range(start, stop)])

    def rest(self) -> Iterator[tuple[int, int, bytes]]:
        """The runs `ready` has not given yet, once the lanes have hashed every file."""
        self.lanes.drain()
        yield from self.ready()
        if self._runs:
            raise AssertionError("the lanes lost a file's digest")  # a bug, not data
