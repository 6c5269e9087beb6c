"""Reading an imported file's header: the fields the importer routes by, and the bytes kept.

`HeaderTap` keeps the first bytes of an entry stream so that the header can be read and the
whole entry still copied. The sandbox's own walker (`dicomwalk`) reads the fields from those
bytes; pydicom reads the files the walker declines and the header a series import filter needs
(`read_header`). Both give the same `Header` (tests/sandbox/test_walker.py).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import IO

import pydicom
import pydicom.errors
from pydicom import filereader
from pydicom.datadict import dictionary_VR, tag_for_keyword

from xnat_sandbox import dicomedit, dicomwalk

COMMENT_FIELDS = ("PatientComments", "StudyComments", "AdditionalPatientHistory")
_PARSE_LOCK = dicomedit.PYDICOM_LOCK  # pydicom under catch_warnings: one lock


class Unreadable(Exception):
    """An entry that is not DICOM (or lacks its SOP UIDs): 400 unless Ignore-Unparsable."""


@dataclass
class Header:
    """The header fields the importer needs, read once per entry."""

    study_uid: str
    series_uid: str
    series_number: str
    sop_class: str
    sop_uid: str
    modality: str
    patient_name: str
    patient_id: str
    comments: list[str]
    study_description: str
    accession: str
    study_date: str
    study_time: str
    series_description: str
    instance_number: str


class HeaderTap:
    """A seekable view of a forward-only stream that keeps every byte it has read.

    pydicom seeks a little while parsing; this serves those seeks from the kept bytes. After the
    header is parsed, `kept` plus the rest of the source is the whole entry.
    """

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.kept = bytearray()
        self.pos = 0
        self.eof = False

    def _fill(self, end: int | None) -> None:
        while not self.eof and (end is None or len(self.kept) < end):
            want = 1 << 20 if end is None else max(65536, end - len(self.kept))
            chunk = self.source.read(want)
            if not chunk:
                self.eof = True
            self.kept += chunk

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self._fill(None)
            end = len(self.kept)
        else:
            self._fill(self.pos + size)
            end = min(self.pos + size, len(self.kept))
        data = bytes(self.kept[self.pos : end])
        self.pos = end
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            target = offset
        elif whence == 1:
            target = self.pos + offset
        else:
            self._fill(None)
            target = len(self.kept) + offset
        self._fill(target)
        self.pos = max(0, target)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


#: Parse up to StudyComments (0032,4000): every tag the importer reads comes before. Header-only,
#: and shorter still than `stop_before_pixels`: GE and Siemens files carry large private groups
#: after (0032,xxxx), and skipping them halves the per-entry parse time. A series import filter
#: on a later element moves the stop (`GradualDicomImporter` reads up to its last filter tag).
LAST_NEEDED_TAG = 0x00324000


_PARSE_ERRORS = dicomedit.PYDICOM_ERRORS
HEADER_START = 64 * 1024  # the first read; GE and Siemens headers up to (0032,4000) fit
HEADER_MAX = 16 * 1024 * 1024  # past this an entry is "unreadable" rather than held in memory


def _parse(data: bytes, last_tag: int) -> tuple[pydicom.Dataset, bool]:
    """Parse a header prefix held in memory up to `last_tag`; also say whether the parser used
    all of it.

    Reading from BytesIO is several times faster than through `HeaderTap` (pydicom makes many
    small reads). A parser that used the whole prefix may have stopped for lack of data.
    """

    def past(tag: int, vr: str | None, length: int) -> bool:
        return tag > last_tag

    view = io.BytesIO(data)
    try:
        dataset = filereader.read_partial(view, stop_when=past)
    except pydicom.errors.InvalidDicomError:
        view = io.BytesIO(data)
        dataset = filereader.read_partial(view, stop_when=past, force=True)
    return dataset, view.tell() >= len(data)


#: Header field → the DICOM keyword it is read from (`comments` is read from COMMENT_FIELDS).
HEADER_KEYWORDS = {
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "series_number": "SeriesNumber",
    "sop_class": "SOPClassUID",
    "sop_uid": "SOPInstanceUID",
    "modality": "Modality",
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "study_description": "StudyDescription",
    "accession": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "series_description": "SeriesDescription",
    "instance_number": "InstanceNumber",
}


def _header(dataset: pydicom.Dataset) -> Header:
    fields = {name: _text(dataset, keyword) for name, keyword in HEADER_KEYWORDS.items()}
    return Header(comments=[_text(dataset, k) for k in COMMENT_FIELDS], **fields)


def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag, dictionary_VR(tag)


HEADER_TAGS = {name: _tag_vr(keyword) for name, keyword in HEADER_KEYWORDS.items()}
COMMENT_TAGS = [_tag_vr(keyword) for keyword in COMMENT_FIELDS]


#: The elements `walked_header` reads, kept by the walker.
WANTED = frozenset(
    [dicomwalk.SPECIFIC_CHARACTER_SET]
    + [tag for tag, _ in HEADER_TAGS.values()]
    + [tag for tag, _ in COMMENT_TAGS]
)


def walk_header(tap: HeaderTap, last_tag: int, keep_to: int) -> dicomwalk.Walk | None:
    """The header up to `last_tag` walked by `dicomwalk` (64 KiB first, more only when the
    header runs past it), every element up to `keep_to` kept (the part the site script
    rewrites), or None when pydicom must read this file."""
    size = HEADER_START
    while True:
        tap.seek(size)
        try:
            return dicomwalk.walk(bytes(tap.kept), last_tag, tap.eof, keep_to, WANTED)
        except dicomwalk.CannotWalk:
            return None
        except dicomwalk.NeedMore:
            if tap.eof or len(tap.kept) >= HEADER_MAX:
                return None
            size *= 4


#: What `walked_header` reads, for `dicomwalk.texts`: the character set (any VR, several values
#: refused), then the header fields and the comments with their dictionary VRs.
_TEXT_SPECS: tuple[dicomwalk.TextSpec, ...] = (
    (dicomwalk.SPECIFIC_CHARACTER_SET, None, False),
    *(
        (tag, vr, vr in dicomwalk.SINGLE_VALUE_VRS)
        for tag, vr in [*HEADER_TAGS.values(), *COMMENT_TAGS]
    ),
)
_FIELDS = tuple(HEADER_TAGS)


def walked_header(walked: dicomwalk.Walk) -> Header | None:
    """The importer's fields from the walked bytes, exactly as `_header` reads them with
    pydicom; None when a value needs pydicom to decode it (see `dicomwalk.ascii_text`), or when
    an element has another VR than the dictionary's."""
    found = dicomwalk.texts(walked, _TEXT_SPECS)
    if found is None or found[0] not in dicomwalk.ASCII_CHARSETS:
        return None
    fields = len(_FIELDS) + 1
    return Header(comments=found[fields:], **dict(zip(_FIELDS, found[1:fields], strict=True)))


def check_header(header: Header, name: str) -> Header:
    """Raise Unreadable as GradualDicomImporter does for a file without its SOP UIDs."""
    if not header.sop_class and not header.sop_uid and not header.study_uid:
        raise Unreadable(f"unable to read DICOM object {name}")
    if not header.sop_class:
        raise Unreadable(f"object {name} contains no SOP Class UID")
    if not header.sop_uid:
        raise Unreadable(f"object {name} contains no SOP Instance UID")
    return header


def read_header(
    tap: HeaderTap, name: str, last_tag: int = LAST_NEEDED_TAG
) -> tuple[Header, pydicom.Dataset]:
    """Parse the header (up to `last_tag`, no pixel data) from the first bytes of the entry.

    Start with 64 KiB and read more only when the parser ran out of data. Raise Unreadable the
    way GradualDicomImporter does.
    """
    size = HEADER_START
    while True:
        tap.seek(size)
        complete = tap.eof
        try:
            with _PARSE_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset, exhausted = _parse(bytes(tap.kept), last_tag)
                header = _header(dataset)
        except _PARSE_ERRORS as error:
            if complete or len(tap.kept) >= HEADER_MAX:
                raise Unreadable(f"unable to read DICOM object {name}") from error
            size *= 4
            continue
        if exhausted and not complete and len(tap.kept) < HEADER_MAX:
            size *= 4
            continue
        break
    return check_header(header, name), dataset
