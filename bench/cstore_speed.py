"""C-STORE speed: xnatdrop's sender vs DCMTK's storescu, same files, same Orthanc.

    python bench/cstore_speed.py [--repeat 3] [--workdir /tmp] [--keep] [--profile FILE.html]

1. Takes every raw series of two real sessions from ../shared/dicom (GE SIGNA Premier, 8 series
   of classic MR images; Siemens XA30, 9 series of enhanced multi-frame MR and the Phoenix
   report), as `xnatdrop check` picks them: 423 instances, 59 MB, all Explicit VR Little Endian.
   The files are read where they are (never copied) and read once before any timing, so every
   run finds them in the page cache.
2. For each run, starts a fresh Orthanc (Debian package; empty storage; TCP_NODELAY=1, without
   which DCMTK's delayed ACKs, not the senders, set the pace) and sends every series over one
   association per series:
   - xnatdrop: `dimse.send_series` per series, in this process, with its journal (fsync per
     instance) in a fresh file, as the pipeline will call it;
   - storescu: one `storescu -R` process per series (only the contexts the files need; it
     proposes Explicit VR LE first and Orthanc takes it, so both send the stored syntax).
   The two alternate, each run starting with the other one than the last, `--repeat` times.
3. Prints instances/s and MB/s per run, the median of each, and the ratio xnatdrop/storescu.
   Target (issue 12): at least 0.8.

storescu is started once per series, so its figures include one process start per series
(about 10 ms each, 17 in all); that is how a site would script it. The load average is printed
before and after: the machine is shared, so compare figures from one run only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "dimse"))  # orthanc.py, beside the sender's tests
sys.path.insert(0, str(REPO / "service"))

from orthanc import Orthanc  # noqa: E402
from shared_data import dataset  # noqa: E402
from xnatdrop import dimse, rules  # noqa: E402
from xnatdrop.config import DicomSettings  # noqa: E402

SESSIONS = [
    ("ge_signa_premier_table", "In/GE/Exam1486_Laser794mm"),
    ("siemens_xa30_enhanced", "In"),
]


def all_series() -> list[list[Path]]:
    """The raw series of both sessions, as the rules module picks them."""
    found = []
    for name, sub in SESSIONS:
        folder = dataset(name) / sub
        verdict = rules.check_folder(folder)
        if not verdict.ok:
            raise SystemExit(f"{folder}: not a clean session: {verdict.blocking()[0].message}")
        found += [[folder / entry.path for entry in s.files] for s in verdict.series]
    return found


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_xnatdrop(series: list[list[Path]], orthanc: Orthanc, work: Path) -> int:
    settings = DicomSettings(host="127.0.0.1", port=orthanc.dicom_port, calling_aet="XNAT")
    journal = work / "journal.jsonl"
    stored = 0
    for files in series:
        report = dimse.send_series(files, settings, journal)
        if not report.complete or report.associations != 1:
            raise SystemExit(f"xnatdrop: incomplete series {files[0].parent.name}: {report}")
        stored += report.stored
    return stored


def run_storescu(series: list[list[Path]], orthanc: Orthanc, work: Path) -> int:
    storescu = shutil.which("storescu", path="/usr/bin:/usr/local/bin")
    if storescu is None:
        raise SystemExit("storescu not found: apt-get install dcmtk")
    env = {**os.environ, "TCP_NODELAY": "1"}
    for files in series:
        command = [storescu, "-R", "-aet", "XNAT", "-aec", "XNAT", "127.0.0.1"]
        command += [str(orthanc.dicom_port), *map(str, files)]
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return sum(len(files) for files in series)


def timed_run(
    name: str,
    send: Callable[[list[list[Path]], Orthanc, Path], int],
    series: list[list[Path]],
    root: Path,
    run: int,
) -> float:
    """Seconds to send everything to a fresh Orthanc; checks it holds every instance after."""
    work = root / f"{run:02d}-{name}"
    orthanc = Orthanc(work / "orthanc", count=False)
    orthanc.start()
    try:
        began = time.perf_counter()
        sent = send(series, orthanc, work)
        seconds = time.perf_counter() - began
        expected = sum(len(files) for files in series)
        if sent != expected or orthanc.instance_count() != expected:
            raise SystemExit(f"{name}: Orthanc holds {orthanc.instance_count()} of {expected}")
    finally:
        orthanc.stop()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each sender (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the Orthanc storage folders")
    parser.add_argument(
        "--profile",
        type=Path,
        help="also profile one xnatdrop run into FILE (HTML; needs `pip install pyinstrument`)",
    )
    args = parser.parse_args()

    series = all_series()
    count = sum(len(files) for files in series)
    megabytes = sum(f.stat().st_size for files in series for f in files) / 1e6
    for files in series:  # into the page cache, so no run pays for the first read
        for path in files:
            path.read_bytes()
    print(f"{count} instances in {len(series)} series, {megabytes:.1f} MB")
    print(f"load average before: {load_average()}")

    root = Path(tempfile.mkdtemp(prefix="cstore-speed-", dir=args.workdir))
    senders = {"xnatdrop": run_xnatdrop, "storescu": run_storescu}
    times: dict[str, list[float]] = {name: [] for name in senders}
    try:
        order = list(senders)
        for run in range(args.repeat):
            for name in order:
                seconds = timed_run(name, senders[name], series, root, run)
                times[name].append(seconds)
                print(
                    f"run {run + 1} {name:9s} {seconds:6.2f} s  {count / seconds:7.1f} inst/s  "
                    f"{megabytes / seconds:6.1f} MB/s"
                )
            order.reverse()
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            with profiler:
                timed_run("profile", run_xnatdrop, series, root, args.repeat)
            args.profile.write_text(profiler.output_html())
            print(f"profile of one xnatdrop run: {args.profile}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"load average after: {load_average()}")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in median.items():
        print(f"median {name:9s} {count / seconds:7.1f} inst/s  {megabytes / seconds:6.1f} MB/s")
    ratio = median["storescu"] / median["xnatdrop"]
    print(f"xnatdrop / storescu: {ratio:.2f}x (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
