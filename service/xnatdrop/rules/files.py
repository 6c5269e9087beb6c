"""Rules A, B and C, one file at a time: what each file is (empty, corrupt, not DICOM, a
DICOMDIR and the media it lists) and what it holds (SOP class, derived or raw, lossy,
localizer). Hits are grouped per series later, by `verdict`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    header = item.header
    group = (model.series_folder(item.path), header.series_instance_uid) if header else None
    if item.truncated:
        hits.append(model.Hit("TRUNCATED_DICOM", item.path, item.truncated, None))
    if not item.preamble:
        hits.append(model.Hit("DICOM_NO_PREAMBLE", item.path, "no preamble/DICM", group))
    return hits


def category_of(header: dicomfiles.Header | None) -> str:
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


def derived_reasons(header: dicomfiles.Header, allow: Iterable[str] = ("UNI",)) -> list[str]:
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


def _is_phoenix(header: dicomfiles.Header) -> bool:
    return (
        "CSA REPORT" in header.image_type
        or header.series_description.upper() == PHOENIX_DESCRIPTION
    )


def content_hits(
    dicoms: list[dicomfiles.FileFacts],
    categories: dict[Path, str],
    settings: config.RulesSettings | None,
) -> list[model.Hit]:
    """Rules C1–C9 per file, grouped later per series."""
    allow = settings.derived_allow if settings is not None else ["UNI"]
    image_folders = {
        model.series_folder(d.path) for d in dicoms if categories[d.path] not in ("non-image",)
    }
    hits = []
    for item in dicoms:
        header = item.header
        assert header is not None
        group = (model.series_folder(item.path), header.series_instance_uid)
        category = categories[item.path]
        path = item.path
        if category == "non-image":
            name = _class_name(header.sop_class_uid)
            if _is_phoenix(header) and model.series_folder(path) not in image_folders:
                hits.append(model.Hit("PROTOCOL_REPORT", path, "PhoenixZIPReport", group))
            elif model.series_folder(path) in image_folders:
                hits.append(
                    model.Hit("NON_IMAGE_OBJECT", path, f"{name} in an image folder", group)
                )
            else:
                hits.append(model.Hit("NON_IMAGE_OBJECT", path, name, group))
            continue
        if category == "converted":
            name = _class_name(header.sop_class_uid)
            hits.append(model.Hit("CONVERTED_FILE", path, f"{name} (re-packaged by a tool)", group))
            continue
        if category == "other-modality":
            modality = header.modality or "unknown modality"
            hits.append(
                model.Hit("WRONG_MODALITY", path, f"{modality}, SOP class {header.sop_class_uid}")
            )
            continue
        reasons = derived_reasons(header, allow) if category != "spectroscopy" else []
        if category == "derived":
            reasons.insert(0, _class_name(header.sop_class_uid))
        if reasons:
            hits.append(model.Hit("DERIVED_SERIES", path, "; ".join(reasons), group))
        if header.lossy:
            hits.append(model.Hit("LOSSY_COMPRESSED", path, "lossy compression", group))
        if not reasons:
            if set(header.diffusion_directions) & {"I", "ISOTROPIC"}:
                hits.append(
                    model.Hit("DERIVED_FRAMES", path, "isotropic (trace) diffusion image", group)
                )
            if DERIVED_DESCRIPTION.search(header.series_description):
                text = f"description '{header.series_description}'"
                hits.append(model.Hit("SUSPECT_DESCRIPTION", path, text, group))
            if LOCALIZER_DESCRIPTION.search(header.series_description) or (
                "fl2d1" in header.sequence_name or "AAHScout" in header.sequence_name
            ):
                hits.append(model.Hit("LOCALIZER", path, "localizer", group))
    return hits


def media_hits(folder: Path, item: dicomfiles.FileFacts, files: list[Path]) -> list[model.Hit]:
    """Rule A4: every file a DICOMDIR references must be present."""
    assert item.header is not None
    present = {p.as_posix().lower() for p in files}
    base = item.path.parent
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
