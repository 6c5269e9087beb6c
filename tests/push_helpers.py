"""Helpers for the push tests: staging real GE series as subject folders, configs, checks.

Data: `ge_signa_premier_table` (GE SIGNA Premier RX29, BSD-2-Clause, see its README.md in
../shared/dicom), copied into tmp_path; the shared set itself is never modified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom

from shared_data import dataset
from xnat_sandbox import Sandbox
from xnatdrop import config, xnat

PROJECT = "SPN01"
USER, PASSWORD = "svc", "pw"
EXAM = "In/GE/Exam1486_Laser794mm"
SMALL = ("01_3_Plane_Localizer_FF",)  # 21 files, 0.9 MB
MEDIUM = ("01_3_Plane_Localizer_FF", "02_Ax_fMRI_FF_I11.1_S15.9", "05_3_Plane_Localizer_HF")
SIDECARS = {
    "behav/responses.csv": "trial,rt\n1,0.412\n2,0.388\n",
    "behav/run2/responses.csv": "trial,rt\n1,0.501\n",
    "physio/resp_001.log": "0 12\n1 13\n2 12\n" * 50,
}


def start_sandbox(data: Path, port: int = 0) -> Sandbox:
    server = Sandbox(data=data, port=port, users=[f"{USER}:{PASSWORD}"], projects=[PROJECT])
    server.start()
    return server


def stage(root: Path, label: str, series: tuple[str, ...] = SMALL, sidecars: bool = True) -> Path:
    """Copy GE series (and small sidecar files) into `root/label`, as a technologist would."""
    folder = root / label
    source = dataset("ge_signa_premier_table") / EXAM
    for name in series:
        shutil.copytree(source / name, folder / name)
    if sidecars:
        for relative, text in SIDECARS.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text, encoding="utf-8")
    return folder


def add_converted_file(folder: Path) -> str:
    """Put a real NIfTI file (nibabel_formats, MIT) into the first series folder: a block."""
    series = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    shutil.copy(dataset("nibabel_formats") / "converted" / "anatomical.nii", series)
    return f"{series.name}/anatomical.nii"


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → MD5 of every file under `folder`."""
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_config(tmp_path: Path, url: str, extra: str = "", **push: Any) -> Path:
    """A config file for the sandbox at `url`, with fast retries unless overridden.

    `extra` is appended as TOML (other sections, e.g. "[settle]\nmax_wait_seconds = 1").
    """
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    secret.chmod(0o600)
    push = {
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "inline_attempts": 4,
        "inline_max_seconds": 1,
        "poll_seconds": 0.05,
        "ready_timeout_seconds": 20,
        **push,
    }
    lines = [
        "[xnat]",
        f'url = "{url}"',
        f'username = "{USER}"',
        f'password_file = "{secret}"',
        "timeout_seconds = 30",
        "[paths]",
        f'state = "{tmp_path / "state"}"',
        f'quarantine = "{tmp_path / "quarantine"}"',
        f'done = "{tmp_path / "done"}"',
        "[[drop]]",
        f'path = "{tmp_path / "drop"}"',
        f'project = "{PROJECT}"',
        "[push]",
        *(f"{key} = {_toml(value)}" for key, value in push.items()),
    ]
    path = tmp_path / "xnatdrop.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    (tmp_path / "drop").mkdir(exist_ok=True)
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def load(path: Path) -> config.Config:
    return config.load(path)


def client(settings: config.Config) -> xnat.XnatClient:
    return xnat.XnatClient(settings.xnat, PASSWORD)


def push_process(
    config_path: Path, folder: Path, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `xnatdrop push` as its own process (so it can be SIGKILLed for real)."""
    env = {k: v for k, v in os.environ.items() if k != "XNATDROP_TEST_CRASH_AT"}
    if crash_at:
        env["XNATDROP_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "xnatdrop", "push", str(folder), "--config", str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def done_folder(tmp_path: Path, label: str) -> Path:
    """The single done/<date>/<label> folder of `label`."""
    found = [p for p in (tmp_path / "done").glob(f"*/{label}") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def archived_sessions(settings: config.Config) -> list[Any]:
    """Every archived session of the project, read over HTTP with our client."""
    with client(settings) as xnat_client:
        rows = xnat_client._get_table(f"/data/projects/{PROJECT}/experiments")
    return rows


def local_uids(folder: Path) -> set[str]:
    """SOPInstanceUIDs of the DICOM files under `folder` (sidecars and receipts left out)."""
    uids = set()
    for path in folder.rglob("*"):
        if path.is_file() and not path.relative_to(folder).parts[0].startswith(
            ("behav", "physio", "logs", "RECEIPT", "QUARANTINE", "subject.toml")
        ):
            uids.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    return uids


def assert_archived_once(
    settings: config.Config, label: str, original: dict[str, str], dicom_count: int
) -> None:
    """Exactly one archived session, holding every DICOM instance of the folder once, and an
    empty prearchive.

    Instances are matched by SOPInstanceUID in XNAT's scan catalogs against the files in done/,
    since a stock XNAT rewrites every file (xnat-stock row 1); where XNAT's anonymisation is
    off, the archived MD5s must equal the originals too. Only DICOM resources count.
    """
    sessions = archived_sessions(settings)
    assert [row["label"] for row in sessions] == [label], sessions
    with client(settings) as xnat_client:
        found = xnat_client.find_session(PROJECT, label)
        assert found is not None and found.subject == label
        files = [
            f
            for f in xnat_client.session_files(PROJECT, found.subject, label)
            if f.resource in xnat.DICOM_RESOURCES
        ]
        catalog = [
            entry
            for scan in sorted({f.scan for f in files})
            for entry in xnat_client.scan_catalog(PROJECT, found.subject, label, scan)
        ]
        assert not xnat_client.prearchive_entries(PROJECT), "prearchive left behind"
        rewriting = xnat_client.anonymization(PROJECT)
    assert len(files) == len(catalog) == dicom_count
    done = [p for p in settings.paths.done.glob(f"*/{label}*") if p.is_dir()]
    assert done, f"{label} is not in done/"
    assert sorted(e.uid for e in catalog) == sorted(local_uids(done[0]))
    if rewriting.site is False and rewriting.project is False:
        dicom = {md5 for path, md5 in original.items() if not path.startswith(("behav", "physio"))}
        assert {f.digest for f in files} == dicom
