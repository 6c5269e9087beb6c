"""One module per `xnatdrop` subcommand; each exposes `add_parser(subparsers)`.

`cli` finds every module here (those whose name starts with `_` excepted) and registers its
parser. What several subcommands share is here too: the `--config FILE` option.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# A name, not the module: `config` here is the `config` subcommand's module once it is loaded.
from xnatdrop.config import SYSTEM_PATH


def add_config_argument(parser: argparse.ArgumentParser, *, system: bool = True) -> None:
    """The `--config FILE` option every subcommand shares (see `config.load_or_system`).

    `system` says whether the default is the system file (`run`, `push`, …) or only the
    built-in defaults (`check`, which also serves technologists without the service's file).
    """
    fallback = (
        f"{SYSTEM_PATH} if it exists, else built-in defaults" if system else "built-in defaults"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help=f"configuration file (default: {fallback})"
    )
