"""The pixel sample's comparison: the local file's Pixel Data value against XNAT's copy's.

`verify.compare_pixels` compares the two values byte for byte where the header walker finds
both, instead of hashing each side (issue 13: at 2 GB the samples are ~340 MB a side and the two
MD5s were most of the comparison's CPU). Equal bytes must read as the same image whatever the
header around them (anonymisation moves every offset); one changed byte, another transfer
syntax or a copy without pixel data must not; where the walker declines, the digests decide as
before.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared_data import dataset
from xnatdrop import dicomfiles, verify


def _compare(local: Path, remote: Path) -> verify.PixelComparison:
    with open(local, "rb") as ours, open(remote, "rb") as theirs:
        return verify.compare_pixels(ours, theirs)


def _first_image(name: str) -> Path:
    for path in sorted(dataset(name).rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                if dicomfiles.pixel_span(handle, path.stat().st_size) is not None:
                    return path
    raise AssertionError(f"no image in {name}")


def _anonymised(source: Path, target: Path) -> pydicom.Dataset:
    """What XNAT's site script does to a header: longer values, every later offset moved."""
    data = pydicom.dcmread(source)
    data.PatientName = "Anonymised^Subject^With^A^Much^Longer^Name"
    data.StudyDescription = "x" * 61
    data.save_as(target)
    return data


def test_anonymised_copy_is_the_same_image_and_one_changed_byte_is_not(tmp_path: Path) -> None:
    source = _first_image("siemens_xa30_enhanced")
    data = _anonymised(source, tmp_path / "anonymised.dcm")
    same = _compare(source, tmp_path / "anonymised.dcm")
    assert same == verify.PixelComparison(same.local, same.local, True)
    assert same.local == str(data.file_meta.TransferSyntaxUID)
    for where in (0, len(data.PixelData) // 2, len(data.PixelData) - 1):  # first, middle, last
        pixels = bytearray(data.PixelData)
        pixels[where] ^= 0x01
        data.PixelData = bytes(pixels)
        data.save_as(tmp_path / "changed.dcm")
        assert not _compare(source, tmp_path / "changed.dcm").same, where
        pixels[where] ^= 0x01
        data.PixelData = bytes(pixels)


def test_the_values_are_compared_without_hashing(tmp_path: Path, monkeypatch) -> None:
    """Both values found by the walker: no MD5 of either (the old comparison hashed both),
    and the answer is the same as comparing the two `pixel_digest`s."""
    source = _first_image("philips_ingenia_elition_enh_classic")
    _anonymised(source, tmp_path / "anonymised.dcm")
    expected = verify.pixel_digest(source) == verify.pixel_digest(tmp_path / "anonymised.dcm")

    def no_md5(*args: object, **kwargs: object) -> None:
        raise AssertionError("the comparison hashed a Pixel Data value")

    monkeypatch.setattr(hashlib, "md5", no_md5)
    assert _compare(source, tmp_path / "anonymised.dcm").same is expected is True


def test_another_transfer_syntax_is_named(tmp_path: Path) -> None:
    """The same pixel bytes under another transfer syntax (implicit VR) are not the image
    sent: each side's syntax is given for the reason."""
    source = _first_image("ge_signa_premier_table")
    data = pydicom.dcmread(source)
    data.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    found = _compare(source, tmp_path / "implicit.dcm")
    assert not found.same
    assert (found.local, found.remote) == (
        str(pydicom.dcmread(source).file_meta.TransferSyntaxUID),
        ImplicitVRLittleEndian,
    )


def test_a_copy_without_pixel_data_and_files_the_walker_declines(tmp_path: Path) -> None:
    source = _first_image("ge_signa_premier_table")
    data = pydicom.dcmread(source)
    del data.PixelData
    data.save_as(tmp_path / "no-pixels.dcm")
    found = _compare(source, tmp_path / "no-pixels.dcm")
    assert (found.same, found.remote) == (False, None)
    # Neither has pixel data: the same (the fallback's answer, "no pixel data").
    assert _compare(tmp_path / "no-pixels.dcm", tmp_path / "no-pixels.dcm") == (
        verify.PixelComparison(None, None, True)
    )
    # A deflated data set is declined by the walker: digested by pydicom, as before.
    data = pydicom.dcmread(source)
    data.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data.save_as(tmp_path / "deflated.dcm")
    data.save_as(tmp_path / "deflated-again.dcm")
    assert _compare(tmp_path / "deflated.dcm", tmp_path / "deflated-again.dcm").same
    found = _compare(source, tmp_path / "deflated.dcm")
    assert not found.same
    assert found.remote == DeflatedExplicitVRLittleEndian


class _Named(io.BytesIO):
    """Bytes with a file descriptor for fstat: a real file's, whose size is what matters."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(data)
        path.write_bytes(data)
        self._handle = open(path, "rb")  # noqa: SIM115 (closed with this object)

    def fileno(self) -> int:
        return self._handle.fileno()

    def close(self) -> None:
        self._handle.close()
        super().close()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom guessing at the junk
def test_a_junk_copy_differs_and_a_short_local_file_is_an_os_error(
    tmp_path: Path,
) -> None:
    source = _first_image("ge_signa_premier_table")
    with open(source, "rb") as ours, open(tmp_path / "junk", "wb+") as junk:
        junk.write(b"not DICOM at all" * 100)
        junk.flush()
        found = verify.compare_pixels(ours, junk)  # as pydicom reads it: no pixel data
        assert (found.same, found.remote) == (False, None)
    # The local file shrinks between the walk and the read (it cannot once frozen; if it did,
    # a read error, retried, never "differs"): its handle reads short after the walk.
    data = source.read_bytes()
    span = dicomfiles.pixel_span(data)
    assert span is not None
    shrinking = _Named(data, tmp_path / "shrinking.dcm")
    shrinking.truncate(span.offset + span.length // 2)
    with open(source, "rb") as theirs, pytest.raises(OSError, match="ended inside"):
        verify.compare_pixels(shrinking, theirs)
    shrinking.close()


def test_documents_without_pixel_data_are_compared_without_pydicom(tmp_path: Path) -> None:
    """A Siemens Phoenix document and its anonymised copy (another header, no pixel data) are
    "no pixel data" on both sides, answered by the header walker: pydicom is not even imported
    (its import was ~20 MB of the push's resident memory, issue 13). Run in a fresh
    interpreter, where nothing else has imported pydicom."""
    phoenix = sorted((dataset("siemens_xa30_enhanced") / "In" / "99_Phoenix_Document").iterdir())
    _anonymised(phoenix[0], tmp_path / "anonymised.dcm")
    image = _first_image("siemens_xa30_enhanced")
    script = (
        "import sys\n"
        "from xnatdrop import verify\n"
        "def compare(a, b):\n"
        "    with open(a, 'rb') as ours, open(b, 'rb') as theirs:\n"
        "        return verify.compare_pixels(ours, theirs)\n"
        "same = compare(sys.argv[1], sys.argv[2])\n"
        "one = compare(sys.argv[3], sys.argv[2])\n"
        "print(same.local, same.remote, same.same, one.same, one.remote, one.local is not None,"
        " 'pydicom' in sys.modules)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script, str(phoenix[0]), str(tmp_path / "anonymised.dcm"),
         str(image)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert found.stdout.split() == ["None", "None", "True", "False", "None", "True", "False"]
