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

import contextlib
import signal
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.uid import generate_uid

from push_helpers import (
    EXAM,
    PASSWORD,
    PROJECT,
    USER,
    client,
    load,
    push_process,
    stage,
    write_config,
)
from shared_data import dataset
from xnatdrop import config, ledger, pack, pipeline
from xnatdrop.pipeline import readback, spool
from xnatdrop.pipeline.context import Context

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


@pytest.mark.alone
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


FILES = 1500  # 30 scans of 50 small fMRI images (about 26 KB each)
# Bytes the read-back may hold per archived file on top of the manifest. A `RemoteFile` per
# listed file (about 700 bytes), a `CatalogEntry` per instance (about 350) and the dicts that
# joined them took 1,340 bytes a file here; a compact listing compared scan by scan, 460.
PER_FILE = 800


@pytest.mark.alone
def test_the_read_back_keeps_little_per_archived_file(tmp_path: Path, sandbox_url: str) -> None:
    """1. Push a session of 1,500 files in 30 scans into the sandbox (its own process, so only
       the read-back's memory is traced).
    2. Read the archived session back as the archive step does (`readback.archived`: the
       listing, every scan's catalog, the pixel samples, sizes and MD5s), the manifest loaded
       beforehand, under `tracemalloc`.
    3. Result: every instance matched, and the read-back peaked below PER_FILE bytes a file:
       it keeps a compact listing and compares each scan's catalog as it arrives; records of
       every listed file and catalog entry held at once (as it once did) exceed the bound."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from harness import workload

    small = [t for t in workload.templates(mix=False) if "fMRI" in t.name][:1]
    folder = tmp_path / "drop" / LABEL
    made = workload.clone(small, folder, target_files=FILES, new_series=True)
    assert made.count == FILES
    config_path = write_config(tmp_path, sandbox_url)
    settings = load(config_path)
    # Killed once the archive step is recorded: the spool still holds the manifest.
    pushed = push_process(config_path, folder, crash_at="attach:before")
    assert pushed.returncode == -signal.SIGKILL, pushed.stderr
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(label=LABEL)
        assert drop.state == "archived", drop
        spooled = settings.paths.state / "spool" / str(drop.id)
        manifest = spool.load(spooled, pack.Manifest)
        assert manifest is not None and len(manifest.files) == FILES
        with pipeline_context(settings, folder, book) as context:
            context.client().ensure_login()
            tracemalloc.start()
            try:
                session = readback.archived(context, drop, manifest, bytes_too=True)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert session is not None
    verification = spool.xnat_record(spooled).verification
    assert verification is not None and verification["instances"] == FILES
    assert peak < PER_FILE * FILES, f"the read-back held {peak // FILES} bytes a file"


@contextlib.contextmanager
def pipeline_context(
    settings: config.Config, folder: Path, book: ledger.Ledger
) -> Iterator[Context]:
    """The pipeline's context for `folder`'s drop, as a step gets it, to call one step's parts."""
    drop_settings = settings.drop_for(folder)
    assert drop_settings is not None
    with contextlib.ExitStack() as stack:
        yield Context(
            settings, drop_settings, book, lambda: client(settings), threading.Event(), None, stack
        )


# What the pixel comparison may hold at once, whatever the sample's size: a reader's download
# piece and its two compare buffers (`xnat.DOWNLOAD_PIECE`, `verify.COMPARE_PIECE`), with room
# for requests' own: 0.6 MiB here; 1 MiB pieces, new for every piece and side, 4.0 MiB.
COMPARISON_BOUND = 2 << 20


@pytest.mark.alone
def test_the_pixel_comparison_holds_a_bounded_piece_of_a_large_sample(
    tmp_path: Path, sandbox_url: str
) -> None:
    """1. Push a session whose one scan is a single 48 MiB image into the sandbox (its own
       process), stopped once archived.
    2. Read the archived session's catalogs, then trace only the pixel comparison of the
       samples (`readback.pixel_problems`: each downloaded over a socket, compared with the
       local file byte for byte).
    3. Result: the large file is the sample of its scan and "identical", and the comparison
       peaked below COMPARISON_BOUND (1/24 of the value): pieces of bounded size, reused."""
    config_path = write_config(tmp_path, sandbox_url)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL, sidecars=False)
    add_large_series(folder)
    pushed = push_process(config_path, folder, crash_at="attach:before")
    assert pushed.returncode == -signal.SIGKILL, pushed.stderr
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(label=LABEL)
        spooled = settings.paths.state / "spool" / str(drop.id)
        manifest = spool.load(spooled, pack.Manifest)
        assert manifest is not None
        with pipeline_context(settings, folder, book) as context:
            session = context.client().find_session(context.project, drop.label)
            found = readback.rewriting(context, drop)
            check = readback.catalogued(context, session, manifest, compare_bytes=False)
            tracemalloc.start()
            try:
                results, problems = readback.pixel_problems(context, drop, check.samples, found)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert problems == []
    assert {"scan": "90", "file": "90_large/large.dcm", "result": "identical"} in results
    assert peak < COMPARISON_BOUND, f"the comparison held {peak / (1 << 20):.1f} MiB"
