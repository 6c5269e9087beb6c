"""Shared fixtures: a real sandbox XNAT on a free port, and DICOM zips built from real series.

The DICOM comes from `ge_signa_premier_table` (GE SIGNA Premier, BSD-2-Clause, see its README in
the shared data): a few files of series 1 and 5 (3-Plane Localizer, same study). Tests copy
files into tmp_path and rewrite headers there with pydicom; the shared set is never modified.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.shared_data import dataset
from xnatdrop.sandbox import Sandbox

USERS = ["svc:pw", "reader:pw:read", "outsider:pw:none", "other:pw"]
SERIES_DIRS = {
    "1": "In/GE/Exam1486_Laser794mm/01_3_Plane_Localizer_FF",
    "5": "In/GE/Exam1486_Laser794mm/05_3_Plane_Localizer_HF",
}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A running sandbox: svc (site admin), reader (read-only), outsider (no access), other."""
    server = Sandbox(data=tmp_path / "xnat", host="127.0.0.1", port=0, users=USERS,
                     projects=["SPN01", "SPN02"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def svc(sandbox: Sandbox) -> Iterator[requests.Session]:
    """A requests session authenticated as the site admin, with a base-URL helper."""
    with requests.Session() as session:
        session.auth = ("svc", "pw")
        yield session


def series_files(scan: str, count: int = 3) -> list[Path]:
    """The first `count` files (sorted by name) of one series of the GE exam."""
    folder = dataset("ge_signa_premier_table") / SERIES_DIRS[scan]
    return sorted(folder.iterdir())[:count]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def rewrite(tmp_path: Path) -> Callable[..., Path]:
    """Copy a DICOM file into tmp_path with some header fields replaced."""
    counter = iter(range(1_000_000))

    def run(source: Path, **tags: str) -> Path:
        dataset_ = pydicom.dcmread(source)
        for keyword, value in tags.items():
            setattr(dataset_, keyword, value)
        target = tmp_path / "rewritten" / f"{next(counter):04d}_{source.name}"
        target.parent.mkdir(exist_ok=True)
        dataset_.save_as(target)
        return target

    return run


def make_zip(entries: list[tuple[str, Path | bytes]]) -> bytes:
    """A stored (uncompressed) zip of (entry name, file or bytes) pairs, in that order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, content in entries:
            data = content.read_bytes() if isinstance(content, Path) else content
            bundle.writestr(name, data)
    return buffer.getvalue()


def new_study(files: list[Path], rewrite: Callable[..., Path], **tags: str) -> list[Path]:
    """Copies of `files` moved into one new study (fresh StudyInstanceUID), plus `tags`."""
    study = generate_uid()
    return [rewrite(f, StudyInstanceUID=study, **tags) for f in files]
