"""`xnatdrop config check|example|unit`: validate a configuration file with the real loader;
print the documented example configuration or the systemd unit.

The example and the unit are package data (`xnatdrop/data/`, links to `config/` and
`systemd/` in the source tree, copied into the wheel), so a `pip install` carries what the
README's service section needs: `xnatdrop config example > /etc/xnatdrop/xnatdrop.toml`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from xnatdrop import config
from xnatdrop.exitcodes import Exit

EXAMPLE = "xnatdrop.example.toml"
UNIT = "xnatdrop.service"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="check a configuration file; print the example config or the systemd unit",
        description="Work with the configuration: validate a file with the loader the daemon "
        "uses, or print the documented example configuration or the systemd unit shipped "
        "with xnatdrop.",
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate a configuration file (and that its password files are usable)",
        description="Validate a configuration file with the loader `xnatdrop run` uses, and "
        "resolve the XNAT password (and the SMTP password, if [mail] logs in). Exit 0 if "
        "valid, 2 with every problem named if not.",
    )
    check.add_argument("--config", type=Path, required=True, metavar="FILE")
    check.set_defaults(func=run_check)
    example = actions.add_parser(
        "example",
        help="print the documented example configuration (every key, with its default)",
        description="Print the example configuration, every key with its default and meaning: "
        "xnatdrop config example > /etc/xnatdrop/xnatdrop.toml",
    )
    example.set_defaults(func=run_print, resource=EXAMPLE)
    unit = actions.add_parser(
        "unit",
        help="print the systemd unit (xnatdrop.service)",
        description="Print the systemd unit, with a comment on every hardening line: "
        "xnatdrop config unit > /etc/systemd/system/xnatdrop.service",
    )
    unit.set_defaults(func=run_print, resource=UNIT)


def text(name: str) -> str:
    """One of the operator files shipped as package data."""
    return resources.files("xnatdrop").joinpath("data", name).read_text(encoding="utf-8")


def run_print(args: argparse.Namespace) -> int:
    sys.stdout.write(text(args.resource))
    return Exit.OK


def run_check(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    settings.xnat.resolve_password(str(args.config))
    if settings.mail.enabled:
        settings.mail.resolve_password(str(args.config))
    drops = ", ".join(f"{d.project} <- {d.path}" for d in settings.drop) or "none"
    print(f"{args.config}: ok ({len(settings.drop)} drop root(s): {drops})")
    return Exit.OK
