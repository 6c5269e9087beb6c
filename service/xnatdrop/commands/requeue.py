"""`xnatdrop requeue NAME [--as NEWLABEL] [--config FILE]`: send a fixed quarantined folder back.

NAME is the quarantined folder's name (`<label>__<time>`) or just the label, when only one
quarantined folder has it. The folder is renamed (same file system, never copied) to
`<drop root>/<label>`, or `<drop root>/<NEWLABEL>` with `--as` (the way to fix a wrong label:
NEWLABEL must follow the drop root's label pattern), where the daemon settles it and pushes it
as a new drop; its reason files (QUARANTINE.txt/.json) are moved to `<state>/requeued/<name>/`
so they do not travel with the session and the record is kept. The ledger marks the quarantined
drop `requeued`, so `xnatdrop status` no longer counts it as in quarantine. Refused, with the
reason, when the label is already waiting in the drop root or unfinished in the ledger.
Exit 0 requeued, 1 refused, 2 for a NEWLABEL that is not a valid label. The move itself is
`pipeline.quarantine.requeue`.
"""

from __future__ import annotations

import argparse
import sys

from xnatdrop import commands, config
from xnatdrop.exitcodes import Exit
from xnatdrop.pipeline import quarantine


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "requeue", help="send a fixed quarantined folder back into the drop folder"
    )
    parser.add_argument("name", metavar="NAME", help="quarantined folder name, or its label")
    parser.add_argument(
        "--as",
        dest="new_label",
        metavar="NEWLABEL",
        help="put it back under this label (the fix for LABEL_PATTERN and LABEL_EXISTS)",
    )
    commands.add_config_argument(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    try:
        target = quarantine.requeue(settings, args.name, args.new_label)
    except quarantine.BadLabel as error:
        print(f"requeue: {error}", file=sys.stderr)
        return Exit.USAGE
    except quarantine.RequeueError as error:
        print(f"requeue: {error}", file=sys.stderr)
        return Exit.BLOCKED
    except OSError as error:
        print(f"requeue: {error.filename}: {error.strerror}", file=sys.stderr)
        return Exit.BLOCKED
    renamed = f" under the new label {target.name}" if args.new_label else ""
    print(
        f"{args.name}: back in the drop folder{renamed} as {target}; it is pushed once it settles"
    )
    return Exit.OK
