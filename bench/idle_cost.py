"""Idle cost of `xnatdrop run`: CPU time per hour while it watches settled folders.

Scenario (issue 5): 1,000 settled subject folders holding 300,000 files (10 series folders of
30 empty files each) wait in a drop root for the upload window, which is closed. The daemon runs
as its own process; once every folder has settled, its CPU time (user + system, from
/proc/<pid>/stat) is sampled over a few minutes and extrapolated to one hour.

The scan interval is shortened (quiet 30 s, so a scan every 10 s) to get enough scans in a few
minutes; that overstates the cost of the default (quiet 300 s, a scan every 100 s) about tenfold,
and the per-scan figure printed lets you scale it to any interval. Target: < 1 % of one core.

Usage: python bench/idle_cost.py [--folders 1000] [--files 300] [--minutes 3] [--quiet 30]
The tree is created under /tmp and deleted afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (fields 14 and 15 of stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def make_tree(root: Path, folders: int, files: int, series: int = 10) -> None:
    per_series = max(1, files // series)
    for f in range(folders):
        for s in range(series):
            folder = root / f"SUBJ{f:05d}" / f"{s + 1:02d}_series"
            folder.mkdir(parents=True)
            for i in range(per_series):
                os.close(os.open(folder / f"IM{i:05d}.dcm", os.O_CREAT | os.O_WRONLY, 0o644))


def closed_window() -> str:
    """A one-minute upload window two hours away: closed for the whole measurement."""
    start = dt.datetime.now() + dt.timedelta(hours=2)
    end = start + dt.timedelta(minutes=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--files", type=int, default=300, help="files per folder")
    parser.add_argument("--minutes", type=float, default=3.0, help="measurement span")
    parser.add_argument("--quiet", type=float, default=30.0, help="settle.quiet_seconds")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xnatdrop-idle-"))
    pause = threading.Event()
    process = None
    try:
        drop = work / "drop"
        started = time.monotonic()
        make_tree(drop, args.folders, args.files)
        total_files = sum(1 for _ in drop.rglob("*.dcm"))
        print(
            f"tree: {args.folders} folders, {total_files} files "
            f"(made in {time.monotonic() - started:.0f} s)"
        )
        config_path = work / "xnatdrop.toml"
        config_path.write_text(
            "\n".join(
                [
                    "[paths]",
                    f'state = "{work / "state"}"',
                    f'quarantine = "{work / "quarantine"}"',
                    f'done = "{work / "done"}"',
                    "[[drop]]",
                    f'path = "{drop}"',
                    'project = "SPN01"',
                    "[settle]",
                    f"quiet_seconds = {args.quiet}",
                    "[schedule]",
                    f'upload_window = "{closed_window()}"',
                    "",
                ]
            ),
            encoding="utf-8",
        )
        env = {**os.environ, "XNATDROP_XNAT_PASSWORD": "unused"}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        process = subprocess.Popen(
            [sys.executable, "-m", "xnatdrop", "-q", "run", "--config", str(config_path)],
            env=env,
        )
        status_file = work / "state" / "daemon-status.json"
        settle_start = time.monotonic()
        while True:
            if process.poll() is not None:
                print("the daemon exited early", file=sys.stderr)
                return 1
            try:
                status = json.loads(status_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                status = {}
            if status.get("folders", {}).get("settled") == args.folders:
                break
            pause.wait(1)
        settle_cpu = cpu_seconds(process.pid)
        print(
            f"settled: all {args.folders} folders in {time.monotonic() - settle_start:.0f} s "
            f"wall, {settle_cpu:.1f} s CPU (start-up and {args.quiet:.0f} s of settling)"
        )

        poll = args.quiet / 3
        cpu0, wall0 = cpu_seconds(process.pid), time.monotonic()
        pause.wait(args.minutes * 60)
        cpu1, wall1 = cpu_seconds(process.pid), time.monotonic()
        cpu, wall = cpu1 - cpu0, wall1 - wall0
        scans = wall / poll
        per_hour = cpu / wall * 3600
        per_scan = cpu / scans
        default_per_hour = per_scan * 3600 / (300 / 3)
        print(
            f"idle: {cpu:.2f} s CPU over {wall:.0f} s wall (~{scans:.0f} scans, one per "
            f"{poll:.0f} s) = {per_scan * 1000:.0f} ms CPU per scan"
        )
        print(
            f"  at this interval: {per_hour:.0f} s CPU per hour = {per_hour / 36:.2f} % of one core"
        )
        print(
            f"  at the default interval (quiet 300 s, a scan every 100 s): "
            f"{default_per_hour:.0f} s CPU per hour = {default_per_hour / 36:.3f} % of one core"
        )
        verdict = "PASS" if per_hour / 36 < 1.0 else "FAIL"
        print(f"{verdict}: target < 1 % of one core at the measured (shortened) interval")
        return 0 if verdict == "PASS" else 1
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
