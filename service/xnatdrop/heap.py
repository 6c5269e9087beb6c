"""Give the memory the C heap holds free back to the kernel, between the pipeline's steps.

Why: glibc's malloc keeps what a step freed for later use, and after the large steps of a big
session it kept tens of megabytes resident that no later step used. Its threshold for giving
a large block its own mapping (returned when freed) starts at 128 KiB and rises to the size of
the largest such block freed since (`M_MMAP_THRESHOLD`, up to 32 MiB); from then on blocks
like the upload's 1 MiB buffers come from the heap and stay there when freed. At 8 GB (55,757
files) the push process held 78 MB after the import step against 59 MB before it, and the
archive step's peak (88 MB) sat on top of that, where at 0.5 GB the import gave its memory
back (issue 13, "memory flat"). `malloc_trim` hands every whole free page of every arena back
(madvise), once a step, a few milliseconds; the steps themselves allocate as before.

Python's own small-object allocator (pymalloc) is not concerned: it returns an arena once
every object in it is freed, which this cannot hasten.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release() -> bool:
    """Hand the C heap's free pages back to the kernel; False where that cannot be done."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
