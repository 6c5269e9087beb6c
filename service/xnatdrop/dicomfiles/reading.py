"""Reading one file for the check: one open, one fstat and one read of its first 64 KiB
(`_open_head`), then its facts (`_facts`); `sniff(path)` does both.

Why a module of its own: these are the only system calls of the walker, and they are what
the I/O threads of `folder.py` run ahead of the parser; the parser reads on past the head
only through `_Positioned`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from xnatdrop.dicomfiles.content import _sniff_content
from xnatdrop.dicomfiles.facts import NO_INODE, FileFacts, Kind
from xnatdrop.dicomfiles.tags import HEAD_BYTES


def sniff(path: Path) -> FileFacts:
    """Describe one file by its content; never raise.

    Symbolic links are not followed (the caller reports them); special files are `unreadable`
    and never read (see `_open_head` for how a FIFO is kept from blocking).
    """
    return _facts(path, *_open_head(str(path)))


# Opening with O_NOFOLLOW refuses a link; O_NONBLOCK keeps the open of a FIFO from waiting for a
# writer (it has no effect on the reads of a regular file); O_NOCTTY keeps a terminal device from
# becoming ours. The type is then taken from fstat of the open file: one round trip fewer than
# a stat before the open, which a share charges about 1 ms for.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_head(path: str) -> tuple[int, int, tuple[int, int], bytes, str]:
    """Open `path` and read its first HEAD_BYTES: (fd, size, inode, head, problem).

    The metadata operations a file costs are the minimum: one open, one fstat of the open file
    (served from the open's reply on a share), one read. `fd` is -1 when nothing more is to be
    read (the file could not be opened, is not a regular file or is empty), WHOLE when the head
    is the whole file (closed here); otherwise it is left open for the parser (which reads on
    only for headers longer than HEAD_BYTES or to confirm the file's end) and `_facts` closes
    it. Runs in an I/O thread (`sniff_folder`): it only does
    system calls, which release the GIL, so many of them wait on a slow share at once.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symbolic link (O_NOFOLLOW)
            return -1, 0, (0, 0), b"", "not a regular file"
        return -1, 0, (0, 0), b"", f"cannot read: {error.strerror}"
    try:
        info = os.fstat(fd)
        # Only a file with another link can share its inode with another path (the duplicate
        # rule's shortcut); the others keep no identity, which saves ~120 bytes a file.
        inode = (info.st_dev, info.st_ino) if info.st_nlink > 1 else NO_INODE
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return -1, 0, inode, b"", "not a regular file"
        if info.st_size == 0:
            os.close(fd)
            return -1, 0, inode, b"", ""
        head = os.read(fd, HEAD_BYTES)
    except OSError as error:
        os.close(fd)
        return -1, 0, (0, 0), b"", f"cannot read: {error.strerror}"
    if not head:
        os.close(fd)
        return -1, 0, inode, b"", ""
    if len(head) >= info.st_size:  # the whole file: nothing more to read, close it here
        os.close(fd)
        return WHOLE, len(head), inode, head, ""
    return fd, info.st_size, inode, head, ""


# `_open_head`'s fd for a file it read whole and closed. Why close it there: in the I/O threads
# that read ahead, a close is one more system call beside the open and the read; in the parser
# each one gave the GIL away to a waiting I/O thread and waited to get it back (~30-50 µs).
WHOLE = -2


def _facts(
    path: Path, fd: int, size: int, inode: tuple[int, int], head: bytes, problem: str
) -> FileFacts:
    """The facts of one file from what `_open_head` got; closes `fd`; never raises."""
    if fd < 0 and fd != WHOLE:
        if problem:
            return FileFacts(path, 0, Kind.UNREADABLE, problem, inode=inode)
        return FileFacts(path, 0, Kind.EMPTY, "0 bytes", inode=inode)
    try:
        return _sniff_content(path, _Positioned(fd) if fd >= 0 else None, size, head, inode)
    except OSError as error:
        return FileFacts(path, size, Kind.UNREADABLE, f"cannot read: {error.strerror}")
    finally:
        if fd >= 0:
            os.close(fd)


class _Positioned:
    """The `seek`/`read` a `_Window` uses, as positioned reads of a bare descriptor: wrapping
    each file's descriptor in a file object cost more than the few reads most files need
    after their first 64 KiB (none)."""

    __slots__ = ("fd", "pos")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, count: int) -> bytes:
        return os.pread(self.fd, count, self.pos)
