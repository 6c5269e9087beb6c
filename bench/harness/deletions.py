"""Bulk deletions the timed writers do not pay for.

On ext4 without a journal (this VM's root file system) each new inode is searched past every
free inode of its block group deleted in the last minute, six minutes while that inode table
block is still dirty (`fs/ext4/ialloc.c`: `find_inode_bit` → `recently_deleted`, whose window
is `RECENTCY_MIN` 60 s, plus `RECENTCY_DIRTY` 300 s for a dirty block: 360 s). A writer that
creates N files right after N deletions pays for each deletion on each file; `perf` put a third
to a half of the sandbox's import CPU there. So a benchmark that deletes between its timed
writers charges the later ones for the earlier ones' clean-up, and how much depends on the
order.

The window to wait out is the six minutes, not the one, even though `remove` writes the freed
inode tables out: the writer dirties them again itself. Its first new inode in a block of the
inode table (16 inodes) makes that block dirty, and from then on every freed inode left in the
block counts as recent for 360 s after its deletion, so each later file it creates searches
past all of them again (stop 23: a 500 MB N-file write 61 s after the previous pair's deletion
spent 2.4-3.4 s of system CPU against 0.6-0.7 s with no deletion before it, 44-55 % of its
samples in `recently_deleted`, `find_get_block_common`, `ext4_get_group_desc` and
`find_inode_bit` against under 4 %). Until stop 34 the wait was 301 s, which left the minute
between 300 and 360 s: after 15,000 deletions, four 500 MB N-file writes in a row spent 0.84,
0.98, 0.21 and 0.20 s of system CPU starting 301 s after them, and 0.26, 0.20, 0.19 and 0.19 s
starting 361 s after them. In the full runs of stop 33 the step's first N-file write, 301 s
after the last deletion, was the cheap one and the writers seconds later up to 5× dearer.

The push step therefore deletes nothing between its timed writers (each writes into its own
folder; all are removed at the end), and every bulk deletion of the run goes through `remove`,
which writes the freed inode tables out (`os.sync`) and notes the time, so that `wait_out`
can hold the next timed writers until the recency window has passed. On other file systems
the wait costs time and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

WINDOW_SECONDS = 361.0
"""`RECENTCY_MIN` + `RECENTCY_DIRTY` (360 s: the writer dirties the inode table blocks itself,
docstring) and a second to spare."""

SMALL = 1_000
"""Fewer deleted files than this cost the next writer nothing measurable: no wait."""

_state: dict[str, float] = {"window": WINDOW_SECONDS}


def set_window(seconds: float) -> None:
    """How long `wait_out` holds the writers after a bulk deletion (`--quick` sets 0: its
    writers create a few hundred files, too few for the search to show)."""
    _state["window"] = seconds


def assume_recent() -> None:
    """Hold the first timed writers as if a bulk deletion had just happened: a run cannot see
    what was deleted on the machine before it started (a test suite's temporary folders, a
    previous run's workloads), and the first writers would pay for it. The first step's
    workload and client figures take minutes before its first timed writer, so the wait is
    what is left of the window then."""
    _state["at"] = time.monotonic()


def remove(*paths: Path) -> None:
    """Delete `paths` (folders or files, missing ones ignored), write the freed inode tables
    out and remember when, if enough files went for a later writer to notice."""
    count = 0
    for path in paths:
        if path.is_dir():
            count += sum(len(files) + len(folders) for _, folders, files in os.walk(path))
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
            count += 1
    os.sync()
    if count >= SMALL:
        _state["at"] = time.monotonic()


def wait_out() -> float:
    """Sleep until the last bulk deletion is outside ext4's recency window; the seconds
    waited (0 when none is recent)."""
    if "at" not in _state:
        return 0.0
    left = _state["at"] + _state["window"] - time.monotonic()
    if left <= 0:
        return 0.0
    time.sleep(left)
    return left
