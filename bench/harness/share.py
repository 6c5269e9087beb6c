"""The check and the settle scans on a share that adds about 1 ms to every file operation.

The workload's folder is served through `latencyfs.py` (a FUSE passthrough that sleeps `delay`
per operation; that module says why FUSE and what it models). On the mount, each in a child
process (`probe`), each started after the kernel's cached names and attributes expired (the
mount keeps them CACHE_SECONDS, as an SMB client does; file data is never kept):

- one thread `stat`-ing every file: the per-operation latency actually added (a check on the
  set-up, not a result);
- `xnatdrop check` with one worker process per core, against the parallel read: the first
  64 KiB of every file read by PARALLEL threads (what a tool built for a share would do), and by
  one thread per core;
- the daemon's settle scans: the full fingerprint of the folder (a walk with a stat per file,
  run while a folder settles) and the shallow signature (run every poll while a settled folder
  waits for the upload window: the cost a share pays for months), against PARALLEL threads
  `stat`-ing every file.

Mounting needs /dev/fuse and the right to mount (root, as CI runs): without them this part fails
with the reason, it is not skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import client, probe
from harness.latencyfs import CACHE_SECONDS
from harness.workload import Workload

PARALLEL = 16
LATENCYFS = Path(__file__).with_name("latencyfs.py")


@contextlib.contextmanager
def mounted(source: Path, mountpoint: Path, delay: float, log: Path) -> Iterator[Path]:
    """Serve `source` at `mountpoint` with `delay` seconds per operation until the block ends."""
    if not os.path.exists("/dev/fuse"):
        raise RuntimeError("/dev/fuse is missing: the latency share needs FUSE (modprobe fuse)")
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as errors:
        server = subprocess.Popen(
            [sys.executable, str(LATENCYFS), str(source), str(mountpoint), str(delay)],
            stderr=errors,
        )
    pause = threading.Event()
    deadline = time.monotonic() + 30
    try:
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the latency share did not mount: {log.read_text(errors='replace')[-500:]}"
                )
            pause.wait(0.05)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            unmount = shutil.which("fusermount3") or shutil.which("fusermount")
            command = [unmount, "-u"] if unmount else ["umount"]
            subprocess.run([*command, str(mountpoint)], check=False, capture_output=True)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def measure(work: Workload, scratch: Path, delay: float) -> dict[str, Any]:
    """Figures on the share for `work` (its folder, read through a latency mount)."""
    mount = scratch / "share"
    with mounted(work.folder.parent, mount, delay, scratch / "latencyfs.log"):
        folder = mount / work.folder.name
        remote = [folder / p.relative_to(work.folder) for p in work.files]
        files = probe.list_files(remote, scratch / "share-files.txt")
        cores = client.CORES
        pause = threading.Event()

        def on_share(task: str, **spec: Any) -> dict[str, Any]:
            """One probe on the share, after the kernel's cached names and attributes expired."""
            pause.wait(CACHE_SECONDS * 1.5)
            return probe.run(task, spec, scratch)

        results: dict[str, Any] = {
            "delay_ms": delay * 1000,
            "stat_1": on_share("stat", files=files, threads=1),
            "check": on_share("check", files=files, folder=str(folder), workers=cores, cold=False),
            "read_parallel": on_share("read64k", files=files, threads=PARALLEL, cold=False),
            "read_cores": on_share("read64k", files=files, threads=cores, cold=False),
            "scan": on_share("scan", folder=str(folder)),
            "stat_parallel": on_share("stat", files=files, threads=PARALLEL),
        }
    local_files = probe.list_files(list(work.files), scratch / "local-files.txt")
    results["local_scan"] = probe.run("scan", {"folder": str(work.folder)}, scratch)
    results["local_check"] = probe.run(
        "check", {"files": local_files, "folder": str(work.folder), "workers": cores}, scratch
    )
    results["files"] = work.count
    results["op_ms"] = results["stat_1"]["seconds"] / work.count * 1000
    results["ratios"] = {
        "share check / parallel read (time)": results["check"]["seconds"]
        / results["read_parallel"]["seconds"],
        "share scan / parallel stat (time)": results["scan"]["seconds"]
        / results["stat_parallel"]["seconds"],
    }
    return results
