"""The DICOM encoding the header walker reads: transfer syntaxes, SOP classes, VRs, the tags
the rules need, the element header layouts, and the limits a walk keeps to.

Why a module of its own: every part of the walker (the general walk, its fast paths, the
Pixel Data finder, the decoding of values) steps over the same encoding; naming each number
once here keeps them from drifting apart. The numbers are PS3.5 (encoding) and PS3.6
(dictionary and Annex A); the rules that use them are in `shared/reference/dicom-rules.md`.
"""

from __future__ import annotations

import struct

HEAD_BYTES = 64 * 1024  # first read; the cold-read baseline reads the same amount
MAX_VALUE = 1 << 20  # longest value the walker decodes; longer "strings" mean a corrupt file
MAX_DEPTH = 12  # nesting limit for sequences; real MR headers use 4
MAX_DEFLATED = 256 << 20  # inflated dataset limit for Deflate transfer syntax


# Transfer syntaxes (PS3.6 Annex A)
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
# Lossy transfer syntaxes: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, MPEG, HEVC,
# HTJ2K (lossy-capable) — rule C8.
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
        "1.2.840.10008.1.2.4.203",
    }
)

MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"
# SOP classes whose objects must carry pixel data (rule A6c): image classes an MR drop can hold.
PIXEL_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.128",  # PET
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    }
)

PREAMBLE_MAGIC = b"DICM"
SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) length 0, little endian

# Explicit VRs that use a reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN"})
LONG_VRS |= {b"SV", b"UV"}

ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQ_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

# Top-level tags the rules need, as (group << 16 | element).
TAG_META_SOP_CLASS = 0x00020002
TAG_META_SOP_INSTANCE = 0x00020003
TAG_TRANSFER_SYNTAX = 0x00020010
TAG_DIRECTORY_RECORDS = 0x00041220
TAG_REFERENCED_FILE_ID = 0x00041500
TAG_IMAGE_TYPE = 0x00080008
TAG_SOP_CLASS = 0x00080016
TAG_SOP_INSTANCE = 0x00080018
TAG_MODALITY = 0x00080060
TAG_MANUFACTURER = 0x00080070
TAG_SERIES_DESCRIPTION = 0x0008103E
TAG_DERIVATION_DESCRIPTION = 0x00082111
TAG_FRAME_TYPE = 0x00089007
TAG_PIXEL_PRESENTATION = 0x00089205
TAG_VOLUME_CALCULATION = 0x00089207
TAG_PATIENT_NAME = 0x00100010
TAG_PATIENT_ID = 0x00100020
TAG_SEQUENCE_NAME = 0x00180024
TAG_DIFFUSION_DIRECTIONALITY = 0x00189075
TAG_STUDY_UID = 0x0020000D
TAG_SERIES_UID = 0x0020000E
TAG_SERIES_NUMBER = 0x00200011
TAG_INSTANCE_NUMBER = 0x00200013
TAG_TEMPORAL_POSITIONS = 0x00200105  # NumberOfTemporalPositions
TAG_IMAGES_IN_ACQUISITION = 0x00201002
TAG_GE_RELA_CREATOR = 0x00210010  # "GEMS_RELA_01" owns block 0x10 of group 0021
TAG_GE_LOCATIONS = 0x0021104F  # GE LocationsInAcquisition (SS), in that block
TAG_SAMPLES = 0x00280002
TAG_FRAMES = 0x00280008
TAG_ROWS = 0x00280010
TAG_COLUMNS = 0x00280011
TAG_BITS_ALLOCATED = 0x00280100
TAG_LOSSY = 0x00282110
TAG_PHILIPS_CREATOR = 0x20010010
TAG_PHILIPS_DIFFUSION_DIRECTION = 0x20011004  # "Philips Imaging DD 001" block 0x10, rule C5
TAG_SHARED_GROUPS = 0x52009229
TAG_PER_FRAME_GROUPS = 0x52009230
TAG_FLOAT_PIXELS = 0x7FE00008
TAG_PIXEL_DATA = 0x7FE00010

TOP_TAGS = frozenset(
    {
        TAG_IMAGE_TYPE,
        TAG_SOP_CLASS,
        TAG_SOP_INSTANCE,
        TAG_MODALITY,
        TAG_MANUFACTURER,
        TAG_SERIES_DESCRIPTION,
        TAG_DERIVATION_DESCRIPTION,
        TAG_PIXEL_PRESENTATION,
        TAG_VOLUME_CALCULATION,
        TAG_PATIENT_NAME,
        TAG_PATIENT_ID,
        TAG_SEQUENCE_NAME,
        TAG_STUDY_UID,
        TAG_SERIES_UID,
        TAG_SERIES_NUMBER,
        TAG_INSTANCE_NUMBER,
        TAG_TEMPORAL_POSITIONS,
        TAG_IMAGES_IN_ACQUISITION,
        TAG_GE_RELA_CREATOR,
        TAG_GE_LOCATIONS,
        TAG_SAMPLES,
        TAG_FRAMES,
        TAG_ROWS,
        TAG_COLUMNS,
        TAG_BITS_ALLOCATED,
        TAG_LOSSY,
        TAG_PHILIPS_CREATOR,
        TAG_PHILIPS_DIFFUSION_DIRECTION,
    }
)
# Sequences the walker descends into at the top level, and what it collects inside them.
DESCEND = frozenset({TAG_DIRECTORY_RECORDS, TAG_SHARED_GROUPS, TAG_PER_FRAME_GROUPS})
NESTED_TAGS = frozenset({TAG_FRAME_TYPE, TAG_DIFFUSION_DIRECTIONALITY, TAG_REFERENCED_FILE_ID})
US_TAGS = frozenset({TAG_SAMPLES, TAG_ROWS, TAG_COLUMNS, TAG_BITS_ALLOCATED})


_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_IMPLICIT = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}
_EXPLICIT = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())


def _is_vr(code: bytes) -> bool:
    return len(code) == 2 and 65 <= code[0] <= 90 and 65 <= code[1] <= 90
