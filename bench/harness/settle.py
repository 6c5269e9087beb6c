"""Settle latency: from the last byte of a copy to the push starting, with a real daemon.

`xnatdrop run` (its own process, upload window always open) watches a drop root on the local
disk and pushes into a sandbox XNAT. For each trial a session is copied into the drop root
(`shutil.copytree` from a clone on the same disk, as a technologist's copy would arrive); the
clock starts when the copy returns (the last file closed) and stops when the daemon's freeze
step renames the folder out of the drop root (the first thing a push does), seen by polling
every 10 ms. The harness then waits for the push to finish before the next trial.

What to expect: a folder is settled when its fingerprint has not changed for `quiet_seconds`
over at least three scans, one every `poll` seconds (default quiet/3); kernel events bring
the next scan forward on a local disk. So the latency should lie between quiet_seconds and
quiet_seconds + one poll (the target), plus the time to start the push.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from harness import product, push, servers, workload


def measure(
    work: Path, quiet_values: list[float], trials: int, source: workload.Workload
) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    pause = threading.Event()
    for quiet in quiet_values:
        run = work / f"quiet-{quiet:g}"
        drop = run / "drop"
        drop.mkdir(parents=True)
        with servers.sandbox(run / "xnat") as xnat:
            config = run / "xnatdrop.toml"
            config.write_text(
                push.config_text(
                    xnat.url,
                    push.write_secret(run),
                    run,
                    drop,
                    settle=f"quiet_seconds = {quiet}",
                    push="poll_seconds = 0.2",
                ),
                encoding="utf-8",
            )
            env = servers.env_without_notify()
            with open(run / "daemon.log", "wb") as log:
                daemon = subprocess.Popen(product.daemon_command(config), env=env, stderr=log)
            try:
                for trial in range(trials):
                    label = f"BENCH_{quiet:g}_{trial + 1}".replace(".", "_")
                    target = drop / label
                    shutil.copytree(source.folder, target)
                    last_byte = time.monotonic()
                    deadline = last_byte + 4 * quiet + 120
                    while target.exists():
                        if daemon.poll() is not None:
                            raise RuntimeError(f"the daemon exited; see {run / 'daemon.log'}")
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{label} never started; see {run / 'daemon.log'}")
                        pause.wait(0.01)
                    latency = time.monotonic() - last_byte
                    _wait_finished(run, label, daemon, pause)
                    results.append({"quiet": quiet, "poll": quiet / 3, "latency": latency})
            finally:
                daemon.terminate()
                daemon.wait(120)
        shutil.rmtree(run, ignore_errors=True)
    worst = max(r["latency"] - r["quiet"] - r["poll"] for r in results)
    return {"trials": results, "worst_over_target": worst}


def _wait_finished(
    run: Path, label: str, daemon: subprocess.Popen[bytes], pause: threading.Event
) -> None:
    """Wait until the push put the folder in done/ (archived): it must not be quarantined."""
    deadline = time.monotonic() + 600
    while not any((run / "done").glob(f"*/{label}")):
        if any((run / "quarantine").glob(f"{label}*")):
            raise RuntimeError(f"{label} was quarantined; see {run / 'quarantine'}")
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{label} was not archived; see {run / 'daemon.log'}")
        pause.wait(0.1)
