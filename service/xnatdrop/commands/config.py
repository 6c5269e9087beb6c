"""`xnatdrop config check --config FILE`: validate a configuration file with the real loader."""

from __future__ import annotations

import argparse
from pathlib import Path

from xnatdrop import config
from xnatdrop.exitcodes import Exit


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="work with the configuration file")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a configuration file")
    check.add_argument("--config", type=Path, required=True, metavar="FILE")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    settings.xnat.resolve_password(str(args.config))
    drops = ", ".join(f"{d.project} <- {d.path}" for d in settings.drop) or "none"
    print(f"{args.config}: ok ({len(settings.drop)} drop root(s): {drops})")
    return Exit.OK
