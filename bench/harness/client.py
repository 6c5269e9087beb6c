"""What xnatdrop's own code costs on one session, against the physical limits of the same files.

For each workload, each in its own child process (`probe`), from a cold page cache:

- check (`rules.check_folder`, the whole verdict) with one worker process per core, against
  - reading the first 64 KiB of every file with one thread per core (what the check must read
    at least; the check reads the same 64 KiB first), and
  - `pydicom.dcmread` of every whole file, one worker process per core (a naive checker);
- pack + send (the zip planned and streamed by `pack.Body` through requests, as the import
  step sends it) into the null sink, against reading and MD5-hashing the same files with one
  thread per core (the client's physical limit: it must read and hash every byte).

Every figure comes with the process's peak memory (VmHWM), and for process pools the largest
worker's, so time and memory can be plotted against the session's size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness import machine, probe
from harness.workload import Workload

CORES = os.cpu_count() or 1


def measure(
    work: Workload, scratch: Path, sink_url: str, sink_pid: int | None = None
) -> dict[str, Any]:
    """Run every client measurement on `work`; results keyed by measurement name.

    pack+send's `cpu_seconds` is the client process's own (all its threads); the null sink's
    CPU during it (`sink_pid`'s, from /proc) is given beside it as `sink_cpu_seconds`: both
    share the same cores, and only the client's is xnatdrop's cost."""
    files = probe.list_files(list(work.files), scratch / "files.txt")
    folder = str(work.folder)
    results: dict[str, Any] = {}
    results["read64k"] = probe.run(
        "read64k", {"files": files, "threads": CORES, "cold": True}, scratch
    )
    results["dcmread"] = probe.run("dcmread", {"files": files, "processes": CORES}, scratch)
    results["check"] = probe.run(
        "check", {"files": files, "folder": folder, "workers": CORES}, scratch
    )
    results["read_md5"] = probe.run("read_md5", {"files": files, "threads": CORES}, scratch)
    sink_before = machine.cpu_seconds(sink_pid) if sink_pid else 0.0
    results["pack_send"] = probe.run(
        "pack_send", {"files": files, "folder": folder, "url": sink_url}, scratch
    )
    if sink_pid:
        results["pack_send"]["sink_cpu_seconds"] = machine.cpu_seconds(sink_pid) - sink_before
    for result in results.values():
        result["files_per_s"] = work.count / result["seconds"]
        result["mb_per_s"] = work.bytes / 1e6 / result["seconds"]
    results["ratios"] = {
        "check / cold 64 KiB read": results["check"]["files_per_s"]
        / results["read64k"]["files_per_s"],
        "check / dcmread": results["check"]["files_per_s"] / results["dcmread"]["files_per_s"],
        "pack+send / read+MD5": results["pack_send"]["mb_per_s"] / results["read_md5"]["mb_per_s"],
    }
    return results
