"""Small real file systems for the tests that need one: a tmpfs of a few MiB.

Used where only a real kernel answer will do: "No space left on device" (ENOSPC) from a full
state folder, and a done/ folder on another file system than the drop root (EXDEV). Mounting
needs root (CAP_SYS_ADMIN), as the CI runs; without it the test fails with that reason, it is
never skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` (created) for the duration; unmount it afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs at {path} (needs root): {result.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(folder: Path, name: str = "filler") -> Path:
    """Fill the file system of `folder` until the kernel answers ENOSPC; return the filler."""
    filler = folder / name
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb", buffering=0) as handle:
        size = len(chunk)
        while size:
            try:
                handle.write(chunk[:size])
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                size //= 2
        os.fsync(handle.fileno())
    assert os.statvfs(folder).f_bavail == 0
    return filler
