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
import textwrap

from xnatdrop import __version__, commands, exitcodes, logsetup, signals
from xnatdrop.errors import ConfigError, StateError
from xnatdrop.exitcodes import Exit

log = logging.getLogger(__name__)

SIGPIPE_EXIT = signals.EXIT_CODE_FROM_SIGNAL + signal.SIGPIPE  # the reader went away


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or only `command`'s when that names one.

    Why only one: each command module imports what its handler needs, and some need a lot (the
    sandbox imports pydicom and an HTTP server, `run` the daemon). `xnatdrop push` would pay
    about 0.3 s of imports for commands it never runs. Help and typos get the full parser.
    """
    parser = argparse.ArgumentParser(
        prog="xnatdrop",
        description="Take MRI sessions from a drop folder to an XNAT archive, unattended.",
        epilog="exit codes (every command; `xnatdrop COMMAND --help` says what each means "
        "there): 0 ok, 1 blocked or needs a person, 2 usage or configuration error, 3 stopped "
        "on a retryable problem (run again later)",
    )
    parser.add_argument("--version", action="version", version=f"xnatdrop {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "--log-format",
        choices=logsetup.FORMATS,
        default="text",
        help="text (default; journald priorities under systemd) or json (one object per line: "
        "time, level, label, step, code, message)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if m.name[0] != "_")
    for name in [command] if command in names else names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.add_parser(subparsers)
        _describe(subparsers.choices[name], module)
    return parser


def _describe(parser: argparse.ArgumentParser, module: object) -> None:
    """Give a subcommand's --help a description (its module docstring's first paragraph, if
    its parser has none) and its exit codes (`exitcodes.MEANINGS`) at the end."""
    if parser.description is None and module.__doc__:
        parser.description = module.__doc__.split("\n\n")[0]
    if parser.description:
        paragraphs = parser.description.split("\n\n")
        parser.description = "\n\n".join(textwrap.fill(" ".join(p.split()), 79) for p in paragraphs)
    epilog = exitcodes.epilog(parser.prog.split()[-1])
    if epilog:
        lines = epilog.splitlines()
        wrapped = [textwrap.fill(line, 79, subsequent_indent=" " * 5) for line in lines]
        parser.epilog = "\n".join(wrapped)
    # Both are wrapped here; argparse's default formatter would run the exit codes together.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _command(argv: list[str]) -> str | None:
    """The subcommand named in `argv`: the first word that is not an option or the value of
    `--log-format` (the one top-level option that takes a value), or None."""
    words = iter(argv)
    for word in words:
        if word == "--log-format":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit code (see `xnatdrop.exitcodes.Exit`).

    Expected failures (a bad config, for one) print one readable message and no traceback;
    anything else is a bug and keeps its traceback.
    """
    words = sys.argv[1:] if argv is None else argv
    try:
        with signals.deferred():
            parser = build_parser(_command(words))
    except KeyboardInterrupt:
        print(signals.STOPPED_WHILE_STARTING, file=sys.stderr)
        return signals.INTERRUPTED
    args = parser.parse_args(words)
    logsetup.configure(verbosity=-1 if args.quiet else args.verbose, log_format=args.log_format)
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
        return signals.INTERRUPTED
