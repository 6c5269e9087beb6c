"""`xnatdrop check PATH [--config FILE] [--json]`: the upload rules as a dry run.

For technologists and admins: point it at a subject folder and see what would be uploaded and
why anything would not. Nothing is moved or sent. Exit 0 when the folder would be uploaded,
1 when a finding blocks it, 2 on usage or config errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from xnatdrop import cli, config, rules
from xnatdrop.exitcodes import Exit

PROGRESS_MIN_FILES = 500  # smaller folders finish before a progress line would help
SHOWN_PER_CODE = 10  # the text report lists this many findings per code, then counts the rest


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a subject folder against the upload rules (dry run)",
        description="Check one subject folder against the upload rules and report what would "
        "be uploaded. Exit 0: would upload; 1: blocked; 2: usage or config error.",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="the subject folder")
    cli.add_config_argument(parser, system=False)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--files", action="store_true", help="with --json: list every file of every series"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    folder: Path = args.path
    if not folder.is_dir() and not folder.is_symlink():
        print(f"xnatdrop check: {folder} is not a folder", file=sys.stderr)
        return Exit.USAGE
    drop = settings.drop_for(folder)
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    verdict = rules.check_folder(
        folder,
        settings.rules_for(drop),
        drop,
        progress=progress,
        control_files=settings.control_files(),
    )
    if progress is not None:
        progress.done()
    if args.json:
        json.dump(verdict.to_json(files=args.files), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report(verdict))
    return Exit.OK if verdict.ok else Exit.BLOCKED


class _Progress:
    """A one-line counter on a terminal, rewritten in place; silent for small folders."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if total < PROGRESS_MIN_FILES:
            return
        self.stream.write(f"\rchecking: {done}/{total} files ({100 * done // total}%)")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def report(verdict: rules.Verdict) -> str:
    """The human report: the outcome, the series to upload, then findings worst first."""
    files = sum(s.file_count for s in verdict.series)
    megabytes = sum(s.bytes for s in verdict.series) / 1e6
    outcome = "would upload" if verdict.ok else "BLOCKED"
    lines = [
        f"{verdict.label}: {outcome} — {len(verdict.series)} series, {files} files, "
        f"{megabytes:.1f} MB ({verdict.files_checked} files checked)"
    ]
    if verdict.series:
        lines.append("")
        lines.append(f"  {'series':>7}  {'files':>6}  {'MB':>7}  description / folder")
        for series in verdict.series:
            lines.append(
                f"  {series.series_number or '?':>7}  {series.file_count:>6}  "
                f"{series.bytes / 1e6:>7.1f}  {series.description or '-'}  "
                f"[{series.folder.as_posix()}]"
            )
    if verdict.sidecars:
        lines.append("")
        lines.append("  sidecars: " + ", ".join(verdict.sidecars))
    shown = verdict.reported()
    if shown:
        lines.append("")
        lines.append(f"findings ({len(shown)}):")
        per_code: dict[str, int] = {}
        for finding in shown:
            per_code[finding.code] = per_code.get(finding.code, 0) + 1
            if per_code[finding.code] <= SHOWN_PER_CODE:
                lines.append(
                    f"  {finding.action.upper():<7} {finding.code}  {finding.path.as_posix()}"
                )
                lines.append(f"          {finding.message}")
        for code, count in per_code.items():
            if count > SHOWN_PER_CODE:
                lines.append(f"  … and {count - SHOWN_PER_CODE} more {code} (see --json)")
    blocks = len(verdict.blocking())
    lines.append("")
    lines.append(
        "verdict: would upload" if verdict.ok else f"verdict: BLOCKED by {blocks} finding(s)"
    )
    return "\n".join(lines) + "\n"
