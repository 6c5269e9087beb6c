"""`xnatdrop push PATH [--config FILE]`: push one subject folder to XNAT now.

The same code the daemon runs (`pipeline.process`), in the foreground. Exit 0 when the session is
archived and verified (the folder is in done/), 1 when it was quarantined, 3 when it stopped on a
transient error, a refused login or another xnatdrop process holding the folder (the next run
resumes where this one stopped), 2 for bad arguments or configuration.

On a terminal a progress bar shows bytes, rate and ETA while packing and uploading; otherwise
the log has one line per step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TextIO

from xnatdrop import cli, config, ledger, pipeline, xnat
from xnatdrop.exitcodes import Exit

EXIT_FOR = {
    "archived": Exit.OK,
    "quarantined": Exit.BLOCKED,
    "transient": Exit.TRANSIENT,
    "auth_failed": Exit.TRANSIENT,
    "busy": Exit.TRANSIENT,
    "stopped": Exit.TRANSIENT,
    "incomplete": Exit.TRANSIENT,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="push one subject folder to XNAT now",
        description="Check, pack, import, verify, archive and attach one subject folder; move "
        "it to done/ or quarantine/. Exit 0 archived, 1 quarantined, 3 stopped (rerun resumes).",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="the subject folder")
    cli.add_config_argument(parser)
    parser.set_defaults(func=run)


class ProgressBar:
    """One self-overwriting line on a terminal: step, percent, bytes, rate, ETA."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.step = ""
        self.started = 0.0
        self.drawn = 0.0

    def __call__(self, step: str, done: int, total: int) -> None:
        now = time.monotonic()
        if step != self.step:
            self.step, self.started, self.drawn = step, now, 0.0
        if now - self.drawn < 0.1 and done < total:
            return
        self.drawn = now
        elapsed = now - self.started
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        if elapsed >= 0.5 and done:  # a rate over the first instants means nothing
            rate = done / elapsed
            eta = int((total - done) / rate)
            speed = f"{rate / 1e6:6.1f} MB/s ETA {eta // 60}:{eta % 60:02d}"
        else:
            speed = "     - MB/s ETA -:--"
        line = (
            f"\r{step:>7} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} "
            f"{done / 1e6:8.1f}/{total / 1e6:.1f} MB {speed}\x1b[K"
        )
        self.stream.write(line + ("\n" if done >= total else ""))
        self.stream.flush()


@contextlib.contextmanager
def _stop_on_sigterm(stopping: threading.Event) -> Iterator[None]:
    """SIGTERM asks the push to stop at the next step boundary; the old handler comes back."""

    def handle(sig: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    password = settings.xnat.resolve_password(config.source_name(args.config))
    folder = Path(os.path.abspath(args.path))
    if settings.drop_for(folder) is None:
        roots = ", ".join(str(d.path) for d in settings.drop) or "none configured"
        print(f"{folder} is not in a drop root (drop roots: {roots})", file=sys.stderr)
        return Exit.USAGE

    def client_factory() -> xnat.XnatClient:
        return xnat.XnatClient(settings.xnat, password)

    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    stopping = threading.Event()
    with ledger.Ledger(settings.paths.state) as book, _stop_on_sigterm(stopping):
        try:
            outcome = pipeline.process(folder, settings, book, client_factory, stopping, progress)
        except FileNotFoundError as error:
            print(error, file=sys.stderr)
            return Exit.USAGE
    if outcome.kind == "archived":
        print(f"{outcome.label}: archived and verified; folder moved to {outcome.path}")
    elif outcome.kind == "quarantined":
        print(f"{outcome.label}: quarantined ({outcome.code}); see {outcome.path}/QUARANTINE.txt")
    else:
        when = (
            time.strftime("%H:%M:%S", time.localtime(outcome.retry_at))
            if outcome.retry_at
            else "after the problem is fixed"
        )
        print(f"{outcome.label}: stopped ({outcome.kind}): {outcome.detail}; resume: {when}")
    return EXIT_FOR[outcome.kind]
