"""How fast `xnatdrop check` reads a session, against two baselines measured in the same run.

Usage: python bench/check_speed.py [--shared PATH] [--clone-files 10000] [--keep]

Two file sets: all of ../shared/dicom (every file, DICOM or not), and a 10,000-file session
cloned from its raw scanner series into a temporary folder (copies, so that every file has its
own page cache; deleted afterwards). For each set, in this order:

1. cold 64 KiB read: per file, open, drop its page cache (posix_fadvise DONTNEED), read the
   first 64 KiB, close — how a network share serves freshly copied files. One core.
2. pydicom.dcmread of every whole file (force=True, errors counted): what a naive checker does.
   Measured on a warm cache, which flatters it. One core.
3. (for reference) a pydicom header read that stops after group 0020. One core.
4. xnatdrop check (`rules.check_folder`, the full verdict: truncation, duplicates, folder
   rules), cold (every file's cache dropped first) and warm, with the default worker count
   (both cores), and warm with one worker.

Targets (issue 3): check cold >= 0.5 x the cold 64 KiB read, and >= 5 x the full dcmread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from xnatdrop import dicomfiles, rules

# pydicom is imported inside the baselines only: the check's worker processes import this
# script again as their main module (forkserver), and should not pay for pydicom.

HERE = Path(__file__).resolve()
DEFAULT_SHARED = Path(os.environ.get("XNATDROP_SHARED_DICOM", HERE.parents[2] / "shared" / "dicom"))
# Raw scanner series used to build the cloned session (folders of the shared sets).
CLONE_SOURCES = [
    "ge_signa_premier_table/In/GE/Exam1486_Laser794mm",
    "ge_nih_mr750/In/20180918GE",
    "philips_achieva_dwi_isotropic/In/Vanderbilt_2018",
    "siemens_xa30_classic_interop/In/7001_func-bold_task-fa_run-1",
    "siemens_xa30_classic_interop/In/9001_gre_field_mapping",
    "siemens_xa30_enhanced/In/7_func-bold_task-fa_run-1",
    "philips_ingenia_elition_enh_classic/In/cl",
]
CLONE_MAX_FILE = 1 << 20  # keep the copy small: skip files over 1 MiB
# (at most 10 rounds of copies are told apart by _renamed: enough for 10,000 files)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass


def cold_read_64k(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.read(fd, 65536)
        finally:
            os.close(fd)


def full_dcmread(paths: list[Path]) -> int:
    import pydicom
    import pydicom.errors

    failures = 0
    for path in paths:
        try:
            pydicom.dcmread(path, force=True)
        except (pydicom.errors.InvalidDicomError, ValueError, OSError, EOFError, KeyError):
            failures += 1
        except Exception:
            failures += 1
    return failures


def _after_0020(tag, vr, length) -> bool:
    return tag.group > 0x0020


def header_to_0020(paths: list[Path]) -> None:
    import pydicom.filereader

    for path in paths:
        try:
            with open(path, "rb") as handle:
                pydicom.filereader.read_partial(handle, stop_when=_after_0020, force=True)
        except Exception:
            continue


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def clone_session(shared: Path, target: Path, count: int) -> list[Path]:
    """Copy raw series files round-robin into `target/<n>_<series>/` until `count` files."""
    sources = [
        p
        for folder in CLONE_SOURCES
        for p in files_under(shared / folder)
        if p.stat().st_size <= CLONE_MAX_FILE and not p.name.endswith((".txt", ".md"))
    ]
    uids = {}
    for source in sources:
        header = dicomfiles.sniff(source).header
        if header is not None:
            uids[source] = (header.sop_instance_uid, header.series_instance_uid)
    made = []
    round_ = 0
    while len(made) < count:
        for source in sources:
            if len(made) == count:
                break
            path = target / f"{round_:02d}_{source.parent.name}" / source.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_renamed(source.read_bytes(), uids.get(source, ()), round_))
            made.append(path)
        round_ += 1
    os.sync()  # dirty pages cannot be dropped: write them out before measuring cold reads
    return made


def _renamed(data: bytes, uids: tuple[str, ...], round_: int) -> bytes:
    """Give copy number `round_` its own SOP and series UIDs, without changing any length.

    Every occurrence of each UID (meta, data set) gets its first three characters ("1.2" or
    "1.3") replaced by "2.<round>": a bijection, so copies neither collide with each other nor
    with the originals, and the session is one of distinct instances in distinct series, as a
    real 10,000-file session is (duplicates would make the check compare file contents).
    """
    if round_ == 0:
        return data
    for uid in uids:
        if uid.startswith(("1.2", "1.3")):
            data = data.replace(uid.encode(), f"2.{round_ % 10}{uid[3:]}".encode())
    return data


def measure(name: str, folder: Path, paths: list[Path]) -> dict[str, float]:
    n = len(paths)
    results: dict[str, float] = {}
    print(f"\n== {name}: {n} files, {sum(p.stat().st_size for p in paths) / 1e6:.0f} MB")
    results["cold 64 KiB read (1 core)"] = n / timed(lambda: cold_read_64k(paths))
    warm(paths)
    results["pydicom.dcmread full (1 core, warm)"] = n / timed(lambda: full_dcmread(paths))
    results["pydicom header to 0020 (1 core, warm)"] = n / timed(lambda: header_to_0020(paths))
    drop_cache(paths)
    verdict: list[rules.Verdict] = []
    results["xnatdrop check cold (2 cores)"] = n / timed(
        lambda: verdict.append(rules.check_folder(folder, None))
    )
    assert verdict[0].files_checked == n, (verdict[0].files_checked, n)
    warm(paths)
    results["xnatdrop check warm (2 cores)"] = n / timed(lambda: rules.check_folder(folder, None))
    results["xnatdrop check warm (1 core)"] = n / timed(
        lambda: rules.check_folder(folder, None, workers=1)
    )
    for label, rate in results.items():
        print(f"  {label:<40} {rate:>9,.0f} files/s")
    cold = results["xnatdrop check cold (2 cores)"]
    base_read = results["cold 64 KiB read (1 core)"]
    base_dcm = results["pydicom.dcmread full (1 core, warm)"]
    for label, ratio, target in (
        ("check cold / cold 64 KiB read", cold / base_read, 0.5),
        ("check cold / full dcmread", cold / base_dcm, 5.0),
    ):
        verdict_text = "meets" if ratio >= target else "MISSES"
        print(f"  {label:<40} {ratio:>9.2f}x  (target >= {target}x: {verdict_text})")
    findings = len(verdict[0].findings)
    print(
        f"  verdict: ok={verdict[0].ok}, {findings} findings, "
        f"{len(verdict[0].upload_files())} files to upload"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--clone-files", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the cloned session")
    args = parser.parse_args(argv)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), load average {load}")
    measure(f"all of {args.shared}", args.shared, files_under(args.shared))
    work = Path(tempfile.mkdtemp(prefix="xnatdrop-check-speed-"))
    try:
        session = work / "SPN01_9999"
        paths = clone_session(args.shared, session, args.clone_files)
        measure(f"cloned session {session}", session, paths)
    finally:
        if not args.keep:
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
