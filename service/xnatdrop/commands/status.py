"""`xnatdrop status [--config FILE] [--json]`: what the daemon is doing and what it has done.

Reads the ledger (drops per state, oldest pending, last successful finish, recent failures) and
the daemon's live view (`daemon-status.json` in the state folder: folders settling, paused
roots, pushes running). Never writes anything. Exit 0, or 1 when something needs a person: a
paused drop root, held pushes, or a daemon that stopped updating its view.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from xnatdrop import breaker, cli, config, daemon, ledger
from xnatdrop.exitcodes import Exit


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="drops per state, oldest pending, last success, recent failures"
    )
    cli.add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--failures",
        type=int,
        default=5,
        metavar="N",
        help="how many recent failures to list (default 5)",
    )
    parser.set_defaults(func=handle)


def _stamp(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def collect(settings: config.Config, failures: int = 5) -> dict[str, Any]:
    """Everything `status` shows, as plain data."""
    now = time.time()
    counts: dict[str, int] = {}
    oldest = last = None
    recent: list[ledger.Event] = []
    held = None
    if (settings.paths.state / ledger.FILENAME).exists():  # never create a ledger just to look
        with ledger.Ledger(settings.paths.state) as book:
            counts = book.counts()
            oldest = book.oldest_pending()
            last = book.last_finished()
            recent = book.recent_failures(failures)
            held = book.breaker()
    live_path = settings.paths.state / daemon.STATUS_FILE
    try:
        live = json.loads(live_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        live = None
    # The daemon rewrites its view every scan; three missed scans (and a minute) mean it is not
    # running, or stuck.
    stale_after = max(60.0, 3 * settings.settle.poll_interval)
    return {
        "drops": counts,
        "breaker": None if held is None else breaker.sentence(held),
        "oldest_pending": None
        if oldest is None
        else {
            "label": oldest.label,
            "project": oldest.project,
            "state": oldest.state,
            "since": _stamp(oldest.created),
            "age_seconds": round(now - oldest.created),
            "last_error": oldest.last_error,
        },
        "last_success": None
        if last is None
        else {
            "label": last.label,
            "project": last.project,
            "at": _stamp(last.updated),
            "age_seconds": round(now - last.updated),
        },
        "recent_failures": [
            {
                "label": e.label,
                "project": e.project,
                "at": _stamp(e.at),
                "event": e.event,
                "step": e.step,
                "code": e.detail.get("code"),
                "message": e.detail.get("message"),
            }
            for e in recent
        ],
        "daemon": None
        if live is None
        else {
            **live,
            "updated": _stamp(live.get("updated")),
            "running": now - float(live.get("updated", 0)) < stale_after,
        },
    }


def needs_attention(report: dict[str, Any]) -> list[str]:
    problems = []
    if report.get("breaker"):
        problems.append(report["breaker"])
    live = report["daemon"]
    if live is None:
        problems.append("the daemon has never run with this state folder")
    elif not live["running"]:
        problems.append(f"the daemon has not updated its status since {live['updated']}")
    else:
        problems += [f"drop root paused: {root}" for root in live.get("paused_roots", [])]
        if live.get("pushes_held_until"):
            problems.append("pushes held: XNAT refused our credentials")
    return problems


def render(report: dict[str, Any]) -> str:
    lines = []
    live = report["daemon"]
    if live is None:
        lines.append("daemon:        no status file (not started with this state folder)")
    else:
        state = "running" if live["running"] else "NOT RUNNING (status file is stale)"
        lines.append(f"daemon:        {state}, pid {live.get('pid')}, updated {live['updated']}")
        lines.append(f"               {live.get('status', '')}")
    counts = report["drops"]
    lines.append(
        "drops:         "
        + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet")
    )
    oldest = report["oldest_pending"]
    lines.append(
        "oldest pending: "
        + (
            "none"
            if oldest is None
            else f"{oldest['label']} ({oldest['state']}) since {oldest['since']}"
            + (f"; last error: {oldest['last_error']}" if oldest["last_error"] else "")
        )
    )
    last = report["last_success"]
    lines.append(
        "last success:  " + ("never" if last is None else f"{last['label']} at {last['at']}")
    )
    failures = report["recent_failures"]
    lines.append(f"recent failures: {len(failures) or 'none'}")
    for f in failures:
        lines.append(f"  {f['at']}  {f['label']}  {f['step']}  {f['code']}: {f['message']}")
    for problem in needs_attention(report):
        lines.append(f"ATTENTION: {problem}")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    settings = config.load_or_system(args.config)
    report = collect(settings, args.failures)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(render(report))
    return Exit.BLOCKED if needs_attention(report) else Exit.OK
