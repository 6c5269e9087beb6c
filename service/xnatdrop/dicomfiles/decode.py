"""Turning the raw values a walk collected into a `Header`: text, multi-valued CS, counts,
the GE and Philips private values, and the expected Pixel Data length (rule A6a).

Why a module of its own: decoding is done once per distinct set of raw values (the files of
a series share one `SeriesFields`, `_decode`), apart from the walk that finds the values.
"""

from __future__ import annotations

import collections
import struct

from xnatdrop.dicomfiles.facts import Header, SeriesFields
from xnatdrop.dicomfiles.tags import (
    _U16,
    LOSSY_SYNTAXES,
    TAG_BITS_ALLOCATED,
    TAG_COLUMNS,
    TAG_DERIVATION_DESCRIPTION,
    TAG_DIFFUSION_DIRECTIONALITY,
    TAG_FRAME_TYPE,
    TAG_FRAMES,
    TAG_GE_LOCATIONS,
    TAG_GE_RELA_CREATOR,
    TAG_IMAGE_TYPE,
    TAG_IMAGES_IN_ACQUISITION,
    TAG_INSTANCE_NUMBER,
    TAG_LOSSY,
    TAG_MANUFACTURER,
    TAG_META_SOP_CLASS,
    TAG_MODALITY,
    TAG_PATIENT_ID,
    TAG_PATIENT_NAME,
    TAG_PHILIPS_CREATOR,
    TAG_PHILIPS_DIFFUSION_DIRECTION,
    TAG_PIXEL_PRESENTATION,
    TAG_REFERENCED_FILE_ID,
    TAG_ROWS,
    TAG_SAMPLES,
    TAG_SEQUENCE_NAME,
    TAG_SERIES_DESCRIPTION,
    TAG_SERIES_NUMBER,
    TAG_SERIES_UID,
    TAG_SOP_CLASS,
    TAG_SOP_INSTANCE,
    TAG_STUDY_UID,
    TAG_TEMPORAL_POSITIONS,
    TAG_VOLUME_CALCULATION,
)
from xnatdrop.dicomfiles.window import _Walk


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \x00")


def _values(raw: bytes) -> tuple[str, ...]:
    """Multi-valued CS, normalised as rule C asks: split on '\\', strip, upper-case."""
    return tuple(v.strip(" \x00").upper() for v in raw.decode("latin-1").split("\\"))


def _us(raw: bytes, little: bool) -> int:
    return _U16[little].unpack_from(raw)[0] if len(raw) >= 2 else 0


def _int(raw: bytes) -> int:
    try:
        return int(_text(raw) or "1")
    except ValueError:
        return 1


# The SeriesFields of the last few distinct headers a process decoded, by the raw values they
# were decoded from. Files come series by series, so this is almost always a hit.
_RECENT_FIELDS: collections.OrderedDict[tuple, SeriesFields] = collections.OrderedDict()
RECENT_FIELDS = 8


def _decode(walk: _Walk, meta: dict[int, bytes], syntax: str) -> Header:
    """The header of a walked file: its two own values and the SeriesFields, decoded once per
    distinct set of raw values (the files of a series share theirs) rather than once a file.

    Why: decoding ~25 values is about a tenth of a small file's CPU; comparing raw bytes
    costs less than decoding them, and the parent receives the same objects again (pickled
    once per batch, and equal, so shared there too).
    """
    top = walk.top
    sop_instance = _text(top.get(TAG_SOP_INSTANCE, b""))
    number = _count(top.get(TAG_INSTANCE_NUMBER, b""))
    shared = top.copy()  # the same pairs, in the same order, as a filtering comprehension
    for tag in _PER_FILE_TAGS:  # gives, at half its CPU (~1.5 µs a file)
        shared.pop(tag, None)
    key = (
        syntax,
        walk.little,
        meta.get(TAG_META_SOP_CLASS, b""),
        *shared.items(),
        *[(tag, *raws) for tag, raws in walk.nested.items()],
    )
    fields = _RECENT_FIELDS.get(key)
    if fields is None:
        fields = _RECENT_FIELDS[key] = _decode_fields(walk, meta, syntax)
        if len(_RECENT_FIELDS) > RECENT_FIELDS:
            _RECENT_FIELDS.popitem(last=False)
    return Header(fields, sop_instance, number)


_PER_FILE_TAGS = frozenset({TAG_SOP_INSTANCE, TAG_INSTANCE_NUMBER})


def _decode_fields(walk: _Walk, meta: dict[int, bytes], syntax: str) -> SeriesFields:
    top, nested = walk.top, walk.nested
    frame_types = tuple(dict.fromkeys(_values(v) for v in nested.get(TAG_FRAME_TYPE, [])))
    directions = [_text(v).upper() for v in nested.get(TAG_DIFFUSION_DIRECTIONALITY, [])]
    creator = _text(top.get(TAG_PHILIPS_CREATOR, b"")).upper()
    if TAG_PHILIPS_DIFFUSION_DIRECTION in top and "PHILIPS" in creator:
        directions.append(_text(top[TAG_PHILIPS_DIFFUSION_DIRECTION]).upper())
    references = tuple(
        tuple(p.strip(" \x00") for p in v.decode("latin-1").split("\\"))
        for v in nested.get(TAG_REFERENCED_FILE_ID, [])
    )
    sop_class = _text(top.get(TAG_SOP_CLASS, b"")) or _text(meta.get(TAG_META_SOP_CLASS, b""))
    image_type = _values(top[TAG_IMAGE_TYPE]) if top.get(TAG_IMAGE_TYPE) else ()
    return SeriesFields(
        sop_class_uid=sop_class,
        study_instance_uid=_text(top.get(TAG_STUDY_UID, b"")),
        series_instance_uid=_text(top.get(TAG_SERIES_UID, b"")),
        series_number=_text(top.get(TAG_SERIES_NUMBER, b"")),
        series_description=_text(top.get(TAG_SERIES_DESCRIPTION, b"")),
        modality=_text(top.get(TAG_MODALITY, b"")).upper(),
        manufacturer=_text(top.get(TAG_MANUFACTURER, b"")),
        image_type=image_type,
        frame_types=frame_types,
        diffusion_directions=tuple(dict.fromkeys(d for d in directions if d)),
        patient_name=_text(top.get(TAG_PATIENT_NAME, b"")),
        patient_id=_text(top.get(TAG_PATIENT_ID, b"")),
        transfer_syntax=syntax,
        lossy=_text(top.get(TAG_LOSSY, b"")) == "01" or syntax in LOSSY_SYNTAXES,
        derivation_description=_text(top.get(TAG_DERIVATION_DESCRIPTION, b"")),
        pixel_presentation=_text(top.get(TAG_PIXEL_PRESENTATION, b"")).upper(),
        volume_calculation=_text(top.get(TAG_VOLUME_CALCULATION, b"")).upper(),
        sequence_name=_text(top.get(TAG_SEQUENCE_NAME, b"")),
        referenced_files=references,
        frames=max(_int(top.get(TAG_FRAMES, b"")), 1),
        images_in_acquisition=_count(top.get(TAG_IMAGES_IN_ACQUISITION, b"")),
        temporal_positions=_count(top.get(TAG_TEMPORAL_POSITIONS, b"")),
        ge_locations=_ge_locations(top, walk.little),
    )


def _count(raw: bytes) -> int:
    """An IS value as a non-negative count; 0 when absent or not a plain number."""
    text = _text(raw)
    return int(text) if text.isdigit() else 0


def _ge_locations(top: dict[int, bytes], little: bool) -> int:
    """GE's LocationsInAcquisition, only when GEMS_RELA_01 owns the block (PS3.5 7.8.1)."""
    if _text(top.get(TAG_GE_RELA_CREATOR, b"")).upper() != "GEMS_RELA_01":
        return 0
    raw = top.get(TAG_GE_LOCATIONS, b"")
    if len(raw) == 2:  # SS, explicit or implicit VR
        return max(struct.unpack("<h" if little else ">h", raw)[0], 0)
    return _count(raw)


def _expected_pixel_bytes(walk: _Walk) -> int:
    """Rows·Columns·SamplesPerPixel·NumberOfFrames·BitsAllocated/8 (rule A6a), 0 if unknown."""
    top, little = walk.top, walk.little
    rows = _us(top.get(TAG_ROWS, b""), little)
    columns = _us(top.get(TAG_COLUMNS, b""), little)
    bits = _us(top.get(TAG_BITS_ALLOCATED, b""), little)
    samples = _us(top.get(TAG_SAMPLES, b""), little) or 1
    frames = max(_int(top.get(TAG_FRAMES, b"")), 1)
    if not rows or not columns or not bits:
        return 0
    return (rows * columns * samples * frames * bits + 7) // 8
