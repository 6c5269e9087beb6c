"""Rules A, B and C, one file at a time: what each file is (empty, corrupt, not DICOM, a
DICOMDIR and the media it lists) and what it holds (SOP class, derived or raw, lossy,
localizer). Hits are grouped per series later, by `verdict`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from xnatdrop import dicomfiles
from xnatdrop.rules import model

if TYPE_CHECKING:
    from xnatdrop import config

# ---- Rule C: SOP classes (C1) and ImageType tokens (C2, C3) -------------------------------

MR_IMAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"})
SPECTROSCOPY_CLASS = "1.2.840.10008.5.1.4.1.1.4.2"
DERIVED_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image (colour map)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping",
}
CONVERTED_CLASSES = {"1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image"}
NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image",
}
NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.104.": "Encapsulated Document",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
    "1.3.46.670589.11.0.0.12.": "Philips private non-image (spectrum, series data, ExamCard)",
}

C3_TOKENS = {
    "motion-corrected (MOCO)": {"MOCO"},
    "diffusion map": {"ADC", "EADC", "TRACEW", "TRACE", "FA", "TENSOR", "TENSOR_B0", "ISOTROPIC"}
    | {"EXP"},
    "reformat": {"MPR", "CSA MPR", "CSAPARALLEL", "RESAMPLED", "REFORMATTED"},
    "projection": {"PROJECTION IMAGE", "MIP", "CSA MIP", "MNIP", "MINIP"},
    "subtraction/perfusion map": {"SUB", "SUBTRACTION", "RCBF", "RELCBF", "CBF", "CBV", "MTT"}
    | {"TTP", "TTEST"},
    "colour": {"COLOR_LUT", "RGB"},
    "quantitative map": {"T1 MAP", "T2 MAP", "T2* MAP", "R2* MAP"},
    "screen save": {"SCREEN SAVE"},
}
PHILIPS_PERFUSION = {"PERFUSION_FFE", "PERFUSION_SE", "PERFUSION"}
DERIVED_DESCRIPTION = re.compile(
    r"moco|_(ADC|TRACEW|FA|ColFA|TENSOR(_B0)?)$|_MPR_|MPR Collection|MIP Range|\bmIP\b"
    r"|Perfusion_Weighted|relCBF|screen ?save|dose report|ExamCard|SWI_Images",
    re.IGNORECASE,
)
LOCALIZER_DESCRIPTION = re.compile(r"scout|localizer|localiser|survey|3-plane", re.IGNORECASE)
PHOENIX_DESCRIPTION = "PHOENIXZIPREPORT"


def file_hits(item: dicomfiles.FileFacts) -> list[model.Hit]:
    """Rules A1–A8 and B: what the file is."""
    kind = item.kind
    if kind is dicomfiles.Kind.EMPTY:
        return [model.Hit("EMPTY_FILE", item.path, "0 bytes")]
    if kind is dicomfiles.Kind.UNREADABLE:
        return [model.Hit("UNREADABLE", item.path, item.detail)]
    if kind is dicomfiles.Kind.CORRUPT:
        return [model.Hit("CORRUPT_DICOM", item.path, item.detail)]
    if kind is dicomfiles.Kind.ARCHIVE:
        return [model.Hit("ARCHIVE_FILE", item.path, item.detail)]
    if kind is dicomfiles.Kind.CONVERTED:
        return [model.Hit("CONVERTED_FILE", item.path, item.detail)]
    if kind is dicomfiles.Kind.OTHER:
        return [model.Hit("NOT_DICOM", item.path, item.detail)]
    hits = []
    if item.truncated:
        hits.append(model.Hit("TRUNCATED_DICOM", item.path, item.truncated, None))
    if not item.preamble:
        header = item.header
        group = (model.series_folder(item.path), header.series_instance_uid) if header else None
        hits.append(model.Hit("DICOM_NO_PREAMBLE", item.path, "no preamble/DICM", group))
    return hits


def category_of(header: dicomfiles.Header | dicomfiles.SeriesFields | None) -> str:
    """Rule C1: image (MR), derived, converted, non-image, spectroscopy or other-modality."""
    sop = header.sop_class_uid if header else ""
    if sop in MR_IMAGE_CLASSES:
        return "image"
    if sop == SPECTROSCOPY_CLASS:
        return "spectroscopy"
    if sop in DERIVED_CLASSES:
        return "derived"
    if sop in CONVERTED_CLASSES:
        return "converted"
    if sop in NON_IMAGE_CLASSES or any(sop.startswith(p) for p in NON_IMAGE_PREFIXES):
        return "non-image"
    return "other-modality"


def _class_name(sop: str) -> str:
    for table in (DERIVED_CLASSES, CONVERTED_CLASSES, NON_IMAGE_CLASSES):
        if sop in table:
            return table[sop]
    return next((n for p, n in NON_IMAGE_PREFIXES.items() if sop.startswith(p)), sop)


def derived_reasons(
    header: dicomfiles.Header | dicomfiles.SeriesFields, allow: Iterable[str] = ("UNI",)
) -> list[str]:
    """Rules C2, C3 and C6: why an MR image header counts as derived ([] if it is raw).

    Value 1/2 of ImageType (and of FrameType for enhanced objects) decide first; tokens from
    Value 3 on catch what Siemens and Philips label ORIGINAL although processed (MoCo, maps).
    A token in `allow` (default UNI: MP2RAGE uniform image) makes the image count as raw.
    """
    types = [header.image_type, *header.frame_types]
    tokens = {t for values in types for t in values[2:] if t}
    if tokens & {a.upper() for a in allow}:
        return []
    reasons = []
    if any(values[:1] == ("DERIVED",) for values in types):
        reasons.append("ImageType DERIVED")
    if any(values[1:2] == ("SECONDARY",) for values in types):
        reasons.append("ImageType SECONDARY")
    for name, group in C3_TOKENS.items():
        found = sorted(tokens & group)
        if found:
            reasons.append(f"{name} ({', '.join(found)})")
    if header.volume_calculation not in ("", "NONE"):
        reasons.append(f"VolumeBasedCalculationTechnique {header.volume_calculation}")
    if header.pixel_presentation in ("COLOR", "TRUE_COLOR"):
        reasons.append(f"PixelPresentation {header.pixel_presentation}")
    if (
        "PHILIPS" in header.manufacturer.upper()
        and tokens & PHILIPS_PERFUSION
        and "SOURCE" not in header.series_description.upper()
    ):
        reasons.append("Philips perfusion map (ORIGINAL label, not the SOURCE series)")
    return reasons


def _is_phoenix(header: dicomfiles.Header | dicomfiles.SeriesFields) -> bool:
    return (
        "CSA REPORT" in header.image_type
        or header.series_description.upper() == PHOENIX_DESCRIPTION
    )


class Categories:
    """Rule C1's category of each DICOM file (`category_of`), decided once per `SeriesFields`:
    the files of a series share that object, and with it their category.

    Why: the check judges every file of the session in the parent process after the workers
    have read them, one core busy while the other waits; per-file work there costs the whole
    check's wall time.
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[dicomfiles.SeriesFields, str]] = {}

    def __call__(self, item: dicomfiles.FileFacts | dicomfiles.SeriesFields) -> str:
        """The category of a file, given its facts or its SeriesFields."""
        if isinstance(item, dicomfiles.SeriesFields):
            fields = item
        else:
            assert item.header is not None
            fields = item.header.fields
        known = self._known.get(id(fields))
        if known is None:  # the fields are kept with their category: their id stays theirs
            known = self._known[id(fields)] = (fields, category_of(fields))
        return known[1]


def content_hits(
    dicoms: Sequence[dicomfiles.FileFacts],
    folders: Sequence[Path],
    categories: Categories,
    settings: config.RulesSettings | None,
) -> list[model.Hit]:
    """Rules C1–C9 per file, grouped later per series; `folders` are the files' series folders.

    What a rule says of a file depends only on its `SeriesFields` and on whether its folder
    holds images, so it is decided once per pair and given to each file of it. A rule that is
    grouped per series gives one hit per series and reason, covering its files: a hit per
    file (an object and a group tuple each, ~110 bytes) was held by every file of a series a
    rule fires on (a localizer, a derived series) until the verdict was made (issue 13).
    """
    allow = settings.derived_allow if settings is not None else ["UNI"]
    image_folders = {
        folder
        for folder, (_, fields, _) in zip(folders, dicomfiles.brief(dicoms), strict=True)
        if categories(fields) not in ("non-image",)
    }
    hits = []
    decided: dict[tuple[int, bool], tuple[dicomfiles.SeriesFields, list[tuple[str, str, bool]]]]
    decided = {}
    # Each grouped rule's files, per (code, reason, series), in the order the files come.
    covered: dict[tuple[str, str, tuple[Path, str]], list[str]] = {}
    for (ref, fields, _), folder in zip(dicomfiles.brief(dicoms), folders, strict=True):
        in_images = folder in image_folders
        key = (id(fields), in_images)
        known = decided.get(key)
        if known is None:
            known = decided[key] = (
                fields,
                _content_rules(fields, categories(fields), in_images, allow),
            )
        if known[1]:
            group = (folder, fields.series_instance_uid)
            path = dicomfiles.path_of(dicoms, ref)
            for code, reason, grouped in known[1]:
                if grouped:
                    covered.setdefault((code, reason, group), []).append(path)
                else:
                    hits.append(model.Hit(code, path, reason))
    for (code, reason, group), paths in covered.items():
        hits.append(model.Hit(code, paths[0], reason, group, tuple(paths)))
    return hits


def _content_rules(
    header: dicomfiles.Header | dicomfiles.SeriesFields,
    category: str,
    in_images: bool,
    allow: Iterable[str],
) -> list[tuple[str, str, bool]]:
    """Rules C1–C9 for one header: (code, reason, grouped per series) of each that fires."""
    if category == "non-image":
        name = _class_name(header.sop_class_uid)
        if _is_phoenix(header) and not in_images:
            return [("PROTOCOL_REPORT", "PhoenixZIPReport", True)]
        if in_images:
            return [("NON_IMAGE_OBJECT", f"{name} in an image folder", True)]
        return [("NON_IMAGE_OBJECT", name, True)]
    if category == "converted":
        name = _class_name(header.sop_class_uid)
        return [("CONVERTED_FILE", f"{name} (re-packaged by a tool)", True)]
    if category == "other-modality":
        modality = header.modality or "unknown modality"
        return [("WRONG_MODALITY", f"{modality}, SOP class {header.sop_class_uid}", False)]
    found = []
    reasons = derived_reasons(header, allow) if category != "spectroscopy" else []
    if category == "derived":
        reasons.insert(0, _class_name(header.sop_class_uid))
    if reasons:
        found.append(("DERIVED_SERIES", "; ".join(reasons), True))
    if header.lossy:
        found.append(("LOSSY_COMPRESSED", "lossy compression", True))
    if not reasons:
        if set(header.diffusion_directions) & {"I", "ISOTROPIC"}:
            found.append(("DERIVED_FRAMES", "isotropic (trace) diffusion image", True))
        if DERIVED_DESCRIPTION.search(header.series_description):
            found.append(
                ("SUSPECT_DESCRIPTION", f"description '{header.series_description}'", True)
            )
        if LOCALIZER_DESCRIPTION.search(header.series_description) or (
            "fl2d1" in header.sequence_name or "AAHScout" in header.sequence_name
        ):
            found.append(("LOCALIZER", "localizer", True))
    return found


def media_hits(
    folder: Path, item: dicomfiles.FileFacts, files: list[str] | list[Path]
) -> list[model.Hit]:
    """Rule A4: every file a DICOMDIR references must be present."""
    assert item.header is not None
    present = {str(p).lower() for p in files}
    base = Path(item.path).parent
    missing = []
    for parts in item.header.referenced_files:
        relative = (base / Path(*[p for p in parts if p])).as_posix().lower()
        if relative not in present:
            missing.append("/".join(parts))
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return [
        model.Hit(
            "INCOMPLETE_MEDIA", item.path, f"{len(missing)} referenced file(s) missing: {shown}"
        )
    ]
