"""Running one call in a child process, for work whose memory should not stay in this one.

Why: CPython gives memory back to the system only when a whole 1 MiB arena of small objects is
free, and the check of a large folder makes hundreds of thousands of short-lived objects among
a few that live on. After the check of an 8 GB session (60,000 files) the process held ten
arenas more (+15 MB resident) than before it, with 1 MB of them in use, and carried them
through the upload and the read-back after it: the part of the push's memory that grew with
the session (issue 13). A child process gives all of it back when it exits.

The child comes from a plain fork while this process has a single thread (`xnatdrop push`:
~10 ms, nothing pickled on the way in), from the "forkserver" otherwise (the daemon: a fork of
threads' locks in an unknown state is unsafe), as `dicomfiles.folder` starts its workers.
Its result or its error comes back pickled; an error keeps its type, and the child's
traceback as its cause (`concurrent.futures`). A child that dies without an answer (killed,
out of memory) is a TransientError: the work is tried again later.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import threading
from collections.abc import Callable
from typing import TypeVar

from xnatdrop.errors import TransientError

T = TypeVar("T")


class ChildDied(TransientError):
    """The child process ended without an answer."""


def call(function: Callable[..., T], *args: object) -> T:
    """`function(*args)`, run in a child process; its result, or its error raised here.

    `function` and `args` must be picklable when this process runs threads (forkserver)."""
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(function, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            raise ChildDied(
                f"the process that ran {function.__name__} ended without an answer "
                "(killed, or out of memory?); it is tried again later"
            ) from None
