"""Prometheus metrics, in the text exposition format, on an optional local HTTP port.

Everything lives in a private `CollectorRegistry`, so nothing of the process-wide default
registry (or of another library using it) leaks in, and tests can build as many as they like.
`serve(address, port)` starts prometheus_client's own threaded HTTP server on 127.0.0.1 by
default (`[metrics]`); `close()` stops it.

| metric | type | what |
|---|---|---|
| `xnatdrop_drops{state}` | gauge | drops in the ledger per state (`Ledger.counts()`) |
| `xnatdrop_folders{state}` | gauge | folders the watcher holds per state (settling, settled, …) |
| `xnatdrop_uploaded_files_total`, `…_bytes_total` | counter | archived and verified |
| `xnatdrop_sessions_archived_total` | counter | sessions archived |
| `xnatdrop_quarantines_total{code}` | counter | drops quarantined, by code |
| `xnatdrop_oldest_waiting_seconds` | gauge | age of the oldest unfinished drop (0: none) |
| `xnatdrop_last_success_timestamp_seconds` | gauge | when a drop last reached done/ |
| `xnatdrop_xnat_request_seconds{method}` | histogram | XNAT request latency |
| `xnatdrop_pushes_held{cause}` | gauge | 1 while pushes are held (breaker, credentials) |
| `xnatdrop_upload_sent_bytes`, `…_upload_size_bytes` | gauge | of the uploads running now |
| `xnatdrop_alerts_total{kind}` | counter | alerts raised |

Labels are states, codes, methods and kinds: a small fixed set, never a session label or a
path (each label would be a new time series, and labels may be patient-derived at some sites).

The latency hook: `requests_hook()` returns a `requests` response hook that observes
`response.elapsed`; the daemon appends it to the XNAT client's session
(`client.http.hooks["response"].append(metrics.requests_hook())`), so `xnatdrop.xnat` needs no
change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from xnatdrop import __version__

log = logging.getLogger(__name__)

# Seconds; XNAT answers small GETs in milliseconds, and an import or archive in minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
HELD_CAUSES = ("breaker", "credentials")


class Metrics:
    """The daemon's metrics. A class because it owns a registry and, once served, a server."""

    def __init__(self, states: tuple[str, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = prometheus_client.Info("xnatdrop", "xnatdrop build", registry=r)
        self.info.info({"version": __version__})
        self.drops = Gauge("xnatdrop_drops", "Drops in the ledger per state", ["state"], registry=r)
        self.folders = Gauge(
            "xnatdrop_folders", "Folders in the drop roots per watcher state", ["state"], registry=r
        )
        self.files = Counter(
            "xnatdrop_uploaded_files", "Files archived in XNAT and verified", registry=r
        )
        self.bytes = Counter(
            "xnatdrop_uploaded_bytes", "Bytes archived in XNAT and verified", registry=r
        )
        self.sessions = Counter(
            "xnatdrop_sessions_archived", "Sessions archived in XNAT", registry=r
        )
        self.quarantines = Counter(
            "xnatdrop_quarantines", "Drops quarantined, by code", ["code"], registry=r
        )
        self.oldest = Gauge(
            "xnatdrop_oldest_waiting_seconds",
            "Age of the oldest unfinished drop (0 when none)",
            registry=r,
        )
        self.last_success = Gauge(
            "xnatdrop_last_success_timestamp_seconds",
            "When a drop last reached done/ (seconds since the epoch; 0: never)",
            registry=r,
        )
        self.latency = Histogram(
            "xnatdrop_xnat_request_seconds",
            "Time XNAT took to answer a request",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.held = Gauge(
            "xnatdrop_pushes_held", "1 while pushes are held, by cause", ["cause"], registry=r
        )
        for cause in HELD_CAUSES:
            self.held.labels(cause).set(0)
        self.upload_sent = Gauge(
            "xnatdrop_upload_sent_bytes",
            "Bytes sent so far of the uploads running now (0: none)",
            registry=r,
        )
        self.upload_size = Gauge(
            "xnatdrop_upload_size_bytes", "Size of the uploads running now (0: none)", registry=r
        )
        self.alerts = Counter("xnatdrop_alerts", "Alerts raised, by kind", ["kind"], registry=r)
        self._drop_states: set[str] = set(states)
        self._folder_states: set[str] = set()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- what the daemon reports -----------------------------------------------------------

    def set_drops(self, counts: Mapping[str, int]) -> None:
        """Per-state counts (`Ledger.counts()`); states without drops read 0, not stale."""
        self._drop_states.update(counts)
        for state in self._drop_states:
            self.drops.labels(state).set(counts.get(state, 0))

    def set_folders(self, counts: Mapping[str, int]) -> None:
        """Per-state counts of the watcher (`Watcher.counts()`)."""
        self._folder_states.update(counts)
        for state in self._folder_states:
            self.folders.labels(state).set(counts.get(state, 0))

    def archived(self, files: int, size: int, at: float | None = None) -> None:
        self.sessions.inc()
        self.files.inc(files)
        self.bytes.inc(size)
        self.last_success.set(time.time() if at is None else at)

    def quarantined(self, code: str) -> None:
        self.quarantines.labels(code).inc()

    def set_oldest_waiting(self, seconds: float | None) -> None:
        self.oldest.set(max(0.0, seconds or 0.0))

    def set_last_success(self, at: float | None) -> None:
        if at is not None:
            self.last_success.set(at)

    def set_held(self, cause: str, held: bool) -> None:
        self.held.labels(cause).set(1 if held else 0)

    def set_uploading(self, sent: int, size: int) -> None:
        """The uploads running now: bytes sent of their total (progress = sent / size)."""
        self.upload_sent.set(sent)
        self.upload_size.set(size)

    def alerted(self, kind: str) -> None:
        self.alerts.labels(kind).inc()

    def observe_xnat(self, method: str, seconds: float) -> None:
        """The latency hook: one XNAT request of `method` took `seconds`."""
        self.latency.labels(method.upper()).observe(seconds)

    def requests_hook(self) -> Callable[..., None]:
        """A `requests` response hook feeding `observe_xnat` (see the module docstring)."""

        def hook(response: Any, *args: Any, **kwargs: Any) -> None:
            self.observe_xnat(response.request.method or "GET", response.elapsed.total_seconds())

        return hook

    def update_from_ledger(self, book: Any, now: float | None = None) -> None:
        """Drops per state, the oldest unfinished drop's age, the last success, from the
        ledger's public queries (`counts`, `oldest_pending`, `last_finished`)."""
        now = time.time() if now is None else now
        self.set_drops(book.counts())
        oldest = book.oldest_pending()
        self.set_oldest_waiting(None if oldest is None else now - oldest.created)
        last = book.last_finished()
        self.set_last_success(None if last is None else last.updated)

    # -- the endpoint ----------------------------------------------------------------------

    def text(self) -> bytes:
        """The exposition text, as the endpoint serves it."""
        return prometheus_client.generate_latest(self.registry)

    def serve(self, address: str, port: int) -> int:
        """Serve /metrics on `address:port` (0: any free port) in a daemon thread; return the
        port. Raise OSError (e.g. the port is taken), which the caller reports once."""
        server, thread = prometheus_client.start_http_server(port, address, self.registry)
        self._server, self._thread = server, thread
        bound = int(server.server_address[1])
        log.info("metrics at http://%s:%d/metrics", address, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
