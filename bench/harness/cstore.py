"""C-STORE: xnatdrop's sender against DCMTK's storescu, the same files to the same Orthanc.

Every raw series of two real sessions in ../shared/dicom (GE SIGNA Premier, 8 series of classic
MR images; Siemens XA30, enhanced multi-frame MR), as `xnatdrop check` picks them: 423
instances, 59 MB, read where they are and read once before any timing (both senders find them
in the page cache). Each run starts a fresh Orthanc (empty storage, TCP_NODELAY; without it
DCMTK's delayed ACKs, not the senders, set the pace) and sends every series over one association
per series: xnatdrop with `dimse.send_series` in this process (its journal written per
instance, fsync'd every half second and per series, as the pipeline calls it), storescu as one
`storescu -R` process per series (how a site would script it: its figures include one process
start per series). The two alternate, each run
starting with the other one than the last; the medians are compared. `--quick` sends only the
first series of each session (both vendors' transfer paths; 22 of the 423 instances): CI needs
the comparison to run, not its figure.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import product, servers
from harness.workload import GE, SIEMENS, dataset

AET = "XNAT"


def all_series(per_session: int | None = None) -> list[list[Path]]:
    """Every raw series of both sessions, or the first `per_session` of each."""
    found = []
    for name, sub in (GE, SIEMENS):
        folder = dataset(name) / sub
        verdict = product.check_folder(folder)
        if not verdict.ok:
            raise RuntimeError(f"{folder}: not a clean session any more")
        series = product.upload_series(verdict)[:per_session]
        found += [[folder / p for p in files] for files in series]
    return found


def run_xnatdrop(series: list[list[Path]], port: int, work: Path) -> int:
    stored = 0
    for files in series:
        report = product.send_series(files, port, AET, work / "journal.jsonl")
        if not report.complete or report.associations != 1:
            raise RuntimeError(f"xnatdrop: incomplete series {files[0].parent.name}: {report}")
        stored += report.stored
    return stored


def run_storescu(series: list[list[Path]], port: int, work: Path) -> int:
    storescu = shutil.which("storescu", path="/usr/bin:/usr/local/bin")
    if storescu is None:
        raise RuntimeError("storescu not found: apt-get install dcmtk (.ci/run installs it)")
    env = {**os.environ, "TCP_NODELAY": "1"}
    for files in series:
        command = [storescu, "-R", "-aet", AET, "-aec", AET, "127.0.0.1", str(port)]
        subprocess.run([*command, *map(str, files)], check=True, env=env, stdout=subprocess.DEVNULL)
    return sum(len(files) for files in series)


Sender = Callable[[list[list[Path]], int, Path], int]
SENDERS: dict[str, Sender] = {"xnatdrop": run_xnatdrop, "storescu": run_storescu}


def timed_run(name: str, send: Sender, series: list[list[Path]], work: Path) -> float:
    """Seconds to send everything to a fresh Orthanc, which must then hold every instance."""
    with servers.orthanc(work / "orthanc") as orthanc:
        began = time.perf_counter()
        sent = send(series, orthanc.dicom_port, work)
        seconds = time.perf_counter() - began
        expected = sum(len(files) for files in series)
        if sent != expected or orthanc.instance_count() != expected:
            raise RuntimeError(f"{name}: Orthanc holds {orthanc.instance_count()} of {expected}")
    return seconds


def measure(
    repeat: int,
    work: Path,
    echo: Callable[[str], None] = print,
    per_session: int | None = None,
) -> dict[str, Any]:
    series = all_series(per_session)
    count = sum(len(files) for files in series)
    megabytes = sum(f.stat().st_size for files in series for f in files) / 1e6
    for files in series:  # into the page cache, so that no run pays for the first read
        for path in files:
            path.read_bytes()
    times: dict[str, list[float]] = {name: [] for name in SENDERS}
    order = list(SENDERS)
    for run in range(repeat):
        for name in order:
            seconds = timed_run(name, SENDERS[name], series, work / f"{run:02d}-{name}")
            shutil.rmtree(work / f"{run:02d}-{name}", ignore_errors=True)
            times[name].append(seconds)
            rate = count / seconds
            echo(f"  C-STORE run {run + 1} {name:9s} {seconds:6.2f} s  {rate:6.1f} inst/s")
        order.reverse()
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "instances": count,
        "series": len(series),
        "megabytes": megabytes,
        "repeat": repeat,
        "seconds": times,
        "inst_per_s": {name: count / seconds for name, seconds in median.items()},
        "ratios": {"C-STORE / storescu": median["storescu"] / median["xnatdrop"]},
    }


def profile(target: Path, work: Path) -> None:
    """Profile one xnatdrop run into an HTML file (needs `pip install pyinstrument`)."""
    from pyinstrument import Profiler

    series = all_series()
    profiler = Profiler(interval=0.0005)
    with profiler:
        timed_run("profile", run_xnatdrop, series, work)
    target.write_text(profiler.output_html())
