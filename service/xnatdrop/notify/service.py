"""`Notifier`: the one object through which the daemon tells the world what it does.

Built once from the configuration (`Notifier.from_config`), it holds the channels that are
switched on and offers the daemon a handful of calls; a channel that is off makes its calls do
nothing, so the daemon never asks which ones are on. None of the calls raises for a failed
delivery or blocks on the network (see `outbox`).

Where the daemon calls what (the wiring that follows the restructure of issue 10):

| where in the daemon | call |
|---|---|
| start, after the ledger opened | `Notifier.from_config(settings, source)`, then `start()` |
| each scan job begins | `cycle_started()` |
| each scan job ends | `refresh(book, folders, notices, progress)`, then `cycle_finished(ok)` |
| a push ended (`_collect`) | `drop_finished(result_kind, drop, drop_root)` |
| each `log.error("ALERT …")` | `alert(kind, key, text, drop_root)`; when it clears: `resolved(…)` |
| XNAT unreachable / back | `alerts.xnat_unreachable(detail)` / `alerts.xnat_answered()` |
| a cron job at `notify.digest_at` | `send_digest(book, waiting=…)` |
| each new XNAT client | `client.http.hooks["response"].append(notifier.request_hook())` |
| each push | `progress=notifier.progress_for(label)`; at its end `upload_ended(label)` |
| shutdown, after the pushes stopped | `close(timeout)` |

The daemon side of this table is `xnatdrop.daemon.notices`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xnatdrop import atomicfile, ledger
from xnatdrop.config import Config
from xnatdrop.errors import ConfigError
from xnatdrop.notify import alerts, digest, finished, mail, metrics, ping, sharestatus
from xnatdrop.notify.alerts import Kind

log = logging.getLogger(__name__)

DIGEST_STATE = "notify-digest.json"  # in paths.state: the end of the last digest delivered
DIGEST_DEFAULT_PERIOD = 86400.0


class Notifier:
    """Alerts, digest, ping, status files and metrics for one daemon."""

    def __init__(
        self,
        settings: Config,
        smtp_password: str | None = None,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.host = host or socket.gethostname()
        self.alerts = alerts.Alerts(settings, smtp_password, clock, self.host)
        notify = settings.notify
        self.pinger = ping.Pinger(notify.ping_url, notify.ping_start) if notify.ping_url else None
        self.metrics = metrics.Metrics(tuple(ledger.STATES)) if settings.metrics.port else None
        self.status_files = (
            {d.path: sharestatus.StatusFile(d.path, d.project) for d in settings.drop}
            if notify.status_file
            else {}
        )
        # Written by push threads (progress, the request hook), read by the daemon's job thread.
        self._lock = threading.Lock()
        self._uploads: dict[str, tuple[int, int]] = {}  # label -> (bytes sent, zip size)
        self.last_answer = 0.0  # epoch seconds of XNAT's last HTTP answer, any status

    @classmethod
    def from_config(cls, settings: Config, source: str = "config") -> Notifier:
        """Resolve the SMTP password now (a missing one is a ConfigError at start, like the
        XNAT password), then build."""
        password = settings.mail.resolve_password(source) if settings.mail.enabled else None
        return cls(settings, password)

    def start(self) -> None:
        """Serve the metrics endpoint, if configured. A port that cannot be bound is logged
        as an error and the daemon goes on without it."""
        if self.metrics is None or self.settings.metrics.port is None:
            return
        try:
            self.metrics.serve(self.settings.metrics.address, self.settings.metrics.port)
        except OSError as error:
            log.error(
                "metrics: cannot listen on %s:%d (%s); running without the endpoint; change "
                "metrics.port",
                self.settings.metrics.address,
                self.settings.metrics.port,
                error.strerror or error,
            )

    # -- alerts ----------------------------------------------------------------------------

    def alert(self, kind: Kind, key: str, text: str, drop_root: Path | None = None) -> bool:
        if self.metrics is not None:
            self.metrics.alerted(kind.value)
        if kind is Kind.PUSHES_HELD and self.metrics is not None:
            self.metrics.set_held("breaker", True)
        if kind is Kind.LOGIN_REFUSED and self.metrics is not None:
            self.metrics.set_held("credentials", True)
        return self.alerts.alert(kind, key, text, drop_root)

    def resolved(self, kind: Kind, key: str, text: str = "") -> bool:
        if kind is Kind.PUSHES_HELD and self.metrics is not None:
            self.metrics.set_held("breaker", False)
        if kind is Kind.LOGIN_REFUSED and self.metrics is not None:
            self.metrics.set_held("credentials", False)
        return self.alerts.resolved(kind, key, text)

    def request_hook(self) -> Callable[..., None]:
        """A `requests` response hook for the XNAT client: notes that XNAT answered (any
        status: an answer is what tells "XNAT is back" from "XNAT unreachable") and, with
        metrics, the request's latency."""
        latency = self.metrics.requests_hook() if self.metrics is not None else None

        def hook(response: Any, *args: Any, **kwargs: Any) -> None:
            self.last_answer = self.clock()
            if latency is not None:
                latency(response, *args, **kwargs)

        return hook

    # -- upload progress (push threads) ----------------------------------------------------

    def progress_for(self, label: str) -> Callable[[str, int, int], None]:
        """The pipeline's `progress(step, done, total)` callback for one drop: the bytes of
        the upload sent so far (step "import"), for the status file and the metrics."""

        def report(step: str, done: int, total: int) -> None:
            if step != "import" or total <= 0:
                return
            with self._lock:
                self._uploads[label] = (min(done, total), total)
            self._upload_metrics()

        return report

    def upload_ended(self, label: str) -> None:
        with self._lock:
            self._uploads.pop(label, None)
        self._upload_metrics()

    def percents(self) -> dict[str, int]:
        """label -> percent sent, for the uploads running now."""
        with self._lock:
            return {label: done * 100 // total for label, (done, total) in self._uploads.items()}

    def _upload_metrics(self) -> None:
        if self.metrics is None:
            return
        with self._lock:
            sent = sum(done for done, _ in self._uploads.values())
            size = sum(total for _, total in self._uploads.values())
        self.metrics.set_uploading(sent, size)

    # -- per cycle and per drop --------------------------------------------------------------

    def cycle_started(self) -> None:
        if self.pinger is not None:
            self.pinger.start()

    def cycle_finished(self, ok: bool) -> None:
        """After each scan job: `ok` False when the cycle hit an error an operator should see
        (an open alert, a drop root paused); the monitor then alarms at once."""
        if self.pinger is None:
            return
        if ok:
            self.pinger.success()
        else:
            self.pinger.fail()

    def drop_finished(self, kind: str, drop: Any, drop_root: Path | None) -> None:
        """A push ended with `kind` (the pipeline's outcome kind) for the ledger row `drop`
        (re-read after the push). Quarantines are alerted with the folder's QUARANTINE.txt, to
        the site and to the drop root's addresses; archives are counted."""
        if kind == "archived" and self.metrics is not None:
            receipt = (
                finished.read_record(Path(drop.final_path) / digest.RECEIPT_NAME)
                if drop.final_path
                else {}
            )
            self.metrics.archived(
                int(receipt.get("file_count", 0)), int(receipt.get("bytes", 0)), drop.updated
            )
        if kind != "quarantined":
            return
        if self.metrics is not None:
            self.metrics.quarantined(drop.last_error_code or "UNKNOWN")
        note = ""
        if drop.final_path:
            try:
                note = (Path(drop.final_path) / "QUARANTINE.txt").read_text(encoding="utf-8")
            except OSError:
                note = ""
        text = note.strip() or (
            f"xnatdrop did NOT archive {drop.label} (project {drop.project}): "
            f"{drop.last_error or 'see the log'}"
        )
        if drop.final_path:
            text += f"\n\nThe folder is now in {drop.final_path}."
        self.alert(Kind.QUARANTINED, drop.label, text, drop_root)

    def refresh(
        self,
        book: Any,
        folders: Mapping[Path, Iterable[sharestatus.FolderStatus]] | None = None,
        notices: Mapping[Path, str] | None = None,
        progress: Mapping[str, int] | None = None,
    ) -> None:
        """After each scan: the status files (ledger drops plus the watcher's `folders` per
        root, with a `notices` line per root), the metrics from the ledger, and free space.

        `book` (the open ledger) is read only for status files or metrics; without either it
        may be None, and the daemon then does not open the ledger each scan for nothing."""
        now = self.clock()
        if self.status_files:
            drops = book.drops()
            for root, status_file in self.status_files.items():
                records = sharestatus.from_ledger(drops, root, now, progress)
                known = {r.name for r in records}
                extra = [f for f in (folders or {}).get(root, []) if f.name not in known]
                status_file.update([*records, *extra], (notices or {}).get(root, ""), now)
        if self.metrics is not None:
            self.metrics.update_from_ledger(book, now)
        self.alerts.check_free_space()

    # -- the digest ----------------------------------------------------------------------------

    def _digest_path(self) -> Path:
        return self.settings.paths.state / DIGEST_STATE

    def digest_start(self) -> float:
        """Where the next digest begins: the end of the last one delivered, else a day ago."""
        try:
            data = json.loads(self._digest_path().read_text(encoding="utf-8"))
            return float(data["end"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.clock() - DIGEST_DEFAULT_PERIOD

    def _digest_sent(self, end: float) -> None:
        path = self._digest_path()
        try:
            atomicfile.write(path, json.dumps({"end": end}))
        except OSError as error:
            log.warning("cannot record the digest's time in %s (%s)", path, error.strerror)

    def build_digest(self, book: Any, waiting: Iterable[digest.Waiting] = ()) -> digest.Digest:
        start, end = self.digest_start(), self.clock()
        problems = [
            digest.Problem(
                s.at,
                f"{'resolved' if s.resolved else 'alert'}: "
                f"{alerts.WORDING[s.kind][0].format(key=s.key)}"
                + (
                    f" ({s.text.splitlines()[0]})"
                    if s.text and s.kind is not Kind.QUARANTINED
                    else ""
                ),
            )
            for s in self.alerts.since(start)
            if s.kind is not Kind.QUARANTINED  # listed with their reason among the quarantined
        ]
        return digest.from_ledger(book, start, end, self.host, waiting, problems)

    def send_digest(self, book: Any, waiting: Iterable[digest.Waiting] = ()) -> bool:
        """Build the digest since the last one and queue it; True if an e-mail was queued.

        Not sent when there is nothing to say, unless `notify.digest_when_empty`; the period
        then starts again now. A digest that cannot be delivered is not lost: the next one
        starts where the last delivered one ended.
        """
        report = self.build_digest(book, waiting)
        if report.empty and not self.settings.notify.digest_when_empty:
            self._digest_sent(report.end)
            log.info("digest: nothing to report since %s", time.ctime(report.start))
            return False
        if not self.settings.mail.enabled:
            return False
        message = digest.message(report, self.settings.mail)

        def deliver() -> None:
            try:
                mail.send(self.settings.mail, self.alerts.password, message)
            except mail.DeliveryError as error:
                self.alerts.channel.failed(str(error))
                return
            self.alerts.channel.worked()
            self._digest_sent(report.end)
            self.alerts.forget_before(report.end)

        return self.alerts.outbox.submit("the daily digest", deliver)

    def close(self, timeout: float = 10.0) -> None:
        """Let queued e-mails and pings go out within `timeout`; stop the metrics endpoint."""
        deadline = time.monotonic() + timeout
        self.alerts.close(max(0.0, deadline - time.monotonic()))
        if self.pinger is not None:
            self.pinger.close(max(0.0, deadline - time.monotonic()))
        if self.metrics is not None:
            self.metrics.close()


def doctor_checks(settings: Config, source: str = "config") -> Iterator[tuple[bool | None, str]]:
    """What `xnatdrop doctor` checks of the notification settings, one (passed, line) each:
    the SMTP server by connecting and logging in (nothing is sent), and the ping URL by
    resolving its host (nothing is fetched, so the monitor sees no ping)."""
    if settings.mail.enabled:
        try:
            password = settings.mail.resolve_password(source)
        except ConfigError as error:
            yield False, f"SMTP password: {'; '.join(error.problems)}"
        else:
            try:
                yield True, mail.check_connection(settings.mail, password)
            except mail.DeliveryError as error:
                yield False, str(error)
    else:
        yield None, "e-mail: off (no [mail] host); alerts are only in the log"
    if settings.notify.ping_url:
        try:
            yield True, ping.check_url(settings.notify.ping_url)
        except OSError as error:
            yield False, str(error)
