"""Guest memory the hypervisor takes back, held for the run.

This VM, a Firecracker guest, reports the memory it frees to its host (virtio-balloon free page
reporting: `/sys/module/page_reporting/parameters`, every free block of order 9, 2 MiB; this
kernel's `min_free_ms` is 0, so a block is reported as soon as it is free), and the host
discards it. The guest's next use of such a page faults in the host first. Inside the guest that
cost shows up in whatever touches the page: `clear_page_erms`, or `copy_folio_from_iter_atomic`
when a `write` fills a new page of the page cache. Touching 2 GiB took 6.6 s in reported memory
and 1.6 s in backed memory. A 500 MB N-file write spent 1.4-1.6 s of system CPU (36 % of all
samples in `copy_folio_from_iter_atomic`) against 0.24-0.30 s.

Which timed writer lands in reported memory depends on what was freed before it: a sandbox
that exited, a folder deleted, pages dropped for a cold read. The N-file write's first round is
sometimes in backed memory and the imports after it in reported memory, or the other way round.
With ext4's recency window (`deletions.py`), that is what moved the ingest row between the full
runs of stop 33 (0.22× at 500 MB in one, 0.33× at 2 GB in the next, 0.82-1.77× elsewhere).

So a full run holds its memory, as `pyperf system tune` holds the CPU's frequency: it stops
the reporting (`page_reporting_order` above the largest order the buddy allocator has, so no
free block qualifies), touches the free memory once so that the host backs it, and restores the
setting when the run ends. Without root, or on a machine without page reporting, nothing
changes and the report says so. A quick run, which judges no timing, leaves it alone.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Iterator
from pathlib import Path

from harness import machine

ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
OFF = 11
"""Above `MAX_PAGE_ORDER` (10 on x86-64): no free block is that large, so none is reported."""

MARGIN = 3 << 29
"""Left untouched out of MemAvailable (1.5 GiB): the touch evicts clean page cache, never forces
the kernel to kill a process."""

CHUNK = 1 << 26


@contextlib.contextmanager
def held(enabled: bool) -> Iterator[dict[str, str]]:
    """Stop free page reporting and touch the free memory for the `with` block, when `enabled`
    and possible; yield what was done, for the report (`machine["free page reporting"]`)."""
    found: dict[str, str] = {}
    if not ORDER.exists():
        found["free page reporting"] = "not present on this machine"
        yield found
        return
    before = ORDER.read_text().strip()
    if not enabled:
        found["free page reporting"] = f"order {before}, left on (a quick run judges no timing)"
        yield found
        return
    try:
        ORDER.write_text(f"{OFF}\n")
    except OSError as error:
        found["free page reporting"] = (
            f"order {before}, left on: cannot stop it ({error.strerror}; needs root), so the "
            "timed writers may land in memory the host has taken back (bench/harness/hostmemory.py)"
        )
        yield found
        return
    try:
        size, seconds = touch_free_memory()
        found["free page reporting"] = (
            f"order {before}, stopped for the run and restored after; {size / 2**30:.1f} GiB of "
            f"free memory touched in {seconds:.0f} s first, so the host backs every page the "
            "timed writers take (bench/harness/hostmemory.py)"
        )
        yield found
    finally:
        ORDER.write_text(f"{before}\n")


def touch_free_memory() -> tuple[int, float]:
    """Write to every page of MemAvailable but `MARGIN` once, then free it: (bytes, seconds)."""
    size = (machine.meminfo_kb("MemAvailable") * 1024 - MARGIN) // CHUNK * CHUNK
    if size <= 0:
        return 0, 0.0
    started = time.monotonic()
    ones = b"\1" * CHUNK
    with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as memory:
        for offset in range(0, size, CHUNK):
            memory[offset : offset + CHUNK] = ones
    return size, time.monotonic() - started
