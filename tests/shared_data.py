"""Where the real scanner data lives: ../shared/dicom beside the checkout (never in the repo).

Tests copy what they need into tmp_path. A missing set fails the test; it is never skipped.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom

SHARED_DICOM = Path(
    os.environ.get(
        "XNATDROP_SHARED_DICOM", Path(__file__).resolve().parents[2] / "shared" / "dicom"
    )
)


def dataset(name: str) -> Path:
    """Return the folder of one shared set (e.g. "ge_signa_premier_table"); fail if missing."""
    path = SHARED_DICOM / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"shared DICOM set {name!r} not found at {path}; "
            "set XNATDROP_SHARED_DICOM to the shared/dicom folder"
        )
    return path


def with_defined_lengths(path: Path, pixels: bool = True) -> bytes:
    """The file re-encoded with a defined length on every sequence and item (as other writers
    do), its pixel data dropped unless `pixels`: the walk then meets ends by length, not by
    delimiters."""
    data = pydicom.dcmread(path)
    if not pixels:
        del data.PixelData

    def define(items: list[pydicom.Dataset]) -> None:
        for item in items:
            for element in item:
                if element.VR == "SQ":
                    element.is_undefined_length = False
                    for inner in element.value:
                        inner.is_undefined_length_sequence_item = False
                    define(element.value)

    define([data])
    buffer = io.BytesIO()
    data.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
