"""What xnatdrop's own code costs on one session, against the physical limits of the same files.

For each workload, each in its own child process (`probe`), from a cold page cache:

- check (`rules.check_folder`, the whole verdict) with one worker process per core, against
  - reading the first 64 KiB of every file with one thread per core (what the check must read
    at least; the check reads the same 64 KiB first), and
  - `pydicom.dcmread` of every whole file, one worker process per core (a naive checker);
- pack + send (the zip planned and streamed by `pack.Body` through requests, as the import
  step sends it) into the null sink, against reading and MD5-hashing the same files with one
  thread per core (the client's physical limit: it must read and hash every byte).

A workload this small that its measurements take under `SHORT_ROUND_SECONDS` in all is measured
in three interleaved rounds, each measurement keeping its least time (below).

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

SHORT_ROUND_SECONDS = 5.0
"""A workload whose five measurements take less than this in all is measured three times.

Its steps are tens of milliseconds at 1,000 files (check 0.18 s, read+MD5 0.05 s in the stop 20
run), where one other process's time slice moves a ratio by a third. Each repeat is interleaved
(every measurement once per round, each from a cold cache) and each measurement keeps its least
time: a disturbance only ever slows a measurement down, and interleaving gives every side the
same chances (the sandbox's ingest ratio takes its best of three the same way). Larger
workloads run for seconds and are measured once."""


def measure(
    work: Workload,
    scratch: Path,
    sink_url: str,
    sink_pid: int | None = None,
    three_rounds: bool = False,
) -> dict[str, Any]:
    """Run every client measurement on `work`; results keyed by measurement name.

    pack+send's `cpu_seconds` is the client process's own (all its threads); the null sink's
    CPU during it (`sink_pid`'s, from /proc) is given beside it as `sink_cpu_seconds`: both
    share the same cores, and only the client's is xnatdrop's cost. `three_rounds` measures
    three rounds whatever the first took (`--quick`'s file-count steps: on a loaded machine,
    such as CI running the tests beside it, their first round can pass `SHORT_ROUND_SECONDS`)."""
    files = probe.list_files(list(work.files), scratch / "files.txt")
    folder = str(work.folder)
    rounds = [_one_round(files, folder, sink_url, sink_pid, scratch)]
    if three_rounds or sum(r["seconds"] for r in rounds[0].values()) < SHORT_ROUND_SECONDS:
        rounds += [_one_round(files, folder, sink_url, sink_pid, scratch) for _ in range(2)]
    results = {name: _best(name, rounds) for name in rounds[0]}
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


def _one_round(
    files: str, folder: str, sink_url: str, sink_pid: int | None, scratch: Path
) -> dict[str, dict[str, Any]]:
    """Each client measurement once, each in its own child process from a cold cache."""
    results: dict[str, dict[str, Any]] = {}
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
    return results


def _best(name: str, rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """`name`'s least-time round, with the highest peak memory of all its rounds (a memory
    figure is never improved by repeating), and every round's time as `round_seconds`."""
    best = dict(min((r[name] for r in rounds), key=lambda result: result["seconds"]))
    for key in ("peak_kb", "children_peak_kb"):
        best[key] = max(r[name][key] for r in rounds)
    best["round_seconds"] = [r[name]["seconds"] for r in rounds]
    return best
