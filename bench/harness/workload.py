"""Sessions of any size, cloned from the real scanner series in ../shared/dicom.

A workload is one subject folder (one session): one folder per real MR series, each filled with
copies of that series' files until the session reaches a size in bytes or a count of files, as a
scanner fills a long fMRI or diffusion series. Every copy has a fresh SOPInstanceUID (in the file
meta too) and the next InstanceNumber of its series; each series a fresh SeriesInstanceUID and
SeriesNumber; the whole folder is one study (one StudyInstanceUID) of one patient, so `xnatdrop
check` passes it and XNAT files it as one session of 8 or 17 scans, near a real session's 10 to
40, rather than the hundreds to thousands of series that copying whole series made (before
stop 32: ~150 at 0.5 GB, 2,400 at 8 GB). `clone(..., new_series=True)` still makes each copy a
series of its own, for a test that needs many scans.

How, and why it is fast enough for 8 GB: each source file is parsed once with pydicom and saved
as a *template* whose study, series and instance UIDs and series and instance numbers are
placeholders of a fixed length; a copy is the template with the placeholders' bytes replaced at
known offsets (same lengths, so no element length changes) followed by the untouched pixel data.
The clone therefore runs at about the disk's write rate instead of pydicom's.

Sources (the same series `bench/cstore_speed.py` sends, as `rules.check_folder` picks them):
- GE SIGNA Premier, 8 series of classic MR images (343 files, 15 MB, about 44 KB a file): the
  many-small-files workloads (1,000 to 50,000 files);
- the same plus Siemens XA30, 8 series of enhanced multi-frame MR (80 files, 44 MB, files up to
  several MB): the size workloads (0.5 to 8 GB), a mix of small and large files.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from harness import product

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from shared_data import dataset  # noqa: E402  (the tests' resolver of the shared data)

GE = ("ge_signa_premier_table", "In/GE/Exam1486_Laser794mm")
SIEMENS = ("siemens_xa30_enhanced", "In")
PATIENT_NAME, PATIENT_ID = "BENCH^SUBJECT", "BENCH_0001"
UID_DIGITS = 38  # "2.25." + 38 digits = 43 characters, well under the 64 a UID may have


def fresh_uid() -> str:
    """A new UID under the UUID-derived root 2.25 (PS3.5 B.2), always 43 characters long."""
    return f"2.25.{secrets.randbelow(9 * 10**37) + 10**37}"


@dataclasses.dataclass(frozen=True)
class Template:
    """One source file saved with placeholders, and where they sit in its bytes."""

    data: bytes
    header_end: int  # placeholders all lie before this offset (the pixel data follows)
    study: bytes
    series: bytes
    sop: bytes
    number: bytes
    instance: bytes  # InstanceNumber: 8 digits, a copy's number zero-padded to them
    offsets: tuple[tuple[int, bytes], ...]  # (offset, placeholder) in increasing order


@dataclasses.dataclass(frozen=True)
class SeriesTemplate:
    name: str
    files: tuple[Template, ...]

    @property
    def bytes(self) -> int:
        return sum(len(t.data) for t in self.files)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A cloned session: `folder` is the subject folder; `files` every file in it."""

    folder: Path
    files: tuple[Path, ...]
    bytes: int
    series: int

    @property
    def count(self) -> int:
        return len(self.files)


def source_series(mix: bool) -> list[tuple[str, list[Path]]]:
    """The clean raw series of the source sessions, as the rules pick them for upload."""
    sessions = [GE, SIEMENS] if mix else [GE]
    found = []
    for name, sub in sessions:
        folder = dataset(name) / sub
        verdict = product.check_folder(folder)
        if not verdict.ok:
            raise RuntimeError(f"{folder}: the source session no longer checks clean")
        for files in product.upload_series(verdict):
            label = f"{name.split('_')[0]}_{files[0].parent.name}"
            found.append((label, [folder / f for f in files]))
    return found


@functools.cache
def templates(mix: bool) -> list[SeriesTemplate]:
    """Templates of every source file; the study placeholder is shared by all of them.

    Made once per process and mix (pydicom parses and re-saves every source file: 6 s of CPU
    for the GE series here): each clone replaces every placeholder with fresh UIDs, so the
    file-count series and the settle latency share one set. Callers must not change the list."""
    study = fresh_uid()
    made = []
    for name, files in source_series(mix):
        series = fresh_uid()
        number = _number_placeholder()
        while (instance := _number_placeholder()) == number:
            pass
        made.append(
            SeriesTemplate(
                name, tuple(_template(p, study, series, number, instance) for p in files)
            )
        )
    return made


def _number_placeholder() -> str:
    return str(10_000_000 + secrets.randbelow(89_999_999))


def _template(path: Path, study: str, series: str, number: str, instance: str) -> Template:
    ds = pydicom.dcmread(path)
    sop = fresh_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SeriesNumber = number
    ds.InstanceNumber = instance
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.StudyID = "1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    reader = io.BytesIO(data)
    read_partial(reader, stop_when=_at_pixels)
    header_end = reader.tell()
    offsets = []
    for placeholder in (study, series, sop, number, instance):
        raw = placeholder.encode()
        start = 0
        while (found := data.find(raw, start, header_end)) != -1:
            offsets.append((found, raw))
            start = found + len(raw)
        if start == 0:
            raise RuntimeError(f"{path}: placeholder {placeholder} not found in its header")
    return Template(
        data,
        header_end,
        study.encode(),
        series.encode(),
        sop.encode(),
        number.encode(),
        instance.encode(),
        tuple(sorted(offsets)),
    )


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >= 0x7FE00000


def _copy_bytes(template: Template, values: dict[bytes, bytes]) -> Iterator[bytes | memoryview]:
    """The template with each placeholder replaced; the pixel data is not copied in memory."""
    view = memoryview(template.data)
    head = bytearray(view[: template.header_end])
    for offset, raw in template.offsets:
        head[offset : offset + len(raw)] = values[raw]
    yield head
    yield view[template.header_end :]


def clone(
    series: list[SeriesTemplate],
    folder: Path,
    *,
    target_bytes: int | None = None,
    target_files: int | None = None,
    new_series: bool = False,
) -> Workload:
    """Write copies of `series` into `folder` until it holds `target_bytes` or `target_files`.

    A round writes each source series' files once more, a whole series at a time, until the
    target is reached (the last series may overshoot it). By default a series' copies join
    its folder and series with the next InstanceNumbers, so every series stays numbered 1..N
    without gaps (a gap would be an incomplete series, which the check rightly blocks,
    INCOMPLETE_SERIES, issue 9). With `new_series`, each copy is a folder and series of its
    own instead.

    One new StudyInstanceUID for the whole folder; each series a new series UID and number,
    each file a new SOP instance UID. The data is synced to disk before returning, so that a
    later cold read can drop its pages from the cache (dirty pages cannot be dropped).
    """
    if (target_bytes is None) == (target_files is None):
        raise ValueError("give exactly one of target_bytes and target_files")
    study = fresh_uid().encode()
    files: list[Path] = []
    written = copies = 0
    uids = [
        (fresh_uid().encode(), str(10_000_000 + index).encode()) for index in range(len(series))
    ]

    def done() -> bool:
        if target_bytes is not None:
            return written >= target_bytes
        return len(files) >= (target_files or 0)

    while not done():
        copies += 1
        for index, source in enumerate(series):
            if done():
                break
            if new_series:
                out = folder / f"{copies:04d}_{source.name}"
                series_uid = fresh_uid().encode()
                number = str(10_000_000 + copies * 1000 + index).encode()
                first = 1
            else:
                out = folder / f"{index + 1:02d}_{source.name}"
                series_uid, number = uids[index]
                first = (copies - 1) * len(source.files) + 1
            out.mkdir(parents=True, exist_ok=True)
            for k, template in enumerate(source.files):
                values = {
                    template.study: study,
                    template.series: series_uid,
                    template.sop: fresh_uid().encode(),
                    template.number: number,
                    template.instance: f"{first + k:08d}".encode(),
                }
                path = out / f"IM{first + k:06d}.dcm"
                with open(path, "wb") as handle:
                    for piece in _copy_bytes(template, values):
                        handle.write(piece)
                files.append(path)
                written += len(template.data)
    os.sync()
    # In path order, as xnatdrop packs them: curl's zip and the baselines read the same order.
    return Workload(folder, tuple(sorted(files)), written, sum(1 for _ in folder.iterdir()))
