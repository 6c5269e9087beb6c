"""Push speed: xnatdrop vs curl vs xnatpy on one ≥ 2 GB session built from real series.

    python bench/push_speed.py [--gb 2] [--workdir /tmp] [--keep]

1. Builds a session in a temporary folder from the raw series of two real scanner exports in
   ../shared/dicom (GE SIGNA Premier classic files, Siemens XA30 enhanced multi-frame files),
   copied as often as needed with fresh Series/SOP Instance UIDs and one StudyInstanceUID and
   patient, so XNAT sees one session of many series.
2. Starts a sandbox XNAT (this process) and, each against a fresh sandbox on the same code:
   - `xnatdrop push` (a child process: check, pack, import, verify, archive; wall time, peak
     RSS from GNU time, and the split from its step log lines: pack only plans the zip, import
     reads, hashes and sends it as one stream, then waits for the server's answer);
   - `curl --data-binary @zip -H 'Expect:'` of a zip of the same files to the same import
     endpoint (`/data/services/import`, DICOM-zip, dest=prearchive); above 1 GiB curl refuses
     --data-binary (it loads the file into memory), so `-X POST -T zip` streams it instead;
   - xnatpy `session.services.import_dir(...)` of the same folder, same endpoint and handler.
3. Prints one table and deletes everything it made (unless --keep).

Targets (issue 4): xnatdrop within 1.25× of curl, faster than xnatpy, peak memory < 200 MB.
curl and xnatpy only import into the prearchive; xnatdrop also verifies, archives and reads
back, so both its full time and its pack+import time are shown. curl gets a prebuilt zip of the
same bytes xnatdrop streams (`pack.write_zip`), built before any timing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "service"))

from shared_data import dataset  # noqa: E402
from xnat_sandbox import Sandbox  # noqa: E402
from xnatdrop import pack  # noqa: E402

PROJECT, LABEL, USER, PASSWORD = "SPN01", "BENCH_0001", "svc", "pw"
SOURCES = [
    ("ge_signa_premier_table", "In/GE/Exam1486_Laser794mm", None),
    (
        "siemens_xa30_enhanced",
        "In",
        {
            "10_DWI_dir80_PA",
            "17_DWI_dir80_AP",
            "25_asl_2d_tra",
            "5_anat-T1w_acq-tfl",
            "6_anat-T1w_acq-tfl",
            "7_func-bold_task-fa_run-1",
            "8_gre_field_mapping",
            "9_gre_field_mapping",
        },
    ),
]


def build_session(folder: Path, target_bytes: int) -> tuple[int, int]:
    """Write copies of the raw series into `folder` until it holds `target_bytes`."""
    series = []
    for name, sub, keep in SOURCES:
        root = dataset(name) / sub
        for series_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if keep is None or series_dir.name in keep:
                files = [pydicom.dcmread(p) for p in sorted(series_dir.iterdir()) if p.is_file()]
                series.append((series_dir.name, files))
    study = generate_uid()
    written = count = 0
    copy = 0
    while written < target_bytes:
        copy += 1
        for index, (name, datasets) in enumerate(series):
            uid = generate_uid()
            out = folder / f"{copy:03d}_{name}"
            out.mkdir(parents=True)
            for number, ds in enumerate(datasets):
                ds.StudyInstanceUID = study
                ds.SeriesInstanceUID = uid
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.SeriesNumber = copy * 100 + index
                ds.PatientName, ds.PatientID = "BENCH^SUBJECT", LABEL
                ds.StudyID, ds.StudyDate = "1", "20240101"
                path = out / f"IM{number:05d}.dcm"
                ds.save_as(path)
                written += path.stat().st_size
                count += 1
            if written >= target_bytes:
                break
    return count, written


def start(data: Path) -> Sandbox:
    server = Sandbox(data=data, port=0, users=[f"{USER}:{PASSWORD}"], projects=[PROJECT])
    server.start()
    return server


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a child; return wall seconds, its peak RSS in bytes and its stderr.

    The peak comes from GNU time's %M, run as an intermediate process: the ru_maxrss that
    wait4 reports for a direct child also counts the pages it shared with this (large) process
    between fork and exec, which overstated xnatdrop's peak by the size of this benchmark.
    """
    started = time.monotonic()
    with tempfile.NamedTemporaryFile() as peak, tempfile.TemporaryFile() as errors:
        timed = ["/usr/bin/time", "-f", "%M", "-o", peak.name, *command]
        child = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        returncode = child.wait()
        seconds = time.monotonic() - started
        errors.seek(0)
        text = errors.read().decode(errors="replace")
        kilobytes = int(Path(peak.name).read_text().split()[-1])
    if returncode != 0:
        raise SystemExit(f"{command[0]} failed ({returncode}):\n{text[-3000:]}")
    return seconds, kilobytes * 1024, text


def bench_xnatdrop(work: Path, session: Path) -> dict[str, float]:
    server = start(work / "xnat-xnatdrop")
    try:
        secret = work / "secret"
        secret.write_text(PASSWORD, encoding="utf-8")
        secret.chmod(0o600)
        config = work / "xnatdrop.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [xnat]
                url = "{server.url}"
                username = "{USER}"
                password_file = "{secret}"
                timeout_seconds = 600
                [paths]
                state = "{work / "state"}"
                quarantine = "{work / "quarantine"}"
                done = "{work / "done"}"
                [[drop]]
                path = "{session.parent}"
                project = "{PROJECT}"
                [push]
                poll_seconds = 0.2
                inline_attempts = 1
                """
            ),
            encoding="utf-8",
        )
        command = [sys.executable, "-m", "xnatdrop", "push", str(session), "--config", str(config)]
        seconds, peak, log = run_measured(command)
    finally:
        server.stop()
        shutil.rmtree(work / "xnat-xnatdrop", ignore_errors=True)
    steps = {
        m[0]: float(m[1]) for m in re.findall(rf"{LABEL}: (\w+): .*\(([\d.]+) s\)$", log, re.M)
    }
    send = re.search(r"sent in ([\d.]+) s .*answered ([\d.]+) s later", log)
    return {
        "total": seconds,
        "peak": peak,
        "check": steps.get("check", 0.0),
        "pack": steps.get("pack", 0.0),
        "send": float(send[1]) if send else 0.0,
        "import_wait": float(send[2]) if send else 0.0,
        "import": steps.get("import", 0.0),
        "after": sum(steps.get(s, 0.0) for s in ("verify", "archive", "attach", "finish")),
        **{s: steps.get(s, 0.0) for s in ("verify", "archive", "attach", "finish")},
        "rest": seconds - sum(steps.values()),
    }


def bench_curl(work: Path, zip_path: Path) -> float:
    server = start(work / "xnat-curl")
    try:
        url = (
            f"{server.url}/data/services/import?import-handler=DICOM-zip&PROJECT_ID={PROJECT}"
            f"&SUBJECT_ID={LABEL}&EXPT_LABEL={LABEL}&dest=/prearchive/projects/{PROJECT}"
        )
        # curl reads a --data-binary file into memory and refuses files over 1 GiB
        # (MAX_FILE2MEMORY); for those, -T with -X POST streams the same bytes from disk.
        body = (
            ["--data-binary", f"@{zip_path}"]
            if zip_path.stat().st_size < 1 << 30
            else ["-X", "POST", "-T", str(zip_path)]
        )
        command = [
            "curl", "-sS", "--fail", "-o", "/dev/null", "-u", f"{USER}:{PASSWORD}",
            "-H", "Expect:", "-H", "Content-Type: application/zip", *body, url,
        ]  # fmt: skip
        seconds, _, _ = run_measured(command)
    finally:
        server.stop()
        shutil.rmtree(work / "xnat-curl", ignore_errors=True)
    return seconds


def bench_xnatpy(work: Path, session: Path) -> float:
    server = start(work / "xnat-xnatpy")
    try:
        script = textwrap.dedent(
            f"""
            import xnat
            with xnat.connect({server.url!r}, user={USER!r}, password={PASSWORD!r}) as s:
                s.services.import_dir({str(session)!r}, project={PROJECT!r}, subject={LABEL!r},
                    experiment={LABEL!r}, import_handler="DICOM-zip",
                    destination="/prearchive/projects/{PROJECT}")
            """
        )
        seconds, _, _ = run_measured([sys.executable, "-c", script])
    finally:
        server.stop()
        shutil.rmtree(work / "xnat-xnatpy", ignore_errors=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="session size in GB (default 2)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the files for inspection")
    parser.add_argument("--skip-xnatpy", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xnatdrop-bench-", dir=args.workdir))
    try:
        session = work / "drop" / LABEL
        started = time.monotonic()
        files, size = build_session(session, int(args.gb * 1e9))
        built = time.monotonic() - started
        print(f"session: {files} files, {size / 1e9:.2f} GB, built in {built:.0f} s")
        # curl gets a zip of exactly the files xnatdrop uploads, built before any timing.
        items = [
            pack.Item(p.relative_to(session).as_posix(), "", "")
            for p in sorted(session.rglob("*.dcm"))
        ]
        zip_path = work / "curl.zip"
        pack.write_zip(session, items, zip_path)
        curl = bench_curl(work, zip_path)
        zip_path.unlink()
        # xnatpy before xnatdrop: xnatdrop moves the folder to done/ and adds its receipt.
        xnatpy = None if args.skip_xnatpy else bench_xnatpy(work, session)
        drop = bench_xnatdrop(work, session)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    transfer = drop["pack"] + drop["import"]
    rows = [
        (f"curl {'-T' if size >= 1 << 30 else '--data-binary'} (prebuilt zip)", curl, ""),
        ("xnatdrop push, whole job", drop["total"], f"{drop['total'] / curl:.2f}× curl"),
        ("xnatdrop pack + import (stream) only", transfer, f"{transfer / curl:.2f}× curl"),
    ]
    if xnatpy is not None:
        rows.append(("xnatpy services.import_dir", xnatpy, f"{xnatpy / curl:.2f}× curl"))
    print(f"\n{'':36} {'seconds':>8}  {'MB/s':>7}")
    for name, seconds, note in rows:
        print(f"{name:36} {seconds:8.1f}  {size / seconds / 1e6:7.1f}  {note}")
    print(
        f"\nxnatdrop split: check {drop['check']:.1f} s, pack (plan) {drop['pack']:.1f} s, "
        f"import: read+hash+send {drop['send']:.1f} s, "
        f"server import wait {drop['import_wait']:.1f} s, "
        f"verify+archive+attach+finish {drop['after']:.1f} s "
        f"(verify {drop['verify']:.1f}, archive {drop['archive']:.1f}, "
        f"attach {drop['attach']:.1f}, finish {drop['finish']:.1f}), "
        f"process start and the rest {drop['rest']:.1f} s"
    )
    print(f"xnatdrop peak memory (RSS): {drop['peak'] / 1e6:.0f} MB")
    targets = [
        ("within 1.25× of curl (pack+import)", transfer <= 1.25 * curl),
        ("within 1.25× of curl (whole job)", drop["total"] <= 1.25 * curl),
        ("peak memory < 200 MB", drop["peak"] < 200e6),
    ]
    if xnatpy is not None:
        targets.append(("faster than xnatpy (whole job)", drop["total"] < xnatpy))
    for name, met in targets:
        print(f"  {'met ' if met else 'MISS'} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
