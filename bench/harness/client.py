"""What xnatdrop's own code costs on one session, against the physical limits of the same files.

For each workload, each in its own child process (`probe`), from a cold page cache:

- check (`rules.check_folder`, the whole verdict) with one worker process per core, against
  - reading the first 64 KiB of every file with one thread per core (what the check must read
    at least; the check reads the same 64 KiB first), and
  - `pydicom.dcmread` of every whole file, one worker process per core (a naive checker);
- pack + send (the zip planned and streamed by `pack.Body` through requests, as the import
  step sends it) into the null sink, against reading and MD5-hashing the same files with one
  thread per core (the client's physical limit: it must read and hash every byte).

Every measurement but dcmread runs in three interleaved rounds and keeps its least time (below);
dcmread, a minute at the large steps, repeats only where its first round was short.

Every figure comes with the process's peak memory (VmHWM), and for process pools the largest
worker's, so time and memory can be plotted against the session's size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness import machine, probe
from harness.rounds import least
from harness.workload import Workload

CORES = os.cpu_count() or 1

ROUNDS = 3
"""Interleaved rounds of the client measurements; each keeps its least time.

Every measurement runs once per round, each from a cold cache, so a disturbance (another
process's time slice, the host's I/O) only ever slows the round it falls in, and interleaving
gives both sides of a ratio the same chances (the sandbox's ingest and the push take their best
of three the same way). Until stop 33 only a workload whose measurements took under 5 s in all
(the 1,000-file step) was repeated; on this VM the file I/O of one measurement swung its CPU
time several-fold from one minute to the next, and pack+send / read+MD5 at 50,000 files read
0.74 and 0.87 in two runs of the same code."""

DCMREAD_REPEAT_SECONDS = 10.0
"""dcmread repeats only where its first round took less than this: it is the slow baseline (34 s
at 2 GB), its ratio to the check is 9-36× against a 5× target, and one more process's slice
cannot move that ratio across the target."""


def measure(
    work: Workload,
    scratch: Path,
    sink_url: str,
    sink_pid: int | None = None,
) -> dict[str, Any]:
    """Run every client measurement on `work`; results keyed by measurement name.

    pack+send's `cpu_seconds` is the client process's own (all its threads); the null sink's
    CPU during it (`sink_pid`'s, from /proc) is given beside it as `sink_cpu_seconds`: both
    share the same cores, and only the client's is xnatdrop's cost. Each measurement is the
    best of `ROUNDS` (dcmread's of one where its first round was long)."""
    files = probe.list_files(list(work.files), scratch / "files.txt")
    folder = str(work.folder)
    rounds = [_one_round(files, folder, sink_url, sink_pid, scratch, dcmread=True)]
    dcmread = rounds[0]["dcmread"]["seconds"] < DCMREAD_REPEAT_SECONDS
    for _ in range(ROUNDS - 1):
        rounds.append(_one_round(files, folder, sink_url, sink_pid, scratch, dcmread=dcmread))
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
    files: str, folder: str, sink_url: str, sink_pid: int | None, scratch: Path, dcmread: bool
) -> dict[str, dict[str, Any]]:
    """Each client measurement once (dcmread if asked), each in its own child process from a
    cold cache."""
    results: dict[str, dict[str, Any]] = {}
    results["read64k"] = probe.run(
        "read64k", {"files": files, "threads": CORES, "cold": True}, scratch
    )
    if dcmread:
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
    """`name`'s figure from the rounds that measured it (dcmread's may be only the first)."""
    return least([r[name] for r in rounds if name in r])
