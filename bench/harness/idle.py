"""The daemon's idle cost: CPU time while it watches settled folders waiting for the upload window.

Scenario (issue 5): `folders` settled subject folders of `files` empty files each (10 series
folders) wait in a drop root while the upload window is closed. `xnatdrop run` is its own
process; once its status file says every folder has settled, its CPU time (user + system, from
/proc/<pid>/stat) is sampled over `seconds` and given as a share of one core.

The scan interval is shortened (`quiet` seconds, a scan every quiet/3) to get enough scans in a
short measurement; the cost per scan is given too and scaled to the default interval (quiet
300 s, a scan every 100 s), which is what a site runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from harness import machine, product, servers


def make_tree(root: Path, folders: int, files: int, series: int = 10) -> int:
    per_series = max(1, files // series)
    for f in range(folders):
        for s in range(series):
            folder = root / f"SUBJ{f:05d}" / f"{s + 1:02d}_series"
            folder.mkdir(parents=True)
            for i in range(per_series):
                os.close(os.open(folder / f"IM{i:05d}.dcm", os.O_CREAT | os.O_WRONLY, 0o644))
    return folders * series * per_series


def closed_window() -> str:
    """A one-minute upload window two hours away: closed for the whole measurement."""
    start = dt.datetime.now() + dt.timedelta(hours=2)
    return f"{start:%H:%M}-{start + dt.timedelta(minutes=1):%H:%M}"


def measure(
    work: Path, folders: int, files: int, seconds: float, quiet: float, default_quiet: float = 300
) -> dict[str, Any]:
    drop = work / "drop"
    started = time.monotonic()
    total_files = make_tree(drop, folders, files)
    made = time.monotonic() - started
    config = work / "xnatdrop.toml"
    config.write_text(
        "\n".join(
            [
                "[paths]",
                f'state = "{work / "state"}"',
                f'quarantine = "{work / "quarantine"}"',
                f'done = "{work / "done"}"',
                "[[drop]]",
                f'path = "{drop}"',
                f'project = "{servers.PROJECT}"',
                "[settle]",
                f"quiet_seconds = {quiet}",
                "[schedule]",
                f'upload_window = "{closed_window()}"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    env = {**servers.env_without_notify(), "XNATDROP_XNAT_PASSWORD": "unused"}
    pause = threading.Event()
    with open(work / "daemon.log", "wb") as log:
        process = subprocess.Popen(product.daemon_command(config), env=env, stderr=log)
    try:
        status_file = work / "state" / "daemon-status.json"
        deadline = time.monotonic() + 20 * quiet + 600
        settle_start = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited early; see {work / 'daemon.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{folders} folders did not all settle; see {work}/daemon.log")
            try:
                status = json.loads(status_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                status = {}
            if status.get("folders", {}).get("settled") == folders:
                break
            pause.wait(0.5)
        settled_after = time.monotonic() - settle_start
        cpu0, wall0 = machine.cpu_seconds(process.pid), time.monotonic()
        pause.wait(seconds)
        cpu1, wall1 = machine.cpu_seconds(process.pid), time.monotonic()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)
    cpu, wall = cpu1 - cpu0, wall1 - wall0
    poll = quiet / 3
    per_scan = cpu / (wall / poll)
    return {
        "folders": folders,
        "files": total_files,
        "tree_seconds": made,
        "settled_seconds": settled_after,
        "quiet_seconds": quiet,
        "poll_seconds": poll,
        "measured_seconds": wall,
        "cpu_seconds": cpu,
        "per_scan_ms": per_scan * 1000,
        "core_percent": cpu / wall * 100,
        "default_core_percent": per_scan / (default_quiet / 3) * 100,
    }
