"""The DICOM transport (moved from dimse.py; split by concern next)."""

from xnatdrop.dimse.sender import *  # noqa: F403
