"""A read-only FUSE passthrough that waits `delay` seconds on every file operation: a slow share.

    python bench/harness/latencyfs.py SOURCE MOUNTPOINT DELAY    # foreground; unmount to stop

Why FUSE, and not NFS or SMB over loopback with `tc netem`: a kernel NFS server needs nfsd and
its RPC services, and Samba a daemon with its own configuration, neither of which a CI machine
has; both would add their own caching rules on top of the delay. A passthrough that sleeps needs
only /dev/fuse, libfuse3 (Debian `fuse3`, installed by .ci/run) and the `mfusepy` binding (the
maintained fork of fusepy, ctypes over libfuse's high-level API), and the delay is exactly what
it says. What it models: each lookup/getattr, directory listing (names with their types, as
SMB and NFS list them), open and read is one round trip of `delay` to the file server, as on
SMB or NFS; many requests
may be in flight at once (libfuse's multi-threaded loop, up to MAX_THREADS), as a real client
pipelines them. Names and attributes are cached for CACHE_SECONDS, as an SMB client does by
default; file data is read from the "server" at every open. Not modelled: bandwidth limits.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from typing import Any

import mfusepy as fuse

MAX_THREADS = 32  # requests served at once (libfuse's default is 10)
# How long the kernel trusts a name lookup or a file's attributes: 1 s, the default of the Linux
# SMB client (cifs `actimeo=1`); NFS keeps them 3-60 s. File data is never cached across opens.
CACHE_SECONDS = 1.0
STAT_FIELDS = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_ino")
STATVFS_FIELDS = (
    "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
    "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax",
)  # fmt: skip


class LatencyPassthrough(fuse.Operations):
    use_ns = True  # times in integer nanoseconds, as os.stat gives them

    def __init__(self, source: str, delay: float) -> None:
        self.source = source
        self.delay = delay

    def _path(self, path: str) -> str:
        return self.source + path

    def _round_trip(self) -> None:
        time.sleep(self.delay)  # releases the GIL: other requests proceed meanwhile

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self._round_trip()
        try:
            info = os.lstat(self._path(path))
        except FileNotFoundError:
            raise fuse.FuseOSError(errno.ENOENT) from None
        attrs: dict[str, Any] = {name: getattr(info, name) for name in STAT_FIELDS}
        attrs.update(
            st_atime=info.st_atime_ns, st_mtime=info.st_mtime_ns, st_ctime=info.st_ctime_ns
        )
        return attrs

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """The names with their types, as an SMB or NFS listing gives them (SMB2 QUERY_DIRECTORY
        returns each entry's attributes, NFS READDIRPLUS its type and attributes): a listing
        without types would cost a client a stat per entry, which no real share asks for."""
        self._round_trip()
        with os.scandir(self._path(path)) as entries:
            listing = [(entry.name, {"st_mode": _type_bits(entry)}, 0) for entry in entries]
        return [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0), *listing]

    def open(self, path: str, flags: int) -> int:
        self._round_trip()
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise fuse.FuseOSError(errno.EROFS)
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._round_trip()
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)  # the kernel does not wait for release: no round trip to model
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        info = os.statvfs(self._path(path))
        return {name: getattr(info, name) for name in STATVFS_FIELDS}


def _type_bits(entry: os.DirEntry[str]) -> int:
    """The file type bits of st_mode (what a listing's d_type carries; mfusepy uses only these)."""
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)


def main(argv: list[str]) -> int:
    source, mountpoint, delay = argv
    fuse.FUSE(
        LatencyPassthrough(os.path.abspath(source), float(delay)),
        mountpoint,
        foreground=True,
        ro=True,
        fsname="latencyfs",
        max_threads=MAX_THREADS,
        # libfuse 3.14.0 (Debian 12) ignores max_threads ("Ignoring invalid max threads value
        # 4294967295") unless max_idle_threads is given too; with both, it serves up to 32.
        max_idle_threads=MAX_THREADS,
        attr_timeout=CACHE_SECONDS,
        entry_timeout=CACHE_SECONDS,
        negative_timeout=0,
        kernel_cache=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
