"""What the daemon hands a push thread (`Work`), what it gets back (`Result`), and the real
processor that runs the pipeline for it (`pipeline_processor`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xnatdrop import config as config_module
from xnatdrop import ledger as ledger_module
from xnatdrop import pipeline, watch
from xnatdrop.errors import StateError
from xnatdrop.notify.service import Notifier
from xnatdrop.pipeline import Kind


@dataclasses.dataclass(frozen=True)
class Result:
    """What one push came to, as the daemon needs to know it: the outcome's kind
    (`pipeline.Kind`: what it means for the daemon is documented there), one line, and when
    the drop is due again."""

    kind: Kind
    detail: str = ""
    retry_at: float | None = None
    code: str = ""  # the outcome's code (TRANSIENT, HELD, …), for the alerts
    drop_id: int | None = None  # the ledger row, re-read for the alerts and the digest

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))  # a kind's name reads as the kind


@dataclasses.dataclass(frozen=True)
class Work:
    """One push to run: a settled folder from a drop root, or an unfinished ledger drop."""

    key: str  # "project/label": at most one push per label at a time
    folder: watch.Folder | None = None
    drop: ledger_module.Drop | None = None


# A processor runs the pipeline for one Work item until it finishes, fails or checkpoints.
Processor = Callable[[Work, threading.Event], Result]


def pipeline_processor(
    settings: config_module.Config, password: str, notifier: Notifier | None = None
) -> Processor:
    """The real processor: `pipeline.process` for one drop, with its own ledger connection.

    The pipeline holds the per-drop error boundary (it records any failure in the ledger and
    returns an outcome); nothing here catches broadly. With a `notifier`, every XNAT client
    carries its response hook (latency; "XNAT answered") and the upload's progress reaches it.
    """
    make_client = pipeline.xnat_client(settings, password)

    def client_factory() -> Any:
        client = make_client()
        if notifier is not None:
            client.http.hooks["response"].append(notifier.request_hook())
        return client

    def process(work: Work, stopping: threading.Event) -> Result:
        # A resumed drop may already sit in the work area: the pipeline asks the ledger where.
        folder = work.folder.path if work.folder else Path(work.drop.source)  # type: ignore[union-attr]
        progress = notifier.progress_for(folder.name) if notifier is not None else None
        try:
            with ledger_module.Ledger(settings.paths.state) as ledger:
                outcome = pipeline.process(
                    folder, settings, ledger, client_factory, stopping, progress
                )
        except StateError as error:
            # Nowhere to record the failure: the daemon holds all pushes and backs off.
            return Result(Kind.STATE, error.reason)
        except FileNotFoundError as error:
            # The folder went away after it settled and nothing of it is in the ledger: the
            # watcher forgets it on its next scan; not a crash.
            return Result(Kind.STOPPED, str(error), time.time())
        finally:
            if notifier is not None:
                notifier.upload_ended(folder.name)
        return Result(outcome.kind, outcome.detail, outcome.retry_at, outcome.code, outcome.drop_id)

    return process
