"""The upload zip and manifest, on real GE scanner files (ge_signa_premier_table)."""

from __future__ import annotations

import hashlib
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import pydicom

from shared_data import dataset
from xnatdrop import pack

EXAM = "In/GE/Exam1486_Laser794mm"


def stage(tmp_path: Path, series: tuple[str, ...]) -> tuple[Path, list[pack.Item]]:
    """Copy some series into a subject folder and describe their files as the rules would."""
    folder = tmp_path / "SPN01_0001"
    items = []
    for name in series:
        shutil.copytree(dataset("ge_signa_premier_table") / EXAM / name, folder / name)
        for path in sorted((folder / name).iterdir()):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            items.append(
                pack.Item(
                    path=path.relative_to(folder).as_posix(),
                    sop_instance_uid=header.SOPInstanceUID,
                    series_instance_uid=header.SeriesInstanceUID,
                    series_number=str(header.SeriesNumber),
                    study_instance_uid=header.StudyInstanceUID,
                )
            )
    return folder, items


def test_zip_holds_each_file_stored_and_byte_identical(tmp_path: Path) -> None:
    folder, items = stage(tmp_path, ("01_3_Plane_Localizer_FF", "02_Ax_fMRI_FF_I11.1_S15.9"))
    seen: list[int] = []
    manifest = pack.pack(folder, items, tmp_path / "spool", progress=seen.append)
    assert len(manifest.files) == 71 == len(items)
    assert seen[-1] == manifest.total_bytes == sum((folder / i.path).stat().st_size for i in items)
    with zipfile.ZipFile(manifest.zip_path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == [i.path for i in items]
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        for entry in manifest.files:
            data = (folder / entry.path).read_bytes()
            assert archive.read(entry.path) == data
            assert entry.md5 == hashlib.md5(data).hexdigest()
            assert entry.size == len(data)
    assert set(manifest.series()) == {i.series_instance_uid for i in items}
    assert len(manifest.study_uids()) == 1


def test_load_returns_the_manifest_only_for_a_complete_pack(tmp_path: Path) -> None:
    folder, items = stage(tmp_path, ("01_3_Plane_Localizer_FF",))
    spool = tmp_path / "spool"
    assert pack.load(spool) is None
    manifest = pack.pack(folder, items, spool)
    assert pack.load(spool) == manifest
    # A zip cut short (a crash while copying it elsewhere, a full disk) is not trusted.
    with open(manifest.zip_path, "r+b") as handle:
        handle.truncate(manifest.zip_size - 10)
    assert pack.load(spool) is None
    pack.remove(spool)
    assert list(spool.iterdir()) == []


def test_technologist_files_are_untouched(tmp_path: Path) -> None:
    folder, items = stage(tmp_path, ("05_3_Plane_Localizer_HF",))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    pack.pack(folder, items, tmp_path / "spool")
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    assert before == after


def test_memory_stays_flat_for_large_files(tmp_path: Path) -> None:
    """A 256 MB file packs with a few MB of Python allocations (one 1 MiB buffer)."""
    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "large.dcm", "wb") as handle:
        block = bytes(range(256)) * 4096
        for _ in range(256):
            handle.write(block)
    items = [pack.Item("large.dcm", "1.2.3", "1.2.4", "1")]
    tracemalloc.start()
    try:
        manifest = pack.pack(folder, items, tmp_path / "spool")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.files[0].size == 256 << 20
    assert peak < 8 << 20, f"peak Python allocation {peak / 1e6:.1f} MB"
