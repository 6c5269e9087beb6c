"""What the daemon tells the operator: the one-line status (systemd's `STATUS=`), the status
file `xnatdrop status` reads, and one ALERT for a drop that keeps failing the same way."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from xnatdrop import atomicfile, breaker, watch
from xnatdrop import config as config_module
from xnatdrop import ledger as ledger_module
from xnatdrop.daemon.window import UploadWindow

log = logging.getLogger(__package__)

STATUS_FILE = "daemon-status.json"  # in paths.state; read by `xnatdrop status`
# A drop that failed this many times in a row the same way is reported once (one ALERT line)
# and makes `xnatdrop status` exit 1; it keeps being retried with the ledger's backoff.
REPEATED_FAILURES = 3
# Codes that raise their own alert (refused credentials, the circuit breaker, the state folder):
# a streak of them adds nothing.
ALERTED_ELSEWHERE = frozenset(
    {"AUTHENTICATION", ledger_module.HELD, ledger_module.SUSPECT, "STATE"}
)


class Daemon(Protocol):
    """What of the daemon (`loop.Daemon`) its status is made of; a protocol, so that this
    module does not import the loop that calls it."""

    settings: config_module.Config
    watcher: watch.Watcher
    pushes: dict[str, threading.Thread]
    window: UploadWindow
    held_until: float
    open_breaker: ledger_module.Breaker | None
    state_trouble: str | None
    status: str
    status_file_error: str | None
    status_written: str  # the status file's view as last written, without pid and time


def update(daemon: Daemon, window_open: bool, scanned: bool) -> None:
    """Set `daemon.status` (the line systemd shows) and write the status file: after each scan
    (`scanned`), and otherwise only when what it says changed."""
    counts = daemon.watcher.counts()
    paused = {str(r.path): r.blocked for r in daemon.watcher.roots.values() if r.blocked}
    parts = [
        f"{counts.get('settling', 0)} settling",
        f"{counts.get('settled', 0)} settled",
        f"{len(daemon.pushes)} pushing",
        "window open" if window_open else f"window {daemon.window} closed",
    ]
    if paused:
        parts.append(f"PAUSED: {', '.join(paused)}")
    if time.time() < daemon.held_until:
        parts.append("PUSHES HELD: XNAT refused our credentials")
    if daemon.open_breaker is not None:
        parts.append(f"PUSHES HELD: {breaker.sentence(daemon.open_breaker)}")
    if daemon.state_trouble is not None:
        parts.append(f"PUSHES HELD: cannot write the state folder ({daemon.state_trouble})")
    daemon.status = "; ".join(parts)
    _write_file(daemon, counts, paused, window_open, scanned)


def _write_file(
    daemon: Daemon,
    counts: dict[str, int],
    paused: dict[str, str | None],
    window: bool,
    scanned: bool,
) -> None:
    """Leave the live view for `xnatdrop status` (another process) in the state folder.

    Written atomically (temp file + rename), mode 0600; a failure is logged once (not every
    scan), because monitoring never fails the job. `status` tells a live daemon from a dead
    one by the state lock, and a stuck one by `updated`, so every scan writes it; the dispatch
    job that runs beside each scan (and when a push ends or the window opens) writes it only
    when its view changed, which halves the idle daemon's writes and fsyncs (issue 13).
    """
    view = {
        "status": daemon.status,
        "folders": counts,
        "paused_roots": sorted(paused),
        "paused_reasons": paused,
        "waiting": [list(item) for item in daemon.watcher.waiting()[:50]],
        "troubles": [list(item) for item in daemon.watcher.troubles()[:50]],
        "pushing": sorted(daemon.pushes),
        "window": str(daemon.window),
        "window_open": window,
        "pushes_held_until": daemon.held_until if time.time() < daemon.held_until else None,
        "state_problem": daemon.state_trouble,
    }
    said = json.dumps(view)
    if not scanned and said == daemon.status_written:
        return
    data = {"pid": os.getpid(), "updated": time.time(), **view}
    path = Path(daemon.settings.paths.state) / STATUS_FILE
    try:
        atomicfile.write(path, json.dumps(data))
    except OSError as error:
        if daemon.status_file_error != error.strerror:
            log.warning("cannot write %s (%s)", path, error.strerror)
        daemon.status_file_error = error.strerror
    else:
        daemon.status_file_error = None
        daemon.status_written = said


def report_streaks(state: Path, reported: set[tuple[int, str, str]]) -> None:
    """One ALERT line when a drop has failed REPEATED_FAILURES times the same way; `reported`
    remembers which streaks were told already.

    What never heals by itself (a 500 XNAT gives every time, a file the service user may
    not read) was otherwise retried forever with a warning per attempt and nothing that
    asked a person to look.
    """
    with ledger_module.Ledger(state) as ledger:
        streaks = ledger.failure_streaks(REPEATED_FAILURES)
    for streak in streaks:
        key = (streak.drop.id, streak.step, streak.code)
        if key in reported or streak.code in ALERTED_ELSEWHERE:
            continue
        reported.add(key)
        log.error(
            "ALERT %s: failed %d times in a row at %s (%s: %s); it is retried with backoff, "
            "but a person should look (xnatdrop status)",
            streak.drop.label,
            streak.count,
            streak.step,
            streak.code,
            streak.message,
        )
