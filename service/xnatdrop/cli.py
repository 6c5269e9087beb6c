"""The `xnatdrop` console script.

Each subcommand lives in its own module under `xnatdrop.commands` and exposes
`add_parser(subparsers)`, which registers a parser whose `func` default is the handler. A handler
takes the parsed arguments and returns an exit code; business logic stays in the step modules.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
from pathlib import Path

from xnatdrop import __version__, commands, config, logsetup
from xnatdrop.errors import ConfigError, StateError
from xnatdrop.exitcodes import Exit

log = logging.getLogger(__name__)

SIGPIPE_EXIT = 128 + signal.SIGPIPE  # what a shell reports for a reader that went away


def add_config_argument(parser: argparse.ArgumentParser, *, system: bool = True) -> None:
    """The `--config FILE` option every subcommand shares (see `config.load_or_system`)."""
    fallback = (
        f"{config.SYSTEM_PATH} if it exists, else built-in defaults"
        if system
        else ("built-in defaults")
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help=f"configuration file (default: {fallback})"
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or only `command`'s when that names one.

    Why only one: each command module imports what its handler needs, and some need a lot (the
    sandbox imports pydicom and an HTTP server, `run` the daemon). `xnatdrop push` would pay
    about 0.3 s of imports for commands it never runs. Help and typos get the full parser.
    """
    parser = argparse.ArgumentParser(
        prog="xnatdrop",
        description="Take MRI sessions from a drop folder to an XNAT archive, unattended.",
    )
    parser.add_argument("--version", action="version", version=f"xnatdrop {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    for name in [command] if command in names else names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.add_parser(subparsers)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in `argv`: the first word that is not an option (the top-level
    options take no values), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit code (see `xnatdrop.exitcodes.Exit`).

    Expected failures (a bad config, for one) print one readable message and no traceback;
    anything else is a bug and keeps its traceback.
    """
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(words))
    args = parser.parse_args(words)
    logsetup.configure(verbosity=-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return Exit.USAGE
    except StateError as error:
        # Our own state folder is full or read-only: one sentence, and "try again later".
        print(error, file=sys.stderr)
        return Exit.TRANSIENT
    except BrokenPipeError:
        # `xnatdrop status | head`: the reader has all it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        return 130
