"""`xnatdrop check PATH [--config FILE] [--project P] [--json]`: the upload rules, a dry run.

For technologists and admins: point it at a subject folder and see what would be uploaded and
why anything would not. Nothing is moved or sent. Exit 0 when the folder would be uploaded,
1 when a finding blocks it, 2 on usage or config errors.

Every rule the daemon applies is applied here, or the report says which was not: the label rule
(the drop root's `label_pattern`) comes from the drop root PATH is in, or, for a folder
elsewhere (a USB stick, a staging area), from the drop root of the project named with
`--project`; without either the report says plainly that the label was not checked. PATH may
also be a whole drop root (a configured one, or a folder holding xnatdrop's work area): each
subject folder in it is checked on its own, as the daemon would, and the work area and hidden
folders are never read.

`xnatdrop check --codes [--json]` prints every code xnatdrop reports, with its action, what it
means and its fix (`codes`): the finding codes `[rules.actions]` takes, and the quarantine and
stop codes of a push.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from xnatdrop import codes, commands, config, names, rules
from xnatdrop.exitcodes import Exit

PROGRESS_MIN_FILES = 500  # smaller folders finish before a progress line would help
SHOWN_PER_CODE = 10  # the text report lists this many findings per code, then counts the rest


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a subject folder (or a whole drop root) against the upload rules (dry run)",
        description="Check one subject folder, or each folder of a drop root, against the "
        "upload rules and report what would be uploaded. Exit 0: would upload; 1: blocked; "
        "2: usage or config error.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "path", type=Path, metavar="PATH", nargs="?", help="the subject folder (or drop root)"
    )
    commands.add_config_argument(parser, system=False)
    parser.add_argument(
        "--project",
        metavar="P",
        help="for a folder outside the drop roots: apply the rules (label pattern included) "
        "of the drop root of project P in the configuration",
    )
    what.add_argument(
        "--codes",
        action="store_true",
        help="print every code xnatdrop reports (rule findings, quarantine and stop codes) "
        "with its action, what it means and its fix, instead of checking a folder",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--files", action="store_true", help="with --json: list every file of every series"
    )
    parser.set_defaults(func=run)


class UsageError(Exception):
    """PATH and the options do not fit together; the message says how to call it."""


def _drop_settings(
    settings: config.Config, folder: Path, project: str | None, source: str
) -> config.DropSettings | None:
    """The drop root whose rules apply to `folder`: its own, else that of `project`."""
    drop = settings.drop_for(folder)
    if drop is not None:
        if project is not None and drop.project != project:
            raise UsageError(
                f"{folder} is in the drop root of project {drop.project}, not {project}"
            )
        return drop
    if project is None:
        return None
    candidates = [d for d in settings.drop if d.project == project]
    if not candidates:
        known = ", ".join(sorted({d.project for d in settings.drop})) or "none"
        raise UsageError(
            f"no drop root for project {project} in {source} (projects there: {known}); "
            "give the service's configuration with --config"
        )
    if len({d.label_pattern for d in candidates}) > 1:
        raise UsageError(
            f"the drop roots of project {project} have different label patterns; check the "
            "folder inside one of them"
        )
    return candidates[0]


def _is_drop_root(settings: config.Config, folder: Path) -> bool:
    resolved = folder.resolve()
    return (
        any(d.path.resolve() == resolved for d in settings.drop)
        or (folder / settings.push.work_folder).is_dir()
    )


def run(args: argparse.Namespace) -> int:
    if args.codes:
        return _print_codes(args.json)
    settings = config.load(args.config)
    source = str(args.config) if args.config else "the built-in defaults (no --config)"
    folder: Path = args.path
    if not folder.is_dir() and not folder.is_symlink():
        print(f"xnatdrop check: {folder} is not a folder", file=sys.stderr)
        return Exit.USAGE
    try:
        if _is_drop_root(settings, folder) and not folder.is_symlink():
            return _check_root(settings, folder, args, source)
        drop = _drop_settings(settings, folder, args.project, source)
        progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
        verdict = _check_one(settings, folder, drop, progress)
    except UsageError as error:
        print(f"xnatdrop check: {error}", file=sys.stderr)
        return Exit.USAGE
    except rules.FolderGone as error:  # an unmounted share, or the daemon took the folder
        print(f"xnatdrop check: {error}", file=sys.stderr)
        return Exit.TRANSIENT
    if progress is not None:
        progress.done()
    if args.json:
        json.dump(_json(verdict, drop, args.files), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report(verdict, _label_note(drop, folder)))
    return Exit.OK if verdict.ok else Exit.BLOCKED


def _print_codes(as_json: bool) -> int:
    """The code table (`codes.CODES`), as text or as one JSON object."""
    if as_json:
        json.dump({"codes": codes.table_json()}, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(codes.table_text())
    return Exit.OK


def _check_one(
    settings: config.Config,
    folder: Path,
    drop: config.DropSettings | None,
    progress: _Progress | None = None,
) -> rules.Verdict:
    return rules.check_folder(
        folder,
        settings.rules_for(drop),
        drop,
        progress=progress,
        control_files=settings.control_files(),
    )


def _label_note(drop: config.DropSettings | None, folder: Path) -> str:
    """What the report says about the label rule: applied (with which pattern), or not."""
    if drop is None:
        return (
            f"label: NOT checked: {folder} is not in a drop root of the configuration, so no "
            "label pattern applies; give --project P (and --config FILE) to check it against "
            "that project's pattern"
        )
    pattern = drop.label_pattern or "none set; XNAT's characters only"
    return f"label: checked with the rules of drop root {drop.path} (pattern: {pattern})"


def _json(verdict: rules.Verdict, drop: config.DropSettings | None, files: bool) -> dict:
    data = verdict.to_json(files=files)
    data["label_checked"] = drop is not None
    data["label_pattern"] = drop.label_pattern if drop is not None else None
    return data


def _check_root(settings: config.Config, root: Path, args: argparse.Namespace, source: str) -> int:
    """Check each subject folder of a drop root, as the daemon would take them one by one."""
    subjects, unnamed = [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == settings.push.work_folder:
            continue  # hidden folders and xnatdrop's work area are never read
        if not names.valid(entry.name):
            unnamed.append(names.shown(entry.name))
        elif entry.is_dir() and not entry.is_symlink():
            subjects.append(entry)
    results = []
    for subject in subjects:
        drop = _drop_settings(settings, subject, args.project, source)
        results.append((_check_one(settings, subject, drop), drop))
    ok = all(v.ok for v, _ in results) and not unnamed
    if args.json:
        data = {
            "drop_root": str(root),
            "ok": ok,
            "folders": [_json(v, d, args.files) for v, d in results],
            "names_not_utf8": unnamed,
        }
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(root_report(root, results, unnamed))
    return Exit.OK if ok else Exit.BLOCKED


def root_report(
    root: Path,
    results: list[tuple[rules.Verdict, config.DropSettings | None]],
    unnamed: list[str],
) -> str:
    """One line per folder that would upload; the whole report for each blocked one."""
    lines = [f"{root}: {len(results) + len(unnamed)} subject folder(s)", ""]
    for verdict, drop in results:
        if verdict.ok:
            files = sum(s.file_count for s in verdict.series)
            lines.append(
                f"{verdict.label}: would upload — {len(verdict.series)} series, {files} files"
                + ("" if drop is not None else " (label NOT checked)")
            )
    for verdict, drop in results:
        if not verdict.ok:
            lines += ["", report(verdict, _label_note(drop, verdict.folder)).rstrip()]
    for name in unnamed:
        lines.append(
            f"{name}: BLOCKED — the folder name is not valid UTF-8; rename it using letters, "
            "digits, '_' and '-' only"
        )
    blocked = sum(1 for v, _ in results if not v.ok) + len(unnamed)
    lines += [
        "",
        f"verdict: {len(results) + len(unnamed) - blocked} would upload, {blocked} blocked",
    ]
    return "\n".join(lines) + "\n"


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


def report(verdict: rules.Verdict, label_note: str = "") -> str:
    """The human report: the outcome, the series to upload, findings worst first, what was
    not checked."""
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
    if verdict.reason_files:
        shown = ", ".join(p.as_posix() for p in verdict.reason_files)
        lines.append("")
        lines.append(
            f"  {shown}: xnatdrop's reason files from an earlier quarantine; set aside, not "
            "uploaded"
        )
    blocks = len(verdict.blocking())
    lines.append("")
    if label_note:
        lines.append(label_note)
    lines.append(
        "verdict: would upload" if verdict.ok else f"verdict: BLOCKED by {blocks} finding(s)"
    )
    return "\n".join(lines) + "\n"
