"""`xnatdrop doctor --test-push`: the test push the site's instructions ask for before real data.

One generated instance, never patient data: a Secondary Capture image of 8×8 black pixels with
PatientName `XNATDROP^TEST`, PatientID `XNATDROP_TEST`, descriptions that say it is a test, and
fresh UIDs. Its PatientComments route it as XNAT's default identifier reads them
(`Project: P Subject: S Session: E`, reference §6.1) to the configured project, with subject
and session labels `xnatdrop_test_<UTC time>`, and `AA: false`, so that a project that
auto-archives leaves it in the prearchive. It goes out by C-STORE (`dimse.send_series`), is
looked for in the prearchive (`received.wait_for_session`), reported, and deleted again.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from xnatdrop import dimse, received
from xnatdrop.config import Config
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.xnat import PrearchiveEntry, XnatClient

TEST_NAME = "XNATDROP^TEST"
TEST_ID = "XNATDROP_TEST"
LABEL_PREFIX = "xnatdrop_test_"


def label_for_now(now: dt.datetime | None = None) -> str:
    """`xnatdrop_test_20261125T204700` (UTC): a subject and session label XNAT accepts."""
    now = now or dt.datetime.now(dt.UTC)
    return LABEL_PREFIX + now.strftime("%Y%m%dT%H%M%S")


def harmless_instance(project: str, label: str) -> pydicom.Dataset:
    """The harmless instance, routed by its comment fields to `project`, subject and session
    `label`, kept out of auto-archive."""
    now = dt.datetime.now(dt.UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.StudyID = "XNATDROP"
    ds.AccessionNumber = ""
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "xnatdrop"
    ds.StudyDescription = "xnatdrop test push"
    ds.SeriesDescription = "xnatdrop test push - not patient data"
    ds.PatientName = TEST_NAME
    ds.PatientID = TEST_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientComments = f"Project: {project} Subject: {label} Session: {label} AA: false"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(64)
    return ds


@dataclass(frozen=True)
class Filed:
    """Where XNAT filed the test instance, and whether it was removed again."""

    entry: PrearchiveEntry
    elsewhere: bool  # not in the expected project (routing did not reach it)
    deleted: bool
    delete_error: str = ""


def run(settings: Config, client: XnatClient, project: str, timeout: float = 60.0) -> Filed:
    """Send the test instance to `[dicom]`, find it in XNAT's prearchive, delete it.

    Raise PermanentError / dimse.TransientSendError when the send fails, TransientError when
    XNAT shows no session for it within `timeout` seconds.
    """
    label = label_for_now()
    instance = harmless_instance(project, label)
    with tempfile.TemporaryDirectory(prefix="xnatdrop-test-push-") as folder:
        path = Path(folder) / "test.dcm"
        instance.save_as(path, enforce_file_format=True)
        report = dimse.send_series(
            [path], settings.dicom, Path(folder) / "journal.jsonl", label="test push"
        )
    if not report.complete:
        raise TransientError("the test push was not confirmed by the receiver")
    found = received.wait_for_session(
        client, project, str(instance.StudyInstanceUID), timeout=timeout
    )
    entry = found.entries[-1]
    try:
        for each in found.entries:
            client.delete_prearchive(each.uri)
    except (TransientError, PermanentError) as error:
        return Filed(entry, found.elsewhere, deleted=False, delete_error=str(error))
    return Filed(entry, found.elsewhere, deleted=True)
