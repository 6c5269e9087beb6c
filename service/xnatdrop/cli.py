"""The `xnatdrop` console script.

Each subcommand lives in its own module under `xnatdrop.commands` and exposes
`add_parser(subparsers)`, which registers a parser whose `func` default is the handler. A handler
takes the parsed arguments and returns an exit code; business logic stays in the step modules.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from xnatdrop import __version__, commands, logsetup
from xnatdrop.errors import ConfigError
from xnatdrop.exitcodes import Exit

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
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
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit code (see `xnatdrop.exitcodes.Exit`).

    Expected failures (a bad config, for one) print one readable message and no traceback;
    anything else is a bug and keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.configure(verbosity=-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return 130
