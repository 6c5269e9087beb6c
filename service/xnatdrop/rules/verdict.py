"""The verdict on one subject folder: which series go to XNAT, and findings with stable codes.

`check_folder()` reads every file once (`dicomfiles.sniff_all`), applies the rules of
`shared/reference/dicom-rules.md` (ids in brackets below: A1…D8) and returns a `Verdict`. Each
finding has a stable code from the table in `codes`, the action the configuration gives that
code, the path it concerns and a message that ends with the fix. Codes are what reports,
quarantine files and the `[rules]` config use: never rename one.

Actions: `block` (the folder is not uploaded), `exclude` (those files are left out and
reported), `warn` (uploaded and reported), `ignore` (uploaded, not reported). Files that are
not DICOM, or whose header is unusable, are never uploaded whatever the action; the action of
their code only decides whether they block the folder and how loudly they are reported.

The pipeline packs exactly `Verdict.upload_files()`; `Series.files` carries each file's UIDs and
size so the packer never parses DICOM again.
"""

from __future__ import annotations

import collections
import dataclasses
import filecmp
import logging
import os
import re
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from xnatdrop import codes, dicomfiles, names, reasonfiles
from xnatdrop.errors import TransientError

if TYPE_CHECKING:
    from xnatdrop import config

log = logging.getLogger(__name__)


Action = codes.Action
SEVERITY = {Action.BLOCK: 0, Action.EXCLUDE: 1, Action.WARN: 2, Action.IGNORE: 3}

LABEL_SOURCES = ("folder", "PatientName", "PatientID")
DEFAULT_SIDECARS = ("behav", "physio", "logs")
XNAT_LABEL = re.compile(r"[A-Za-z0-9_-]+")
# XNAT keeps a prearchive session as a folder named by its label with `<label>.xml` beside it
# (PrearcSessionArchiver.updatePrearchiveSessionXML): a longer label cannot be a file name.
LABEL_MAX = names.NAME_MAX - len(".xml")
PLACEHOLDER_LABELS = frozenset({"ANONYMOUS", "ANON", "UNKNOWN", "NONE", "TEST"})
LITTER_DIRS = frozenset(
    {"__macosx", ".appledouble", ".trashes", ".spotlight-v100", ".fseventsd", "$recycle.bin"}
)
LITTER_DIRS |= {"system volume information"}

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


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file to upload: its path relative to the subject folder, its size when checked, and
    its DICOM identity, which the packer, the verifier and the receipt use without parsing the
    file again. A sidecar file has no DICOM identity (its UIDs are empty).

    The same identity travels the whole way: the check step stores it in the spool, the zip's
    plan carries it (`pack.Planned`), and a manifest line is a FileEntry plus its MD5
    (`pack.Entry`).
    """

    path: Path
    size: int
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    series_instance_uid: str = ""
    series_number: str = ""
    study_instance_uid: str = ""
    transfer_syntax: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = self.path.as_posix()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """The entry `to_json` wrote (a subclass's too). Keys it does not know are ignored and
        missing ones left empty: a spool written by an older xnatdrop still reads."""
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["path"] = Path(values["path"])
        values["size"] = int(values.get("size", 0))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Series:
    """One series folder × SeriesInstanceUID. `files` are uploaded; `excluded` are left out."""

    folder: Path  # relative to the subject folder; Path(".") for loose files
    series_instance_uid: str
    series_number: str
    description: str
    modality: str
    sop_class_uid: str
    image_type: str
    files: tuple[FileEntry, ...]
    excluded: tuple[Path, ...] = ()

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self, files: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "folder": self.folder.as_posix(),
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "image_type": self.image_type,
            "file_count": self.file_count,
            "bytes": self.bytes,
            "excluded_count": len(self.excluded),
        }
        if files:
            data["files"] = [f.to_json() for f in self.files]
            data["excluded"] = [p.as_posix() for p in self.excluded]
        return data


@dataclasses.dataclass(frozen=True)
class Finding:
    """One reason to block, exclude or warn. `message` says what was found and ends with the fix.

    `files` lists every file the finding applies to (the files an `exclude` leaves out);
    `path` is the file, or the series folder when the finding covers several files.
    """

    code: str
    action: Action
    path: Path
    message: str
    files: tuple[Path, ...] = ()

    @property
    def fix(self) -> str:
        return codes.CODES[self.code].fix

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "action": str(self.action),
            "path": self.path.as_posix(),
            "message": self.message,
            "summary": codes.CODES[self.code].summary,
            "fix": self.fix,
            "files": [f.as_posix() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        """The finding `to_json` wrote (summary and fix come from the code table again)."""
        return cls(
            str(data["code"]),
            Action(data["action"]),
            Path(data["path"]),
            str(data["message"]),
            tuple(Path(f) for f in data.get("files", [])),
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of checking one subject folder.

    `series` are the series with at least one file to upload; `excluded_series` are series
    found whose every file is left out (derived, non-image, duplicates …). `ok` is False when
    any finding blocks.
    """

    folder: Path
    label: str
    ok: bool
    series: tuple[Series, ...]
    excluded_series: tuple[Series, ...]
    sidecars: dict[str, Path]
    findings: tuple[Finding, ...]
    files_checked: int
    # xnatdrop's own QUARANTINE.txt/.json from an earlier quarantine, found at the top of a
    # resubmitted folder: neither findings nor uploaded; the push moves them aside.
    reason_files: tuple[Path, ...] = ()

    def upload_files(self) -> list[Path]:
        """The DICOM files to upload, relative to the subject folder, series by series."""
        return [entry.path for series in self.series for entry in series.files]

    def upload_entries(self) -> list[FileEntry]:
        return [entry for series in self.series for entry in series.files]

    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.action is Action.BLOCK]

    def reported(self) -> list[Finding]:
        """Findings a person should see (everything but `ignore`), worst first."""
        return [f for f in self.findings if f.action is not Action.IGNORE]

    def to_json(self, files: bool = False) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "label": self.label,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "upload_file_count": sum(s.file_count for s in self.series),
            "upload_bytes": sum(s.bytes for s in self.series),
            "series": [s.to_json(files) for s in self.series],
            "excluded_series": [s.to_json(files) for s in self.excluded_series],
            "sidecars": {name: str(path) for name, path in self.sidecars.items()},
            "findings": [f.to_json() for f in self.findings],
            "reason_files": [p.as_posix() for p in self.reason_files],
        }


@dataclasses.dataclass
class _Hit:
    """A rule that fired on one file (or folder), before findings are grouped and acted on."""

    code: str
    path: Path
    reason: str
    group: tuple[Path, str] | None = None  # (series folder, SeriesInstanceUID) to group by
    covers: tuple[Path, ...] = ()  # files a folder-level hit applies to (default: `path`)


@dataclasses.dataclass
class _Tree:
    files: list[Path] = dataclasses.field(default_factory=list)  # relative, not in sidecars
    sidecars: dict[str, Path] = dataclasses.field(default_factory=dict)
    hits: list[_Hit] = dataclasses.field(default_factory=list)
    reason_files: list[Path] = dataclasses.field(default_factory=list)


def action_for(settings: config.RulesSettings | None, code: str) -> Action:
    """The configured action for `code`, else the table's default."""
    if settings is not None and code in settings.actions:
        return Action(settings.actions[code])
    return codes.CODES[code].action


def check_folder(
    folder: Path,
    settings: config.RulesSettings | None = None,
    drop: config.DropSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    control_files: Collection[str] = (),
) -> Verdict:
    """Check one subject folder and return its verdict; never raises for bad content.

    `settings` are the merged rules for this drop (`Config.rules_for(drop)`); None means the
    built-in defaults. `drop` supplies the label pattern. `progress(done, total)` is called
    while files are read. `control_files` are names of xnatdrop's own files at the top of the
    folder (`Config.control_files()`: the subject metadata file, the settle marker); they are
    neither uploaded nor reported. Raise NotADirectoryError if `folder` is not a directory, and
    FolderGone if it went away or was replaced while it was read (see there).
    """
    folder = Path(folder)
    if settings is not None and hasattr(settings, "rules_for"):  # a whole Config was passed
        settings = settings.rules_for(drop)
    sidecar_names = list(settings.sidecars or DEFAULT_SIDECARS) if settings else DEFAULT_SIDECARS
    if folder.is_symlink() or not folder.is_dir():
        if folder.is_symlink():
            hit = _Hit("SYMLINK", Path("."), "the subject folder itself is a symbolic link")
            return _finish(folder, folder.name, [hit], [], {}, settings, 0)
        raise NotADirectoryError(f"{folder} is not a directory")
    before = _identity(folder)
    tree = _scan(folder, sidecar_names, frozenset(control_files))
    facts = dicomfiles.sniff_all([folder / p for p in tree.files], progress, workers)
    facts = [dataclasses.replace(f, path=p) for f, p in zip(facts, tree.files, strict=True)]
    verdict = _judge(folder, tree, facts, settings, drop)
    if _identity(folder) != before:
        raise FolderGone(folder)
    return verdict


class FolderGone(TransientError):
    """The subject folder went away, or another folder took its place, while it was read.

    An unmounted or disconnected share does this: every file read after that moment fails,
    which would otherwise become UNREADABLE findings and quarantine complete data (found by the
    campaign, local/share-unmounted). Nothing can be said about the data, so the check is
    worth repeating once the folder is back, never a verdict.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(
            f"{names.shown(str(folder))} went away while it was checked (share unmounted or "
            "disconnected?); it is checked again once it is back"
        )


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder, or None if it cannot be reached now."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _scan(folder: Path, sidecar_names: Iterable[str], control_files: frozenset[str]) -> _Tree:
    """List files without following links; note sidecars, links and unreadable folders."""
    tree = _Tree()
    wanted = {name.lower(): name for name in sidecar_names}
    ours = {p.name for p in reasonfiles.find_own(folder)}
    tree.reason_files = sorted(Path(name) for name in ours)
    pending = [Path(".")]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(folder / relative) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except OSError as error:
            tree.hits.append(_Hit("UNREADABLE", relative, f"cannot list folder: {error.strerror}"))
            continue
        for entry in listing:
            path = relative / entry.name
            if not names.valid(entry.name):
                tree.hits.append(_bad_name(relative, entry))
            elif relative == Path(".") and entry.name in ours:
                continue
            elif entry.is_symlink():
                tree.hits.append(_Hit("SYMLINK", path, "symbolic link, not followed"))
            elif entry.is_dir(follow_symlinks=False):
                if entry.name.lower() in LITTER_DIRS:
                    continue
                if relative == Path(".") and entry.name.lower() in wanted:
                    tree.sidecars[wanted[entry.name.lower()]] = folder / path
                    _scan_sidecar(folder, path, tree)
                else:
                    pending.append(path)
            elif relative == Path(".") and entry.name in control_files:
                continue
            elif not dicomfiles.is_os_litter(entry.name):
                tree.files.append(path)
    tree.files.sort()
    return tree


def _scan_sidecar(folder: Path, top: Path, tree: _Tree) -> None:
    """Sidecar contents are not checked as DICOM, but links and unreadable files still count."""
    pending = [top]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(folder / relative) as entries:
                for entry in entries:
                    path = relative / entry.name
                    if not names.valid(entry.name):
                        tree.hits.append(_bad_name(relative, entry))
                    elif entry.is_symlink():
                        tree.hits.append(_Hit("SYMLINK", path, "symbolic link, not followed"))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(path)
                    elif not entry.is_file(follow_symlinks=False):
                        tree.hits.append(_Hit("UNREADABLE", path, "not a regular file"))
                    elif not os.access(folder / path, os.R_OK):
                        tree.hits.append(_Hit("UNREADABLE", path, "permission denied"))
        except OSError as error:
            tree.hits.append(_Hit("UNREADABLE", relative, f"cannot list folder: {error.strerror}"))


def _bad_name(relative: Path, entry: os.DirEntry[str]) -> _Hit:
    """BAD_NAME for one entry: never read, never uploaded, shown with its bytes escaped.

    The escaped path is all that travels on (findings, reason files, logs): the name itself
    cannot be written as text anywhere.
    """
    kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
    shown = Path(names.shown(str(relative / entry.name)))
    return _Hit("BAD_NAME", shown, f"{kind} name {shown.name} is not valid UTF-8")


def _series_folder(path: Path) -> Path:
    return path.parent


def _judge(
    folder: Path,
    tree: _Tree,
    facts: list[dicomfiles.FileFacts],
    settings: config.RulesSettings | None,
    drop: config.DropSettings | None,
) -> Verdict:
    hits = list(tree.hits)
    dicoms: list[dicomfiles.FileFacts] = []
    for item in facts:
        if item.path.parent == Path("."):
            hits.append(_Hit("LOOSE_FILE", item.path, "file directly in the subject folder"))
        hits.extend(_file_hits(item))
        if item.kind is dicomfiles.Kind.DICOM and item.header is not None:
            if item.header.is_dicomdir:
                hits.append(_Hit("DICOMDIR", item.path, "DICOMDIR media index"))
                hits.extend(_media_hits(folder, item, tree.files))
            else:
                dicoms.append(item)
    categories = {item.path: _category(item.header) for item in dicoms}
    hits.extend(_content_hits(dicoms, categories, settings))
    hits.extend(_folder_hits(dicoms, categories))
    duplicate_hits, duplicates = _duplicate_hits(folder, dicoms)
    hits.extend(duplicate_hits)
    label, label_hits = _label(folder, dicoms, settings, drop)
    hits.extend(label_hits)
    verdict = _finish(folder, label, hits, dicoms, tree.sidecars, settings, len(facts), duplicates)
    return dataclasses.replace(verdict, reason_files=tuple(tree.reason_files))


def _file_hits(item: dicomfiles.FileFacts) -> list[_Hit]:
    """Rules A1–A8 and B: what the file is."""
    kind = item.kind
    if kind is dicomfiles.Kind.EMPTY:
        return [_Hit("EMPTY_FILE", item.path, "0 bytes")]
    if kind is dicomfiles.Kind.UNREADABLE:
        return [_Hit("UNREADABLE", item.path, item.detail)]
    if kind is dicomfiles.Kind.CORRUPT:
        return [_Hit("CORRUPT_DICOM", item.path, item.detail)]
    if kind is dicomfiles.Kind.ARCHIVE:
        return [_Hit("ARCHIVE_FILE", item.path, item.detail)]
    if kind is dicomfiles.Kind.CONVERTED:
        return [_Hit("CONVERTED_FILE", item.path, item.detail)]
    if kind is dicomfiles.Kind.OTHER:
        return [_Hit("NOT_DICOM", item.path, item.detail)]
    hits = []
    header = item.header
    group = (_series_folder(item.path), header.series_instance_uid) if header else None
    if item.truncated:
        hits.append(_Hit("TRUNCATED_DICOM", item.path, item.truncated, None))
    if not item.preamble:
        hits.append(_Hit("DICOM_NO_PREAMBLE", item.path, "no preamble/DICM", group))
    return hits


def _category(header: dicomfiles.Header | None) -> str:
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


def _content_hits(
    dicoms: list[dicomfiles.FileFacts],
    categories: dict[Path, str],
    settings: config.RulesSettings | None,
) -> list[_Hit]:
    """Rules C1–C9 per file, grouped later per series."""
    allow = settings.derived_allow if settings is not None else ["UNI"]
    image_folders = {
        _series_folder(d.path) for d in dicoms if categories[d.path] not in ("non-image",)
    }
    hits = []
    for item in dicoms:
        header = item.header
        assert header is not None
        group = (_series_folder(item.path), header.series_instance_uid)
        category = categories[item.path]
        path = item.path
        if category == "non-image":
            name = _class_name(header.sop_class_uid)
            if _is_phoenix(header) and _series_folder(path) not in image_folders:
                hits.append(_Hit("PROTOCOL_REPORT", path, "PhoenixZIPReport", group))
            elif _series_folder(path) in image_folders:
                hits.append(_Hit("NON_IMAGE_OBJECT", path, f"{name} in an image folder", group))
            else:
                hits.append(_Hit("NON_IMAGE_OBJECT", path, name, group))
            continue
        if category == "converted":
            name = _class_name(header.sop_class_uid)
            hits.append(_Hit("CONVERTED_FILE", path, f"{name} (re-packaged by a tool)", group))
            continue
        if category == "other-modality":
            modality = header.modality or "unknown modality"
            hits.append(
                _Hit("WRONG_MODALITY", path, f"{modality}, SOP class {header.sop_class_uid}")
            )
            continue
        reasons = derived_reasons(header, allow) if category != "spectroscopy" else []
        if category == "derived":
            reasons.insert(0, _class_name(header.sop_class_uid))
        if reasons:
            hits.append(_Hit("DERIVED_SERIES", path, "; ".join(reasons), group))
        if header.lossy:
            hits.append(_Hit("LOSSY_COMPRESSED", path, "lossy compression", group))
        if not reasons:
            if set(header.diffusion_directions) & {"I", "ISOTROPIC"}:
                hits.append(
                    _Hit("DERIVED_FRAMES", path, "isotropic (trace) diffusion image", group)
                )
            if DERIVED_DESCRIPTION.search(header.series_description):
                text = f"description '{header.series_description}'"
                hits.append(_Hit("SUSPECT_DESCRIPTION", path, text, group))
            if LOCALIZER_DESCRIPTION.search(header.series_description) or (
                "fl2d1" in header.sequence_name or "AAHScout" in header.sequence_name
            ):
                hits.append(_Hit("LOCALIZER", path, "localizer", group))
    return hits


def _folder_hits(dicoms: list[dicomfiles.FileFacts], categories: dict[Path, str]) -> list[_Hit]:
    """Rules D1 (one series per folder), D7 (split series) and D3 (one study per folder)."""
    hits = []
    per_folder: dict[Path, dict[str, dicomfiles.Header]] = collections.defaultdict(dict)
    files_in: dict[Path, list[Path]] = collections.defaultdict(list)
    files_of: dict[str, list[Path]] = collections.defaultdict(list)
    folders_of: dict[str, set[Path]] = collections.defaultdict(set)
    studies: dict[str, list[str]] = collections.defaultdict(list)
    for item in dicoms:
        header = item.header
        assert header is not None
        folder = _series_folder(item.path)
        folders_of[header.series_instance_uid].add(folder)
        files_in[folder].append(item.path)
        files_of[header.series_instance_uid].append(item.path)
        studies[header.study_instance_uid].append(header.series_number or "?")
        if categories[item.path] != "non-image" and folder != Path("."):
            per_folder[folder].setdefault(header.series_instance_uid, header)
    for folder, series in sorted(per_folder.items()):
        if len(series) > 1:
            listing = ", ".join(_describe_series(h) for h in series.values())
            text = f"{len(series)} series: {listing}"
            hits.append(_Hit("MIXED_SERIES_FOLDER", folder, text, covers=tuple(files_in[folder])))
    for uid, folders in folders_of.items():
        if len(folders) > 1:
            names = ", ".join(sorted(f.as_posix() for f in folders))
            text = f"series {uid} is in {names}"
            hits.append(_Hit("SPLIT_SERIES", min(folders), text, covers=tuple(files_of[uid])))
    if len(studies) > 1:
        parts = [
            f"study {n} (series {', '.join(sorted(set(numbers), key=_number_key)[:8])})"
            for n, numbers in enumerate(studies.values(), 1)
        ]
        hits.append(
            _Hit("MULTIPLE_STUDIES", Path("."), f"{len(studies)} studies: " + "; ".join(parts))
        )
    hits.extend(_patient_hits(dicoms))
    hits.extend(_incomplete_hits(dicoms, categories))
    return hits


def _incomplete_hits(dicoms: list[dicomfiles.FileFacts], categories: dict[Path, str]) -> list[_Hit]:
    """Rule D8, as far as it tells a copy still under way: a raw image series that visibly
    lacks files. A copy that paused longer than `settle.quiet_seconds` once had half a
    session archived (88 of 177 files); the pipeline holds such a folder back as still being
    copied until `settle.max_wait_seconds`, then quarantines it with this finding.

    Visible means: InstanceNumbers that start at 1, are distinct, and leave gaps (vendors
    number a classic series 1..N; a Philips DTI in the shared data starts at 16 and is left
    alone), or fewer single-frame files than the scanner announces, in ImagesInAcquisition
    (0020,1002) or, on GE, LocationsInAcquisition (0021,104F) × NumberOfTemporalPositions
    (0020,0105) — both checked against every GE series in the shared data. Each is only a
    lower bound: more files than announced (diffusion directions, echoes) are fine.
    """
    groups: dict[str, list[dicomfiles.Header]] = collections.defaultdict(list)
    members: dict[str, list[Path]] = collections.defaultdict(list)
    for item in dicoms:
        if categories[item.path] != "image" or item.header is None:
            continue
        groups[item.header.series_instance_uid].append(item.header)
        members[item.header.series_instance_uid].append(item.path)
    hits = []
    for uid, headers in groups.items():
        # Counted over the whole series; a series split over folders is SPLIT_SERIES besides.
        key = (_series_folder(min(members[uid])), uid)
        count = len(headers)
        reasons = []
        numbers = [h.instance_number for h in headers]
        numbered = all(numbers) and len(set(numbers)) == count and min(numbers) == 1
        if numbered and max(numbers) > count:
            reasons.append(
                f"InstanceNumbers run from 1 to {max(numbers)} but {count} files are here "
                f"({max(numbers) - count} missing)"
            )
        if all(h.frames == 1 for h in headers):
            expected, source = _announced(headers)
            if expected > count:
                reasons.append(f"{source} announce {expected} images, {count} are here")
        if reasons:
            hits.append(
                _Hit("INCOMPLETE_SERIES", key[0], "; ".join(reasons), key, tuple(members[uid]))
            )
    return hits


def _announced(headers: list[dicomfiles.Header]) -> tuple[int, str]:
    """How many images the scanner says a classic series has (0 if it does not say)."""
    best, source = 0, ""
    in_acquisition = {h.images_in_acquisition for h in headers}
    if len(in_acquisition) == 1 and (value := in_acquisition.pop()) > 0:
        best, source = value, "ImagesInAcquisition"
    locations = {h.ge_locations for h in headers}
    temporal = {h.temporal_positions for h in headers}
    if len(locations) == 1 and (value := locations.pop()) > 0:
        positions = temporal.pop() if len(temporal) == 1 else 0
        expected = value * max(positions, 1)
        if expected > best:
            best = expected
            source = f"GE LocationsInAcquisition {value}" + (
                f" × NumberOfTemporalPositions {positions}" if positions > 1 else ""
            )
    return best, source


def _number_key(number: str) -> tuple[int, str]:
    return (int(number), "") if number.isdigit() else (1 << 30, number)


def _describe_series(header: dicomfiles.Header) -> str:
    return f"{header.series_number or '?'} '{header.series_description}'"


def _patient_hits(dicoms: list[dicomfiles.FileFacts]) -> list[_Hit]:
    """Rule D4: one identity per drop. Messages name series, never the identifying values."""
    hits = []
    for field, name in (("patient_name", "PatientName"), ("patient_id", "PatientID")):
        values: dict[str, set[str]] = collections.defaultdict(set)
        for item in dicoms:
            assert item.header is not None
            values[getattr(item.header, field)].add(item.header.series_number or "?")
        if len(values) > 1:
            groups = sorted(
                (sorted(numbers, key=_number_key) for numbers in values.values()), key=len
            )
            described = "; ".join(f"series {', '.join(g[:8])}" for g in groups)
            hits.append(
                _Hit(
                    "PATIENT_MISMATCH",
                    Path("."),
                    f"{len(values)} different {name} values ({described})",
                )
            )
    return hits


def _duplicate_hits(
    folder: Path, dicoms: list[dicomfiles.FileFacts]
) -> tuple[list[_Hit], set[Path]]:
    """Rule D2: files sharing a SOPInstanceUID. Identical copies: keep the first, warn."""
    by_uid: dict[str, list[dicomfiles.FileFacts]] = collections.defaultdict(list)
    for item in dicoms:
        assert item.header is not None
        by_uid[item.header.sop_instance_uid].append(item)
    hits, extra = [], set()
    for uid, items in by_uid.items():
        if len(items) < 2:
            continue
        first = items[0]
        same = all(_same_bytes(folder, first, other) for other in items[1:])
        names = ", ".join(i.path.as_posix() for i in items[:4])
        if same:
            for other in items[1:]:
                extra.add(other.path)
                hits.append(
                    _Hit("DUPLICATE_FILE", other.path, f"same file as {first.path.as_posix()}")
                )
        else:
            hits.append(_Hit("DUPLICATE_UID", first.path, f"SOPInstanceUID {uid} in {names}"))
    return hits, extra


def _same_bytes(folder: Path, one: dicomfiles.FileFacts, other: dicomfiles.FileFacts) -> bool:
    if one.inode == other.inode and one.inode != (0, 0):
        return True
    if one.size != other.size:
        return False
    try:
        return filecmp.cmp(folder / one.path, folder / other.path, shallow=False)
    except OSError:
        return False


def _media_hits(folder: Path, item: dicomfiles.FileFacts, files: list[Path]) -> list[_Hit]:
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
        _Hit("INCOMPLETE_MEDIA", item.path, f"{len(missing)} referenced file(s) missing: {shown}")
    ]


def _label(
    folder: Path,
    dicoms: list[dicomfiles.FileFacts],
    settings: config.RulesSettings | None,
    drop: config.DropSettings | None,
) -> tuple[str, list[_Hit]]:
    """The session label from the configured source, and rules D4 (pattern, agreement)."""
    source = settings.label_source if settings is not None else "folder"
    agree = list(settings.label_agree) if settings is not None else []
    values = {
        "folder": collections.Counter([folder.name]),
        "PatientName": collections.Counter(d.header.patient_name for d in dicoms if d.header),
        "PatientID": collections.Counter(d.header.patient_id for d in dicoms if d.header),
    }
    hits = []
    counted = values[source]
    label = counted.most_common(1)[0][0] if counted else folder.name
    if not counted:
        label = folder.name
    label = names.shown(label)  # a name that is not UTF-8 can never be a label: show it
    pattern = drop.label_pattern if drop is not None else None
    problems = []
    if not XNAT_LABEL.fullmatch(label):
        problems.append("XNAT labels allow only letters, digits, '_' and '-'")
    elif label.upper() in PLACEHOLDER_LABELS:
        problems.append("it is a placeholder, not a subject label")
    elif len(label) > LABEL_MAX:
        problems.append(
            f"it is {len(label)} characters long; XNAT can store labels of at most {LABEL_MAX}"
        )
    if pattern and not re.fullmatch(pattern, label):
        problems.append(f"it does not match the project pattern {pattern!r}")
    if problems:
        shown = label if source == "folder" or XNAT_LABEL.fullmatch(label) else f"(from {source})"
        shown = shown if len(shown) <= 64 else f"{shown[:60]}… ({len(shown)} characters)"
        hits.append(_Hit("LABEL_PATTERN", Path("."), f"label {shown}: " + "; ".join(problems)))
    for other in agree:
        if other == source:
            continue
        differing = sum(n for value, n in values[other].items() if value != label)
        if other == "folder" and differing:
            hits.append(
                _Hit(
                    "LABEL_MISMATCH",
                    Path("."),
                    f"folder name {folder.name!r} is not the label {label!r} (from {source})",
                )
            )
        elif differing:
            hits.append(
                _Hit(
                    "LABEL_MISMATCH",
                    Path("."),
                    f"{other} of {differing} file(s) differs from the label {label!r} "
                    f"(from {source})",
                )
            )
    return label, hits


def _finish(
    folder: Path,
    label: str,
    hits: list[_Hit],
    dicoms: list[dicomfiles.FileFacts],
    sidecars: dict[str, Path],
    settings: config.RulesSettings | None,
    files_checked: int,
    duplicates: set[Path] | None = None,
) -> Verdict:
    """Apply actions, decide which files are uploaded, group hits into findings."""
    duplicates = duplicates or set()
    excluded: set[Path] = set(duplicates)
    for hit in hits:
        if hit.code != "MIXED_SERIES_FOLDER" and action_for(settings, hit.code) is Action.EXCLUDE:
            excluded.update(hit.covers or (hit.path,))
    # A folder mixing series that are all left out anyway protects nothing by blocking (the
    # Siemens XA classic ASL export: Perfusion_Weighted as MR and as Secondary Capture).
    hits = [
        h
        for h in hits
        if not (h.code == "MIXED_SERIES_FOLDER" and h.covers and set(h.covers) <= excluded)
    ]
    for hit in hits:
        if hit.code == "MIXED_SERIES_FOLDER" and action_for(settings, hit.code) is Action.EXCLUDE:
            excluded.update(hit.covers or (hit.path,))
    series_files: dict[tuple[Path, str], list[dicomfiles.FileFacts]] = collections.defaultdict(list)
    for item in dicoms:
        assert item.header is not None
        series_files[(_series_folder(item.path), item.header.series_instance_uid)].append(item)
    uploaded, left_out = [], []
    for (series_folder, uid), items in series_files.items():
        header = items[0].header
        assert header is not None
        keep = tuple(_entry(i) for i in items if i.path not in excluded)
        dropped = tuple(i.path for i in items if i.path in excluded)
        series = Series(
            folder=series_folder,
            series_instance_uid=uid,
            series_number=header.series_number,
            description=header.series_description,
            modality=header.modality,
            sop_class_uid=header.sop_class_uid,
            image_type="\\".join(header.image_type),
            files=keep,
            excluded=dropped,
        )
        (uploaded if keep else left_out).append(series)
    uploaded.sort(key=lambda s: (_number_key(s.series_number), s.folder))
    left_out.sort(key=lambda s: (_number_key(s.series_number), s.folder))
    if not uploaded:
        reason = (
            f"all {len(dicoms)} DICOM file(s) are left out (see the other findings)"
            if dicoms
            else "no DICOM files found"
        )
        hits.append(_Hit("NO_DICOM", Path("."), reason))
    findings = _group(hits, series_files, settings)
    ok = not any(f.action is Action.BLOCK for f in findings)
    return Verdict(
        folder=folder,
        label=label,
        ok=ok,
        series=tuple(uploaded),
        excluded_series=tuple(left_out),
        sidecars=dict(sorted(sidecars.items())),
        findings=tuple(findings),
        files_checked=files_checked,
    )


def _entry(item: dicomfiles.FileFacts) -> FileEntry:
    header = item.header
    assert header is not None
    return FileEntry(
        path=item.path,
        size=item.size,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        series_instance_uid=header.series_instance_uid,
        series_number=header.series_number,
        study_instance_uid=header.study_instance_uid,
        transfer_syntax=header.transfer_syntax,
    )


def _group(
    hits: list[_Hit],
    series_files: dict[tuple[Path, str], list[dicomfiles.FileFacts]],
    settings: config.RulesSettings | None,
) -> list[Finding]:
    """One finding per (code, series) for per-series codes, one per path otherwise."""
    grouped: dict[tuple[str, Any], list[_Hit]] = {}
    for hit in hits:
        key = (hit.code, hit.group if hit.group is not None else hit.path)
        grouped.setdefault(key, []).append(hit)
    findings = []
    for (code, key), members in grouped.items():
        rule = codes.CODES[code]
        action = action_for(settings, code)
        files = tuple(sorted({p for h in members for p in (h.covers or (h.path,))}))
        reasons = list(dict.fromkeys(h.reason for h in members if h.reason))
        if members[0].group is not None:
            series_folder, uid = key
            items = series_files.get(key, [])
            header = items[0].header if items else None
            what = f"series {_describe_series(header)}" if header is not None else f"series {uid}"
            count = len(files)
            total = len(items)
            share = f"{count} of {total} files" if count != total else f"{count} file(s)"
            text = f"{what} in {series_folder.as_posix()} ({share}): {'; '.join(reasons[:3])}"
            path = series_folder if count > 1 else files[0]
        else:
            path = members[0].path
            text = "; ".join(reasons[:3]) or rule.summary
        verb = {
            Action.BLOCK: "blocks the upload",
            Action.EXCLUDE: "left out of the upload",
            Action.WARN: "uploaded",
            Action.IGNORE: "uploaded",
        }[action]
        if code in _NEVER_UPLOADED and action is not Action.BLOCK:
            verb = "not uploaded"
        message = f"{text} ({verb}). Fix: {rule.fix}"
        findings.append(Finding(code, action, path, message, files))
    findings.sort(key=lambda f: (SEVERITY[f.action], f.code, f.path))
    return findings


# Codes whose files can never be uploaded, whatever their action (they are not usable DICOM).
_NEVER_UPLOADED = frozenset(
    {
        "EMPTY_FILE",
        "CORRUPT_DICOM",
        "CONVERTED_FILE",
        "ARCHIVE_FILE",
        "NOT_DICOM",
        "UNREADABLE",
        "SYMLINK",
        "DICOMDIR",
    }
)
