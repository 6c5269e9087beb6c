"""The benchmark: one command, every figure against a baseline, written to docs/benchmarks.md.

    python bench/run.py [--quick] [--out DIR] [--only PARTS] [--push-max-gb GB]
                        [--xnatpy-max-gb GB] [--keep]

Builds its workloads from the real series in ../shared/dicom (cloned with fresh UIDs to reach
each size, in a temporary folder deleted afterwards), runs everything against local servers
(sandbox XNATs, a null sink, Orthanc, a latency share, the daemon) and writes DIR/benchmarks.md,
DIR/benchmarks/*.png and DIR/benchmarks/results.json (DIR defaults to docs/). Parts:

- sizes: sessions of 0.5, 2 and 8 GB (quick: 20 and 80 MB): check vs a cold 64 KiB read and
  pydicom.dcmread, pack+send into a null sink vs read+MD5, peak memory; and, up to
  --push-max-gb (default: every step; quick: the first one only), the push end to end vs curl
  and xnatpy with the sandbox's receive rate vs the disk's write rate;
- files: sessions of 1,000, 10,000 and 50,000 files (quick: 200 and 1,000): the same client
  figures;
- share: the 10,000-file session (quick: 1,000) read through a FUSE share adding 1 ms per file
  operation: the check and the settle scans against a parallel read;
- cstore: the C-STORE sender vs storescu to the same Orthanc (quick: the first series of each
  session);
- idle: the daemon's CPU time watching 1,000 settled folders (quick: 100, over 8 s);
- settle: time from the last byte written to the push starting, against quiet_seconds.

The run fails (exit 1, the reason on stderr) on any error; it never fails on a figure: targets
met or missed are in the report. Everything the harness needs is in the `bench` extra:
`pip install -e '.[test,bench]'`, plus curl, dcmtk, orthanc and fuse3 from Debian (.ci/run).
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# As xnatdrop's entry point sets it (xnatdrop/entry.py), before the harness imports pydicom and
# matplotlib (both import numpy): numpy's OpenBLAS would otherwise spin a thread for 0.1 s of
# CPU in this process and in each timed child, which inherits the setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from harness import (
    client,
    cstore,
    deletions,
    hostmemory,
    idle,
    machine,
    push,
    report,
    servers,
    settle,
    share,
    workload,
)

REPO = Path(__file__).resolve().parents[1]
PARTS = ("sizes", "files", "share", "cstore", "idle", "settle")
GB = 1e9


def plan(quick: bool) -> dict[str, Any]:
    """The steps of a run: full, or quick (small enough for CI, under 5 minutes)."""
    if quick:
        return {
            "sizes": [0.02, 0.08],
            "files": [200, 1000],
            "share_files": 1000,
            "push_max_gb": 0.02,
            "xnatpy_max_gb": 0.02,
            "cstore_repeat": 1,
            "cstore_series": 1,
            "idle": {"folders": 100, "files": 30, "seconds": 8.0, "quiet": 1.5},
            "settle": {"quiet": [1.0], "trials": 2},
            "deletion_window": 0.0,
        }
    return {
        "sizes": [0.5, 2.0, 8.0],
        "files": [1000, 10_000, 50_000],
        "share_files": 10_000,
        "push_max_gb": 8.0,
        "xnatpy_max_gb": 8.0,
        "cstore_repeat": 3,
        "cstore_series": None,
        "idle": {"folders": 1000, "files": 300, "seconds": 180.0, "quiet": 30.0},
        "settle": {"quiet": [5.0, 30.0], "trials": 3},
        "deletion_window": deletions.WINDOW_SECONDS,
    }


def _label_gb(gb: float) -> str:
    return f"{gb * 1000:.0f} MB" if gb < 1 else f"{gb:g} GB"


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def check_disk(work: Path, steps: dict[str, Any], parts: set[str]) -> None:
    """Refuse to start when the workdir cannot hold the largest step and what XNAT stores.

    The largest size step needs its clone, the zip curl sends (when pushed), the N-file
    baseline and store floor, and each sandbox's copy, all kept until the step ends
    (`deletions.py`); the largest file-count step needs its clone.
    """
    need = 0.0
    if "sizes" in parts:
        largest = max(steps["sizes"])
        pushed = largest <= steps["push_max_gb"]
        need = max(need, largest * GB * (6.2 if pushed else 1.2))
    if "files" in parts:
        need = max(need, max(steps["files"]) * 50_000 * 1.2)
    free = machine.free_bytes(work)
    if free < need:
        raise SystemExit(
            f"bench: {work} has {free / GB:.1f} GB free, the run needs about {need / GB:.1f} GB; "
            "free some space, use --workdir on a larger disk, or run --quick"
        )


def run_sizes(
    steps: dict[str, Any], work: Path, sink_url: str, sink_pid: int | None = None
) -> list[dict[str, Any]]:
    series = workload.templates(mix=True)
    rows = []
    for gb in steps["sizes"]:
        label = _label_gb(gb)
        folder = work / f"size-{gb:g}" / "drop" / workload.PATIENT_ID
        _say(f"sizes {label}: cloning")
        made = workload.clone(series, folder, target_bytes=int(gb * GB))
        row: dict[str, Any] = {
            "label": label, "gb": made.bytes / GB, "count": made.count, "bytes": made.bytes,
        }  # fmt: skip
        _say(f"sizes {label}: {made.count:,} files, {made.bytes / GB:.2f} GB; client figures")
        row["client"] = client.measure(made, work / f"size-{gb:g}" / "scratch", sink_url, sink_pid)
        if gb <= steps["push_max_gb"]:
            _say(f"sizes {label}: push end to end (curl, xnatpy, xnatdrop)")
            peers = gb <= steps["xnatpy_max_gb"]
            row["push"] = push.measure(made, work / f"size-{gb:g}" / "push", peers=peers)
        deletions.remove(work / f"size-{gb:g}")
        rows.append(row)
    return rows


def run_files(
    steps: dict[str, Any],
    work: Path,
    sink_url: str,
    parts: set[str],
    results: dict[str, Any],
    sink_pid: int | None = None,
) -> list[dict[str, Any]]:
    series = workload.templates(mix=False)
    rows = []
    counts = steps["files"] if "files" in parts else [steps["share_files"]]
    for count in counts:
        base = work / f"files-{count}"
        _say(f"files {count:,}: cloning")
        made = workload.clone(series, base / "drop" / workload.PATIENT_ID, target_files=count)
        row: dict[str, Any] = {
            "label": f"{count:,} files", "count": made.count, "bytes": made.bytes,
        }  # fmt: skip
        if "files" in parts:
            _say(f"files {count:,}: {made.bytes / GB:.2f} GB; client figures")
            row["client"] = client.measure(made, base / "scratch", sink_url, sink_pid)
        if "share" in parts and count == steps["share_files"]:
            _say(f"files {count:,}: the check and the settle scans on a 1 ms share")
            result = share.measure(made, base / "share-scratch", 0.001)
            result.update(cores=client.CORES, parallel=share.PARALLEL)
            results["share"] = result
        deletions.remove(base)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; on an error print one line naming it and return 1."""
    try:
        return _run(argv)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small steps (CI; under 5 minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where benchmarks.md goes")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts (default all: {PARTS})"
    )
    parser.add_argument(
        "--push-max-gb",
        type=float,
        help="push end to end up to this size (default all; quick 0.02)",
    )
    parser.add_argument(
        "--xnatpy-max-gb",
        type=float,
        help="run the xnatpy peer up to this size (default: as far as the push)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    steps = plan(args.quick)
    if args.push_max_gb is not None:
        steps["push_max_gb"] = args.push_max_gb
    steps["xnatpy_max_gb"] = min(
        steps["push_max_gb"],
        args.xnatpy_max_gb if args.xnatpy_max_gb is not None else steps["push_max_gb"],
    )
    deletions.set_window(steps["deletion_window"])
    deletions.assume_recent()
    args.workdir.mkdir(parents=True, exist_ok=True)
    check_disk(args.workdir, steps, parts)
    # The push, the daemon and the sandboxes start from bytecode, as from an installed wheel: where
    # PYTHONDONTWRITEBYTECODE is set an editable install has none, and each `xnatdrop push`
    # compiled its modules again (0.7 s of its start, counted in the whole job until stop 31).
    compileall.compile_dir(REPO / "service", quiet=1)

    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "cores": client.CORES,
        "steps": steps,
        "parts": sorted(parts),
        "machine": machine.describe(args.workdir),
        "load_before": machine.load_average(),
    }
    _say(f"load average before: {results['load_before']}")
    with hostmemory.held(enabled=not args.quick) as memory:
        results["machine"].update(memory)
        _say(f"free page reporting: {memory['free page reporting']}")
        _measure(args, steps, parts, results)
    results["load_after"] = machine.load_average()
    results["seconds"] = time.monotonic() - started
    written = report.write(results, args.out)
    _say(f"load average after: {results['load_after']}")
    for row in report.targets(results):
        _say(f"{row['verdict']:>10}  {row['target']}: {row['measured']}")
    _say(f"wrote {written} in {results['seconds'] / 60:.1f} min")
    return 0


def _measure(
    args: argparse.Namespace, steps: dict[str, Any], parts: set[str], results: dict[str, Any]
) -> None:
    """Every part of the run, in a temporary folder removed at the end (unless `--keep`)."""
    work = Path(tempfile.mkdtemp(prefix="xnatdrop-bench-", dir=args.workdir))
    try:
        with servers.null_sink(work / "nullsink.log") as sink:
            sink_url = f"{sink.url}/data/services/import"
            if "sizes" in parts:
                results["size_series"] = run_sizes(steps, work, sink_url, sink.pid)
                largest = max(steps["sizes"])
                if largest > steps["push_max_gb"]:
                    why = (
                        "a quick run keeps CI under 5 minutes"
                        if args.quick and args.push_max_gb is None
                        else "given on the command line"
                    )
                    results["push_skipped"] = (
                        f"Pushed end to end only up to {_label_gb(steps['push_max_gb'])} "
                        f"(`--push-max-gb`, {why}): the larger steps were not pushed (no curl, "
                        "xnatpy or xnatdrop push figures for them); the client figures above "
                        "cover every step."
                    )
                if steps["xnatpy_max_gb"] < min(largest, steps["push_max_gb"]):
                    results["xnatpy_skipped"] = (
                        f"xnatpy ran only up to {_label_gb(steps['xnatpy_max_gb'])} "
                        "(`--xnatpy-max-gb`, given on the command line, to keep the run short: "
                        "xnatpy takes several times as long as the push); the larger pushes "
                        "have no xnatpy column."
                    )
            if parts & {"files", "share"}:
                results["files_series"] = run_files(steps, work, sink_url, parts, results, sink.pid)
        if "cstore" in parts:
            _say("C-STORE: xnatdrop vs storescu")
            results["cstore"] = cstore.measure(
                steps["cstore_repeat"],
                work / "cstore",
                echo=lambda t: _say(t.strip()),
                per_session=steps["cstore_series"],
            )
        if "idle" in parts:
            _say(f"idle: {steps['idle']['folders']} settled folders")
            results["idle"] = idle.measure(work / "idle", **steps["idle"])
            deletions.remove(work / "idle")
        if "settle" in parts:
            _say("settle latency with a real daemon")
            source = workload.clone(
                workload.templates(mix=False), work / "settle-source" / "SESSION", target_files=343
            )
            results["settle"] = settle.measure(
                work / "settle", steps["settle"]["quiet"], steps["settle"]["trials"], source
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
