"""`xnatdrop run [--config FILE]`: the daemon, in the foreground (systemd runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xnatdrop import config, daemon

DEFAULT_CONFIG = Path("/etc/xnatdrop/xnatdrop.toml")


def load_config(path: Path) -> config.Config:
    """Load `path`; the default path may be missing (then the built-in defaults apply)."""
    return config.load(None if path == DEFAULT_CONFIG and not path.exists() else path)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the daemon: watch the drop roots, upload settled sessions (systemd runs this)",
        description="Watch the drop roots, settle, and push sessions inside the upload window "
        "until SIGTERM. Speaks sd_notify when started by systemd (Type=notify).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"configuration file (default {DEFAULT_CONFIG})",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    # Resolve the password now: a missing credential is a usage error at start, not a
    # transient failure of every drop at night.
    password = settings.xnat.resolve_password(str(args.config))
    processor = daemon.pipeline_processor(settings, password)
    return daemon.Daemon(settings, processor).run()
