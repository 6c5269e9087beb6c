"""Writing a file so that no reader ever sees half of it, and a kill -9 leaves the old one.

The one way xnatdrop writes its files (the spool, receipts and reason files, the daemon's status
file, the share's status file, the digest's bookmark): the data goes to a temporary file beside
the target, is flushed to disk (fsync), and is renamed over the target in one step (`os.replace`
is atomic on one file system, POSIX rename(2)).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

PRIVATE = 0o600  # xnatdrop's own files under the state folder
SHARED = 0o644  # files people read on the share, whatever the service's umask


def write(
    path: Path, data: str | bytes | Iterable[str], mode: int | None = PRIVATE, hidden: bool = False
) -> None:
    """Write `data` (text is UTF-8; an iterable of text pieces is written piece by piece, never
    joined in memory) to `path` through `<name>.part` and a rename.

    `mode` is forced whatever the umask (a `.part` left by a killed run may have another one);
    None keeps the umask's default, for files written beside a technologist's own (receipts,
    reason files), which should look like theirs. `hidden` names the temporary file
    `.<name>.part`, which the watcher skips, for files written inside a drop root.

    Raise OSError naming the temporary file (a full disk raises one without a name, and the
    pipeline sorts file-system errors by their path); the temporary file is removed then.
    """
    part = path.with_name(f".{path.name}.part" if hidden else f"{path.name}.part")
    pieces = [data] if isinstance(data, (str, bytes)) else data
    try:
        descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode or 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            for piece in pieces:
                handle.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            part.unlink()
        raise OSError(error.errno, error.strerror, str(part)) from error
