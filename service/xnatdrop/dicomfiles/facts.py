"""What the check knows of one file: its `Kind`, its `Header` (with the `SeriesFields` the
files of a series share) and the `FileFacts` that hold them.

Why a module of its own: these are the walker's results, the only part of it that the rules
(`rules/`) and the pipeline read; they hold decoded values and no parsing state.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from pathlib import Path
from typing import TYPE_CHECKING

from xnatdrop.dicomfiles.tags import MEDIA_DIRECTORY_CLASS


class Kind(enum.StrEnum):
    """What a file is, by content (rules A1–A8, B)."""

    EMPTY = "empty"  # A1
    DICOM = "dicom"  # A2/A3 with a usable header (A5 passed); may still be truncated (A6)
    CORRUPT = "corrupt"  # A2/A3 whose header is unusable (A5)
    ARCHIVE = "archive"  # A7
    CONVERTED = "converted"  # B1–B10
    OTHER = "other"  # A8
    UNREADABLE = "unreadable"  # permission denied, I/O error, not a regular file


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesFields:
    """The header fields the rules use that the files of one series share, decoded as plain
    strings (trailing spaces/NULs removed). One object serves every file whose values are all
    equal (`sniff_folder`): a series of 5,000 files holds it once, not 5,000 times."""

    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    series_number: str = ""
    series_description: str = ""
    modality: str = ""
    manufacturer: str = ""
    image_type: tuple[str, ...] = ()  # normalised: split on '\', stripped, upper-cased
    frame_types: tuple[tuple[str, ...], ...] = ()  # distinct FrameType values (shared/per-frame)
    diffusion_directions: tuple[str, ...] = ()  # Philips (2001,1004) and (0018,9075) values
    patient_name: str = ""
    patient_id: str = ""
    transfer_syntax: str = ""
    lossy: bool = False  # (0028,2110) == "01" or a lossy transfer syntax
    derivation_description: str = ""
    pixel_presentation: str = ""
    volume_calculation: str = ""
    sequence_name: str = ""
    referenced_files: tuple[tuple[str, ...], ...] = ()  # DICOMDIR (0004,1500) values
    # What a series should hold, for telling a copy still under way from a complete one
    # (rules, INCOMPLETE_SERIES): 0 when the header does not say.
    frames: int = 1  # NumberOfFrames
    images_in_acquisition: int = 0  # (0020,1002)
    temporal_positions: int = 0  # (0020,0105)
    ge_locations: int = 0  # GE (0021,104F) LocationsInAcquisition

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class_uid == MEDIA_DIRECTORY_CLASS or bool(self.referenced_files)


class Header:
    """The header fields the rules use: the two that differ from file to file of a series
    (SOPInstanceUID, InstanceNumber) and the `SeriesFields` shared with the others, whose
    fields read as the header's own (`header.series_instance_uid`).

    Why split: the check keeps the header of every file until the verdict (55,000 in an 8 GB
    session); one object of 25 fields per file was its largest per-file cost (232 bytes).
    """

    __slots__ = ("fields", "instance_number", "sop_instance_uid")

    def __init__(
        self, fields: SeriesFields, sop_instance_uid: str = "", instance_number: int = 0
    ) -> None:
        self.fields = fields
        self.sop_instance_uid = sop_instance_uid
        self.instance_number = instance_number

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        return (self.sop_instance_uid, self.instance_number, self.fields) == (
            other.sop_instance_uid, other.instance_number, other.fields,
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.sop_instance_uid, self.instance_number, self.fields))

    def __repr__(self) -> str:
        return (
            f"Header(sop_instance_uid={self.sop_instance_uid!r}, "
            f"instance_number={self.instance_number!r}, fields={self.fields!r})"
        )

    @property
    def is_dicomdir(self) -> bool:
        return self.fields.is_dicomdir

    if TYPE_CHECKING:  # the shared fields, read through (set below)
        sop_class_uid: str
        study_instance_uid: str
        series_instance_uid: str
        series_number: str
        series_description: str
        modality: str
        manufacturer: str
        image_type: tuple[str, ...]
        frame_types: tuple[tuple[str, ...], ...]
        diffusion_directions: tuple[str, ...]
        patient_name: str
        patient_id: str
        transfer_syntax: str
        lossy: bool
        derivation_description: str
        pixel_presentation: str
        volume_calculation: str
        sequence_name: str
        referenced_files: tuple[tuple[str, ...], ...]
        frames: int
        images_in_acquisition: int
        temporal_positions: int
        ge_locations: int


_SERIES_FIELDS = tuple(field.name for field in dataclasses.fields(SeriesFields))
for _name in _SERIES_FIELDS:
    setattr(Header, _name, property(operator.attrgetter(f"fields.{_name}")))


@dataclasses.dataclass(frozen=True, slots=True)
class FileFacts:
    """Everything the rules need to know about one file, gathered in one visit.

    `detail` says in words what was found (the format, or why the header is unusable);
    `truncated` is empty for a complete file and otherwise says what is missing (rule A6).
    `inode` identifies hard links of one file, so duplicates can be told apart cheaply; it is
    NO_INODE for a file with a single link (no other path can share it).
    """

    path: str | Path  # as the caller named it: the check's text ("folder/name")
    size: int
    kind: Kind
    detail: str = ""
    header: Header | None = None
    preamble: bool = True  # False for DICOM without the 128-byte preamble and "DICM" (A3)
    truncated: str = ""
    inode: tuple[int, int] = (0, 0)


NO_INODE = (0, 0)  # FileFacts.inode of a file that has no other link
