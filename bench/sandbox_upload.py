"""Benchmark: the sandbox receiving a ~2 GB DICOM zip, against writing the same bytes to disk.

    python bench/sandbox_upload.py [--size-gb 2.0] [--tmp /tmp]

1. Build a stored (uncompressed) zip of real GE series (`ge_signa_premier_table`, 343 files,
   15 MB) repeated until the size is reached. Each copy's entries get distinct names
   (`copyNNN/<series>/<k>_<file>`), so the server stores every entry as its own file; the DICOM
   headers are not rewritten (the same SOP instances repeat, which XNAT's prearchive accepts).
2. (a) Copy the zip to a new file on the same disk in 1 MiB chunks: the disk's write rate.
3. (b) Start `xnatdrop sandbox` in a child process and POST the zip to
   `/data/services/import?dest=/prearchive/...` (raw `application/zip`, streamed by requests),
   timing until the answer. The server streams the body to its spool, then unpacks it entry by
   entry into the prearchive (header parse + MD5 per entry), then builds the session.
4. Print both rates in MB/s, their ratio, and the server's peak RSS (VmHWM from /proc, and
   getrusage(RUSAGE_CHILDREN) after it exits). Target: peak RSS < 200 MB.

Everything is created under a temporary directory in --tmp and deleted at the end. Neither
step calls fsync: both measure writes into the page cache the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shared_data import dataset  # the tests' resolver of the shared data

MB = 1_000_000
EXAM = "In/GE/Exam1486_Laser794mm"


def build_zip(target: Path, size: int) -> tuple[int, int]:
    """Write the benchmark zip; return (entries, bytes)."""
    sources = sorted(
        p for p in (dataset("ge_signa_premier_table") / EXAM).rglob("*") if p.is_file()
    )
    entries = 0
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as bundle:
        copy = 0
        while target.stat().st_size < size:
            for k, path in enumerate(sources):
                bundle.write(
                    path, f"copy{copy:03d}/{path.parent.name}/{copy:03d}_{k:04d}_{path.name}"
                )
                entries += 1
            copy += 1
    return entries, target.stat().st_size


def disk_write_rate(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)
    elapsed = time.perf_counter() - started
    target.unlink()
    return source.stat().st_size / MB / elapsed


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def upload_rate(archive: Path, workdir: Path) -> tuple[float, int, int, str]:
    """POST the zip to a sandbox child process; return (MB/s, VmHWM kB, files stored, answer)."""
    command = [
        sys.executable,
        "-m",
        "xnatdrop",
        "-q",
        "sandbox",
        "--port",
        "0",
        "--data",
        str(workdir / "xnat"),
        "--user",
        "bench:bench",
        "--project",
        "BENCH",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        auth = ("bench", "bench")
        started = time.perf_counter()
        with archive.open("rb") as body:
            response = requests.post(
                f"{url}/data/services/import",
                params={
                    "import-handler": "DICOM-zip",
                    "dest": "/prearchive/projects/BENCH",
                    "subject": "BENCH01",
                    "session": "BENCH01_MR1",
                },
                data=body,
                headers={"Content-Type": "application/zip"},
                auth=auth,
                timeout=3600,
            )
        elapsed = time.perf_counter() - started
        state = requests.get(f"{url}/_sandbox/state", auth=auth, timeout=60).json()
        stored = sum(row["files"] for row in state["prearchive"])
        peak = peak_rss_kb(server.pid)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    answer = f"{response.status_code} {response.text.strip()}"
    return archive.stat().st_size / MB / elapsed, peak, stored, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="xnatdrop-bench-", dir=args.tmp))
    try:
        archive = workdir / "session.zip"
        started = time.perf_counter()
        entries, size = build_zip(archive, int(args.size_gb * 1e9))
        print(
            f"zip: {entries} entries, {size / MB:.0f} MB, built in "
            f"{time.perf_counter() - started:.0f} s"
        )
        disk = disk_write_rate(archive, workdir / "copy.bin")
        print(f"(a) disk write, same bytes:        {disk:8.1f} MB/s")
        rate, peak_kb, stored, answer = upload_rate(archive, workdir)
        children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"(b) sandbox import (HTTP + unzip): {rate:8.1f} MB/s   answer: {answer}")
        print(f"    files stored in the prearchive: {stored} of {entries}")
        print(f"ratio (b)/(a): {rate / disk:.2f}")
        print(
            f"server peak RSS: {peak_kb / 1024:.1f} MiB (VmHWM); "
            f"getrusage(RUSAGE_CHILDREN) max: {children_kb / 1024:.1f} MiB; target < 200 MB"
        )
        return 0 if stored == entries and peak_kb * 1024 < 200 * MB else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
