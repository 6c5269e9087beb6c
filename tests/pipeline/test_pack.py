"""The streamed upload zip and its manifest, on real GE scanner files (ge_signa_premier_table)."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import os
import random
import shutil
import subprocess
import textwrap
import threading
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest

from shared_data import dataset
from xnatdrop import md5lanes, pack, packread, rules, zipformat
from xnatdrop.pipeline import spool

EXAM = "In/GE/Exam1486_Laser794mm"


def stage(tmp_path: Path, series: tuple[str, ...]) -> tuple[Path, list[rules.FileEntry]]:
    """Copy some series into a subject folder and describe their files as the rules would."""
    folder = tmp_path / "SPN01_0001"
    items = []
    for name in series:
        shutil.copytree(dataset("ge_signa_premier_table") / EXAM / name, folder / name)
        for path in sorted((folder / name).iterdir()):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            items.append(
                rules.FileEntry(
                    path=path.relative_to(folder),
                    size=path.stat().st_size,
                    sop_instance_uid=header.SOPInstanceUID,
                    series_instance_uid=header.SeriesInstanceUID,
                    series_number=str(header.SeriesNumber),
                    study_instance_uid=header.StudyInstanceUID,
                )
            )
    return folder, items


def drain(body: pack.Body) -> bytes:
    pieces = []
    while piece := body.read(1 << 16):
        pieces.append(piece)
    return b"".join(pieces)


def assert_zip_holds(path: Path, folder: Path, names: list[str]) -> None:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == names
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        for name in names:
            assert archive.read(name) == (folder / name).read_bytes()


def test_zip_holds_each_file_stored_and_byte_identical(tmp_path: Path) -> None:
    folder, items = stage(tmp_path, ("01_3_Plane_Localizer_FF", "02_Ax_fMRI_FF_I11.1_S15.9"))
    seen: list[int] = []
    manifest = pack.write_zip(folder, items, tmp_path / "upload.zip", progress=seen.append)
    assert len(manifest.files) == 71 == len(items)
    assert seen[-1] == manifest.zip_size == (tmp_path / "upload.zip").stat().st_size
    assert manifest.total_bytes == sum((folder / i.path).stat().st_size for i in items)
    assert_zip_holds(tmp_path / "upload.zip", folder, [i.path for i in items])
    for entry in manifest.files:
        data = (folder / entry.path).read_bytes()
        assert entry.md5 == hashlib.md5(data).hexdigest()
        assert entry.size == len(data)
    assert set(manifest.series()) == {i.series_instance_uid for i in items}
    assert len(manifest.study_uids()) == 1


def test_an_empty_file_is_packed_and_the_body_reads_to_its_planned_length(
    tmp_path: Path,
) -> None:
    """An empty file (a sidecar's placeholder; the rules keep empty DICOM out) is one zip
    entry of 0 bytes. Its data piece was b"", which ended every reader of the body there:
    write_zip stopped early (and found no manifest), and an upload fell short of its
    Content-Length."""
    folder = tmp_path / "behav"
    (folder / "run1").mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"trial,rt\n")
    (folder / "run1" / "empty.log").write_bytes(b"")
    (folder / "z.csv").write_bytes(b"trial,rt\n1,0.5\n")
    names = ["a.csv", "run1/empty.log", "z.csv"]
    entries = [rules.FileEntry(Path(n), (folder / n).stat().st_size) for n in names]
    manifest = pack.write_zip(folder, entries, tmp_path / "upload.zip")
    assert [(e.path, e.size) for e in manifest.files] == [
        ("a.csv", 9), ("run1/empty.log", 0), ("z.csv", 15),
    ]  # fmt: skip
    assert manifest.files[1].md5 == hashlib.md5(b"").hexdigest()
    assert_zip_holds(tmp_path / "upload.zip", folder, names)
    with pack.Body(folder, pack.plan(folder, entries)) as body:
        assert len(drain(body)) == len(body) == manifest.zip_size


def test_the_body_has_its_planned_length_and_saves_the_manifest_at_the_end(
    tmp_path: Path,
) -> None:
    """The Content-Length is known before any data is read; the manifest is saved once every
    file has been hashed, and each new Body sends the same bytes again."""
    folder, items = stage(tmp_path, ("01_3_Plane_Localizer_FF",))
    records = tmp_path / "spool"
    planned = pack.plan(folder, items)
    spool.save(records, planned)
    assert spool.load(records, pack.Plan) == planned
    assert spool.load(records, pack.Manifest) is None
    body = pack.Body(folder, planned, on_manifest=lambda made: spool.save(records, made))
    assert len(body) == planned.zip_size
    first = body.read(1)
    assert spool.load(records, pack.Manifest) is None, "saved before the files were hashed"
    data = first + drain(body)
    assert len(data) == planned.zip_size and body.read(1) == b""
    manifest = spool.load(records, pack.Manifest)
    assert manifest is not None and [e.path for e in manifest.files] == [i.path for i in items]
    assert pack.digest(folder, planned) == manifest
    with pack.Body(folder, planned) as again:
        assert drain(again) == data
    spool.clear(records)
    assert not records.exists()


def test_technologist_files_are_untouched(tmp_path: Path) -> None:
    folder, items = stage(tmp_path, ("05_3_Plane_Localizer_HF",))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    pack.write_zip(folder, items, tmp_path / "upload.zip")
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    assert before == after


def big_entry() -> rules.FileEntry:
    return rules.FileEntry(
        Path("large.dcm"), 0, "1.2.3", series_instance_uid="1.2.4", series_number="1"
    )


def big_file(folder: Path, mib: int) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "large.dcm"
    with open(path, "wb") as handle:
        block = bytes(range(256)) * 4096
        for _ in range(mib):
            handle.write(block)
    return path


@pytest.mark.alone
def test_memory_stays_flat_for_large_files(tmp_path: Path) -> None:
    """A 256 MB file streams with a few MB of Python allocations (1 MiB pieces)."""
    big_file(tmp_path / "big", 256)
    items = [big_entry()]
    tracemalloc.start()
    try:
        manifest = pack.write_zip(tmp_path / "big", items, tmp_path / "upload.zip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.files[0].size == 256 << 20
    assert peak < 8 << 20, f"peak Python allocation {peak / 1e6:.1f} MB"
    assert_zip_holds(tmp_path / "upload.zip", tmp_path / "big", ["large.dcm"])


@pytest.mark.parametrize("in_lanes", [True, False])
def test_files_larger_than_a_run_are_hashed_in_the_lanes_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_lanes: bool
) -> None:
    """Files from just over RUN to WHOLE_FILE, of sizes that end anywhere in a block, among
    small ones: each goes to the MD5 lanes as its CHUNK pieces (read_one), or, once the lanes
    hold LANES_HELD bytes (here at once), is hashed by its reader; either way the manifest has
    hashlib's MD5 of every file and the zip holds them byte for byte."""
    if not in_lanes:
        monkeypatch.setattr(packread, "LANES_HELD", 0)
    fed: list[tuple[int, int]] = []  # (tag, pieces) of each file handed over in pieces
    feed = md5lanes.Lanes.feed

    def spy(lanes: md5lanes.Lanes, tags: Any, files: Any) -> None:
        fed.extend((t, len(f)) for t, f in zip(tags, files, strict=True) if isinstance(f, list))
        feed(lanes, tags, files)

    monkeypatch.setattr(md5lanes.Lanes, "feed", spy)
    folder = tmp_path / "SPN01_0001"
    (folder / "s").mkdir(parents=True)
    fill = random.Random(1321)
    sizes = [1000, pack.RUN + 1, 3_400_000, 5000, 2 * pack.CHUNK, pack.WHOLE_FILE, 70_000]
    sizes += [pack.RUN + 55, pack.RUN + 56, 100]
    items = []
    for number, size in enumerate(sizes):
        name = f"s/{number:04d}.dcm"
        (folder / name).write_bytes(fill.randbytes(size))
        items.append(
            rules.FileEntry(Path(name), size, f"1.2.{number}", series_instance_uid="1.2.9",
                            series_number="1")
        )  # fmt: skip
    manifest = pack.write_zip(folder, items, tmp_path / "upload.zip")
    for entry in manifest.files:
        assert entry.md5 == hashlib.md5((folder / entry.path).read_bytes()).hexdigest()
    assert_zip_holds(tmp_path / "upload.zip", folder, [i.path for i in items])
    large = {n: -(-size // pack.CHUNK) for n, size in enumerate(sizes) if size > pack.RUN}
    assert dict(fed) == (large if in_lanes else {})


@pytest.mark.parametrize("change", ["grow", "shrink", "vanish"])
@pytest.mark.parametrize("mib", [0, 2, 9])  # in a run; alone, in pieces; hashed, then streamed
def test_a_file_that_changed_after_planning_aborts_the_body(
    tmp_path: Path, change: str, mib: int
) -> None:
    folder = tmp_path / "SPN01_0001"
    path = big_file(folder, mib)
    if not mib:
        path.write_bytes(b"x" * 1000)
    planned = pack.plan(folder, [big_entry()])
    if change == "grow":
        with open(path, "ab") as handle:
            handle.write(b"more")
    elif change == "shrink":
        with open(path, "r+b") as handle:
            handle.truncate(planned.files[0].size - 1)
    else:
        path.unlink()
    made: list[pack.Manifest] = []
    with pack.Body(folder, planned, on_manifest=made.append) as body:
        with pytest.raises(pack.Changed):
            drain(body)
        with pytest.raises(pack.Changed):
            body.read(1)  # a short body never passes for a complete one
    assert made == []


def zip64_folder(tmp_path: Path) -> tuple[Path, list[rules.FileEntry]]:
    folder = tmp_path / "SPN01_0001"
    (folder / "série 1").mkdir(parents=True)
    items = []
    for number in range(5):
        name = f"série 1/{number:04d}.dcm"
        (folder / name).write_bytes(bytes([number]) * (300 + number))
        items.append(
            rules.FileEntry(Path(name), 300 + number, f"1.2.{number}", series_instance_uid="1.2.9",
                            series_number="1")
        )  # fmt: skip
    return folder, items


def test_zip64_fields_and_utf8_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the ZIP64 threshold lowered, every size and offset takes the ZIP64 paths that a
    session over 2 GiB would take; zipfile reads them back."""
    monkeypatch.setattr(zipformat, "ZIP64_LIMIT", 100)
    folder, items = zip64_folder(tmp_path)
    manifest = pack.write_zip(folder, items, tmp_path / "upload.zip")
    assert manifest.zip_size == (tmp_path / "upload.zip").stat().st_size
    assert_zip_holds(tmp_path / "upload.zip", folder, [i.path for i in items])
    with zipfile.ZipFile(tmp_path / "upload.zip") as archive:
        assert all(i.flag_bits & 0x800 for i in archive.infolist())


JAVA_READER = """
import java.io.*;
import java.util.zip.*;

public class ReadZip {
    public static void main(String[] args) throws IOException {
        try (ZipInputStream in = new ZipInputStream(new FileInputStream(args[0]))) {
            byte[] buffer = new byte[65536];
            for (ZipEntry entry; (entry = in.getNextEntry()) != null; ) {
                long size = 0;
                CRC32 crc = new CRC32();
                for (int n; (n = in.read(buffer)) > 0; ) {
                    size += n;
                    crc.update(buffer, 0, n);
                }
                System.out.println(entry.getName() + "\\t" + size + "\\t" + crc.getValue());
            }
        }
    }
}
"""


@pytest.mark.parametrize("zip64", [False, True])
def test_java_zipinputstream_reads_the_zip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64: bool
) -> None:
    """XNAT's DICOM-zip importer reads uploads with java.util.zip.ZipInputStream, which refuses
    data descriptors on stored entries; a tiny Java reader checks each entry and its CRC."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no Java compiler on this host")
    if zip64:
        monkeypatch.setattr(zipformat, "ZIP64_LIMIT", 100)
    folder, items = zip64_folder(tmp_path)
    pack.write_zip(folder, items, tmp_path / "upload.zip")
    source = tmp_path / "java" / "ReadZip.java"
    source.parent.mkdir()
    source.write_text(textwrap.dedent(JAVA_READER), encoding="utf-8")
    subprocess.run(["javac", str(source)], check=True, capture_output=True)
    result = subprocess.run(
        ["java", "-cp", str(source.parent), "ReadZip", str(tmp_path / "upload.zip")],
        check=True,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    expected = [
        f"{i.path}\t{len(d)}\t{zlib.crc32(d)}"
        for i in items
        for d in [(folder / i.path).read_bytes()]
    ]
    assert result.stdout.splitlines() == expected


def many_files(folder: Path, count: int, size: int) -> list[rules.FileEntry]:
    """`count` files of `size` bytes in series folders of 500, described with UIDs of real
    length, as the check step hands them to the packer."""
    entries = []
    for number in range(count):
        path = Path(f"series{number // 500:03d}") / f"IM{number:06d}.dcm"
        (folder / path.parent).mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(number.to_bytes(4, "big") * (size // 4))
        uid = f"1.2.826.0.1.3680043.8.498.{number:038d}"
        entries.append(
            rules.FileEntry(path, size, uid, "1.2.840.10008.5.1.4.1.1.4", f"{uid[:-3]}999", "1",
                            f"{uid[:-5]}77777", "1.2.840.10008.1.2.1")
        )  # fmt: skip
    return entries


def send_peak(folder: Path, entries: list[rules.FileEntry], records: Path) -> int:
    """Peak Python allocation (tracemalloc) while a Body of `entries` is sent and its manifest
    saved into the spool `records`, beyond what the plan itself holds."""
    planned = pack.plan(folder, entries)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with pack.Body(folder, planned, lambda made: spool.save(records, made)) as body:
            while body.read(1 << 16):
                pass
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    manifest = spool.load(records, pack.Manifest)
    assert manifest is not None and len(manifest.files) == len(entries)
    return peak


@pytest.mark.alone
def test_memory_per_file_stays_small_when_sending_many_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Body holds per file while it sends and saves the manifest: the MD5 (16 bytes)
    and, for the central directory, the offset and CRC (12). Entry objects, central directory
    records and the manifest's JSON text used to grow with the file count (about 3 KB a file,
    150 MB at 50,000 files). The read-ahead window is made small so that it fills in both runs:
    the difference between them is what grows with the count."""
    monkeypatch.setattr(pack, "WINDOW", 256 << 10)
    small, large = 1500, 6000
    peaks = {}
    for count in (small, large):
        folder = tmp_path / f"S{count}"
        peaks[count] = send_peak(folder, many_files(folder, count, 2048), tmp_path / f"R{count}")
    per_file = (peaks[large] - peaks[small]) / (large - small)
    assert per_file < 200, f"{per_file:.0f} bytes per file ({peaks})"


def test_pieces_a_caller_keeps_are_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of small files are read into reused buffers: a piece still held by anyone (here the
    caller keeps all of them) must never be reused for a later run, while one nobody holds
    any more is (the second body, drained piece by piece into a file)."""
    monkeypatch.setattr(pack, "RUN", 8 << 10)
    folder = tmp_path / "S"
    entries = many_files(folder, 300, 5000)  # about 300 runs, many more than the pool holds
    planned = pack.plan(folder, entries)
    with pack.Body(folder, planned) as body:
        kept = []
        while piece := body.read(1 << 16):
            kept.append(piece)
    assert len(kept) > 100
    (tmp_path / "kept.zip").write_bytes(b"".join(kept))
    assert_zip_holds(tmp_path / "kept.zip", folder, [e.path for e in entries])
    manifest = pack.write_zip(folder, entries, tmp_path / "dropped.zip")
    assert (tmp_path / "dropped.zip").read_bytes() == (tmp_path / "kept.zip").read_bytes()
    assert [e.md5 for e in manifest.files] == [
        hashlib.md5((folder / e.path).read_bytes()).hexdigest() for e in entries
    ]


def test_the_crc_is_zlibs_crc32_whatever_computes_it() -> None:
    """The zip's CRC-32 comes from ISA-L when installed (zipformat.crc32): on buffers, views and
    pieces continued from a previous value, it must be exactly zlib's (Java's ZipInputStream
    checks each entry's CRC against its bytes)."""
    data = bytes(range(256)) * 4099 + b"odd tail"
    view = memoryview(bytearray(data))
    assert zipformat.crc32(data) == zlib.crc32(data)
    assert zipformat.crc32(view[1000:]) == zlib.crc32(data[1000:])
    assert zipformat.crc32(view[77:], zipformat.crc32(view[:77])) == zlib.crc32(data)
    assert zipformat.crc32(b"") == zlib.crc32(b"") == 0


@pytest.mark.parametrize(
    "path",
    ["S1/IM0001.dcm", 'Séries "quoted"/IM\\0002.dcm', "S2/\u00e9\t\u2028.dcm"],
)
def test_manifest_rows_are_the_json_of_their_entries(tmp_path: Path, path: str) -> None:
    """The manifest's rows are written from a template (packrecords._manifest_row), not by
    encoding a dict per file: the text must be the same JSON, escapes included, for a
    manifest made while sending and for one read back from the spool; and an entry whose
    field is not text (a number) takes the general way, with the same result."""
    import json

    from xnatdrop import packrecords

    entry = rules.FileEntry(Path(path), 5, "2.25.1", "1.2.840.10008.5.1.4.1.1.4", "2.25.2", "7",
                            "2.25.3", "1.2.840.10008.1.2.1")  # fmt: skip
    planned = packrecords.Planned(entry, 12345, 1.5, path)
    md5 = bytes(range(16))
    sent = pack.Manifest.sent(99, (planned, planned), md5 * 2)
    expected = {**entry.to_json(), "size": 12345, "md5": md5.hex()}
    text = "".join(sent.json_pieces())
    assert json.loads(text)["files"] == [expected, expected]
    assert text.split("\n")[1].rstrip(",") == json.dumps(expected, ensure_ascii=False)
    spool.save(tmp_path, sent)
    again = spool.load(tmp_path, pack.Manifest)
    assert again == sent and "".join(again.json_pieces()) == text

    odd = rules.FileEntry(Path(path), 5, "2.25.1", series_number=7)  # type: ignore[arg-type]
    row = packrecords._manifest_row(odd, 12345, md5.hex())
    assert json.loads(row) == {**odd.to_json(), "size": 12345, "md5": md5.hex()}
    assert '"series_number": 7,' in row


@pytest.mark.parametrize("gone", [3, 45])
def test_a_run_is_read_ahead_and_a_file_gone_from_it_is_named_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gone: int
) -> None:
    """1. Plan 60 small files (one run), then delete one: early in the run (3) or late (45).
    2. Result: the body fails with Changed naming that file, not a later one; no descriptor is
       left open. With every file present, the kernel is asked to read each file of the run
       ahead, in order (POSIX_FADV_WILLNEED, seen by a wrapper around the real call)."""
    folder = tmp_path / "S"
    entries = many_files(folder, 60, 1000)
    planned = pack.plan(folder, entries)
    advised: list[str] = []
    real_fadvise = pack.os.posix_fadvise

    def fadvise(descriptor: int, offset: int, length: int, advice: int) -> None:
        if advice == pack.os.POSIX_FADV_WILLNEED:
            advised.append(Path(pack.os.readlink(f"/proc/self/fd/{descriptor}")).name)
        real_fadvise(descriptor, offset, length, advice)

    monkeypatch.setattr(pack.os, "posix_fadvise", fadvise)
    open_before = len(list(Path("/proc/self/fd").iterdir()))
    with pack.Body(folder, planned) as body:
        drain(body)
    assert advised == [Path(e.path).name for e in entries]

    (folder / entries[gone].path).unlink()
    with pack.Body(folder, planned) as body, pytest.raises(pack.Changed) as failed:
        drain(body)
    assert str(entries[gone].path) in str(failed.value)
    assert len(list(Path("/proc/self/fd").iterdir())) == open_before


def test_the_files_of_the_window_are_read_ahead_by_the_readers_before_each_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Plan 40 files of 250 kB (runs of 8 files, 5 runs: `_runs` goes on past RUN bytes
       while a run has fewer than LANES files); stream the body, noting which
       files the kernel was asked to read ahead (POSIX_FADV_WILLNEED, seen by a wrapper around
       the real call) and, as each run's read starts, what had been asked for by then.
    2. Result: every file was asked for once, each run's in order (two readers may ask for two
       runs at once) before the run is read, by the reader threads (`Prefetches`), with no
       thread of its own (a fourth thread made the GIL change hands about three times per
       file). The zip is whole and no descriptor is left open."""
    monkeypatch.setattr(pack, "LANES", 8)  # AVX2's; AVX-512's 16 make runs of 15 files here
    folder = tmp_path / "S"
    entries = many_files(folder, 40, 250_000)
    planned = pack.plan(folder, entries)
    advised: list[tuple[str, str]] = []
    at_start: list[tuple[list[str], set[str]]] = []
    threads: set[str] = set()  # the body's threads, by kind, as the runs are read
    before = set(threading.enumerate())  # threads of the test process (e.g. the journal's syncer)
    lock = threading.Lock()
    real_fadvise = pack.os.posix_fadvise
    real_read_run = pack.packread.read_run

    def fadvise(descriptor: int, offset: int, length: int, advice: int) -> None:
        if advice == pack.os.POSIX_FADV_WILLNEED:
            name = Path(pack.os.readlink(f"/proc/self/fd/{descriptor}")).name
            with lock:
                advised.append((name, threading.current_thread().name))
        real_fadvise(descriptor, offset, length, advice)

    def read_run(base: str, run: Any, pool: Any, opened: Any, *hashing: Any) -> Any:
        opened.result()  # as the real one waits for its descriptors
        with lock:
            at_start.append(([Path(path).name for path in run.paths], {n for n, _ in advised}))
            threads.update(
                t.name.rpartition("_")[0] or t.name
                for t in threading.enumerate()
                if t not in before or t is threading.main_thread()
            )
        return real_read_run(base, run, pool, opened, *hashing)

    monkeypatch.setattr(pack.os, "posix_fadvise", fadvise)
    monkeypatch.setattr(pack.packread, "read_run", read_run)
    open_before = len(list(Path("/proc/self/fd").iterdir()))
    with pack.Body(folder, planned) as body:
        data = drain(body)
    names = [Path(e.path).name for e in entries]
    assert sorted(name for name, _ in advised) == sorted(names)
    order = [name for name, _ in advised]
    assert len(at_start) == 5
    for run, seen in at_start:  # each run's files asked for in order, before it is read
        assert [name for name in order if name in run] == run
        assert set(run) <= seen
    assert {thread.rpartition("_")[0] for _, thread in advised} == {"upload"}
    assert threads == {"MainThread", "upload"}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert len(archive.infolist()) == 40
    assert len(list(Path("/proc/self/fd").iterdir())) == open_before


def test_the_plan_has_the_kernel_read_the_first_window_while_it_stats_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Write 300 files of 41 kB (12 MB, more than the window), on disk, and drop them from
       the page cache; plan them, reading nothing.
    2. Result: the plan asks the kernel (POSIX_FADV_WILLNEED, each whole file) for the first
       files, up to OPEN_AHEAD files or WINDOW bytes, and for no other; each of them is seen
       in the page cache (fincore; 10 s at most), while the files after the window are never
       read: the disk works while the plan stats the rest and the body starts. No descriptor
       is left open.

    A file counts once it has been seen resident: readahead's pages sit unused on the
    inactive list, and the other tests running beside this one may evict a few of them
    before the last one arrives (CI, stop 30: the first window was never all resident at
    once)."""
    folder = tmp_path / "S"
    entries = many_files(folder, 300, 41_000)
    paths = [folder / e.path for e in entries]
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        os.fsync(descriptor)  # dirty pages cannot be dropped
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)

    def cached(files: list[Path]) -> list[bool]:
        """Whether each file is wholly in the page cache, asked without reading it (fincore,
        util-linux: mincore(2); a read, even RWF_NOWAIT, would start the kernel's readahead)."""
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        return [int(resident) >= 41_000 for resident in out]

    advised: list[tuple[int, int, int]] = []
    advise = os.posix_fadvise

    def recording(descriptor: int, offset: int, length: int, advice: int) -> None:
        """The real advice, noted: the file's inode, the length asked, the advice."""
        advised.append((os.fstat(descriptor).st_ino, length, advice))
        advise(descriptor, offset, length, advice)

    assert not any(cached(paths))  # the test means something here
    open_before = len(list(Path("/proc/self/fd").iterdir()))
    monkeypatch.setattr(os, "posix_fadvise", recording)
    pack.plan(folder, entries)
    monkeypatch.undo()
    assert len(list(Path("/proc/self/fd").iterdir())) == open_before
    window = min(pack.OPEN_AHEAD, pack.WINDOW // 41_000)
    inodes = [path.stat().st_ino for path in paths]
    assert advised == [(inode, 41_000, os.POSIX_FADV_WILLNEED) for inode in inodes[:window]]
    seen = [False] * len(paths)
    deadline = time.monotonic() + 10
    while not all(seen[:window]) and time.monotonic() < deadline:
        seen = [was or now for was, now in zip(seen, cached(paths), strict=True)]
        time.sleep(0.01)
    assert all(seen[:window])
    assert not any(seen[window:])


def test_a_job_first_opens_every_run_waiting_in_order_and_skips_a_dropped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Prefetches.then`: before its job, a reader opens and asks for the files of every run
    handed out so far (the window), in order, not only its own; a run dropped (its future
    cancelled: the upload stopped) is not opened; the next job finds nothing left to do."""
    folder = tmp_path / "S"
    entries = many_files(folder, 6, 1000)
    planned = pack.plan(folder, entries)
    asked: list[str] = []
    real_prefetch = pack.packread.prefetch
    monkeypatch.setattr(
        pack.packread,
        "prefetch",
        lambda base, run: asked.extend(run.paths) or real_prefetch(base, run),
    )
    prefetches = pack.packread.Prefetches(str(folder))
    first, dropped, last = (
        prefetches.add(planned.columns(0, 2)),
        prefetches.add(planned.columns(2, 4)),
        prefetches.add(planned.columns(4, 6)),
    )
    assert dropped.cancel()
    seen: list[bool] = []
    assert prefetches.then(lambda x: seen.append(first.done() and last.done()) or x, 7) == 7
    assert seen == [True]
    assert asked == [e.path for e in entries[:2] + entries[4:]]
    assert all(d is not None for d in first.result() + last.result())
    pack.packread.close(first.result() + last.result())
    assert prefetches.then(lambda: None) is None and len(asked) == 4


def test_a_prefetch_that_fails_hands_its_error_to_the_run_and_the_job_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Prefetches.then`: an error while opening a run ahead (not an OSError: prefetch turns
    those into None) is set on that run's future, for its reader to raise in order; the job
    that happened to do it still runs, and no future is left running (a reader would wait on
    it for ever)."""
    folder = tmp_path / "S"
    planned = pack.plan(folder, many_files(folder, 2, 1000))

    def broken(base: str, run: Any) -> list[int | None]:
        raise RuntimeError("broken prefetch")

    monkeypatch.setattr(pack.packread, "prefetch", broken)
    prefetches = pack.packread.Prefetches(str(folder))
    run = prefetches.add(planned.columns(0, 2))
    assert prefetches.then(lambda: "ran") == "ran"
    assert run.done() and isinstance(run.exception(), RuntimeError)


@pytest.mark.parametrize("name", ["S1/IM0001.dcm", "série/IM0002.dcm"])
@pytest.mark.parametrize("size", [0, 41_000, (1 << 31) - 1, 1 << 31])
def test_a_header_packed_in_place_is_the_header(name: str, size: int) -> None:
    """Each small file's local header is packed into its run's buffer (put_local_header), not
    built as bytes and copied: the bytes must be local_header's, ZIP64 included, and nothing
    around them touched."""
    length = zipformat.local_length(name, size)
    buffer = bytearray(b"\xaa" * (length + 20))
    zipformat.put_local_header(memoryview(buffer), 7, name, size, 0xDEADBEEF, 1_700_000_000.5)
    assert buffer[7 : 7 + length] == zipformat.local_header(name, size, 0xDEADBEEF, 1_700_000_000.5)
    assert buffer[:7] == b"\xaa" * 7 and buffer[7 + length :] == b"\xaa" * 13


def test_entries_recorded_at_once_are_entries_recorded_one_by_one() -> None:
    """A run's entries go into the writer at once (Writer.entries): same offsets, same CRCs,
    so the same central directory as one entry() per file."""
    rows = [(f"S/{n}.dcm", 100 + n, 1_700_000_000.0) for n in range(7)]
    crcs = [n * 0x01010101 for n in range(7)]
    lengths = [zipformat.local_length(name, size) + size for name, size, _ in rows]
    one, many = zipformat.Writer(), zipformat.Writer()
    one.entry(5, 1234)
    many.entry(5, 1234)
    for crc, length in zip(crcs, lengths, strict=True):
        one.entry(crc, length)
    many.entries(crcs, lengths)
    rows = [("first", 1234 - 37, 0.0), *rows]
    assert many.offset == one.offset
    assert b"".join(many.finish(rows)) == b"".join(one.finish(rows))


def test_the_manifest_written_while_sending_is_saved_before_the_central_directory(
    tmp_path: Path,
) -> None:
    """1. Plan 1,500 small files (several runs) and a 2 MiB one (alone) and send them with the
    spool's `ManifestWriter`. 2. Result: until the last file's bytes are sent, no
    `manifest.json` exists (only its `.part`); when the first byte of the central directory
    is handed out, the manifest is there, durable, and it is the very file `spool.save`
    writes of `pack.digest`'s manifest; no `.part` is left."""
    folder = tmp_path / "S"
    entries = many_files(folder, 1500, 700)
    big_file(folder, 2)
    entries.insert(700, big_entry())
    planned = pack.plan(folder, entries)
    records = tmp_path / "spool"
    body = pack.Body(folder, planned, manifest_file=spool.ManifestWriter(records))
    pieces, seen = [], []
    while piece := body.read(1 << 16):
        pieces.append(piece)
        seen.append((sum(map(len, pieces)), (records / "manifest.json").exists()))
    data = b"".join(pieces)
    start_dir = zipfile.ZipFile(io.BytesIO(data)).start_dir
    # The piece that ends at or before the central directory's start: no manifest yet (the
    # manifest is written after the last run is sent); any piece reaching past it: saved.
    assert [saved for end, saved in seen if end <= start_dir] == [False] * sum(
        1 for end, _ in seen if end <= start_dir
    )
    assert all(saved for end, saved in seen if end > start_dir)
    assert not (records / "manifest.json.part").exists()
    written = (records / "manifest.json").read_bytes()
    expected = pack.digest(folder, planned)
    assert spool.load(records, pack.Manifest) == expected
    spool.save(tmp_path / "again", expected)
    assert written == (tmp_path / "again" / "manifest.json").read_bytes()


def test_the_manifest_is_made_durable_while_the_central_directory_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Send 1,500 small files with the spool's `ManifestWriter`, its commit (the fsync that
    waits for the disk) held until the zip's central directory starts being built, 2 s at
    most. 2. Result: the directory was being built while the manifest was committed (the
    commit no longer runs alone at the end of the upload, the readers idle), yet no byte of
    it was handed out before the manifest was saved, and that manifest is whole and right."""
    folder = tmp_path / "S"
    planned = pack.plan(folder, many_files(folder, 1500, 700))
    building = threading.Event()
    central_rows = pack.Plan.central_rows

    def watched(plan: pack.Plan) -> Any:
        building.set()
        return central_rows(plan)

    monkeypatch.setattr(pack.Plan, "central_rows", watched)
    overlapped = []

    class Held(spool.ManifestWriter):
        def commit(self, tail: str) -> None:
            overlapped.append(building.wait(2))
            super().commit(tail)

    records = tmp_path / "spool"
    pieces, seen = [], []
    with pack.Body(folder, planned, manifest_file=Held(records)) as body:
        while piece := body.read(1 << 16):
            pieces.append(piece)
            seen.append((sum(map(len, pieces)), (records / "manifest.json").exists()))
    assert overlapped == [True]
    start_dir = zipfile.ZipFile(io.BytesIO(b"".join(pieces))).start_dir
    assert not any(saved for end, saved in seen if end <= start_dir)
    assert all(saved for end, saved in seen if end > start_dir)
    assert spool.load(records, pack.Manifest) == pack.digest(folder, planned)


@pytest.mark.parametrize("gone", [10, 1400])
def test_a_body_that_fails_leaves_no_manifest_and_a_new_body_writes_it_whole(
    tmp_path: Path, gone: int
) -> None:
    """1. Send 1,500 small files with a `ManifestWriter`; one file (early or late) is gone.
    2. Result: Changed, and neither `manifest.json` nor its `.part` remains. 3. Put the file
       back and send again with the same writer: the manifest is whole and right."""
    folder = tmp_path / "S"
    entries = many_files(folder, 1500, 700)
    planned = pack.plan(folder, entries)
    records = tmp_path / "spool"
    writer = spool.ManifestWriter(records)
    content = (folder / entries[gone].path).read_bytes()
    (folder / entries[gone].path).unlink()
    with pack.Body(folder, planned, manifest_file=writer) as body, pytest.raises(pack.Changed):
        drain(body)
    assert sorted(p.name for p in records.iterdir()) == []
    (folder / entries[gone].path).write_bytes(content)
    with pack.Body(folder, planned, manifest_file=writer) as body:
        drain(body)
    assert spool.load(records, pack.Manifest) == pack.digest(folder, planned)
    assert sorted(p.name for p in records.iterdir()) == ["manifest.json"]


def test_a_body_closed_half_way_leaves_no_manifest(tmp_path: Path) -> None:
    """The upload broken off (the connection lost) after some runs: the `.part` is removed."""
    folder = tmp_path / "S"
    planned = pack.plan(folder, many_files(folder, 1500, 700))
    records = tmp_path / "spool"
    with pack.Body(folder, planned, manifest_file=spool.ManifestWriter(records)) as body:
        body.read(1)
        body.read(1)
        assert (records / "manifest.json.part").exists()
    assert list(records.iterdir()) == []


@pytest.mark.alone
def test_a_plan_read_back_holds_each_path_once(tmp_path: Path) -> None:
    """1. Plan 3,000 files as the pack step does (names by `upload_name`; one name too long for
       XNAT), save the plan in the spool and read it back as the import step does.
    2. Result: each zip name that equals its path is the path's own string (not a copy of
       ~75 bytes a file), the long one is shortened, and the plan read back holds under 440
       bytes a file (tracemalloc; 520 with a copy of each name)."""
    folder = tmp_path / "S"
    entries = many_files(folder, 3000, 4)
    long = Path("series000") / ("x" * 230 + ".dcm")
    (folder / long).write_bytes(b"1234")
    entries[5] = dataclasses.replace(entries[5], path=long.as_posix())
    zip_names = {e.path: pack.upload_name(e.path) for e in entries}
    assert all(zip_names[e.path] is e.path for e in entries if e is not entries[5])
    records = tmp_path / "spool"
    spool.save(records, pack.plan(folder, entries, zip_names))
    gc.collect()
    tracemalloc.start()
    try:
        loaded = spool.load(records, pack.Plan)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded is not None
    assert len(loaded.files[5].zip_name) <= pack.ZIP_NAME_MAX < len(loaded.files[5].entry.path)
    assert all(p.zip_name is p.entry.path for i, p in enumerate(loaded.files) if i != 5)
    assert held / len(entries) < 440, f"{held / len(entries):.0f} B a file"
