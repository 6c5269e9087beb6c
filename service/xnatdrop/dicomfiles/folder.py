"""Sniffing every file of a folder (`sniff_folder`): a process pool for large folders, I/O
threads that read ahead of the parser when reads are slow (`_sniff_stream`, `_Pace`), and the
compact form in which workers send facts back (`_wire`, `_rebuild`).

Why a module of its own: this is where the check's wall time goes on a share or a cold disk;
it only schedules `reading._open_head` and `reading._facts` and never looks at content.
The pool pickles `_sniff_batch` by its module path (`xnatdrop.dicomfiles.folder`).
`_open_heads` looks `_open_head` up in this module: a test that watches the reads patches it
here, as it does `SLOW_READ`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from xnatdrop.dicomfiles.facts import (
    _SERIES_FIELDS,
    NO_INODE,
    FileFacts,
    Header,
    Kind,
    SeriesFields,
)
from xnatdrop.dicomfiles.reading import _facts, _open_head
from xnatdrop.dicomfiles.table import FactsTable

PARALLEL_MIN_FILES = 1000  # below this a process pool costs more than it saves
PROGRESS_EVERY = 200


def sniff_folder(
    folder: Path | None,
    names: list[str] | list[Path],
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> list[FileFacts]:
    """Sniff `folder / name` for every name (each name a full path when `folder` is None), in
    input order; each FileFacts' path is the name as given (the caller's object, not a copy),
    and equal header values share one string.

    Why processes: the walk is pure Python, so threads would share one core. Why a threshold:
    starting workers and sending results back costs about as much as sniffing a few hundred
    files, so small folders are done in this process. Why two start methods: a plain fork
    starts workers in ~10 ms but is only safe while this process has a single thread; the
    daemon runs threads (scheduler, watcher) whose locks a fork would copy in an unknown
    state, so there the workers come from a "forkserver" (~100-200 ms per pool; like spawn,
    its workers import the main module once: keep entry scripts light and guarded).
    Why I/O threads besides (`_sniff_stream`): on a share every open and read waits a round
    trip; each process keeps IO_THREADS of them in flight while it parses.
    Why the workers send tuples of plain values (`_wire`) and no paths: the parent holds the
    facts of every file of the session until the verdict is made, and unpickling a Path and a
    dataclass per file cost the parent more CPU than its share of the judging. The parent
    rebuilds each FileFacts with the name it already has, one SeriesFields per series and
    the other header strings shared through one table: about 0.5 KB a file at the check's
    peak (tracemalloc, 6,000 small files; 2.1 KB three rounds ago).
    The check names its files by text ("folder/name"), which opens them as it is; `str()` of
    a Path would keep a copy of the text in each Path object for as long as it lives.
    `progress(done, total)` is called every PROGRESS_EVERY files and at the end.
    """
    shared: dict = {}
    results: list[FileFacts] = []
    for wire in _wires(folder, names, progress, workers):
        results.append(_rebuild(names[len(results)], wire, shared))
    return results


def sniff_table(
    folder: Path | None,
    names: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> FactsTable:
    """`sniff_folder`, its facts held by column (`FactsTable`): what the check keeps of every
    file until its verdict, ~70 bytes a file instead of ~280 (see `table`)."""
    shared: dict = {}
    table = FactsTable(names)
    add = table.add
    for size, kind, detail, values, sop, number, preamble, truncated, inode in _wires(
        folder, names, progress, workers
    ):
        fields = None if values is None else _shared_fields(values, shared)
        add(
            size, _KINDS[kind], shared.setdefault(detail, detail), fields, sop, number,
            preamble, shared.setdefault(truncated, truncated), inode,
        )  # fmt: skip
    return table.finish()


def _wires(
    folder: Path | None,
    names: Sequence[str] | list[Path],
    progress: Callable[[int, int], None] | None,
    workers: int | None,
) -> Iterator[_Wire]:
    """The wire tuple of every name, in order (see `sniff_folder` for how they are read)."""
    total = len(names)
    # A list of Paths is made text; any other sequence (`rules.tree.Names`) gives text, and
    # is sliced a batch at a time, never copied whole.
    texts = (
        [str(n) for n in names]
        if isinstance(names, list) and not all(type(n) is str for n in names)
        else names
    )
    base = f"{folder}{os.sep}" if folder is not None else ""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    done = 0
    if workers < 2 or total < PARALLEL_MIN_FILES:
        with concurrent.futures.ThreadPoolExecutor(IO_THREADS, "xnatdrop-read") as reader:
            for wire in _sniff_stream(base, texts, reader, _Pace()):  # type: ignore[arg-type]
                yield wire
                done += 1
                if progress is not None and (done % PROGRESS_EVERY == 0 or done == total):
                    progress(done, total)
        return
    single = threading.active_count() == 1
    context = multiprocessing.get_context("fork" if single else "forkserver")
    size = max(16, min(PROGRESS_EVERY, total // (workers * 8)))
    batches = ((base, texts[i : i + size]) for i in range(0, total, size))
    # A bounded window of batches in flight, not `pool.map`: it submits every batch at once,
    # and each holds its names as text (made from `rules.tree.Names`) until it is sent, ~100
    # bytes a file of the whole session at the check's peak (issue 13).
    in_flight: collections.deque[concurrent.futures.Future] = collections.deque()
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        while True:
            while len(in_flight) < workers * BATCHES_AHEAD:
                batch = next(batches, None)
                if batch is None:
                    break
                in_flight.append(pool.submit(_sniff_batch, batch))
            if not in_flight:
                break
            wires = in_flight.popleft().result()
            done += len(wires)
            yield from wires
            del wires
            if progress is not None:
                progress(done, total)


BATCHES_AHEAD = 3  # batches submitted per worker process beyond the one being read
IO_THREADS = 8  # header reads in flight per process (open + fstat + read each)
READ_CHUNK = 4  # files one I/O thread opens and reads in one task
READ_AHEAD = 2 * IO_THREADS * READ_CHUNK  # files opened ahead: each holds an fd and ≤ 64 KiB

# A file's facts as a worker sends them: (size, kind, detail, the SeriesFields values or None,
# SOPInstanceUID, InstanceNumber, preamble, truncated, inode). The path is not sent: the parent
# has it.
_Wire = tuple[int, str, str, tuple | None, str, int, bool, str, tuple[int, int]]
_series_values = operator.attrgetter(*_SERIES_FIELDS)
_reader: tuple[int, concurrent.futures.ThreadPoolExecutor, _Pace] | None = None


def _wire(facts: FileFacts) -> _Wire:
    header = facts.header
    if header is None:
        return (
            facts.size, facts.kind.value, facts.detail, None, "", 0, facts.preamble,
            facts.truncated, facts.inode,
        )  # fmt: skip
    return (
        facts.size, facts.kind.value, facts.detail, _series_values(header.fields),
        header.sop_instance_uid, header.instance_number, facts.preamble, facts.truncated,
        facts.inode,
    )  # fmt: skip


def _rebuild(path: Path, wire: _Wire, shared: dict) -> FileFacts:
    """FileFacts from a wire tuple, its SeriesFields shared with every earlier file whose
    values are equal (one object per series, keyed by its values in `shared`), and its other
    strings shared by value, so a 50,000-file session does not hold 50,000 copies of them."""
    size, kind, detail, values, sop, number, preamble, truncated, inode = wire
    header = None
    if values is not None:
        header = Header(_shared_fields(values, shared), sop, number)
    return FileFacts(
        path, size, _KINDS[kind], shared.setdefault(detail, detail), header, preamble,
        shared.setdefault(truncated, truncated), NO_INODE if inode == NO_INODE else inode,
    )  # fmt: skip


def _shared_fields(values: tuple, shared: dict) -> SeriesFields:
    """The one SeriesFields of these values (made at the first file that has them)."""
    key = (SeriesFields, values)  # never equal to a plain value of the table
    fields = shared.get(key)
    if fields is None:
        fields = shared[key] = SeriesFields(*[shared.setdefault(value, value) for value in values])
    return fields


_KINDS = {kind.value: kind for kind in Kind}


def _sniff_batch(batch: tuple[str, list[str]]) -> list[_Wire]:
    """In a worker process: the wire tuples of one batch of names under a base path."""
    global _reader
    if _reader is None or _reader[0] != os.getpid():  # threads do not survive a fork
        _reader = (os.getpid(), concurrent.futures.ThreadPoolExecutor(IO_THREADS), _Pace())
    base, names = batch
    return list(_sniff_stream(base, names, _reader[1], _reader[2]))


@dataclasses.dataclass(slots=True)
class _Pace:
    """Whether the files of this check are read by I/O threads ahead of the parser.

    Why not always: with the files in the page cache an open and a 64 KiB read take ~20 µs,
    and handing them to threads cost ~40 µs of CPU a file more (each system call of a thread
    gives the GIL back and takes it again from the busy parser). So the parser reads inline,
    timing each chunk, and turns the threads on as soon as a chunk is slow (a cold disk, a
    share: 1-3 ms a file); while threaded, one chunk in PROBE_EVERY is read inline again to
    see whether the reads became fast (a thread's own timing would include its wait for the
    GIL, so it cannot tell).
    """

    threaded: bool = False
    since_probe: int = 0


SLOW_READ = 150e-6  # seconds per file (open + fstat + 64 KiB read) above which threads read
PROBE_EVERY = 256  # while threaded, chunks between two inline (timed) reads


def _sniff_stream(
    base: str, names: list[str], reader: concurrent.futures.Executor, pace: _Pace
) -> Iterator[_Wire]:
    """Sniff `base + name` for each name, in order, the files opened and read READ_CHUNK at a
    time, by I/O threads up to READ_AHEAD files ahead of the parser when reads are slow.

    Why: each file costs an open and a read, and on a cold disk or a share each waits a round
    trip (about 1 ms on a site's share). Done one after the other by the parser, those waits
    add up to more than the parsing; done by I/O threads ahead of it (system calls release
    the GIL), they overlap with it and with each other. Why chunks: a task per file cost a
    future, a lock and a thread switch per file. The window bounds what waits: READ_AHEAD open
    files and their first 64 KiB. `pace` decides inline or threaded (see `_Pace`).
    """
    chunks = (names[i : i + READ_CHUNK] for i in range(0, len(names), READ_CHUNK))
    pending: collections.deque[tuple[list[str], concurrent.futures.Future]] = collections.deque()
    heads: list = []

    def read_ahead() -> None:
        while pace.threaded and pace.since_probe < PROBE_EVERY:
            if len(pending) >= READ_AHEAD // READ_CHUNK or (more := next(chunks, None)) is None:
                return
            pending.append((more, reader.submit(_open_heads, base, more)))

    try:
        while True:
            read_ahead()  # a new batch of a threaded worker starts its reads at once
            if pending:
                chunk, opened = pending.popleft()
                heads = opened.result()
                pace.since_probe += 1
            else:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                started = time.perf_counter()
                heads = _open_heads(base, chunk)
                pace.threaded = time.perf_counter() - started > SLOW_READ * len(chunk)
                pace.since_probe = 0
            read_ahead()
            for index, name in enumerate(chunk):
                # `_facts` closes the file's descriptor, so it is no longer ours to close from
                # here on: marked before, not after the yield. Marked after, an exception at
                # the yield or inside `_facts` (a Ctrl-C, the consumer stopping) closed it a
                # second time below: EBADF, an OSError that replaced the KeyboardInterrupt
                # (the push retried the check and archived), or another thread's new file.
                head, heads[index] = heads[index], _CLOSED
                # The parser needs only the name (formats are told by suffix too), not a Path.
                yield _wire(_facts(name, *head))  # type: ignore[arg-type]
    finally:  # the consumer stopped early: close what was opened and not parsed
        _close_all(heads)
        for _, opened in pending:
            _close_all(opened.result())


_CLOSED = (-1, 0, (0, 0), b"", "")


def _open_heads(base: str, names: list[str]) -> list[tuple[int, int, tuple[int, int], bytes, str]]:
    return [_open_head(base + name) for name in names]


def _close_all(heads: list[tuple[int, int, tuple[int, int], bytes, str]]) -> None:
    for fd, *_ in heads:
        if fd >= 0:
            os.close(fd)
