"""The files to send, as their file meta describes them, and the presentation contexts they need.

Each instance goes out **as stored**: the presentation contexts proposed are exactly the (SOP
class, transfer syntax) pairs read from the files' meta information, one transfer syntax each, so
the receiver cannot pick another one. A file without file meta is sent from its decoded dataset
only when that re-encodes to exactly the stored bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode, split_dataset

from xnatdrop import errors
from xnatdrop.dimse.failures import FILE_UNSENDABLE, TransientSendError


@dataclasses.dataclass(frozen=True)
class Instance:
    """One file to send, as its file meta describes it.

    `as_stored` is True when the bytes after the file meta go on the wire unchanged (the normal
    case). False for a file without file meta: it is sent from its decoded dataset, which was
    checked to re-encode to exactly the stored bytes.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int
    as_stored: bool = True


# What a Part 10 file's meta must hold for pynetdicom to send it without decoding it.
META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def read_instance(path: Path) -> Instance:
    """Read the file meta of one file (and nothing else, for a normal Part 10 file).

    Raise PermanentError(FILE_UNSENDABLE) for a file that is not DICOM, lacks its UIDs, or has
    no file meta and could not be sent byte for byte; OSError if it cannot be read.
    """
    size = path.stat().st_size
    try:
        meta, _ = split_dataset(path)
    except InvalidDicomError:
        meta = None
    except (ValueError, EOFError) as error:
        raise _unsendable(path, f"its file meta cannot be read ({type(error).__name__})") from None
    if meta is not None and all(keyword in meta for keyword in META_KEYWORDS):
        return Instance(
            path=path,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax=str(meta.TransferSyntaxUID),
            size=size,
        )
    return _bare_instance(path, size)


def _bare_instance(path: Path, size: int) -> Instance:
    """A file without (complete) file meta, usable only as `bare_dataset` allows."""
    dataset, syntax = bare_dataset(path)
    return Instance(
        path=path,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        transfer_syntax=str(syntax),
        size=size,
        as_stored=False,
    )


def bare_dataset(path: Path) -> tuple[pydicom.Dataset, UID]:
    """Decode a file without file meta, for sending it from the dataset.

    Allowed only when its encoding is an uncompressed one pydicom can tell from the bytes
    (implicit or explicit VR) and re-encoding it gives back exactly the stored bytes, so that
    what goes on the wire is still the file as stored.
    """
    raw = path.read_bytes()
    try:
        dataset = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, ValueError, EOFError, AttributeError) as error:
        raise _unsendable(path, f"it cannot be read as DICOM ({type(error).__name__})") from None
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in dataset]
    if missing:
        raise _unsendable(path, f"it has no {' or '.join(missing)}")
    if "PixelData" in dataset and dataset["PixelData"].is_undefined_length:
        raise _unsendable(path, "it has compressed pixel data but no file meta naming the codec")
    implicit, little = (bool(flag) for flag in dataset.original_encoding)
    start = 132 if raw[128:132] == b"DICM" else 0
    try:
        again = encode(dataset, implicit, little)
    except (ValueError, TypeError, AttributeError):
        again = None
    if again != raw[start:]:
        raise _unsendable(path, "it has no complete file meta and cannot be re-sent byte for byte")
    if not little:
        syntax = ExplicitVRBigEndian
    else:
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    return dataset, syntax


def _unsendable(path: Path, why: str) -> errors.PermanentError:
    return errors.PermanentError(
        FILE_UNSENDABLE,
        f"{path.name} cannot be sent to the DICOM receiver as stored: {why}",
        'fix or leave out the file (re-export it from the scanner), or use transport = "rest" '
        "for this drop",
    )


def contexts_for(instances: Iterable[Instance]) -> list[tuple[str, str]]:
    """The presentation contexts to propose: each (SOP class, transfer syntax) pair present,
    in first-seen order, each with that one transfer syntax, so nothing is transcoded."""
    return list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in instances))


def unreadable(path: Path, error: OSError) -> TransientSendError:
    """A file of the drop that cannot be read now (permissions, a share gone): retry later."""
    return TransientSendError(
        FILE_UNSENDABLE,
        f"cannot read {path.name} ({(error.strerror or 'I/O error').lower()})",
        "check the drop's folder is readable; xnatdrop tries again later",
    )
