"""Sniffing single files: real scanner files, real converter outputs, cut copies, random bytes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import itertools
import os
import tempfile
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_data import SHARED_DICOM, dataset, with_defined_lengths
from xnatdrop import dicomfiles
from xnatdrop.dicomfiles import folder

Kind = dicomfiles.Kind


def all_shared_files() -> list[Path]:
    return sorted(p for p in SHARED_DICOM.rglob("*") if p.is_file())


def test_header_fields_match_pydicom_on_real_files() -> None:
    """Every 5th DICOM file of the shared sets: our walker and pydicom agree field by field."""
    compared = 0
    for path in all_shared_files()[::5]:
        facts = dicomfiles.sniff(path)
        if facts.kind is not Kind.DICOM:
            continue
        reference = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        header = facts.header
        assert header is not None
        expected = {
            "sop_class_uid": reference.get("SOPClassUID", "")
            or reference.file_meta.get("MediaStorageSOPClassUID", ""),
            "sop_instance_uid": reference.get("SOPInstanceUID", ""),
            "study_instance_uid": reference.get("StudyInstanceUID", ""),
            "series_instance_uid": reference.get("SeriesInstanceUID", ""),
            "series_description": reference.get("SeriesDescription", ""),
            "modality": reference.get("Modality", ""),
            "patient_id": reference.get("PatientID", ""),
            "transfer_syntax": reference.file_meta.get("TransferSyntaxUID", ""),
        }
        for name, value in expected.items():
            assert getattr(header, name) == str(value).strip(), (path, name)
        number = reference.get("SeriesNumber")
        assert header.series_number == ("" if number is None else str(number)), path
        image_type = reference.get("ImageType")
        if image_type:
            values = [image_type] if isinstance(image_type, str) else list(image_type)
            assert header.image_type == tuple(v.strip().upper() for v in values), path
        compared += 1
    assert compared > 400


# (set, file, kind, words in the detail) — rules A and B on real files.
REAL_KINDS = [
    ("pydicom_data_subset", "data/OT-PAL-8-face.dcm", Kind.DICOM, ""),
    ("pydicom_data_subset", "data/JLSL_RGB_ILV0.dcm", Kind.CORRUPT, "lacks"),
    ("nibabel_formats", "dicom/decimal_rescale.dcm", Kind.CORRUPT, "SOPInstanceUID"),
    ("nibabel_formats", "dicom/siemens_dwi_1000.dcm.gz", Kind.ARCHIVE, "gzip containing DICOM"),
    ("nibabel_formats", "converted/anatomical.nii", Kind.CONVERTED, "NIfTI-1"),
    ("nibabel_formats", "converted/nifti1.hdr", Kind.CONVERTED, "NIfTI-1 header"),
    ("nibabel_formats", "converted/nifti2.hdr", Kind.CONVERTED, "NIfTI-2"),
    (
        "nibabel_formats",
        "converted/example_nifti2.nii.gz",
        Kind.CONVERTED,
        "gzip containing NIfTI-2",
    ),
    ("nibabel_formats", "converted/example4d.nii.gz", Kind.CONVERTED, "gzip containing NIfTI-1"),
    ("nibabel_formats", "converted/analyze.hdr", Kind.CONVERTED, "Analyze"),
    ("nibabel_formats", "converted/test.mgz", Kind.CONVERTED, "MGZ"),
    ("nibabel_formats", "converted/tiny.mnc", Kind.CONVERTED, "MINC-1"),
    ("nibabel_formats", "converted/minc2_4d.mnc", Kind.CONVERTED, "MINC-2"),
    ("nibabel_formats", "converted/phantom_EPI_asc_CLEAR_2_1.PAR", Kind.CONVERTED, "PAR"),
    ("nibabel_formats", "converted/phantom_EPI_asc_CLEAR_2_1.REC", Kind.CONVERTED, "REC"),
    ("nibabel_formats", "converted/example4d+orig.HEAD", Kind.CONVERTED, "AFNI"),
    ("nibabel_formats", "converted/standard.trk", Kind.CONVERTED, "TrackVis"),
    ("nibabel_formats", "converted/standard.tck", Kind.CONVERTED, "MRtrix"),
    ("pynrrd_formats", "BallBinary30x30x30.nrrd", Kind.CONVERTED, "NRRD"),
    ("pynrrd_formats", "BallBinary30x30x30.nhdr", Kind.CONVERTED, "NRRD"),
    ("siemens_xa30_enhanced", "Ref-sample/10_DWI_dir80_PA.json", Kind.CONVERTED, "JSON"),
    ("siemens_xa30_enhanced", "Ref-sample/10_DWI_dir80_PA.bvec", Kind.CONVERTED, "b-vectors"),
    ("siemens_xa60_dicomdir", "In/XA60/protocol.pdf", Kind.OTHER, "PDF"),
    ("siemens_xa60_dicomdir", "In/XA60/localizer.pro", Kind.OTHER, "not DICOM"),
    ("ge_nih_mr750", "In/20180918GE/mr_0004/README-Series.txt", Kind.OTHER, "not DICOM"),
]


@pytest.mark.parametrize(
    ("set_name", "relative", "kind", "words"), REAL_KINDS, ids=[r[1] for r in REAL_KINDS]
)
def test_real_files_are_classified_by_content(
    set_name: str, relative: str, kind: Kind, words: str
) -> None:
    facts = dicomfiles.sniff(dataset(set_name) / relative)
    assert facts.kind is kind
    assert words in facts.detail


def test_extension_does_not_decide(tmp_path: Path) -> None:
    nifti = (dataset("nibabel_formats") / "converted/anatomical.nii").read_bytes()
    (tmp_path / "slice.dcm").write_bytes(nifti)
    assert dicomfiles.sniff(tmp_path / "slice.dcm").kind is Kind.CONVERTED
    ge = min(
        (
            dataset("ge_signa_premier_table")
            / "In/GE/Exam1486_Laser794mm/02_Ax_fMRI_FF_I11.1_S15.9"
        ).iterdir()
    )
    (tmp_path / "brain.nii").write_bytes(ge.read_bytes())
    facts = dicomfiles.sniff(tmp_path / "brain.nii")
    assert facts.kind is Kind.DICOM and not facts.truncated


def test_no_preamble_dicom_and_dicomdir() -> None:
    face = dicomfiles.sniff(dataset("pydicom_data_subset") / "data/OT-PAL-8-face.dcm")
    assert face.kind is Kind.DICOM and not face.preamble and not face.truncated
    media = dicomfiles.sniff(dataset("siemens_xa60_dicomdir") / "In/XA60/DICOMDIR")
    assert media.header is not None and media.header.is_dicomdir
    assert ("DICOM", "24100413", "39280000", "75739321") in media.header.referenced_files


def test_enhanced_frame_types_and_philips_isotropic_frames() -> None:
    xa30 = dataset("siemens_xa30_enhanced") / "In"
    adc = dicomfiles.sniff(next((xa30 / "11_DWI_dir80_PA").iterdir()))
    assert adc.header is not None
    assert ("DERIVED", "PRIMARY", "DIFFUSION", "ADC") in adc.header.frame_types
    assert "ISOTROPIC" in adc.header.diffusion_directions
    fmri = dicomfiles.sniff(min((xa30 / "7_func-bold_task-fa_run-1").iterdir()))
    assert fmri.header is not None and fmri.header.frame_types == (
        ("ORIGINAL", "PRIMARY", "FMRI", "NONE"),
    )
    philips = dataset("philips_achieva_dwi_isotropic") / "In/Vanderbilt_2018/601_WIP_dti_ax"
    directions = [
        dicomfiles.sniff(p).header.diffusion_directions for p in sorted(philips.iterdir())
    ]
    assert sum(1 for d in directions if "I" in d) == 80


# Real files of each encoding, to be cut short at several points (rule A6).
CUT_SOURCES = [
    ("ge_signa_premier_table", "In/GE/Exam1486_Laser794mm/02_Ax_fMRI_FF_I11.1_S15.9"),
    ("siemens_xa30_enhanced", "In/7_func-bold_task-fa_run-1"),
    ("philips_ingenia_elition_enh_classic", "In/cl"),
    ("siemens_xa30_classic_interop", "In/7001_func-bold_task-fa_run-1"),
    ("pydicom_data_subset", "data/OT-PAL-8-face.dcm"),
]


@pytest.mark.parametrize(("set_name", "relative"), CUT_SOURCES, ids=[c[0] for c in CUT_SOURCES])
def test_every_cut_of_a_real_file_is_truncated_or_corrupt(
    tmp_path: Path, set_name: str, relative: str
) -> None:
    source = dataset(set_name) / relative
    source = min(source.iterdir()) if source.is_dir() else source
    data = source.read_bytes()
    whole = dicomfiles.sniff(source)
    assert whole.kind is Kind.DICOM and not whole.truncated
    for cut in (1, 100, 131, 200, 700, 4000, len(data) // 2, len(data) - 2, len(data) - 1):
        path = tmp_path / f"cut{cut}"
        path.write_bytes(data[:cut])
        facts = dicomfiles.sniff(path)
        assert facts.kind is not Kind.DICOM or facts.truncated, (cut, facts)


def test_encapsulated_pixel_data_is_checked_from_the_tail(tmp_path: Path) -> None:
    short = dicomfiles.sniff(
        dataset("pydicom_data_subset") / "data/emri_small_jpeg_2k_lossless_too_short.dcm"
    )
    assert "Sequence Delimitation" in short.truncated
    # A complete encapsulated file, made here from a real image, then cut inside its fragments.
    source = dataset("pydicom_data_subset") / "data/emri_small.dcm"
    image = pydicom.dcmread(source)
    frames = [image.PixelData[i : i + 4096] for i in range(0, len(image.PixelData), 4096)]
    image.PixelData = pydicom.encaps.encapsulate(frames, has_bot=True)
    image["PixelData"].VR = "OB"
    image.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    whole = tmp_path / "whole.dcm"
    image.save_as(whole, enforce_file_format=True)
    facts = dicomfiles.sniff(whole)
    assert facts.kind is Kind.DICOM and not facts.truncated
    data = whole.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-10])
    assert dicomfiles.sniff(tmp_path / "cut.dcm").truncated
    (tmp_path / "padded.dcm").write_bytes(data + b"\xfc\xff\xfc\xff" + b"OB\0\0" + bytes(4))
    assert not dicomfiles.sniff(tmp_path / "padded.dcm").truncated


def test_empty_special_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert dicomfiles.sniff(tmp_path / "empty").kind is Kind.EMPTY
    os.mkfifo(tmp_path / "fifo")
    assert dicomfiles.sniff(tmp_path / "fifo").kind is Kind.UNREADABLE
    assert dicomfiles.sniff(tmp_path / "missing").kind is Kind.UNREADABLE


def test_sniff_folder_in_parallel_equals_one_by_one() -> None:
    files = sorted((dataset("philips_achieva_dwi_isotropic") / "In").rglob("*.dcm"))
    files += sorted((dataset("ge_nih_mr750") / "In").rglob("*"))
    files = [p for p in files if p.is_file()]
    assert len(files) >= dicomfiles.PARALLEL_MIN_FILES
    seen: list[tuple[int, int]] = []
    parallel = dicomfiles.sniff_folder(
        None, files, progress=lambda d, t: seen.append((d, t)), workers=2
    )
    assert parallel == [dicomfiles.sniff(p) for p in files]
    assert seen[-1] == (len(files), len(files))


def _stopped_stream(tmp_path: Path, reuse: bool) -> tuple[int, int | None]:
    """Sniff a series' files one by one (`folder._sniff_stream`), take the first file's facts,
    then raise KeyboardInterrupt where the stream hands them on, as a Ctrl-C landing there
    does; with `reuse`, another file is opened first, taking the lowest free descriptor number,
    the one `_facts` just closed. Return the open descriptors beyond those before, and whether
    that other file's descriptor still works (its size), None without `reuse`."""
    series = dataset("ge_signa_premier_table") / "In/GE/Exam1486_Laser794mm/01_3_Plane_Localizer_FF"
    names = sorted(p.name for p in series.iterdir())[:3]  # 148 kB each: open past the head
    before = len(os.listdir("/proc/self/fd"))
    size = None
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        stream = folder._sniff_stream(f"{series}{os.sep}", names, reader, folder._Pace())
        assert next(stream)[1] == Kind.DICOM.value  # that file's descriptor is closed by now
        other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT) if reuse else None
        with pytest.raises(KeyboardInterrupt):
            stream.throw(KeyboardInterrupt())
        if other is not None:
            size = os.fstat(other).st_size  # EBADF had the stream closed it
            os.close(other)
    return len(os.listdir("/proc/self/fd")) - before, size


def test_a_ctrl_c_while_sniffing_stays_a_keyboard_interrupt(tmp_path: Path) -> None:
    """The check's stream closed the file just handed on a second time when stopped there:
    EBADF, an OSError that replaced the KeyboardInterrupt, so `xnatdrop push` retried the
    check and archived after Ctrl-C. Now the KeyboardInterrupt arrives, nothing left open."""
    assert _stopped_stream(tmp_path, reuse=False) == (0, None)


def test_a_stopped_sniff_never_closes_a_descriptor_it_no_longer_owns(tmp_path: Path) -> None:
    """The same second close, once the number was reused (any thread opening a file), closed
    that other file under its owner."""
    assert _stopped_stream(tmp_path, reuse=True) == (0, 0)


# ---- any byte sequence yields facts, never an exception ---------------------------------

PREFIXES = [
    b"",
    bytes(128) + b"DICM",
    (dataset("ge_signa_premier_table") / "In/GE/Exam1486_Laser794mm/01_3_Plane_Localizer_FF")
    .joinpath("i18246584.MRDC.15")
    .read_bytes()[:1200],
    (dataset("pydicom_data_subset") / "data/OT-PAL-8-face.dcm").read_bytes()[:600],
    b"\x1f\x8b\x08\x00",
    b"\x08\x00\x05\x00CS\x0a\x00",
]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    prefix=st.sampled_from(PREFIXES),
    body=st.binary(max_size=3000),
    name=st.sampled_from(["x.dcm", "x", "x.nii.gz", "x.mgz", "x.json", "x.REC"]),
)
def test_any_bytes_yield_facts(prefix: bytes, body: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(prefix + body)
        facts = dicomfiles.sniff(path)
    assert isinstance(facts.kind, Kind)
    assert facts.size == len(prefix + body)


REAL = (dataset("siemens_xa30_enhanced") / "In/8_gre_field_mapping").iterdir()
REAL_BYTES = min(REAL).read_bytes()


def _damaged(folder: Path, head: bytes, flips: list[tuple[int, int]]) -> Path:
    """`head` with each (offset, value) of `flips` inside it applied, as x.dcm in `folder`."""
    data = bytearray(head)
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    path = folder / "x.dcm"
    path.write_bytes(bytes(data))
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(min_value=0, max_value=len(REAL_BYTES)),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=20000), st.integers(0, 255)), max_size=8
    ),
)
def test_cut_and_mutated_real_headers_yield_facts(cut: int, flips: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _damaged(Path(folder), REAL_BYTES[:cut], flips)
        facts = dicomfiles.sniff(path)
    assert isinstance(facts.kind, Kind)
    if cut < len(REAL_BYTES) and not flips and cut > 0:
        assert facts.kind is not Kind.DICOM or facts.truncated


def _general_walk_only(patch: pytest.MonkeyPatch) -> None:
    """Every fast path declining: `_walk` and `_walk_items` do it all, as before them."""
    patch.setattr(dicomfiles.walk, "_skim", lambda buf, off, limit, last, top: off)
    patch.setattr(dicomfiles.walk, "_skim_sequence", lambda win, pos, length, collect, found: -1)
    patch.setattr(dicomfiles.walk, "_scan_frames", lambda win, value, walk: False)


def _sniff_both(path: Path) -> tuple[dicomfiles.FileFacts, dicomfiles.FileFacts]:
    fast = dicomfiles.sniff(path)
    with pytest.MonkeyPatch.context() as patch:
        _general_walk_only(patch)
        general = dicomfiles.sniff(path)
    return fast, general


def test_skim_gives_the_facts_of_the_general_walk_on_real_files() -> None:
    """The fast paths (`_skim` over plain explicit-VR-LE elements, `_skim_sequence` over
    whole sequences, `_scan_frames` over the per-frame groups) change no fact of any shared
    file (headers, truncation, kind, detail) against the general walk alone."""
    compared = 0
    for path in all_shared_files():
        fast, general = _sniff_both(path)
        assert fast == general, path
        compared += fast.kind is Kind.DICOM
    assert compared > 2000


CLASSIC_BYTES = min(
    p for p in (dataset("ge_signa_premier_table") / "In/GE").rglob("*") if p.is_file()
).read_bytes()


def test_skim_takes_most_elements_of_a_classic_image() -> None:
    """On a GE classic image (about 300 elements, most of them private) the fast loop steps
    over nearly all the header: the general loop is left the few sequences and the stop."""
    data = CLASSIC_BYTES
    covered = []
    real = dicomfiles.skim._skim

    def recording(buf: bytes, off: int, limit: int, last: int, top: dict) -> int:
        done = real(buf, off, limit, last, top)
        covered.append(done - off)
        return done

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dicomfiles.walk, "_skim", recording)
        whole = dicomfiles.window._Window(None, len(data), data)
        _, walk, _, _ = dicomfiles.walk._walk_file(whole, 132)
    assert walk.stopped_early  # a classic GE image: the walk ends after group 0028
    assert sum(covered) > 0.8 * walk.early_resume, (sum(covered), walk.early_resume)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(min_value=0, max_value=6000),
    flips=st.lists(
        st.tuples(st.integers(min_value=128, max_value=6000), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_skim_gives_the_facts_of_the_general_walk_on_damaged_headers(
    cut: int, flips: list[tuple[int, int]]
) -> None:
    """Cut and flipped bytes in a classic header (VRs, lengths, tags): the fast loop declines
    exactly where the general walk would fail or branch, so the facts stay the same."""
    with tempfile.TemporaryDirectory() as folder:
        path = _damaged(Path(folder), CLASSIC_BYTES[: cut or None], flips)
        fast, general = _sniff_both(path)
    assert fast == dataclasses.replace(general, path=fast.path)


ENHANCED_FILE = min((dataset("siemens_xa30_enhanced") / "In/10_DWI_dir80_PA").iterdir())
ENHANCED_BYTES = ENHANCED_FILE.read_bytes()  # its sequences and items: undefined lengths


ENHANCED_DEFINED_BYTES = with_defined_lengths(ENHANCED_FILE)


def test_skim_sequence_takes_every_sequence_of_an_enhanced_image() -> None:
    """An XA30 enhanced DWI file: every top-level sequence the walk meets is taken whole by a
    fast path: the undefined-length ones it only steps through by `_skim` (`_step_sequence`,
    since s18), the shared functional groups it collects from by `_skim_sequence`;
    `_walk_items` is not called at all."""
    data = ENHANCED_BYTES
    taken, general = [], []
    real_skim, real_items = dicomfiles.skim._skim_sequence, dicomfiles.walk._walk_items

    def recording(win, pos: int, length: int, collect: bool, found: list) -> int:
        after = real_skim(win, pos, length, collect, found)
        taken.append((collect, after))
        return after

    def items(*args: object) -> int:
        general.append(args[1])
        return real_items(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dicomfiles.walk, "_skim_sequence", recording)
        patch.setattr(dicomfiles.walk, "_walk_items", items)
        dicomfiles.walk._walk_file(dicomfiles.window._Window(None, len(data), data), 132)
    assert len(taken) >= 1 and all(after > 0 for _, after in taken), taken
    assert all(collect for collect, _ in taken)  # the shared functional groups
    assert general == []


def test_defined_length_sequences_are_taken_by_length() -> None:
    data = ENHANCED_DEFINED_BYTES
    found: list = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.dcm"
        path.write_bytes(data)
        fast, general = _sniff_both(path)
    assert fast == general and fast.header is not None
    assert fast.header == dicomfiles.sniff(ENHANCED_FILE).header
    start = data.index(b"\x00\x52\x29\x92SQ\x00\x00")  # the shared functional groups
    length = int.from_bytes(data[start + 8 : start + 12], "little")
    window = dicomfiles.window._Window(None, len(data), data)
    after = dicomfiles.skim._skim_sequence(window, start + 12, length, True, found)
    assert after == start + 12 + length


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from([ENHANCED_BYTES, ENHANCED_DEFINED_BYTES]),
    cut=st.integers(min_value=0, max_value=9000),
    flips=st.lists(
        st.tuples(st.integers(min_value=800, max_value=8000), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_fast_paths_give_the_facts_of_the_general_walk_on_damaged_enhanced_headers(
    source: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Cut and flipped bytes in the sequences of an enhanced header (item and delimiter tags,
    VRs, lengths, nesting), with undefined or defined lengths: `_skim_sequence` declines
    wherever the general walk would fail or branch differently, so the facts stay the same."""
    with tempfile.TemporaryDirectory() as folder:
        path = _damaged(Path(folder), source[: cut or None], flips)
        fast, general = _sniff_both(path)
    assert fast == dataclasses.replace(general, path=fast.path)


def _facts_of_content(data: bytes) -> dicomfiles.FileFacts:
    return dicomfiles.content._sniff_content(Path("x.dcm"), None, len(data), data, (0, 0))


def _small_defined_length_header(path: Path) -> bytes:
    """The file's header only, with defined lengths (`shared_data.with_defined_lengths`), without
    Siemens's large private blob, the pixel data and all but three frames: the per-frame
    groups are then walked by `_skim_sequence` too (no pixel data for `_scan_frames`), and the
    whole header is ~12 KB, small enough to change every byte of it in a test."""
    data = pydicom.dcmread(io.BytesIO(with_defined_lengths(path)))
    del data.PixelData
    del data.SharedFunctionalGroupsSequence[0][0x002110FE].value[0][0x00211019]
    del data.PerFrameFunctionalGroupsSequence[3:]
    buffer = io.BytesIO()
    data.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SMALL_ENHANCED_BYTES = _small_defined_length_header(ENHANCED_FILE)


def test_every_bit_of_a_defined_length_enhanced_header_changed_gives_the_same_facts() -> None:
    """Every third byte of an enhanced header with defined-length sequences and items changed
    in turn (its lowest bit, or its highest on every 7th): lengths then overrun or fall short of
    their item or sequence, tags become delimiters or items, VRs unknown: the facts by the
    fast paths are those of the general walk every time."""
    data = SMALL_ENHANCED_BYTES
    changes = []
    offsets = range(132, len(data), 3)
    for offset in offsets:
        changed = bytearray(data)
        changed[offset] ^= 0x80 if offset % 7 == 0 else 0x01
        changes.append(bytes(changed))
    fast = [_facts_of_content(content) for content in changes]
    with pytest.MonkeyPatch.context() as patch:
        _general_walk_only(patch)
        general = [_facts_of_content(content) for content in changes]
    for offset, one, other in zip(offsets, fast, general, strict=True):
        assert one == other, offset
    walked = sum(f.header is not None and bool(f.header.frame_types) for f in fast)
    assert walked > len(changes) // 2  # most changes leave a header whose frames were read


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 7.1.2)."""
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + vr
    if vr in (b"SQ", b"OB", b"UN", b"UT"):
        return head + b"\0\0" + len(value).to_bytes(4, "little") + value
    return head + len(value).to_bytes(2, "little") + value


UNDEFINED_LENGTH = b"\xff\xff\xff\xff"
ITEM, ITEM_END, SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"
FRAME_TYPE = _element(0x00089007, b"CS", b"ORIGINAL\\PRIMARY\\M\\NONE ")


def _sequence(items: list[bytes], tag: int = 0x0040A730) -> bytes:
    """An undefined-length sequence of undefined-length items (ContentSequence by default)."""
    body = b"".join(ITEM + UNDEFINED_LENGTH + item + ITEM_END + b"\0" * 4 for item in items)
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    return head + b"SQ\0\0" + UNDEFINED_LENGTH + body + SEQUENCE_END + b"\0" * 4


def _nested(depth: int, inside: bytes = FRAME_TYPE) -> bytes:
    return inside if depth == 0 else _sequence([_nested(depth - 1, inside)])


def _inside_shared_groups(raw: bytes) -> bytes:
    """The small enhanced header with `raw` as the first element of its shared functional
    groups' item, the lengths of that item and sequence grown to match."""
    data = SMALL_ENHANCED_BYTES
    start = data.index(b"\x00\x52\x29\x92SQ\x00\x00")
    length = int.from_bytes(data[start + 8 : start + 12], "little")
    item_length = int.from_bytes(data[start + 16 : start + 20], "little")
    return (
        data[: start + 8]
        + (length + len(raw)).to_bytes(4, "little")
        + ITEM
        + (item_length + len(raw)).to_bytes(4, "little")
        + raw
        + data[start + 20 :]
    )


ODD_SEQUENCES = {
    "nested six deep": _nested(5),
    "nested seven deep": _nested(6),
    "an item delimiter in a defined-length item": _element(
        0x0040A730, b"SQ", ITEM + (8).to_bytes(4, "little") + ITEM_END + b"\0" * 4
    ),
    "a sequence delimiter in a defined-length sequence": _element(
        0x0040A730, b"SQ", SEQUENCE_END + b"\0" * 4
    ),
    "an element where an item belongs": _element(0x0040A730, b"SQ", FRAME_TYPE),
    "an undefined-length UN (implicit VR inside)": b"".join(
        [
            b"\x09\x00\x10\x10UN\0\0" + UNDEFINED_LENGTH + ITEM + UNDEFINED_LENGTH,
            b"\x08\x00\x07\x90" + (8).to_bytes(4, "little") + b"DERIVED ",
            ITEM_END + b"\0" * 4 + SEQUENCE_END + b"\0" * 4,
        ]
    ),
    "an undefined-length OB": b"".join(
        [b"\x09\x00\x11\x10OB\0\0", UNDEFINED_LENGTH, SEQUENCE_END, b"\0" * 4]
    ),
    "an unknown VR": _element(0x00091012, b"QQ", b"ab"),
    "an item tag among the elements": ITEM + (4).to_bytes(4, "little") + b"abcd",
}


@pytest.mark.parametrize("name", list(ODD_SEQUENCES))
def test_odd_sequences_give_the_facts_of_the_general_walk(name: str) -> None:
    """Structures real files rarely hold, inside the shared functional groups: the fast paths
    decline them (or agree), and the facts are the general walk's, errors included."""
    data = _inside_shared_groups(ODD_SEQUENCES[name])
    fast = _facts_of_content(data)
    with pytest.MonkeyPatch.context() as patch:
        _general_walk_only(patch)
        general = _facts_of_content(data)
    assert fast == general
    if name == "nested seven deep":
        assert fast.detail == "unreadable header: sequences nested too deeply"
    if name == "nested six deep":
        assert fast.kind is Kind.DICOM and fast.header is not None
        assert ("ORIGINAL", "PRIMARY", "M", "NONE") in fast.header.frame_types


@pytest.mark.parametrize(
    "series", ["10_DWI_dir80_PA", "5_anat-T1w_acq-tfl", "7_func-bold_task-fa_run-1"]
)
def test_an_enhanced_file_is_read_once_and_not_into_its_pixel_data(series: str) -> None:
    """Past its first chunk, the check reads an enhanced file's header once (no byte twice)
    and jumps to the Pixel Data element only for the 12 bytes that confirm its length, not
    for a 64 KiB chunk of pixel data (which on a cold disk ran past the kernel's read-ahead
    and cost a disk read each)."""
    path = min((dataset("siemens_xa30_enhanced") / "In" / series).iterdir())
    span = dicomfiles.pixel_span(path.read_bytes())
    assert span is not None
    reads: list[tuple[int, int]] = []
    real = dicomfiles.reading._Positioned.read

    def recording(self: dicomfiles.reading._Positioned, count: int) -> bytes:
        data = real(self, count)
        reads.append((self.pos, len(data)))
        return data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dicomfiles.reading._Positioned, "read", recording)
        facts = dicomfiles.sniff(path)
    assert facts.kind is Kind.DICOM and not facts.truncated and facts.header is not None
    assert facts.header.frame_types
    assert reads  # the header is longer than the first chunk
    jumps = [(pos, length) for pos, length in reads if pos >= span.offset - 12]
    assert jumps in ([], [(span.offset - 12, 12)]), (reads, span.offset)
    spans = sorted([(0, dicomfiles.HEAD_BYTES)] + [(p, p + n) for p, n in reads])
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), reads


def test_a_file_read_whole_is_closed_by_its_reader() -> None:
    """A file no longer than the first read is closed where it was read (an I/O thread when
    reads are slow), not by the parser, whose every system call let a waiting I/O thread take
    the GIL; a longer one stays open for the parser. The facts are the same either way."""
    fmri = dataset("ge_signa_premier_table") / "In/GE/Exam1486_Laser794mm/02_Ax_fMRI_FF_I11.1_S15.9"
    small = min(fmri.iterdir())
    assert small.stat().st_size < dicomfiles.HEAD_BYTES
    large = min((dataset("siemens_xa30_enhanced") / "In/10_DWI_dir80_PA").iterdir())
    opened = len(os.listdir("/proc/self/fd"))
    fd, size, inode, head, problem = dicomfiles.reading._open_head(str(small))
    whole = dicomfiles.reading.WHOLE
    assert (fd, size, len(head), problem) == (whole, small.stat().st_size, size, "")
    assert len(os.listdir("/proc/self/fd")) == opened
    facts = dicomfiles.reading._facts(small, fd, size, inode, head, problem)
    assert facts == dicomfiles.sniff(small) and facts.kind is Kind.DICOM
    fd, size, _, head, _ = dicomfiles.reading._open_head(str(large))
    try:
        assert fd >= 0 and size > len(head) == dicomfiles.HEAD_BYTES
    finally:
        os.close(fd)
