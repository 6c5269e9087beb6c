"""The daemon's side of `notify.service.Notifier`: what the daemon knows, told once per change.

The loop calls three things: `cycle_started()` when a scan job begins, `cycle_finished(daemon)`
when it ends (after its dispatch), and `pushed(work, result)` for each push it collects; the
digest is its own cron job (`digest`). Everything the notifier needs that only the daemon
knows is worked out here, so the loop stays a loop:

- alerts when a condition *changes* (a drop root paused or back, the circuit breaker open or
  closed, XNAT refusing our login or taking it again, XNAT unreachable or answering again),
  never once per scan: the notifier's rate limit is for conditions that recur, and a scan
  every few seconds would count thousands of "repeats";
- the status file's records for folders only the watcher knows (still copying, complete and
  waiting for the window or their turn), and one notice per drop root when its uploads wait for
  something that is not the technologist's to fix;
- the digest's list of waiting folders;
- whether the cycle went well, for the dead-man's switch: not when a root is paused, pushes
  are held (login refused, breaker, state folder) or XNAT does not answer.

Job thread only (the scan, dispatch and digest jobs share one worker), except `pushed`, which
the job thread calls too (from `_collect`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from apscheduler.schedulers.base import BaseScheduler

from xnatdrop import breaker, watch
from xnatdrop import config as config_module
from xnatdrop import ledger as ledger_module
from xnatdrop.daemon.window import UploadWindow
from xnatdrop.daemon.work import Result, Work
from xnatdrop.errors import StateError
from xnatdrop.notify import digest, sharestatus
from xnatdrop.notify.alerts import Kind as Alert
from xnatdrop.notify.service import Notifier
from xnatdrop.pipeline import Kind

log = logging.getLogger(__package__)

XNAT_KEY = "xnat"  # the alerts' key for XNAT itself (one server per daemon)
BREAKER_KEY = "breaker"


class Daemon(Protocol):
    """What of `loop.Daemon` the notices are made of (a protocol: no import of the loop)."""

    settings: config_module.Config
    watcher: watch.Watcher
    window: UploadWindow
    held_until: float
    open_breaker: ledger_module.Breaker | None
    state_trouble: str | None
    projects: dict[Path, str]

    def now(self) -> dt.datetime: ...


class Notices:
    """The notifier and what was told through it already. A class because it remembers."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.roots_told: dict[Path, str] = {}  # drop root -> the reason alerted
        self.breaker_told = False
        self.login_refused = False
        self.xnat_failed_at: float | None = None  # epoch; a push found XNAT unreachable
        self.started: dict[str, float] = {}  # push key -> epoch it started
        self.closed = False  # a scan job that outlives the shutdown pings nothing

    # ---- the scan job ------------------------------------------------------------------

    def cycle_started(self) -> None:
        self.notifier.cycle_started()

    def cycle_finished(self, daemon: Daemon, scanned: bool) -> None:
        """After a scan job (`scanned` False: it raised): alerts for what changed, the status
        files and metrics, then the ping (success only when nothing holds the uploads)."""
        if self.closed:
            return
        self._roots(daemon)
        self._breaker(daemon.open_breaker)
        if self.xnat_failed_at is not None and self.notifier.last_answer > self.xnat_failed_at:
            self.notifier.alerts.xnat_answered()
            self.xnat_failed_at = None
            log.warning("XNAT answers again")
        window_open = daemon.window.contains(daemon.now())
        if self.notifier.metrics is not None:
            self.notifier.metrics.set_folders(daemon.watcher.counts())
        if daemon.state_trouble is None:
            self._refresh(daemon, window_open)
        ok = scanned and not (
            any(r.blocked for r in daemon.watcher.roots.values())
            or time.time() < daemon.held_until
            or daemon.open_breaker is not None
            or daemon.state_trouble is not None
            or self.xnat_failed_at is not None
            or self.login_refused  # until a push archives: the hold may be short
        )
        self.notifier.cycle_finished(ok)

    def _refresh(self, daemon: Daemon, window_open: bool) -> None:
        """The notifier's per-scan refresh, with only what it will use.

        Without status files or metrics (the defaults) it only checks the free space: the
        ledger is not opened, and the per-folder records are not built. Building them for
        1,000 waiting folders and opening the ledger was a fifth of an idle scan's CPU
        (issue 13), spent on nothing.
        """
        notifier = self.notifier
        if not notifier.status_files and notifier.metrics is None:
            notifier.refresh(None)
            return
        try:
            with ledger_module.Ledger(daemon.settings.paths.state) as book:
                notifier.refresh(
                    book,
                    folders=watcher_folders(daemon, window_open) if notifier.status_files else None,
                    notices=root_notices(daemon, self.xnat_failed_at is not None),
                    progress=notifier.percents(),
                )
        except StateError as error:
            log.debug("status files not refreshed: %s", error)  # the loop alerts on it

    def _roots(self, daemon: Daemon) -> None:
        for path, root in daemon.watcher.roots.items():
            reason = root.blocked
            told = self.roots_told.get(path)
            if reason is not None and reason != told:
                self.notifier.alert(
                    Alert.DROP_ROOT,
                    str(path),
                    f"Nothing in {path} is uploaded now: {reason}.",
                    path,
                )
                self.roots_told[path] = reason
            elif reason is None and told is not None:
                self.notifier.resolved(
                    Alert.DROP_ROOT, str(path), f"{path} reads normally again; uploads resume."
                )
                del self.roots_told[path]

    def _breaker(self, open_breaker: ledger_module.Breaker | None) -> None:
        if open_breaker is not None and not self.breaker_told:
            self.notifier.alert(Alert.PUSHES_HELD, BREAKER_KEY, breaker.sentence(open_breaker))
            self.breaker_told = True
        elif open_breaker is None and self.breaker_told:
            self.notifier.resolved(
                Alert.PUSHES_HELD, BREAKER_KEY, "XNAT took an upload again; uploads resume."
            )
            self.breaker_told = False

    # ---- pushes ------------------------------------------------------------------------

    def push_started(self, work: Work) -> None:
        self.started[work.key] = time.time()

    def pushed(self, daemon: Daemon, work: Work, result: Result) -> None:
        """One push ended: a finished drop for the digest and metrics (and the quarantine
        alert, to its drop root's addresses); a refused login; XNAT unreachable."""
        started = self.started.pop(work.key, 0.0)
        settings = daemon.settings
        if result.kind is Kind.AUTH_FAILED:
            held = time.strftime("%H:%M", time.localtime(daemon.held_until))
            self.notifier.alert(
                Alert.LOGIN_REFUSED,
                XNAT_KEY,
                f"XNAT at {settings.xnat.url} refused the login of user "
                f"{settings.xnat.username!r} ({result.detail}). Every upload is held until "
                f"{held} or a restart.",
            )
            self.login_refused = True
        elif self.login_refused and result.kind is Kind.ARCHIVED:  # it logged in, surely
            self.notifier.resolved(
                Alert.LOGIN_REFUSED, XNAT_KEY, "XNAT accepts xnatdrop's login again."
            )
            self.login_refused = False
        unanswered = self.notifier.last_answer < started
        if result.kind is Kind.TRANSIENT and result.code == "TRANSIENT" and unanswered:
            # No HTTP answer at all during this push: XNAT (or the way to it) is down. The
            # notifier alerts once the outage has lasted notify.xnat_unreachable_minutes.
            self.notifier.alerts.xnat_unreachable(result.detail.removeprefix("TRANSIENT: "))
            self.xnat_failed_at = time.time()
        if result.kind.final and result.drop_id is not None:
            try:
                with ledger_module.Ledger(settings.paths.state) as book:
                    drop = book.get(result.drop_id)
            except StateError as error:
                log.debug("finished drop not told: %s", error)
                return
            root = work.folder.root if work.folder else Path(drop.source).parent
            self.notifier.drop_finished(result.kind.value, drop, root)

    # ---- the digest (its own cron job) --------------------------------------------------

    def schedule(self, scheduler: BaseScheduler, daemon: Daemon) -> None:
        """The digest's cron job at `notify.digest_at`, on the daemon's job thread ("digest")."""
        at = daemon.settings.notify.digest_at
        if at:
            hour, minute = (int(part) for part in at.split(":"))
            scheduler.add_job(self.digest, "cron", [daemon], hour=hour, minute=minute, id="digest")

    def digest_now(self, scheduler: BaseScheduler) -> None:
        """Run the digest job now (on the job thread), as its cron time would (tests)."""
        scheduler.modify_job("digest", next_run_time=dt.datetime.now())

    def digest(self, daemon: Daemon) -> None:
        waiting = [
            digest.Waiting(folder.name, project, time.time() - daemon.watcher.age(folder), why)
            for folder, project, why in _waiting(daemon)
        ]
        try:
            with ledger_module.Ledger(daemon.settings.paths.state) as book:
                self.notifier.send_digest(book, waiting)
        except StateError as error:
            log.warning("the digest was not sent: %s", error)

    def close(self, timeout: float) -> None:
        self.closed = True
        self.notifier.close(timeout)


def _waiting(daemon: Daemon) -> list[tuple[watch.Folder, str, str]]:
    """The folders only the watcher knows, with why each waits, in plain words."""
    window_open = daemon.window.contains(daemon.now())
    # Worked out once: formatting the window per folder was most of this function's time.
    complete = (
        "complete; waiting for its turn"
        if window_open
        else f"complete; waiting for the upload window {daemon.window}"
    )
    found = []
    for path, root in daemon.watcher.roots.items():
        project = daemon.projects[path]
        for folder in root.folders.values():
            if folder.state is watch.State.HANDED_OVER:
                continue
            if folder.state is watch.State.SETTLED:
                why = complete
            else:
                why = "still being copied, or changed recently"
            found.append((folder, project, why))
    return found


def next_opening(window: UploadWindow, now: dt.datetime) -> float | None:
    """When the upload window next opens (epoch seconds), or None if it is always open."""
    if window.start is None or window.end is None:
        return None
    opening = now.replace(
        hour=window.start.hour, minute=window.start.minute, second=0, microsecond=0
    )
    if opening <= now:
        opening += dt.timedelta(days=1)
    return opening.timestamp()


def watcher_folders(
    daemon: Daemon, window_open: bool
) -> Mapping[Path, list[sharestatus.FolderStatus]]:
    """The status file's records for the folders the watcher holds, per drop root: still
    being copied (or told to look again), complete and waiting for the window (with when it
    opens) or for their turn. Folders handed over are the ledger's to describe."""
    opens = None if window_open else next_opening(daemon.window, daemon.now())
    folders: dict[Path, list[sharestatus.FolderStatus]] = {p: [] for p in daemon.watcher.roots}
    for folder, _, _ in _waiting(daemon):
        since = time.time() - daemon.watcher.age(folder)
        if folder.state is not watch.State.SETTLED:
            stage = sharestatus.FolderStatus(folder.name, sharestatus.Stage.COPYING, since)
        elif window_open:
            stage = sharestatus.FolderStatus(folder.name, sharestatus.Stage.QUEUED, since)
        else:
            stage = sharestatus.FolderStatus(
                folder.name, sharestatus.Stage.WAITING_WINDOW, since, next_time=opens
            )
        folders[folder.root].append(stage)
    return folders


def root_notices(daemon: Daemon, xnat_down: bool) -> dict[Path, str]:
    """One line per drop root when its uploads wait on something that is not the
    technologists' to fix (they are told that nothing is lost and nothing is theirs to do)."""
    held = ""
    if time.time() < daemon.held_until:
        held = "XNAT refused xnatdrop's login; the XNAT administrators have been told"
    elif daemon.open_breaker is not None:
        held = "XNAT gave the same error for several sessions; its administrators have been told"
    elif daemon.state_trouble is not None:
        held = "xnatdrop cannot write its own records; its administrators have been told"
    elif xnat_down:
        held = "XNAT is not answering just now"
    notices = {}
    for path, root in daemon.watcher.roots.items():
        if root.blocked:
            notices[path] = (
                "uploads from this folder are paused (xnatdrop cannot read it normally); "
                "nothing is lost, they resume by themselves"
            )
        elif held:
            notices[path] = f"uploads are held: {held}. Nothing is lost; nothing to do."
    return notices
