"""`xnatdrop status [--config FILE] [--json]`: what the daemon is doing and what it has done.

Reads, never writes:

- whether a daemon runs: the state lock (`locks`), which the kernel frees the moment the daemon
  exits or is killed, so a stopped or crashed daemon reads as stopped at once (not after a
  timeout guessed from the status file); a daemon that holds the lock but has not rewritten its
  live view for several scans is running but stuck;
- the daemon's live view (`daemon-status.json`: folders settling, waits and why, paused roots);
- the ledger: unfinished drops, drops that failed the same way several times in a row, the
  last success, recent failures; and what is in each place *now*: a quarantined drop whose
  folder was requeued or moved out of quarantine/ is not counted as quarantined;
- the state folder's free space.

Exit 0, or 1 when something needs a person: the daemon is not running or stuck, a paused or
held drop root, held pushes, folders that cannot be uploaded as they are, a drop failing the
same way again and again, or a full state file system.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from xnatdrop import breaker, commands, config, daemon, ledger, locks
from xnatdrop.errors import StateError
from xnatdrop.exitcodes import Exit

LOW_SPACE = 1 << 20  # bytes free in the state folder below which it counts as full


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="drops per state, oldest pending, last success, recent failures"
    )
    commands.add_config_argument(parser)
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


def _daemon(settings: config.Config, now: float) -> dict[str, Any]:
    """Running or not (the lock), and its live view (the status file), if any."""
    state = settings.paths.state
    owner = locks.holder(state / locks.STATE_LOCK)
    try:
        live = json.loads((state / daemon.STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        live = {}
    updated = live.get("updated")
    # The daemon rewrites its view after every scan; three missed scans (and a minute) while it
    # holds the lock mean its scan loop is stuck (the systemd watchdog then restarts it).
    stale_after = max(60.0, 3 * settings.settle.poll_interval)
    fresh = updated is not None and now - float(updated) < stale_after
    view = {**live, "updated": _stamp(updated)}
    view.update(
        running=owner is not None,
        pid=owner.pid if owner is not None else live.get("pid"),
        stuck=owner is not None and not fresh,
        ever_ran=bool(live) or (state / locks.STATE_LOCK).exists(),
    )
    return view


def _places(settings: config.Config, book: ledger.Ledger | None) -> dict[str, int]:
    """How many drops are where now: pushing (unfinished), archived, in quarantine/, requeued
    or taken out of quarantine/ by hand."""
    if book is None:
        return {}
    counts = book.counts()
    quarantined = book.in_state("quarantined")
    still = sum(1 for d in quarantined if d.final_path and Path(d.final_path).is_dir())
    return {
        "unfinished": sum(n for state, n in counts.items() if state not in ledger.FINAL),
        "archived": counts.get("done", 0),
        "in_quarantine": still,
        "requeued": counts.get("requeued", 0),
        "moved_out_of_quarantine": len(quarantined) - still,
    }


def collect(settings: config.Config, failures: int = 5) -> dict[str, Any]:
    """Everything `status` shows, as plain data."""
    now = time.time()
    counts: dict[str, int] = {}
    places: dict[str, int] = {}
    oldest = last = None
    recent: list[ledger.Event] = []
    streaks: list[ledger.Streak] = []
    unreadable = None
    held = None
    if (settings.paths.state / ledger.FILENAME).exists():  # never create a ledger just to look
        try:
            with ledger.Ledger(settings.paths.state, readonly=True) as book:
                counts = book.counts()
                places = _places(settings, book)
                oldest = book.oldest_pending()
                last = book.last_finished()
                recent = book.recent_failures(failures)
                streaks = book.failure_streaks(daemon.REPEATED_FAILURES)
                held = book.breaker()
        except sqlite3.OperationalError as error:
            # "no such table": a ledger that was never fully created (its first write met a
            # full disk) reads as empty. Anything else is said, not raised: status is what an
            # operator runs when things go wrong, e.g. a full state file system leaves SQLite
            # unable to map the ledger's WAL index ("disk I/O error").
            if "no such table" not in str(error):
                unreadable = str(error)
        except StateError as error:
            unreadable = error.reason
    try:
        free: int | None = shutil.disk_usage(settings.paths.state).free
    except OSError:
        free = None
    return {
        "ledger_unreadable": unreadable,
        "drops": counts,
        "breaker": None if held is None else breaker.sentence(held),
        "places": places,
        "state_free_bytes": free,
        "oldest_pending": None
        if oldest is None
        else {
            "label": oldest.label,
            "project": oldest.project,
            "state": oldest.state,
            "since": _stamp(oldest.created),
            "age_seconds": round(now - oldest.created),
            "last_error": oldest.last_error,
            "next_attempt": _stamp(oldest.next_attempt) if oldest.next_attempt < 1e18 else None,
        },
        "last_success": None
        if last is None
        else {
            "label": last.label,
            "project": last.project,
            "at": _stamp(last.updated),
            "age_seconds": round(now - last.updated),
        },
        "repeated_failures": [
            {
                "label": s.drop.label,
                "project": s.drop.project,
                "times": s.count,
                "step": s.step,
                "code": s.code,
                "message": s.message,
            }
            for s in streaks
        ],
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
        "daemon": _daemon(settings, now),
    }


def needs_attention(report: dict[str, Any]) -> list[str]:
    """One sentence per thing a person must look at; empty when all is well."""
    problems = []
    if report.get("breaker"):
        problems.append(report["breaker"])
    live = report["daemon"]
    if not live["running"]:
        if live["ever_ran"]:
            problems.append(
                "the daemon is not running (stopped or crashed"
                + (f"; last seen {live['updated']})" if live.get("updated") else ")")
                + "; start it: systemctl start xnatdrop"
            )
        else:
            problems.append("the daemon has never run with this state folder")
    elif live["stuck"]:
        problems.append(
            f"the daemon (pid {live['pid']}) runs but has not finished a scan since "
            f"{live['updated'] or 'it started'}; a drop root may hang (the watchdog restarts it)"
        )
    if live["running"]:
        reasons = live.get("paused_reasons") or {r: "" for r in live.get("paused_roots", [])}
        for root, why in reasons.items():
            problems.append(f"drop root paused: {root}" + (f": {why}" if why else ""))
        if live.get("pushes_held_until"):
            problems.append("pushes held: XNAT refused our credentials")
        if live.get("state_problem"):
            problems.append(f"pushes held: cannot write the state folder ({live['state_problem']})")
        for name, why in live.get("troubles", []):
            problems.append(f"{name}: {why}")
    for streak in report["repeated_failures"]:
        problems.append(
            f"{streak['label']} failed {streak['times']} times in a row at {streak['step']} "
            f"({streak['code']}: {streak['message']})"
        )
    if report["ledger_unreadable"]:
        problems.append(f"the ledger cannot be read ({report['ledger_unreadable']})")
    free = report["state_free_bytes"]
    if free is not None and free < LOW_SPACE:
        problems.append(
            f"the state folder's file system is full ({free} bytes free); free space there"
        )
    return problems


def _drops_line(report: dict[str, Any]) -> str:
    places = report["places"]
    if not places:
        return "drops:         none yet"
    parts = [
        f"{places['unfinished']} unfinished",
        f"{places['archived']} archived",
        f"{places['in_quarantine']} in quarantine",
    ]
    if places["requeued"]:
        parts.append(f"{places['requeued']} requeued")
    if places["moved_out_of_quarantine"]:
        parts.append(f"{places['moved_out_of_quarantine']} taken out of quarantine by hand")
    unfinished = {s: n for s, n in report["drops"].items() if s not in ledger.FINAL}
    detail = ", ".join(f"{n} {s}" for s, n in sorted(unfinished.items()))
    return "drops:         " + ", ".join(parts) + (f" (unfinished: {detail})" if detail else "")


def render(report: dict[str, Any]) -> str:
    lines = []
    live = report["daemon"]
    if live["running"]:
        state = "STUCK" if live["stuck"] else "running"
        lines.append(f"daemon:        {state}, pid {live['pid']}, updated {live['updated']}")
        lines.append(f"               {live.get('status', '')}")
    elif live["ever_ran"]:
        lines.append(f"daemon:        NOT RUNNING (last seen {live['updated'] or 'never'})")
    else:
        lines.append("daemon:        not started with this state folder yet")
    lines.append(_drops_line(report))
    if live["running"]:
        for name, why in live.get("waiting", []):
            lines.append(f"waiting:       {name}: {why}")
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
    sys.stdout.flush()  # a closed pipe (`status | head`) shows here, where cli.main handles it
    return Exit.BLOCKED if needs_attention(report) else Exit.OK
