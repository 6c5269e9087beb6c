"""`xnatdrop run [--config FILE]`: the daemon, in the foreground (systemd runs it).

Before it starts it runs the folder checks `xnatdrop doctor` runs (`preflight`): a done/ or
quarantine/ folder it could never move a drop into, or a state folder it cannot write, stops it
here with doctor's words and exit 2, instead of failing every drop at its last step. A missing
drop root does not stop it (the root is paused until it appears), and neither does a second
problem with one root. A second daemon on the same state folder exits 2 at once.
"""

from __future__ import annotations

import argparse
import sys

from xnatdrop import commands, config, daemon, locks, preflight
from xnatdrop.exitcodes import Exit
from xnatdrop.notify.service import Notifier


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the daemon: watch the drop roots, upload settled sessions (systemd runs this)",
        description="Watch the drop roots, settle, and push sessions inside the upload window "
        "until SIGTERM. Speaks sd_notify when started by systemd (Type=notify).",
    )
    commands.add_config_argument(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    problems = preflight.run_blockers(settings)
    if problems:
        print(
            f"xnatdrop run: not started: {len(problems)} problem(s) with the folders "
            "(xnatdrop doctor shows the same):",
            file=sys.stderr,
        )
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return Exit.USAGE
    # Resolve the password now: a missing credential is a usage error at start, not a
    # transient failure of every drop at night.
    source = config.source_name(args.config)
    password = settings.xnat.resolve_password(source)
    # Alerts, digest, ping, status files, metrics: an SMTP password that cannot be found is a
    # usage error now too, like XNAT's.
    notifier = Notifier.from_config(settings, source)
    processor = daemon.pipeline_processor(settings, password, notifier)
    try:
        return daemon.Daemon(settings, processor, notifier=notifier).run()
    except locks.StateInUse as error:
        print(error, file=sys.stderr)
        return Exit.USAGE
