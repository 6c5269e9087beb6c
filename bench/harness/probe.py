"""One measurement in a fresh child process: its wall time and its own peak memory.

    python bench/harness/probe.py TASK SPEC.json    # prints one JSON object on stdout

Why a child per measurement: peak memory (VmHWM, the kernel's resident-set high-water mark) is
per process, and a process that already holds a 60 MB harness, templates and earlier results
cannot say what one check or one upload needed. Every task, product or baseline, runs the same
way, so their times and memories are comparable: same interpreter start (not timed), same cache
state (dropped first where the task says "cold"), same number of threads or processes.

Tasks (SPEC fields in brackets):
- `read64k` [files, threads, cold]: read the first 64 KiB of each file (xnatdrop's header read
  size), `threads` at a time;
- `dcmread` [files, processes]: `pydicom.dcmread` of each whole file, cold, in `processes`
  forked workers; every file must parse;
- `check` [folder, files, workers, cold]: `rules.check_folder` on the folder; must pass and
  count every file;
- `read_md5` [files, threads]: read each whole file and MD5 it (1 MiB pieces), cold, the
  kernel reading each thread's next 32 files ahead as pack's readers have it do;
- `pack_send` [folder, files, url]: plan the zip and stream it with requests into the null
  sink, cold, as the import step does, saving the manifest into a spool folder when the body
  has hashed every file; the sink must have read every byte;
- `stat` [files, threads]: `os.stat` of each file;
- `scan` [folder]: the daemon's settle scans of one folder: the full fingerprint, then the
  shallow signature of a settled folder (twice: the first lists, the second only stats).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import machine

HEAD = 64 * 1024
PIECE = 1 << 20


def _files(spec: dict[str, Any]) -> list[str]:
    """The task's files, as strings: a list of Path objects would cost the probe itself
    about 1 KB a file, enough to blur a figure at 50,000 files."""
    return Path(spec["files"]).read_text().splitlines()


def _each_file(spec: dict[str, Any]) -> Iterator[str]:
    """The task's files one at a time, for a task whose peak memory is xnatdrop's: even the
    list of strings (about 150 bytes a file, 8 MB at 55,000 files) would be the probe's own
    memory counted in the figure."""
    with open(spec["files"], encoding="utf-8") as lines:
        for line in lines:
            yield line.rstrip("\n")


#: CPU time (user + system, every thread of this process) of the last `_timed` action: the
#: evidence that does not depend on what else the machine runs, unlike its wall time.
_CPU = {"seconds": 0.0}


#: The same action's rusage deltas (user and system CPU apart, page faults, context switches):
#: what tells a per-byte cost in the kernel (reclaim, faults) from one in Python.
_USAGE: dict[str, float] = {}
_USAGE_FIELDS = ("ru_utime", "ru_stime", "ru_minflt", "ru_majflt", "ru_nvcsw", "ru_nivcsw")


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started, cpu = time.perf_counter(), time.process_time()
    result = action()
    _CPU["seconds"] = time.process_time() - cpu
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    for field in _USAGE_FIELDS:
        _USAGE[field[3:]] = getattr(after, field) - getattr(usage, field)
    return seconds, result


def _in_threads(work: Callable[[str], int], paths: list[str], threads: int) -> int:
    """`work` on every path with `threads` threads, each taking every threads-th path.

    Not Executor.map over the paths: it makes a future per path up front, which grows with
    the file count (150 MB at 55,000 files) where a baseline should stay flat.
    """
    if threads <= 1:
        return sum(work(p) for p in paths)

    def share(part: list[str]) -> int:
        return sum(work(p) for p in part)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(share, [paths[i::threads] for i in range(threads)]))


def _head(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return len(os.read(fd, HEAD))
    finally:
        os.close(fd)


AHEAD = 32
"""Files opened ahead and handed to the kernel to read (POSIX_FADV_WILLNEED), as pack's readers
do (`packread.prefetch`): the baseline is the best read+MD5 known here, not a naive one."""


def _md5_ahead(paths: list[str]) -> int:
    """MD5 of each file in turn, the next AHEAD files already being read by the kernel."""
    ahead: list[int] = []
    opened = done = 0
    try:
        for index in range(len(paths)):
            while opened < min(len(paths), index + AHEAD):
                descriptor = os.open(paths[opened], os.O_RDONLY)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
                ahead.append(descriptor)
                opened += 1
            descriptor = ahead.pop(0)  # at most AHEAD long
            digest = hashlib.md5(usedforsecurity=False)
            try:
                while data := os.read(descriptor, PIECE):
                    digest.update(data)
                    done += len(data)
            finally:
                os.close(descriptor)
    finally:
        for descriptor in ahead:
            os.close(descriptor)
    return done


def _stat(path: str) -> int:
    return os.stat(path).st_size


def _dcmread_all(paths: list[str]) -> int:
    import pydicom

    for path in paths:
        pydicom.dcmread(path)  # raises on a file that does not parse: that is an error here
    return len(paths)


def read64k(spec: dict[str, Any]) -> dict[str, Any]:
    paths = _files(spec)
    if spec.get("cold", True):
        machine.drop_cache(paths)
    seconds, done = _timed(lambda: _in_threads(_head, paths, spec["threads"]))
    return {"seconds": seconds, "count": len(paths), "bytes_read": done}


def dcmread(spec: dict[str, Any]) -> dict[str, Any]:
    paths = _files(spec)
    machine.drop_cache(paths)
    processes = spec["processes"]
    size = max(16, len(paths) // (processes * 8))
    batches = [paths[i : i + size] for i in range(0, len(paths), size)]

    def run() -> int:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
            return sum(pool.map(_dcmread_all, batches))

    seconds, done = _timed(run)
    return {"seconds": seconds, "count": done}


def check(spec: dict[str, Any]) -> dict[str, Any]:
    from harness import product

    paths = _files(spec)
    if spec.get("cold", True):
        machine.drop_cache(paths)
    count = len(paths)
    del paths  # the check lists the folder itself; this list is not part of its cost
    seconds, verdict = _timed(lambda: product.check_folder(Path(spec["folder"]), spec["workers"]))
    if not verdict.ok or verdict.files_checked != count:
        raise SystemExit(
            f"check: ok={verdict.ok}, {verdict.files_checked} of {count} files checked; "
            f"blocking: {[f.code for f in verdict.blocking()][:5]}"
        )
    return {"seconds": seconds, "count": verdict.files_checked}


def read_md5(spec: dict[str, Any]) -> dict[str, Any]:
    paths = _files(spec)
    machine.drop_cache(paths)
    shares = [paths[i :: spec["threads"]] for i in range(spec["threads"])]

    def both() -> int:
        with concurrent.futures.ThreadPoolExecutor(spec["threads"]) as pool:
            return sum(pool.map(_md5_ahead, shares))

    seconds, done = _timed(both)
    return {"seconds": seconds, "count": len(paths), "bytes": done}


def pack_send(spec: dict[str, Any]) -> dict[str, Any]:
    import requests

    from harness import product

    folder = Path(spec["folder"])
    machine.drop_cache(_each_file(spec))
    start = len(str(folder)) + 1
    # The check's verdict, as the pack step gets it: made before the clock starts (the check's
    # output, whose cost the check's own figure counts), the plan (stat of every file) after.
    entries = product.entries(path[start:] for path in _each_file(spec))
    count = len(entries)

    records = Path(tempfile.mkdtemp(prefix="spool-"))

    def send() -> int:
        planned = product.plan(folder, entries)
        saving = product.save_manifest(records)
        body = product.Body(folder, planned, manifest_file=saving)
        with requests.Session() as session, body:
            session.trust_env = False  # as xnatdrop's client: no ~/.netrc read on each request
            response = session.post(
                spec["url"], data=body, headers={"Content-Type": "application/zip"}, timeout=600
            )
        response.raise_for_status()
        received = int(response.json()["bytes"])
        if received != planned.zip_size:
            raise SystemExit(f"pack_send: the sink read {received} of {planned.zip_size} bytes")
        return received

    try:
        seconds, sent = _timed(send)
    finally:
        shutil.rmtree(records, ignore_errors=True)
    return {"seconds": seconds, "count": count, "bytes": sent}


def stat(spec: dict[str, Any]) -> dict[str, Any]:
    paths = _files(spec)
    seconds, _ = _timed(lambda: _in_threads(_stat, paths, spec["threads"]))
    return {"seconds": seconds, "count": len(paths)}


def scan(spec: dict[str, Any]) -> dict[str, Any]:
    from harness import product

    folder = Path(spec["folder"])
    seconds, print_ = _timed(lambda: product.fingerprint(folder))
    first, signature = _timed(lambda: product.shallow_signature(folder))
    again, _ = _timed(lambda: product.shallow_signature(folder, signature))
    return {
        "seconds": seconds,
        "count": print_.files,
        "shallow_first": first,
        "shallow_again": again,
    }


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "read64k": read64k,
    "dcmread": dcmread,
    "check": check,
    "read_md5": read_md5,
    "pack_send": pack_send,
    "stat": stat,
    "scan": scan,
}


def run(task: str, spec: dict[str, Any], scratch: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run one task in a child process (from the parent); its JSON result.

    Raise RuntimeError with the end of the child's error output if it fails.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    spec_path = scratch / f"{task}.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, __file__, task, str(spec_path)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"probe {task} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def list_files(paths: list[Path], target: Path) -> str:
    """Write the paths one a line to `target` (a task's `files`); return its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(str(p) for p in paths))
    return str(target)


def main(argv: list[str]) -> int:
    task, spec_path = argv
    result = TASKS[task](json.loads(Path(spec_path).read_text()))
    result["peak_kb"] = machine.peak_rss_kb()
    result["cpu_seconds"] = _CPU["seconds"]
    result["usage"] = dict(_USAGE)
    # Forked workers (check's sniffers, dcmread's pool): the largest one's high-water mark.
    result["children_peak_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
