"""`xnatdrop run [--config FILE]`: the daemon, in the foreground (systemd runs it)."""

from __future__ import annotations

import argparse

from xnatdrop import cli, config, daemon


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the daemon: watch the drop roots, upload settled sessions (systemd runs this)",
        description="Watch the drop roots, settle, and push sessions inside the upload window "
        "until SIGTERM. Speaks sd_notify when started by systemd (Type=notify).",
    )
    cli.add_config_argument(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    # Resolve the password now: a missing credential is a usage error at start, not a
    # transient failure of every drop at night.
    password = settings.xnat.resolve_password(config.source_name(args.config))
    processor = daemon.pipeline_processor(settings, password)
    return daemon.Daemon(settings, processor).run()
