"""The daemon's loop: the scheduler's scan and dispatch jobs, the push threads, systemd
notification, and what it does while its own state folder cannot be written.

See the package docstring (`daemon`) for the threads and who owns what.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from xnatdrop import config as config_module
from xnatdrop import ledger as ledger_module
from xnatdrop import locks, sdnotify, signals, watch
from xnatdrop.daemon import status
from xnatdrop.daemon.notices import Notices
from xnatdrop.daemon.repeats import quiet_repeats
from xnatdrop.daemon.window import UploadWindow
from xnatdrop.daemon.work import Processor, Result, Work
from xnatdrop.errors import StateError
from xnatdrop.notify.service import Notifier
from xnatdrop.pipeline import Kind
from xnatdrop.watch.events import HINT_GAP

log = logging.getLogger(__package__)  # "xnatdrop.daemon" in the log, as before the split

TICK_SECONDS = 5.0  # main-loop period when systemd's watchdog does not ask for faster
# How long the scan job may go without completing before the watchdog ping is withheld. Generous:
# a slow share may take minutes to list, but a scan blocked for longer is a hung mount or a bug.
STUCK_SCAN_SECONDS = 600.0
# Backoff while the state folder cannot be written: 5 s, 10 s, 20 s … at most 10 minutes.
STATE_BACKOFF_BASE = 5.0
STATE_BACKOFF_MAX = 600.0


class Daemon:
    """The long-running process: a scheduler, a watcher, push threads, systemd notification."""

    def __init__(
        self,
        settings: config_module.Config,
        processor: Processor,
        now: Callable[[], dt.datetime] = dt.datetime.now,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.notices = Notices(notifier or Notifier(settings))  # without one: the log only
        self.now = now
        self.window = UploadWindow.parse(settings.schedule.upload_window)
        self.poll = settings.settle.poll_interval
        self.projects = {d.path: d.project for d in settings.drop}
        self.watcher = watch.Watcher(self.projects, settings.settle)
        self.hint = watch.EventHint(self.projects, self._hinted, min(HINT_GAP, self.poll / 4))
        self.stopping = threading.Event()
        self.rescan = threading.Event()  # a hint came: the running scan job scans again
        self.started = threading.Event()  # set once READY=1 is sent (tests wait on it)
        self.force = False
        self.finished: queue.Queue[tuple[Work, Result]] = queue.Queue()
        self.pushes: dict[str, threading.Thread] = {}  # key -> thread; changed by the job thread
        self.pushes_lock = threading.Lock()  # a stop never sees a push registered, not started
        self.waiting_labels: set[str] = set()
        self.last_scan_done = time.monotonic()
        self.held_until = 0.0  # epoch seconds; pushes are held after XNAT refused our login
        self.state_lock: locks.Lock | None = None
        self.root_locks: dict[Path, locks.Lock] = {}
        self.state_trouble: str | None = None  # why the state folder cannot be written, if so
        self.open_breaker: ledger_module.Breaker | None = None  # as last read from the ledger
        self.state_failures = 0  # in a row, for the backoff
        self.state_retry_at = 0.0  # monotonic; no push before this while state_trouble is set
        self.reported_streaks: set[tuple[int, str, str]] = set()
        self.status_file_error: str | None = None
        self.status_written = ""  # see `status.update`
        self.scans = 0
        self.status = "starting"
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    # ---- signals and the main loop ---------------------------------------------------------

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: set flags, nothing else. A second SIGINT forces the exit."""
        if self.stopping.is_set() and sig == signal.SIGINT:
            self.force = True
        self.stopping.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code (0 after a clean stop). Raise
        locks.StateInUse at once when another daemon uses the same state folder."""
        self.state_lock = locks.acquire_state(self.settings.paths.state)
        try:
            with signals.capture(self.handle_exit), quiet_repeats(logging.getLogger("xnatdrop")):
                try:
                    self._start()
                    try:
                        self._main_loop()
                    finally:
                        self._shutdown()
                finally:
                    # After the pushes stopped: queued e-mails and pings go out, metrics stop.
                    self.notices.close(self.settings.mail.timeout_seconds)
        finally:
            for lock in self.root_locks.values():
                lock.release()
            self.state_lock.release()
        return 0

    def _start(self) -> None:
        # apscheduler warns on every skipped overlapping run: expected when a scan outlasts the
        # poll or a hint comes during one (`_hinted`); its errors still come through. watchdog
        # logs an ERROR when events race its stop; its events are only hints (the scan decides).
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)
        # Open the ledger once up front: it creates the state folder (0700); a corrupt ledger
        # stops the start here, loudly. One that cannot be written (a full file system) does
        # not: the daemon stays up, holds the pushes and tries again with backoff.
        try:
            with ledger_module.Ledger(self.settings.paths.state) as ledger:
                unfinished = ledger.oldest_pending()
                # A restart is how an operator says "the password is fixed" (see the ALERT):
                # drops held after a refused login are tried at once, not in an hour.
                released = ledger.release_waiting_for("AUTHENTICATION")
                # … and so is "XNAT is fixed" (see the breaker's ALERT): pushes held by the
                # circuit breaker are tried at once.
                held = ledger.try_breaker_now()
        except StateError as error:
            self._state_failed(error)
            unfinished, released, held = None, [], None
        if held is not None:
            log.warning("circuit breaker open (%s): trying one push now", held.answer)
        if released:
            log.info(
                "%d drop(s) held after XNAT refused our credentials are tried again now",
                len(released),
            )
        if unfinished is not None:
            log.info(
                "unfinished drops in the ledger (oldest: %s, %s); resuming them",
                unfinished.label,
                unfinished.state,
            )
        roots = ", ".join(f"{p} -> {project}" for p, project in self.projects.items())
        log.info(
            "starting: %d drop root(s) (%s); quiet %.0f s, scan every %.1f s; uploads %s, "
            "at most %d at once",
            len(self.projects),
            roots or "none",
            self.settings.settle.quiet_seconds,
            self.poll,
            self.window,
            self.settings.schedule.max_concurrent_pushes,
        )
        # Claimed before READY=1, so that a second daemon started after us never wins a root.
        self._claim_roots()
        self.notices.notifier.start()
        now = dt.datetime.now()
        self.scheduler.add_job(
            self._scan_job, "interval", seconds=self.poll, id="scan", next_run_time=now
        )
        self.scheduler.add_job(
            self._dispatch_job, "interval", seconds=self.poll, id="dispatch", next_run_time=now
        )
        if self.window.start is not None:
            self.scheduler.add_job(
                self._dispatch_job,
                "cron",
                hour=self.window.start.hour,
                minute=self.window.start.minute,
                id="window-opens",
            )
        self.notices.schedule(self.scheduler, self)  # the digest
        self.hint.start()  # before the first scan: what it misses, an event brings forward
        self.scheduler.start()
        sdnotify.notify("READY=1", f"STATUS=watching {len(self.projects)} drop root(s)")
        self.started.set()

    def _main_loop(self) -> None:
        watchdog = sdnotify.watchdog_seconds()
        tick = min(TICK_SECONDS, watchdog / 2) if watchdog else TICK_SECONDS
        stuck_after = max(STUCK_SCAN_SECONDS, 5 * self.poll)
        warned = False
        while not self.stopping.is_set():
            silent = time.monotonic() - self.last_scan_done
            if silent < stuck_after:
                sdnotify.notify("WATCHDOG=1", f"STATUS={self.status}")
                warned = False
            elif not warned:
                log.error(
                    "ALERT: no scan has completed for %.0f s; withholding the systemd "
                    "watchdog ping so the service gets restarted",
                    silent,
                )
                warned = True
            self.stopping.wait(tick)

    def _shutdown(self) -> None:
        with self.pushes_lock:
            self.stopping.set()  # also when the main loop ended by an error: no push starts now
            running = list(self.pushes.items())
        sdnotify.notify("STOPPING=1", f"STATUS=stopping; {len(running)} push(es) checkpointing")
        log.info("stopping: no new scans or pushes; %d push(es) running", len(running))
        self.hint.stop()
        # The job thread only reads the shares; abandoning a slow scan loses nothing.
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + self.settings.schedule.stop_timeout_seconds
        for key, thread in running:
            if self.force:
                break
            thread.join(max(0.0, deadline - time.monotonic()))
            if not thread.is_alive():
                log.info("%s: push checkpointed", key)
        cut = [key for key, thread in running if thread.is_alive()]
        if cut:
            log.warning(
                "stop timeout: %d push(es) cut short (%s); the ledger resumes them on "
                "the next start",
                len(cut),
                ", ".join(cut),
            )
        log.info("stopped")

    # ---- jobs (one apscheduler worker thread) ----------------------------------------------

    def _hinted(self) -> None:
        """Called from the event thread (`EventHint` spaces the calls): scan now; and `rescan`, as
        apscheduler skips a run brought forward while the scan job runs (that job scans again)."""
        if self.stopping.is_set():
            return
        self.rescan.set()
        with contextlib.suppress(LookupError):  # the job is gone once we are stopping
            self.scheduler.modify_job("scan", next_run_time=dt.datetime.now())

    def _scan_job(self) -> None:
        while not self.stopping.is_set():
            self.rescan.clear()  # an event from now on is seen by this scan or brings another
            self.notices.cycle_started()
            scanned = False
            try:
                self._scan()
                scanned = True
            finally:
                self.notices.cycle_finished(self, scanned)
            if not self.rescan.is_set():
                return

    def _scan(self) -> None:
        self._claim_roots()
        result = self.watcher.scan()
        self.hint.refresh({r.path for r in self.watcher.roots.values() if not r.paused})
        self.scans += 1
        self.last_scan_done = time.monotonic()
        log.debug(
            "scan %d: %d folder(s), %d walked, %d settled, %d root(s) paused",
            self.scans, result.folders, result.fingerprinted,
            len(result.settled), len(result.paused),
        )  # fmt: skip
        self._dispatch(scanned=True)

    def _dispatch_job(self) -> None:
        if not self.stopping.is_set():
            self._dispatch()

    def _claim_roots(self) -> None:
        """Hold the lock of every drop root we can (see `locks`); hold back the others.

        A root another xnatdrop process owns with another state folder is held in the watcher
        (nothing in it is handed over) with one alert; one that a `push` of our own state folder
        holds is shared (same ledger, so the same ids cannot be handed out twice), and we take
        the lock once it is free. A missing root is the watcher's to pause.
        """
        state = self.settings.paths.state
        work_folder = self.settings.push.work_folder
        for path in self.projects:
            lock = self.root_locks.get(path)
            if lock is not None and lock.still_ours():
                continue
            if lock is not None:
                lock.release()  # unmounted or replaced: the file we locked is not there now
                del self.root_locks[path]
            if not path.is_dir():
                continue
            reason = None
            try:
                self.root_locks[path] = locks.acquire_root(path, work_folder, state, "run")
            except locks.Held as held:
                if not locks.shares_state(held.owner, state):
                    reason = (
                        f"{held.owner.describe()} with another state folder "
                        f"({held.owner.state or 'unknown'}) works in this drop root; two "
                        "configurations must not share a drop root (stop the other one)"
                    )
            except OSError as error:
                reason = (
                    f"cannot create {locks.root_lock_path(path, work_folder)} "
                    f"({error.strerror or error}); the service user must be able to write there"
                )
            self.watcher.hold(path, reason)

    def _dispatch(self, scanned: bool = False) -> None:
        """Collect finished pushes, then start new ones if the window is open and there is room;
        `scanned`: right after a scan (which the status file's time stands for)."""
        finished = self._collect()
        window_open = self.window.contains(self.now())
        try:
            if self.state_trouble is None:
                with ledger_module.Ledger(self.settings.paths.state) as ledger:
                    self.open_breaker = ledger.breaker()
        except StateError as error:
            self._state_failed(error)
        status.update(self, window_open, scanned)
        try:
            if finished:
                status.report_streaks(self.settings.paths.state, self.reported_streaks)
            if not window_open or self.stopping.is_set() or time.time() < self.held_until:
                return
            if self.state_trouble is not None and not self._state_recovered():
                return
            room = self.settings.schedule.max_concurrent_pushes - len(self.pushes)
            if self.open_breaker is not None:
                # Held until the breaker's next try; then one push at a time, which closes it
                # on success (see `breaker`).
                if time.time() < self.open_breaker.retry_at:
                    return
                room = min(room, 1 - len(self.pushes))
            if room <= 0:
                return
            with ledger_module.Ledger(self.settings.paths.state) as ledger:
                candidates = self._candidates(ledger)
                while room > 0 and not self.stopping.is_set():
                    work = next(candidates, None)
                    if work is None:
                        break
                    self._start_push(work)
                    room -= 1
        except StateError as error:
            self._state_failed(error)

    # ---- our own state folder: full, read-only, failing ------------------------------------

    def _state_failed(self, error: StateError) -> None:
        """Hold every push and try again later, doubling the wait; alert once per cause."""
        self.state_failures += 1
        delay = min(STATE_BACKOFF_MAX, STATE_BACKOFF_BASE * 2 ** (self.state_failures - 1))
        self.state_retry_at = time.monotonic() + delay
        if self.state_trouble != error.reason:
            log.error("ALERT: %s; pushes are held, next try in %.0f s", error, delay)
        else:
            log.debug("state folder still not writable; next try in %.0f s", delay)
        self.state_trouble = error.reason

    def _state_recovered(self) -> bool:
        """Once the backoff has passed: can the state folder be written again?"""
        if time.monotonic() < self.state_retry_at:
            return False
        try:
            with ledger_module.Ledger(self.settings.paths.state) as ledger:
                ledger.probe()
        except StateError as error:
            self._state_failed(error)
            return False
        log.warning("the state folder can be written again; pushes resume")
        self.state_trouble, self.state_failures = None, 0
        return True

    def _candidates(self, ledger: ledger_module.Ledger) -> Iterator[Work]:
        """Due ledger drops first (resume), then settled folders, oldest first.

        Lazy and free of side effects beyond `confirm`: the caller takes only as many as it has
        room for, and `_start_push` does the hand-over.
        """
        for drop in ledger.pending():
            key = f"{drop.project}/{drop.label}"
            if key in self.pushes:
                continue
            root = self.watcher.roots.get(Path(drop.source).parent)
            if root is not None and root.blocked:
                continue  # paused or owned by another process: its work area is not ours now
            folder = self.watcher.find(Path(drop.source))
            if drop.state == "new" and Path(drop.source).exists():
                # Registered, never frozen, still in the drop root: it must settle (again).
                settled = folder is not None and folder.state is watch.State.SETTLED
                if not settled or not self.watcher.confirm(folder):
                    continue
            yield Work(key, folder=folder, drop=drop)
        for folder in self.watcher.settled():
            key = f"{self.projects[folder.root]}/{folder.name}"
            if key in self.pushes:
                continue
            active = ledger.active(self.projects[folder.root], folder.name)
            if active is not None:
                # A drop with this label is unfinished (and not due yet): the ledger decides.
                if key not in self.waiting_labels:
                    log.info(
                        "%s: waits; drop %d with this label is still %s",
                        folder.name,
                        active.id,
                        active.state,
                    )
                    self.waiting_labels.add(key)
                continue
            self.waiting_labels.discard(key)
            if not self.watcher.confirm(folder):
                continue
            yield Work(key, folder=folder)

    def _start_push(self, work: Work) -> None:
        with self.pushes_lock:
            if self.stopping.is_set():
                return  # `_shutdown` took its list: this one starts next time
            if work.folder is not None:
                self.watcher.hand_over(work.folder)
            thread = threading.Thread(
                target=self._push, args=(work,), name=f"push {work.key}", daemon=True
            )
            self.pushes[work.key] = thread
            self.notices.push_started(work)
            how = f"resuming drop {work.drop.id} from {work.drop.state}" if work.drop else "new"
            log.info("%s: push starts (%s)", work.key, how)
            thread.start()

    def _push(self, work: Work) -> None:
        """Thread body: run the processor, report back. The per-drop error boundary is inside it."""
        # Reported if the processor raises (a bug; threading logs the traceback): the slot
        # must be freed and the folder looked at again later.
        result = Result(
            Kind.TRANSIENT,
            "the push crashed; see the traceback",
            time.time() + self.settings.schedule.retry_seconds,
        )
        try:
            result = self.processor(work, self.stopping)
        finally:
            self.finished.put((work, result))
            with contextlib.suppress(LookupError):
                if not self.stopping.is_set():
                    self.scheduler.modify_job("dispatch", next_run_time=dt.datetime.now())

    def _collect(self) -> int:
        """Apply finished pushes' results to the watcher (job thread only); return how many."""
        count = 0
        while True:
            try:
                work, result = self.finished.get_nowait()
            except queue.Empty:
                return count
            count += 1
            self.pushes.pop(work.key, None)
            log.info(
                "%s: push ended: %s%s",
                work.key,
                result.kind,
                f" ({result.detail})" if result.detail else "",
            )
            if result.kind is Kind.AUTH_FAILED:
                self.held_until = result.retry_at or (time.time() + 3600)
                log.error(
                    "ALERT: XNAT refused our credentials (%s); all pushes are held until "
                    "%s. Fix the password or account, then: systemctl restart xnatdrop",
                    result.detail,
                    time.strftime("%H:%M", time.localtime(self.held_until)),
                )
            if result.kind is Kind.STATE:
                self._state_failed(StateError(self.settings.paths.state, result.detail))
            elif self.state_trouble is not None and result.kind.final:
                log.warning("the state folder can be written again; pushes resume")
                self.state_trouble, self.state_failures = None, 0
            self.notices.pushed(self, work, result)
            folder = work.folder
            if folder is None:
                continue
            if not folder.path.exists() and (result.kind.final or folder.root.exists()):
                continue  # moved to work/done/quarantine: nothing left for the watcher
            # Still here, or its whole drop root is gone (unmounted, renamed) while the push
            # did not take it: give it back to the watcher, whose paused root settles it afresh
            # once the root is back (or forgets it, if it is not). Found by the campaign: a
            # root renamed away as a push began left the folder "handed over" for good.
            if result.kind is Kind.INCOMPLETE:
                self.watcher.look_again(folder, self.settings.settle.quiet_seconds, result.detail)
            elif not result.kind.final:
                delay = (result.retry_at - time.time()) if result.retry_at else self.poll
                self.watcher.look_again(folder, max(delay, self.poll), result.kind)
            else:
                # Finished, yet a folder of that name is in the drop root: a new copy that
                # arrived while the drop was under way (after a crash during freeze, say). It
                # is a drop of its own: settle it afresh.
                self.watcher.look_again(folder, self.poll, "a new folder of a finished label")
