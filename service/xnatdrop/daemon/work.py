"""What the daemon hands a push thread (`Work`), what it gets back (`Result`), and the real
processor that runs the pipeline for it (`pipeline_processor`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

from xnatdrop import config as config_module
from xnatdrop import ledger as ledger_module
from xnatdrop import pipeline, watch
from xnatdrop.errors import StateError
from xnatdrop.pipeline import Kind


@dataclasses.dataclass(frozen=True)
class Result:
    """What one push came to, as the daemon needs to know it: the outcome's kind
    (`pipeline.Kind`: what it means for the daemon is documented there), one line, and when
    the drop is due again."""

    kind: Kind
    detail: str = ""
    retry_at: float | None = None

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


def pipeline_processor(settings: config_module.Config, password: str) -> Processor:
    """The real processor: `pipeline.process` for one drop, with its own ledger connection.

    The pipeline holds the per-drop error boundary (it records any failure in the ledger and
    returns an outcome); nothing here catches broadly.
    """
    client_factory = pipeline.xnat_client(settings, password)

    def process(work: Work, stopping: threading.Event) -> Result:
        # A resumed drop may already sit in the work area: the pipeline asks the ledger where.
        folder = work.folder.path if work.folder else Path(work.drop.source)  # type: ignore[union-attr]
        try:
            with ledger_module.Ledger(settings.paths.state) as ledger:
                outcome = pipeline.process(folder, settings, ledger, client_factory, stopping)
        except StateError as error:
            # Nowhere to record the failure: the daemon holds all pushes and backs off.
            return Result(Kind.STATE, error.reason)
        except FileNotFoundError as error:
            # The folder went away after it settled and nothing of it is in the ledger: the
            # watcher forgets it on its next scan; not a crash.
            return Result(Kind.STOPPED, str(error), time.time())
        return Result(outcome.kind, outcome.detail, outcome.retry_at)

    return process
