"""The pixel digest the verification compares: found by the header walker, equal to pydicom's.

`verify.pixel_digest` hashes the Pixel Data value that `dicomfiles.pixel_span` locates without a
full parse; `verify._pydicom_pixel_digest` is the full parse it replaced, still used where the
walker declines. Every file of real sessions must give the same answer both ways (issue 13:
the push's own verification was most of its gap to curl).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from shared_data import dataset
from xnatdrop import dicomfiles, verify


def _outcome(digest, source):
    try:
        return digest(source)
    except ValueError:
        return "not readable as DICOM"


def _span(path: Path) -> dicomfiles.PixelSpan | None:
    with open(path, "rb") as handle:
        return dicomfiles.pixel_span(handle, path.stat().st_size)


def _compare(folder: Path) -> tuple[int, list[Path]]:
    """Compare old and new digests of every file under `folder` (path and bytes); return the
    number of files whose Pixel Data the walker found itself, and the files where it declined
    although pydicom found Pixel Data with a transfer syntax."""
    walked, declined = 0, []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files
    for path in files:
        old = _outcome(verify._pydicom_pixel_digest, path)
        assert _outcome(verify.pixel_digest, path) == old, path
        assert _outcome(verify.pixel_digest, path.read_bytes()) == old, path
        span = _span(path)
        if span is not None:
            walked += 1
        elif isinstance(old, tuple) and old[0]:
            declined.append(path)
    return walked, declined


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["philips_ingenia_elition_enh_classic", "siemens_xa30_enhanced"])
def test_walker_digest_equals_pydicom_on_every_file_of_a_real_session(name):
    """Enhanced multi-frame and classic files, DICOMDIR-free sessions with raw-data and SR
    objects: the same (transfer syntax, MD5) or the same refusal for every file, and the
    walker (not the fallback) found the Pixel Data of every image."""
    walked, declined = _compare(dataset(name))
    assert walked > 80
    assert declined == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_walker_digest_equals_pydicom_on_odd_encodings():
    """Encapsulated JPEG 2000, implicit VR, no file meta, Float Pixel Data, a file cut short
    inside its fragments, non-DICOM files: the same answer as pydicom's full parse."""
    encapsulated = []
    for folder in (dataset("pydicom_data_subset"), dataset("nibabel_formats")):
        _compare(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            span = _span(path)
            if span is not None and span.transfer_syntax not in dicomfiles.NATIVE_SYNTAXES:
                encapsulated.append(span.transfer_syntax)
    _compare(dataset("heudiconv_testdata"))
    # JPEG-LS and JPEG 2000 fragments located by the walker, not by the fallback
    assert sorted(encapsulated) == ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"]


def _first_image(name: str) -> Path:
    for path in sorted(dataset(name).rglob("*")):
        if path.is_file() and _span(path) is not None:
            return path
    raise AssertionError(f"no image in {name}")


def test_header_rewrite_keeps_the_digest_and_a_pixel_change_alters_it(tmp_path):
    """What anonymisation does (longer header values: every offset moves) leaves the digest;
    one changed pixel byte changes it."""
    source = _first_image("siemens_xa30_enhanced")
    data = pydicom.dcmread(source)
    data.PatientName = "Anonymised^Subject^With^A^Much^Longer^Name"
    data.StudyDescription = "x" * 61
    rewritten = tmp_path / "rewritten.dcm"
    data.save_as(rewritten)
    assert verify.pixel_digest(rewritten) == verify.pixel_digest(source)
    pixels = bytearray(data.PixelData)
    pixels[len(pixels) // 2] ^= 0x01
    data.PixelData = bytes(pixels)
    changed = tmp_path / "changed.dcm"
    data.save_as(changed)
    assert verify.pixel_digest(changed) != verify.pixel_digest(source)


def test_deflated_file_falls_back_to_pydicom(tmp_path):
    """A deflated data set is declined by the walker and digested by pydicom, with the same
    pixel MD5 as the uncompressed original."""
    source = _first_image("ge_signa_premier_table")
    data = pydicom.dcmread(source)
    deflated = tmp_path / "deflated.dcm"
    data.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data.save_as(deflated)
    assert _span(deflated) is None
    syntax, md5 = verify.pixel_digest(deflated)
    assert syntax == DeflatedExplicitVRLittleEndian
    assert md5 == verify.pixel_digest(source)[1]


SETS = sorted(p.name for p in dataset("siemens_xa30_enhanced").parent.iterdir() if p.is_dir())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_walker_says_no_pixel_data_only_where_pydicom_finds_none():
    """`dicomfiles.pixel_value` answers `NoPixelData` (and the comparison then needs no pydicom)
    only for files in which pydicom's full parse finds none of Pixel Data, Float or Double
    Float Pixel Data, over every file of every shared set; and it does answer so for the
    Siemens Phoenix documents, the no-pixel files of real sessions."""
    absent = []
    for name in SETS:
        for path in sorted(p for p in dataset(name).rglob("*") if p.is_file()):
            with open(path, "rb") as handle:
                if isinstance(
                    dicomfiles.pixel_value(handle, path.stat().st_size), dicomfiles.NoPixelData
                ):
                    absent.append(path)
    assert absent
    for path in absent:
        data = pydicom.dcmread(path, force=True)
        assert not [tag for tag in verify.PIXEL_TAGS if tag in data], path
        assert verify._pydicom_pixel_digest(path) is None, path
    phoenix = dataset("siemens_xa30_enhanced") / "In" / "99_Phoenix_Document"
    assert {p for p in phoenix.iterdir()} <= set(absent)


def test_a_walked_file_whose_walk_stops_short_of_its_end_is_declined(tmp_path: Path):
    """No pixel data is said only after a walk to the file's last byte: a no-pixel file with an
    element past (7FE0,0008) that is not pixel data (here (7FE0,0020)), is left to pydicom."""
    phoenix = sorted((dataset("siemens_xa30_enhanced") / "In" / "99_Phoenix_Document").iterdir())
    data = pydicom.dcmread(phoenix[0])
    data.add_new(0x7FE00020, "OW", b"\0\0")  # Coefficients SDVN: past Pixel Data's tags
    data.save_as(tmp_path / "odd.dcm")
    assert dicomfiles.pixel_value((tmp_path / "odd.dcm").read_bytes()) is None
    assert verify.pixel_digest(tmp_path / "odd.dcm") is None  # pydicom: no pixel data
