"""Locks between xnatdrop processes: one daemon per state folder, one state folder per drop root.

Two `xnatdrop run` on one configuration both started before this module existed; both froze
drops into the same work folder (`.xnatdrop-work/14`), one drop's ledger row was overwritten and
its session stayed hidden in the work area. Three locks keep processes apart:

- the **state lock** (`<state>/daemon.lock`): `xnatdrop run` holds it for its whole life, so a
  second daemon on the same state folder (an admin running `xnatdrop run` by hand while the
  service is up) exits at once, and `xnatdrop status` knows whether a daemon is alive;
- a **root lock** per drop root (`<root>/<push.work_folder>/.lock`): whoever works in a drop root
  holds it (the daemon for its life, `push` for its run). It exists because the work folder
  names come from the ledger (`<work folder>/<drop id>/<label>`): two *different* state folders
  sharing one drop root would hand out the same ids into the same work area. The lock file lives
  on the share itself, beside those folders, so it covers exactly the namespace it protects,
  whatever configuration, host path or state folder the other process uses. Processes of the
  *same* state folder share one ledger, whose ids never repeat, so they may work in a root that
  another process of theirs holds: the lock records its owner's state folder for that test;
- the per-drop lock (`<state>/locks/<project>__<label>.lock`, in `pipeline`): one process per
  drop at a time; it records the pid so `push` can say who holds the drop.

All are `flock(2)` locks: the kernel releases them when the holder dies, `kill -9` included, so
no stale lock ever needs removing by hand. Each lock file holds its owner (pid, host, state
folder, command) as JSON for messages; the content is informational, the flock is the lock.

A lock held on the share keeps the mount busy (`umount` says "target is busy" while the daemon
runs): stop the service before unmounting, which systemd does by itself through the unit's
`RequiresMountsFor=`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import threading
from pathlib import Path

from xnatdrop.errors import XnatdropError

log = logging.getLogger(__name__)

STATE_LOCK = "daemon.lock"
ROOT_LOCK = ".lock"  # inside <drop root>/<push.work_folder>/
# A probe (`holder`) holds a shared lock for microseconds; a starting daemon that meets one
# tries again for this long before it concludes that another daemon is running.
STATE_RETRY_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who holds a lock, as its file says. `pid` 0 means the file did not say (yet)."""

    pid: int
    host: str = ""
    state: str = ""
    command: str = ""

    def describe(self) -> str:
        """'xnatdrop run (pid 4711)', with the host when it is not this one."""
        what = f"xnatdrop {self.command}" if self.command else "an xnatdrop process"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        return f"{what} (pid {self.pid or '?'}{where})"


class Held(XnatdropError):
    """Another process holds the lock; `owner` says who, as far as its file tells."""

    def __init__(self, path: Path, owner: Owner) -> None:
        self.path = path
        self.owner = owner
        super().__init__(f"{path} is held by {owner.describe()}")


class StateInUse(Held):
    """A second daemon on one state folder: the one sentence `xnatdrop run` exits with."""

    def __init__(self, state: Path, owner: Owner) -> None:
        super().__init__(state / STATE_LOCK, owner)
        self.state = state
        self.args = (f"another xnatdrop run (pid {owner.pid or '?'}) uses {state}",)


class Lock:
    """An exclusive flock on one file, held until `release()` or the end of the process."""

    def __init__(self, path: Path, descriptor: int, owner: Owner) -> None:
        self.path = path
        self.owner = owner
        self._fd: int | None = descriptor
        identity = os.fstat(descriptor)
        self.identity = (identity.st_dev, identity.st_ino)

    @classmethod
    def acquire(cls, path: Path, owner: Owner) -> Lock:
        """Take the lock at once or raise Held; write `owner` into the file.

        Raise OSError when the file cannot be created (a missing or read-only folder).
        """
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise Held(path, read_owner(path)) from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(dataclasses.asdict(owner)).encode(), 0)
        except OSError as error:  # a full disk must not cost the lock itself
            log.debug("%s: cannot record the owner (%s)", path, error.strerror)
        return cls(path, descriptor, owner)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def still_ours(self) -> bool:
        """True while the path names the file we locked (not a remounted share's new file)."""
        if self._fd is None:
            return False
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self.identity

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the flock
            self._fd = None


def read_owner(path: Path) -> Owner:
    """What a lock file says about its holder; Owner(0) if it says nothing usable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
        return Owner(
            pid=int(data.get("pid", 0)),
            host=str(data.get("host", "")),
            state=str(data.get("state", "")),
            command=str(data.get("command", "")),
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return Owner(0)


def holder(path: Path) -> Owner | None:
    """Who holds the lock at `path` now, or None if nobody does (or the file does not exist).

    Tests with a shared lock taken and dropped at once, so it never blocks anybody for longer
    than a system call (a starting daemon retries for `STATE_RETRY_SECONDS`). Works on a
    read-only file, so `xnatdrop status` needs no write access.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_owner(path)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def me(state: Path, command: str) -> Owner:
    """This process as a lock owner."""
    return Owner(os.getpid(), socket.gethostname(), same_state_key(state), command)


def this_command(state: Path) -> str:
    """ "run" in the daemon that holds this state folder's lock, "push" anywhere else."""
    return "run" if read_owner(state / STATE_LOCK).pid == os.getpid() else "push"


def same_state_key(state: Path) -> str:
    """How owners compare state folders: the absolute, resolved path."""
    return str(Path(os.path.abspath(state)).resolve())


def acquire_state(state: Path, command: str = "run") -> Lock:
    """The state lock for a daemon; raise StateInUse (with the holder's pid) if it is taken.

    Creates the state folder (0700) if needed; OSError if it cannot.
    """
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    waiting = threading.Event()
    path = state / STATE_LOCK
    for _ in range(int(STATE_RETRY_SECONDS / 0.1) + 1):
        try:
            return Lock.acquire(path, me(state, command))
        except Held as held:
            owner = held.owner
        waiting.wait(0.1)  # a `status` probe lets go within microseconds
    raise StateInUse(state, owner)


def root_lock_path(root: Path, work_folder: str) -> Path:
    return root / work_folder / ROOT_LOCK


def acquire_root(root: Path, work_folder: str, state: Path, command: str) -> Lock:
    """The lock of one drop root; raise Held if taken, OSError if it cannot be created.

    Creates the work folder (0700) inside the root when it is missing, but never the root.
    """
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(root))
    folder = root / work_folder
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    return Lock.acquire(root_lock_path(root, work_folder), me(state, command))


def shares_state(owner: Owner, state: Path) -> bool:
    """True when `owner` works with the same state folder (and so the same ledger) as us.

    Only on the same host: the same path on another host is another folder.
    """
    return (
        owner.pid != 0
        and owner.host == socket.gethostname()
        and owner.state == same_state_key(state)
    )
