"""Where the real scanner data lives: ../shared/dicom beside the checkout (never in the repo).

Tests copy what they need into tmp_path. A missing set fails the test; it is never skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

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
