"""`xnatdrop demo [--keep]`: the whole tour on a fresh machine, with no configuration.

It starts the sandbox XNAT in-process, makes a temporary drop share, writes two sessions with
pydicom as a technologist's copy would land — a clean one (a T1 and an fMRI series, plus a
behav/ sidecar) and a flawed one (a raw series with a NIfTI file beside it, and a derived ADC
series) — runs the real daemon until both are handled, and prints where each went and why.
`--keep` leaves the sandbox and the files up to browse until Ctrl-C.

The sessions are synthetic (pydicom, tiny 64×64 images, generated UIDs, a made-up subject), so
the demo needs no scanner data and carries no personal data.
"""

from __future__ import annotations

import argparse
import array
import datetime as dt
import json
import logging
import math
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from xnatdrop import config, daemon, ledger, reasonfiles, receipt, signals

log = logging.getLogger(__name__)

PROJECT = "DEMO01"
USER, PASSWORD = "demo", "demo"
CLEAN, FLAWED = "DEMO01_001", "DEMO01_002"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DEADLINE_SECONDS = 180.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end tour: sandbox XNAT, a clean and a flawed session, the real daemon",
        description="Start a local sandbox XNAT, drop a clean and a flawed session into a "
        "temporary share, run the daemon until both are handled, and show where each went.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the sandbox and files up until Ctrl-C"
    )
    parser.add_argument("--port", type=int, default=0, help="sandbox port (default: any free port)")
    parser.set_defaults(func=handle)


# ---- synthetic sessions -----------------------------------------------------------------------


def _write_series(
    folder: Path,
    label: str,
    study_uid: str,
    number: int,
    description: str,
    image_type: list[str],
    slices: int,
) -> None:
    """One MR series, one file per slice, as a scanner export writes it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    frame_uid = generate_uid()
    today = dt.date.today().strftime("%Y%m%d")
    for index in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.ImageType = image_type
        ds.Modality = "MR"
        ds.Manufacturer = "xnatdrop demo"
        ds.PatientName = label
        ds.PatientID = label
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyID = "1"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = today
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "xnatdrop demo"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = index + 1
        ds.ImagesInAcquisition = slices
        ds.SliceThickness = 4
        ds.SliceLocation = 4.0 * index
        ds.ImagePositionPatient = [-128.0, -128.0, 4.0 * index]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [4, 4]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        pixels = array.array(
            "H",
            (
                int(800 * math.exp(-((x - 32) ** 2 + (y - 32) ** 2) / (300 + 40 * index)))
                for y in range(64)
                for x in range(64)
            ),
        )
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"IM{index + 1:04d}.dcm", enforce_file_format=True)


def _nifti_bytes() -> bytes:
    """A minimal single-file NIfTI-1 image (348-byte header, 'n+1' magic, 2×2×2 voxels)."""
    import struct

    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)  # sizeof_hdr
    struct.pack_into("<8h", header, 40, 3, 2, 2, 2, 1, 1, 1, 1)  # dim
    struct.pack_into("<h", header, 70, 4)  # datatype: int16
    struct.pack_into("<h", header, 72, 16)  # bitpix
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)  # pixdim
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    header[344:348] = b"n+1\0"
    return bytes(header) + bytes(2 * 8)


def write_sessions(drop: Path) -> None:
    """The clean and the flawed session, written straight into the drop root."""
    from pydicom.uid import generate_uid

    clean = drop / CLEAN
    study = generate_uid()
    _write_series(
        clean / "1_T1w", CLEAN, study, 1, "T1w MPRAGE", ["ORIGINAL", "PRIMARY", "M", "ND"], 12
    )
    _write_series(
        clean / "2_rest_bold", CLEAN, study, 2, "rest BOLD", ["ORIGINAL", "PRIMARY", "M", "ND"], 8
    )
    (clean / "behav").mkdir()
    (clean / "behav" / "responses.csv").write_text("trial,rt\n1,0.412\n2,0.388\n", "utf-8")

    flawed = drop / FLAWED
    study = generate_uid()
    _write_series(
        flawed / "1_T1w", FLAWED, study, 1, "T1w MPRAGE", ["ORIGINAL", "PRIMARY", "M", "ND"], 12
    )
    (flawed / "1_T1w" / "T1w.nii").write_bytes(_nifti_bytes())
    _write_series(
        flawed / "3_dwi_ADC",
        FLAWED,
        study,
        3,
        "dwi_ADC",
        ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"],
        6,
    )


# ---- the run ----------------------------------------------------------------------------------


def _write_config(work: Path, url: str, dicom_port: int | None = None) -> Path:
    secret = work / "xnat-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    secret.chmod(0o600)
    share = work / "share"
    for name in ("drop", "_quarantine", "_done"):
        (share / name).mkdir(parents=True, exist_ok=True)
    path = work / "xnatdrop.toml"
    path.write_text(
        "\n".join(
            [
                "[xnat]",
                f'url = "{url}"',
                f'username = "{USER}"',
                f'password_file = "{secret}"',
                "[paths]",
                f'state = "{work / "state"}"',
                f'quarantine = "{share / "_quarantine"}"',
                f'done = "{share / "_done"}"',
                "[[drop]]",
                f'path = "{share / "drop"}"',
                f'project = "{PROJECT}"',
                "[settle]",
                "quiet_seconds = 2",
                "[schedule]",
                'upload_window = "always"',
                "max_concurrent_pushes = 2",
                # the sandbox's DICOM receiver, for `xnatdrop doctor --test-push` (demo --keep)
                *(["[dicom]", f"port = {dicom_port}"] if dicom_port is not None else []),
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def _finished(settings: config.Config) -> dict[str, ledger.Drop]:
    path = settings.paths.state / ledger.FILENAME
    if not path.exists():
        return {}
    with ledger.Ledger(settings.paths.state) as book:
        return {d.label: d for d in book.drops(PROJECT) if d.final}


def _report(drop: ledger.Drop, url: str) -> list[str]:
    where = Path(drop.final_path) if drop.final_path else None
    if drop.state == "done":
        lines = [f"{drop.label}: ARCHIVED in XNAT project {PROJECT}"]
        lines.append(f"    session:  {url}/data/projects/{PROJECT}/experiments/{drop.label}")
        lines.append(f"    folder:   {where}  (with RECEIPT.txt for the technologist)")
        try:
            facts = json.loads((where / receipt.JSON_NAME).read_text(encoding="utf-8"))  # type: ignore[operator]
        except (OSError, ValueError, TypeError):
            facts = {}
        summary = (facts.get("verification") or {}).get("summary")
        if summary:
            lines.append(f"    verified: {summary}")
        return lines
    lines = [f"{drop.label}: QUARANTINED ({drop.last_error_code}) -- {drop.last_error}"]
    lines.append(f"    folder:   {where}")
    try:
        reason = json.loads((where / reasonfiles.JSON_NAME).read_text(encoding="utf-8"))  # type: ignore[operator]
    except (OSError, ValueError, TypeError):
        reason = {}
    for finding in reason.get("findings", []):
        if finding.get("action") in ("block", "exclude"):
            lines.append(
                f"    {finding.get('action', ''):8s}  {finding.get('code')}: "
                f"{finding.get('path')}: {finding.get('message')}"
            )
    lines.append(f"    the technologist's note: {where}/{reasonfiles.TEXT_NAME}")
    return lines


def handle(args: argparse.Namespace) -> int:
    from xnat_sandbox import Sandbox

    work = Path(tempfile.mkdtemp(prefix="xnatdrop-demo-"))
    sandbox = Sandbox(
        data=work / "xnat",
        port=args.port,
        users=[f"{USER}:{PASSWORD}"],
        projects=[PROJECT],
        dicom_port=0,
    )
    sandbox.start()
    try:
        config_path = _write_config(work, sandbox.url, sandbox.dicom_port)
        settings = config.load(config_path)
        drop_root = settings.drop[0].path
        print(f"sandbox XNAT at {sandbox.url} (user {USER}, password {PASSWORD})")
        print(f"DICOM receiver XNAT@{sandbox.host}:{sandbox.dicom_port} (AE title XNAT)")
        print(f"drop share at   {drop_root.parent}")
        runner = daemon.Daemon(settings, daemon.pipeline_processor(settings, PASSWORD))
        outcome: dict[str, ledger.Drop] = {}

        def scenario() -> None:
            runner.started.wait(30)
            print(f"writing {CLEAN} (clean) and {FLAWED} (a NIfTI file, a derived ADC series)")
            write_sessions(drop_root)
            end = time.monotonic() + DEADLINE_SECONDS
            while not runner.stopping.wait(0.5):
                outcome.update(_finished(settings))
                if len(outcome) == 2 or time.monotonic() > end:
                    break
            runner.stopping.set()

        thread = threading.Thread(target=scenario, name="demo", daemon=True)
        thread.start()
        runner.run()
        thread.join(5)
        print()
        for label in (CLEAN, FLAWED):
            if label in outcome:
                print("\n".join(_report(outcome[label], sandbox.url)))
            else:
                print(f"{label}: not handled yet (stopped early or past the demo's deadline)")
        if args.keep:
            print(
                f"\nsandbox still up at {sandbox.url} (user {USER}, password {PASSWORD}); "
                f"files under {work}. Try `xnatdrop doctor --config {config_path} --test-push`. "
                "Ctrl-C to stop."
            )
            done = threading.Event()
            with signals.capture(lambda sig, frame: done.set(), (signal.SIGINT,)):
                done.wait()
        return 0 if len(outcome) == 2 else 3
    finally:
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
