"""`xnatdrop push PATH [--config FILE]`: push one subject folder to XNAT now.

The same code the daemon runs (`pipeline.process`), in the foreground. Exit 0 when the session is
archived and verified (the folder is in done/), 1 when it was quarantined, 3 when it stopped on a
transient error, a refused login or another xnatdrop process holding the folder (the next run
resumes where this one stopped), 2 for bad arguments or configuration. A folder that is gone
because its drop already finished (the daemon took it first) is answered with where it went, and
the exit code of that outcome.

On a terminal a progress bar shows bytes, rate and ETA while packing and uploading; otherwise
the log has one line per step. Ctrl-C stops at once and says where the folder is (nothing is
lost; the same command resumes). That is Python's own KeyboardInterrupt, so it needs `push` to
start with SIGINT at its default: a background job of a script (`xnatdrop push … &`) inherits it
ignored (POSIX XCU 2.11) and, as any program, keeps ignoring it; SIGTERM still stops that one at
the next step. While it runs, `push` holds the drop root's lock (see `locks`) unless the daemon
of the same state folder does; a process of another configuration working in the same drop root
makes it refuse (exit 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from xnatdrop import commands, config, ledger, locks, pipeline, signals
from xnatdrop.errors import StateError
from xnatdrop.exitcodes import Exit


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="push one subject folder to XNAT now",
        description="Check, pack, import, verify, archive and attach one subject folder; move "
        "it to done/ or quarantine/. Exit 0 archived, 1 quarantined, 3 stopped (rerun resumes).",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="the subject folder")
    commands.add_config_argument(parser)
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


def _claim_root(settings: config.Config, root: Path) -> locks.Lock | None:
    """The drop root's lock for this push (see `locks`), or None when a process of our own
    state folder holds it (the daemon: same ledger, so it is safe to work beside it).

    Raise RootInUse when a process with another state folder works in this drop root.
    """
    state = settings.paths.state
    try:
        return locks.acquire_root(root, settings.push.work_folder, state, "push")
    except locks.Held as held:
        if locks.shares_state(held.owner, state):
            return None
        raise RootInUse(
            f"{root} is in use by {held.owner.describe()} with another state folder "
            f"({held.owner.state or 'unknown'}); two configurations must not share a drop "
            "root: push with that configuration, or stop the other process"
        ) from None


class RootInUse(Exception):
    """Another configuration works in this drop root; the message says what to do."""


def _where(settings: config.Config, folder: Path) -> str:
    """Where the drop of `folder` is now, for the message after Ctrl-C."""
    drop_settings = settings.drop_for(folder)
    assert drop_settings is not None
    with ledger.Ledger(settings.paths.state) as book:
        drop = book.active(drop_settings.project, folder.name)
    if drop is None:
        return f"{folder.name}: interrupted before anything was done; {folder} is untouched"
    place = next(
        (p for p in (drop.work, drop.source) if p and Path(p).is_dir()), drop.work or drop.source
    )
    return (
        f"{folder.name}: interrupted (drop {drop.id}, {drop.state}); nothing is lost: the "
        f"folder is in {place}. Run the same command again to resume where it stopped"
    )


def _gone(settings: config.Config, project: str, folder: Path, error: FileNotFoundError) -> int:
    """The folder is not there and nothing of its label is pending: if a drop of that label
    finished (the daemon took it while the operator typed `push`, found by the campaign), say
    where it went and exit as if this push had done it; else the error, exit 2."""
    last = None
    if (settings.paths.state / ledger.FILENAME).exists():
        with ledger.Ledger(settings.paths.state, readonly=True) as book:
            last = next(iter(reversed(book.drops(project, folder.name))), None)
    if last is not None and last.state == "done":
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.updated))
        print(f"{last.label}: already archived (drop {last.id}, {when}); now in {last.final_path}")
        return Exit.OK
    if last is not None and last.state == "quarantined":
        print(
            f"{last.label}: already quarantined ({last.last_error_code}, drop {last.id}); see "
            f"{last.final_path}/QUARANTINE.txt",
            file=sys.stderr,
        )
        return Exit.BLOCKED
    print(error, file=sys.stderr)
    return Exit.USAGE


def run(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    password = settings.xnat.resolve_password(config.source_name(args.config))
    folder = Path(os.path.abspath(args.path))
    drop_settings = settings.drop_for(folder)
    if drop_settings is None:
        roots = ", ".join(str(d.path) for d in settings.drop) or "none configured"
        print(f"{folder} is not in a drop root (drop roots: {roots})", file=sys.stderr)
        return Exit.USAGE
    try:
        root_lock = _claim_root(settings, drop_settings.path)
    except RootInUse as error:
        print(error, file=sys.stderr)
        return Exit.USAGE
    except OSError as error:
        print(
            f"cannot work in the drop root {drop_settings.path}: "
            f"{error.filename}: {error.strerror}",
            file=sys.stderr,
        )
        return Exit.USAGE

    client_factory = pipeline.xnat_client(settings, password)
    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    stopping = threading.Event()
    # SIGTERM asks the push to stop at the next step boundary; Ctrl-C (SIGINT) stops at once.
    on_sigterm = signals.capture(lambda sig, frame: stopping.set(), (signal.SIGTERM,))
    try:
        with ledger.Ledger(settings.paths.state) as book, on_sigterm:
            outcome = pipeline.process(folder, settings, book, client_factory, stopping, progress)
    except FileNotFoundError as error:
        return _gone(settings, drop_settings.project, folder, error)
    except KeyboardInterrupt:
        if progress is not None:
            sys.stderr.write("\n")
        print(_where(settings, folder), file=sys.stderr)
        return signals.INTERRUPTED
    finally:
        if root_lock is not None:
            root_lock.release()
    if outcome.kind is pipeline.Kind.ARCHIVED:
        print(f"{outcome.label}: archived and verified; folder moved to {outcome.path}")
    elif outcome.kind is pipeline.Kind.QUARANTINED:
        print(f"{outcome.label}: quarantined ({outcome.code}); see {outcome.path}/QUARANTINE.txt")
    elif outcome.kind is pipeline.Kind.BUSY:
        print(f"{outcome.label}: not pushed: {outcome.message}; see: xnatdrop status")
    elif outcome.kind is pipeline.Kind.STATE:
        print(StateError(settings.paths.state, outcome.message), file=sys.stderr)
    else:
        when = (
            time.strftime("%H:%M:%S", time.localtime(outcome.retry_at))
            if outcome.retry_at
            else "after the problem is fixed"
        )
        print(f"{outcome.label}: stopped ({outcome.kind}): {outcome.detail}; resume: {when}")
    return outcome.kind.exit_code
