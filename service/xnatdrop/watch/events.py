"""Kernel file events on the drop roots, used only to bring the next scan forward.

They do not see writes made by other machines on SMB/NFS shares, so nothing is decided from
them: the periodic scan (`watcher`) is the source of truth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from xnatdrop.notify.sharestatus import FILE_NAME as STATUS_FILE

log = logging.getLogger(__name__)

# At most one wake per this many seconds (or per quarter poll, if shorter: a short poll means a
# short quiet period, where 2 s is a large share of the settle latency): a copy of many folders
# must not cost a scan per event.
HINT_GAP = 2.0


def ours(event: Any, roots: set[str]) -> bool:
    """An event of the status file xnatdrop writes in each root (`.NAME.part` renamed over
    `NAME`), or the "modified" of a watched root itself, which comes with every change of an
    entry in it (that entry's own event follows, and a new folder still wakes us). Neither may
    bring a scan forward, or each status-file write would bring about the next scan and write.
    """
    if event.event_type == "modified" and os.fsdecode(event.src_path).rstrip("/") in roots:
        return True  # a root's own listing changed: the entry's own event says how
    names = {os.path.basename(os.fsdecode(event.src_path))}
    if getattr(event, "dest_path", ""):
        names.add(os.path.basename(os.fsdecode(event.dest_path)))
    return names <= {STATUS_FILE, f".{STATUS_FILE}.part"}


class EventHint:
    """Kernel events on the drop roots' top level, used only to bring the next scan forward.

    The watch is not recursive: a recursive inotify watch costs one watch and a directory walk
    per series folder (hundreds of thousands of files on a busy share), and events never decide
    anything anyway. Each root is watched on its own, so a root that offers no events (missing
    at start, unmounted, some network file systems) costs only its own hints: the periodic scan
    covers it, and `refresh` watches it once it is back. (watchdog starts every watch of an
    observer together and raises for the first missing path, which once stopped the daemon at
    start when one share was not mounted.)

    `wake` is called at most once per `gap` seconds; an event inside the gap is not dropped but
    delays its wake to the gap's end. The last event of a burst matters most: a copy's first
    event (its folder created) and its last (the folder's times set when it is closed) often
    come less than a gap apart, and dropping the last one left the folder's final state
    unseen for a whole poll, which the settle latency then carried (issue 13).
    """

    def __init__(
        self, roots: Iterable[Path], wake: Callable[[], None], gap: float = HINT_GAP
    ) -> None:
        self.roots = list(roots)
        self.wake = wake
        self.gap = gap
        self.lock = threading.Lock()
        self.last_wake = -gap  # monotonic
        self.timer: threading.Timer | None = None  # a wake delayed to the end of the gap
        self.observer: Any = None
        self.handler: Any = None
        self.watches: dict[Path, Any] = {}
        self.told: set[Path] = set()

    def start(self) -> None:
        from watchdog import events, observers

        hint = self
        paths = {str(root).rstrip("/") for root in self.roots}

        class Handler(events.FileSystemEventHandler):
            def on_any_event(self, event: events.FileSystemEvent) -> None:
                if event.event_type not in ("opened", "closed_no_write") and not ours(event, paths):
                    hint.event()

        self.handler = Handler()
        self.observer = observers.Observer()
        self.observer.daemon = True
        self.observer.start()  # with no watch yet: each root is added on its own below
        self.refresh(set(self.roots))

    def event(self) -> None:
        """One event of ours: wake now, or at the end of the gap if the last wake is recent."""
        with self.lock:
            if self.timer is not None:
                return  # a wake is coming after this event; the scan it brings sees it too
            wait = self.last_wake + self.gap - time.monotonic()
            if wait > 0:
                self.timer = threading.Timer(wait, self._delayed)
                self.timer.daemon = True
                self.timer.start()
                return
            self.last_wake = time.monotonic()
        self.wake()

    def _delayed(self) -> None:
        with self.lock:
            self.timer = None
            self.last_wake = time.monotonic()
        self.wake()

    def refresh(self, readable: set[Path]) -> None:
        """Watch the roots in `readable` that are not watched yet; drop watches of the others."""
        if self.observer is None:
            return
        for root in self.roots:
            if root in readable and root not in self.watches:
                try:
                    self.watches[root] = self.observer.schedule(
                        self.handler, str(root), recursive=False
                    )
                except OSError as error:
                    if root not in self.told:
                        log.info(
                            "%s: no file events (%s); relying on the periodic scan",
                            root,
                            error.strerror or error,
                        )
                        self.told.add(root)
                else:
                    self.told.discard(root)
            elif root not in readable and root in self.watches:
                with contextlib.suppress(OSError, KeyError):
                    self.observer.unschedule(self.watches[root])
                del self.watches[root]

    def stop(self) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None
            self.watches.clear()
