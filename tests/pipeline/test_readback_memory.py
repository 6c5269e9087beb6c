"""The read-back of a large pixel sample never holds the file in memory.

The pixel sample of an enhanced multi-frame scan is its one file, hundreds of MB, and the
samples are read a few at once (`xnat.READERS`). A push of a session whose one scan is a 48 MB
image is traced with `tracemalloc`: the whole push, sample download and digest included, peaks
far below the file's size. Reading the download into `bytes`, as the read-back once did, holds
it twice over (the buffer and its copy), so the bound fails on such code.

The sandbox runs as its own process (`xnatdrop sandbox`), so only the push's own memory is
traced, not the server's.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.uid import generate_uid

from push_helpers import EXAM, PASSWORD, PROJECT, USER, client, load, stage, write_config
from shared_data import dataset
from xnatdrop import ledger, pipeline

LABEL = "SPN01_0077"
ROWS, COLUMNS = 4096, 6144  # 16-bit: a 48 MiB Pixel Data value
PIXEL_BYTES = ROWS * COLUMNS * 2


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    command = [
        *(sys.executable, "-m", "xnatdrop", "-q", "sandbox", "--port", "0"),
        *("--data", str(tmp_path / "xnat"), "--user", f"{USER}:{PASSWORD}"),
        *("--project", PROJECT),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), url
        try:
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


def add_large_series(folder: Path) -> Path:
    """One more series in the folder's study: a single image of PIXEL_BYTES of pixel data."""
    first = sorted((dataset("ge_signa_premier_table") / EXAM / "01_3_Plane_Localizer_FF").iterdir())
    image = pydicom.dcmread(first[0])
    image.SeriesInstanceUID = generate_uid()
    image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    image.SeriesNumber = 90
    image.InstanceNumber = 1
    image.SeriesDescription = "large image"
    # A series of one: nothing announces more images (rule D8, INCOMPLETE_SERIES).
    for tag in (0x00201002, 0x00200105, 0x0021104F):  # ImagesInAcquisition, …, GE locations
        if tag in image:
            del image[tag]
    image.Rows, image.Columns = ROWS, COLUMNS
    image.BitsAllocated, image.BitsStored, image.HighBit = 16, 16, 15
    image.PixelRepresentation = 0
    image.PixelData = numpy.arange(ROWS * COLUMNS, dtype="<u2").tobytes()
    path = folder / "90_large" / "large.dcm"
    path.parent.mkdir()
    image.save_as(path)
    return path


def test_a_large_pixel_sample_is_read_back_in_bounded_memory(
    tmp_path: Path, sandbox_url: str
) -> None:
    settings = load(write_config(tmp_path, sandbox_url))
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    large = add_large_series(folder)
    assert large.stat().st_size > PIXEL_BYTES
    with ledger.Ledger(settings.paths.state) as book:
        tracemalloc.start()
        try:
            outcome = pipeline.process(folder, settings, book, lambda: client(settings))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert outcome.kind == "archived", outcome
    receipt = (settings.paths.done).rglob("RECEIPT.json")
    text = next(receipt).read_text()
    # The large file was the sample of its scan, and its pixel data matched.
    assert '"file": "90_large/large.dcm"' in text and '"result": "identical"' in text
    assert peak < PIXEL_BYTES / 4, f"the push peaked at {peak >> 20} MiB"
