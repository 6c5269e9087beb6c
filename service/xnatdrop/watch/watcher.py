"""Discovery and settle decisions: which subject folders in the drop roots are completely copied.

A periodic scan of each drop root's top-level folders is the source of truth. Kernel events
(`events.EventHint`, where the root offers them) only bring the next scan forward.

A folder is *settled* when its fingerprint (`fingerprint`) is unchanged over at least
`MIN_OBSERVATIONS` scans spanning `settle.quiet_seconds`. Temporary names (`*.part`, `~$*`, …)
hold a folder back; the optional marker file settles it at once.

Scans stay cheap on large shares: only folders that are still settling are fingerprinted (a walk
of their files). A settled folder waiting for the upload window is checked with a shallow
signature (the folder and its direct subfolders: names, mtimes, ctimes), and re-fingerprinted in
full only when that changes, and once more just before it is handed over (`confirm`).

A drop root that disappears, stops being readable, changes file system (an unmounted share shows
the empty mount point) or suddenly reads empty while folders were expected there is *paused*: its
folders keep their state, nothing is forgotten or handed over, and an alert is raised once. The
scan resumes it as soon as it reads normally again.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from xnatdrop import config as config_module
from xnatdrop import names
from xnatdrop.notify.sharestatus import FILE_NAME as STATUS_FILE
from xnatdrop.watch.fingerprint import Fingerprint, fingerprint, shallow_signature

log = logging.getLogger(__name__)

MIN_OBSERVATIONS = 3  # identical fingerprints in a row, in addition to the quiet period
# Scans are scheduled every poll interval, but each reads the clock only after some work of its
# own (the lock check, the root's listing) and may start a little late (one job thread shared
# with the dispatch). So the scan due exactly quiet_seconds after the one that first saw the
# folder as it is may measure a few milliseconds short, and without a margin it waited one more
# poll half the time: the benchmark's settle latency overshot quiet + one poll by a whole poll
# (+9.6 s at quiet 30 s). A tenth of a poll absorbs that and cannot mistake any other scan for it.
SCAN_SLACK = 0.1  # of the poll interval


class State(StrEnum):
    SETTLING = "settling"  # still changing, or not yet quiet long enough
    SETTLED = "settled"  # complete; waiting to be handed over
    HANDED_OVER = "handed-over"  # given to the pipeline; the watcher no longer decides
    WAITING = "waiting"  # told to look again later (e.g. truncated DICOM, transient failure)


@dataclass
class Folder:
    """The watcher's knowledge of one subject folder, kept between scans (memory only).

    Losing it on a restart is safe: folders just settle again, and work already handed over is
    resumed from the ledger.
    """

    path: Path
    root: Path
    first_seen: float
    state: State = State.SETTLING
    fingerprint: Fingerprint | None = None
    stable_since: float = 0.0
    observations: int = 0
    shallow: tuple[object, ...] | None = None
    not_before: float = 0.0
    alerted_slow: bool = False
    settling_since: float | None = None  # when it last began settling (None: first_seen)
    reason: str = "first seen"
    note: str = ""  # why it was sent back to wait (`look_again`), until it is handed over again

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Root:
    """One drop root's health and the folders seen in it."""

    path: Path
    device: int | None = None
    paused: str | None = None  # why, while paused
    held: str | None = None  # why, while another process owns the root (see `Watcher.hold`)
    folders: dict[str, Folder] = field(default_factory=dict)
    loose_files: set[str] = field(default_factory=set)
    bad_names: set[str] = field(default_factory=set)  # top-level names that are not UTF-8
    unreadable: dict[str, str] = field(default_factory=dict)  # folder name -> why, alerted once

    @property
    def blocked(self) -> str | None:
        """Why nothing in this root may be handed over now, or None."""
        return self.paused or self.held


@dataclass
class ScanResult:
    """What one scan found: folders that settled in this scan and roots that are paused."""

    settled: list[Folder] = field(default_factory=list)
    paused: dict[Path, str] = field(default_factory=dict)
    folders: int = 0
    fingerprinted: int = 0


class Watcher:
    """Scans the drop roots and decides, folder by folder, when a copy has finished.

    A class because its knowledge lives across scans. It touches no file: it only lists and
    stats. Not thread-safe; the daemon calls it from one thread (its scan job), and hands
    results to the pipeline by path.
    """

    def __init__(
        self,
        roots: Iterable[Path],
        settle: config_module.SettleSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle = settle
        self.clock = clock
        self.roots = {Path(r): Root(Path(r)) for r in roots}

    # ---- scanning -------------------------------------------------------------------------

    def scan(self) -> ScanResult:
        """Look at every root once; return the folders that became settled in this scan."""
        result = ScanResult()
        for root in self.roots.values():
            self._scan_root(root, result)
            if root.blocked:
                result.paused[root.path] = root.blocked
        return result

    def _scan_root(self, root: Root, result: ScanResult) -> None:
        try:
            info = root.path.stat()
            if not root.path.is_dir():
                raise NotADirectoryError(f"{root.path} is not a folder")
            listed = self._list(root)
        except FileNotFoundError:
            self._pause(root, "the drop root does not exist (share not mounted, or renamed?)")
            return
        except OSError as error:
            self._pause(root, f"cannot read the drop root ({error.strerror or error})")
            return
        if root.device is not None and info.st_dev != root.device:
            self._pause(
                root, "the drop root is on a different file system than before (share unmounted?)"
            )
            return
        expected = [f for f in root.folders.values() if f.state is not State.HANDED_OVER]
        # In a held root the process that owns it takes folders away: an empty listing is its
        # work, not an unmounted share.
        if not listed and expected and not root.held:
            self._pause(
                root,
                f"the drop root reads empty while {len(expected)} folder(s) "
                "were waiting there (share unmounted?)",
            )
            return
        if root.paused:
            log.warning(
                "%s: drop root readable again; resuming (%d folders)", root.path, len(listed)
            )
            root.paused = None
        root.device = info.st_dev
        now = self.clock()
        for name in list(root.folders):
            if name not in listed:
                self._vanished(root, root.folders.pop(name))
        for name in listed:
            folder = root.folders.get(name)
            if folder is None:
                folder = root.folders[name] = Folder(root.path / name, root.path, now)
                log.info("%s: new folder in %s", name, root.path)
            result.folders += 1
            try:
                self._observe(folder, now, result)
            except (OSError, ValueError) as error:
                # One folder's trouble costs only its own settle, never the scan of the others.
                self._unreadable(root, folder, error)

    def _list(self, root: Root) -> set[str]:
        """Names of the subject folders at the top of a root; loose files are reported once."""
        listed: set[str] = set()
        loose: set[str] = set()
        bad: set[str] = set()
        with os.scandir(root.path) as iterator:
            for entry in iterator:
                if entry.name.startswith(".") or entry.name == STATUS_FILE:
                    continue  # .snapshot, .DS_Store, our own hidden files and status file
                if not names.valid(entry.name):
                    bad.add(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    listed.add(entry.name)
                else:
                    loose.add(entry.name)
        for name in sorted(bad - root.bad_names):
            log.error(
                "ALERT %s: the name %s is not valid UTF-8 (copied from a share or USB stick "
                "with another character set?); it is not uploaded: rename it using letters, "
                "digits, '_' and '-' only",
                root.path,
                names.shown(name),
            )
        root.bad_names = bad
        for name in sorted(loose - root.loose_files):
            log.warning(
                "%s: %r is a file at the top of the drop root; sessions must be "
                "dropped as one folder each, so it is ignored",
                root.path,
                name,
            )
        root.loose_files = loose
        return listed

    def _pause(self, root: Root, reason: str) -> None:
        if root.paused is None:
            log.error(
                "ALERT %s: paused: %s; nothing in it is handed over or forgotten until "
                "it reads normally again",
                root.path,
                reason,
            )
        root.paused = reason

    def _vanished(self, root: Root, folder: Folder) -> None:
        if folder.state is State.HANDED_OVER:
            log.debug("%s: left the drop root (handed over)", folder.name)
        elif root.held:
            log.debug("%s: left the drop root (taken by %s)", folder.name, root.held)
        else:
            log.warning(
                "%s: disappeared from %s before upload (state %s); forgotten",
                folder.name,
                root.path,
                folder.state,
            )

    def _observe(self, folder: Folder, now: float, result: ScanResult) -> None:
        if folder.state is State.HANDED_OVER:
            return
        if folder.state is State.WAITING:
            if now < folder.not_before:
                return
            self._restart(folder, now, "looking again")
        if folder.state is State.SETTLED:
            try:
                shallow = shallow_signature(folder.path, folder.shallow)
            except FileNotFoundError:
                return  # vanished between listing and stat; the next scan forgets it
            if shallow == folder.shallow:
                return
            folder.shallow = None
            self._restart(folder, now, "changed after it had settled")
        try:
            current = fingerprint(folder.path, self.settle)
        except FileNotFoundError:
            return  # vanished between listing and walk; the next scan forgets it
        result.fingerprinted += 1
        if root_unreadable := self.roots[folder.root].unreadable.pop(folder.name, None):
            log.warning("%s: readable again (was: %s)", folder.name, root_unreadable)
        if self._update(folder, current, now):
            try:
                folder.shallow = shallow_signature(folder.path)
            except OSError:
                return
            folder.state = State.SETTLED
            result.settled.append(folder)
            log.info(
                "%s: settled (%d files, %d bytes; %s)",
                folder.name,
                current.files,
                current.bytes,
                folder.reason,
            )

    def _unreadable(self, root: Root, folder: Folder, error: OSError | ValueError) -> None:
        """Note that a folder cannot be looked at; alert once per distinct reason, no traceback."""
        if isinstance(error, OSError):
            where = error.filename or folder.path
            why = f"cannot read {names.shown(str(where))} ({error.strerror or error})"
        else:
            why = f"cannot be looked at ({error})"
        folder.reason = why
        if folder.state is not State.SETTLING:
            self._restart(folder, self.clock(), why)
        if root.unreadable.get(folder.name) != why:
            log.error(
                "ALERT %s: %s; it is not uploaded until it can be read (fix the permissions "
                "of the service user); the other folders go on",
                folder.name,
                why,
            )
            root.unreadable[folder.name] = why

    def _update(self, folder: Folder, current: Fingerprint, now: float) -> bool:
        """Record one observation; return True when the folder has just settled."""
        if current != folder.fingerprint:
            folder.fingerprint = current
            folder.stable_since = now
            folder.observations = 1
        else:
            folder.observations += 1
        if current.temp_names:
            folder.reason = f"temporary file {current.temp_names[0]!r} present"
            self._maybe_alert_slow(folder, now)
            return False
        if current.marker:
            folder.reason = f"marker file {self.settle.marker_name!r}"
            return True
        if current.files == 0:
            folder.reason = "no files yet"
            self._maybe_alert_slow(folder, now)
            return False
        quiet_for = now - folder.stable_since
        slack = SCAN_SLACK * self.settle.poll_interval
        if (
            folder.observations >= MIN_OBSERVATIONS
            and quiet_for + slack >= self.settle.quiet_seconds
        ):
            folder.reason = f"unchanged over {folder.observations} scans, {quiet_for:.0f} s"
            return True
        folder.reason = f"unchanged for {quiet_for:.0f} s"
        self._maybe_alert_slow(folder, now)
        return False

    def _maybe_alert_slow(self, folder: Folder, now: float) -> None:
        if not folder.alerted_slow and now - folder.first_seen >= self.settle.max_wait_seconds:
            folder.alerted_slow = True
            log.error(
                "ALERT %s: still not settled %.0f s after it appeared (%s); check the copy to %s",
                folder.name,
                now - folder.first_seen,
                folder.reason,
                folder.root,
            )

    def _restart(self, folder: Folder, now: float, reason: str) -> None:
        folder.state = State.SETTLING
        folder.settling_since = now
        folder.fingerprint = None
        folder.observations = 0
        folder.stable_since = now
        folder.reason = reason
        log.info("%s: settling again (%s)", folder.name, reason)

    # ---- decisions the daemon feeds back ----------------------------------------------------

    def find(self, path: Path) -> Folder | None:
        root = self.roots.get(path.parent)
        return root.folders.get(path.name) if root else None

    def settled(self) -> list[Folder]:
        """Settled folders in unpaused roots, oldest first: the candidates for a push."""
        ready = [
            f
            for root in self.roots.values()
            if not root.blocked
            for f in root.folders.values()
            if f.state is State.SETTLED
        ]
        return sorted(ready, key=lambda f: (f.first_seen, f.name))

    def confirm(self, folder: Folder) -> bool:
        """Re-fingerprint a settled folder just before hand-over; False sends it back to settle.

        This closes the gap the shallow signature leaves (a file rewritten in place while the
        folder waited for the upload window).
        """
        if self.roots[folder.root].blocked:
            return False
        try:
            current = fingerprint(folder.path, self.settle)
        except (OSError, ValueError):
            return False
        if current == folder.fingerprint and not current.temp_names:
            return True
        self._restart(folder, self.clock(), "changed while waiting to be uploaded")
        return False

    def hold(self, path: Path, reason: str | None) -> None:
        """Keep everything in one root from being handed over (`reason`), or stop doing so.

        For what the watcher cannot see by itself: the daemon holds a root whose lock another
        xnatdrop process owns (see `locks`). Alerts once per reason; folders keep settling.
        """
        root = self.roots[path]
        if reason == root.held:
            return
        if reason is None:
            log.warning("%s: no longer held (%s); resuming", path, root.held)
        else:
            log.error("ALERT %s: held: %s; nothing in it is handed over", path, reason)
        root.held = reason

    def waiting(self) -> list[tuple[str, str]]:
        """(name, reason) of folders told to wait (still copying, a transient failure): for
        `xnatdrop status`, which explains each wait in one line."""
        return [
            (f.name, f.note)
            for root in self.roots.values()
            for f in root.folders.values()
            if f.note and f.state is not State.HANDED_OVER
        ]

    def troubles(self) -> list[tuple[str, str]]:
        """(name, reason) of what waits for a person in the drop roots: folders that are
        unreadable, named so that they can never be uploaded, or still not settled
        `settle.max_wait_seconds` after they appeared (an empty folder, a copy that stopped, a
        temporary file left behind), and files at the top of a root, which are never sessions.

        The campaign found an empty subject folder waiting forever with one ALERT in the log
        and nothing in `xnatdrop status`: every wait must be explained where people look.
        """
        found = []
        now = self.clock()
        for root in self.roots.values():
            found += [
                (names.shown(n), "its name is not valid UTF-8") for n in sorted(root.bad_names)
            ]
            found += sorted(root.unreadable.items())
            found += [
                (
                    f.name,
                    f"not settled {now - f.first_seen:.0f} s after it appeared ({f.reason}); "
                    "check the copy",
                )
                for f in sorted(
                    (
                        f
                        for f in root.folders.values()
                        if f.state is State.SETTLING
                        and now - (f.settling_since or f.first_seen) >= self.settle.max_wait_seconds
                        and f.name not in root.unreadable
                    ),
                    key=lambda f: f.name,
                )
            ]
            found += [
                (
                    names.shown(n),
                    "a file at the top of the drop root, not a subject folder: it is never "
                    "uploaded; move it into a subject folder or out of the drop root",
                )
                for n in sorted(root.loose_files)
            ]
        return found

    def hand_over(self, folder: Folder) -> None:
        """The pipeline owns this folder now; the watcher stops deciding about it."""
        folder.state = State.HANDED_OVER
        folder.note = ""

    def look_again(self, folder: Folder, after_seconds: float, reason: str) -> None:
        """Settle the folder afresh no sooner than `after_seconds` from now.

        Used when the folder turned out to be still copying (truncated DICOM young enough) or a
        push failed transiently without moving it out of the drop root.
        """
        folder.state = State.WAITING
        folder.not_before = self.clock() + after_seconds
        folder.fingerprint = None
        folder.observations = 0
        folder.reason = folder.note = reason
        log.info("%s: looking again in %.0f s (%s)", folder.name, after_seconds, reason)

    def age(self, folder: Folder) -> float:
        """Seconds since the watcher first saw the folder (this process's lifetime only)."""
        return self.clock() - folder.first_seen

    def counts(self) -> dict[str, int]:
        """Folders per watcher state, for the daemon's STATUS line."""
        # Counted by the members themselves, then named: `.value` per folder was most of it.
        counts = collections.Counter(
            folder.state for root in self.roots.values() for folder in root.folders.values()
        )
        return {state.value: count for state, count in counts.items()}
