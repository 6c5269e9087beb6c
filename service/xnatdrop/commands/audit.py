"""`xnatdrop audit [--since DATE] [--json] [--config FILE]`: is every archived session still in
XNAT as it was received? Reads the receipts in done/ and asks XNAT (see `xnatdrop.audit`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from xnatdrop import audit, cli, config, xnat
from xnatdrop.errors import AuthenticationError, TransientError
from xnatdrop.exitcodes import Exit


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-01-31"
        ) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="check that every archived session is still in XNAT as it was received",
        description="Reconcile the receipts in done/ with XNAT: each session still there, with "
        "its scans, its instances (by SOPInstanceUID from the scan catalogs) and its "
        "resources. Lists what is missing or changed since, each session by its label.",
    )
    cli.add_config_argument(parser)
    parser.add_argument(
        "--since",
        type=_date,
        metavar="DATE",
        help="only sessions archived on or after DATE (YYYY-MM-DD); default: all",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    password = settings.xnat.resolve_password(config.source_name(args.config))
    url = xnat.public_url(settings.xnat.url)
    try:
        with xnat.XnatClient(settings.xnat, password) as client:
            results = audit.audit(client, settings.paths.done, args.since)
    except (TransientError, AuthenticationError) as error:
        print(f"xnatdrop audit: cannot ask XNAT at {url}: {error}", file=sys.stderr)
        return Exit.TRANSIENT
    bad = [r for r in results if not r.ok]
    if args.json:
        report = {
            "xnat": url,
            "done": str(settings.paths.done),
            "since": args.since.isoformat() if args.since else None,
            "checked": len(results),
            "ok": len(results) - len(bad),
            "missing_or_changed": [r.label for r in bad],
            "sessions": [r.to_json() for r in results],
        }
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        since = f" archived since {args.since}" if args.since else ""
        print(
            f"audit of {len(results)} session(s){since} (receipts in {settings.paths.done}) "
            f"against {url}"
        )
        for result in results:
            head = f"  {result.status.upper():<10} {result.label} ({result.project})"
            if result.ok:
                print(f"{head}: as received ({result.summary})")
                continue
            print(f"{head}:")
            for problem in result.problems:
                print(f"      {problem}")
        if bad:
            labels = ", ".join(r.label for r in bad)
            print(f"{len(bad)} of {len(results)} session(s) missing or changed: {labels}")
        else:
            print("everything is in XNAT as it was received")
    return Exit.BLOCKED if bad else Exit.OK
