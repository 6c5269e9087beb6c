"""Drops for the campaign: clean sessions and bad ones, each with the verdict it must get.

Every drop is built in the lab's staging folder from the real scanner data in ../shared/dicom
(read-only; copies only), then moved into a drop root at once, as a finished copy would appear.
Each DICOM copy gets fresh UIDs (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, mapped
consistently within one drop) and the drop's PatientName/PatientID, so that every drop of a lab
is its own session; what a case needs beyond that (a CT SOP class, a second study, a gap in a
series) is written into its copies with pydicom and said in its `note`.

`Expect` says where the drop must end: `archived` (every expected SOPInstanceUID in XNAT once,
nothing else), `quarantined` (with a reason code, and rule codes among its findings; nothing
sent), or `waiting` (left where it is, and `xnatdrop status` names it with a reason).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from shared_data import dataset
from xnatdrop import names, reasonfiles

GE_EXAM = "In/GE/Exam1486_Laser794mm"
GE_LOCALIZER = ("ge_signa_premier_table", f"{GE_EXAM}/01_3_Plane_Localizer_FF")  # 21 files, 3 MB
GE_FMRI = ("ge_signa_premier_table", f"{GE_EXAM}/02_Ax_fMRI_FF_I11.1_S15.9")  # 50 files, 1.4 MB
GE_FMRI_2 = ("ge_signa_premier_table", f"{GE_EXAM}/03_Ax_fMRI_FF_I21.1_S05.9")
SI_MOSAIC = ("ge_nih_mr750", "In/20180918Si/mr_0003")  # 2 Siemens mosaics (+ a README)
XA30_DWI = ("siemens_xa30_enhanced", "In/10_DWI_dir80_PA")
XA30_ADC = ("siemens_xa30_enhanced", "In/11_DWI_dir80_PA")
XA30_PHOENIX = ("siemens_xa30_enhanced", "In/99_Phoenix_Document")
PHILIPS_DWI = ("philips_achieva_dwi_isotropic", "In/Vanderbilt_2018/601_WIP_dti_ax")  # 680
SIDECARS = {
    "behav/responses.csv": b"trial,rt\n1,0.412\n2,0.388\n",
    "behav/run2/responses.csv": b"trial,rt\n1,0.501\n",
    "physio/resp_001.log": b"0 12\n1 13\n2 12\n" * 50,
}
REASON_FILES = ("QUARANTINE.txt", "QUARANTINE.json")


@dataclasses.dataclass
class Expect:
    """Where a drop must end, and what XNAT must then hold."""

    kind: str  # "archived" | "quarantined" | "waiting"
    code: str | None = None  # the quarantine reason code; None: any
    findings: frozenset[str] = frozenset()  # rule codes that must be among the findings
    why: str = ""  # for "waiting": a word `status` must use about it


@dataclasses.dataclass
class Drop:
    """One subject folder of a scenario: what was put in, and what must come out."""

    label: str  # the folder name (may hold surrogate escapes: a name that is not UTF-8)
    root: Path
    expect: Expect
    note: str
    uids: set[str] = dataclasses.field(default_factory=set)  # expected in XNAT (archived)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # relative path -> MD5
    aside: set[str] = dataclasses.field(default_factory=set)  # our reason files, moved aside
    also: set[str] = dataclasses.field(default_factory=set)  # other drops' UIDs in its session
    study: str = ""  # its StudyInstanceUID

    @property
    def path(self) -> Path:
        return self.root / self.label

    def snapshot(self) -> None:
        """Record every file's MD5 now (call once the drop is complete)."""
        self.files = md5s(self.path)


def md5s(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        out[path.relative_to(folder).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


class Stager:
    """Builds drops in the staging folder with fresh UIDs; one per lab."""

    def __init__(self, staging: Path, rng: random.Random) -> None:
        self.staging = staging
        self.rng = rng

    def folder(self, label: str) -> Path:
        folder = self.staging / label
        folder.mkdir(parents=True)
        return folder

    def copy_series(
        self,
        folder: Path,
        name: str,
        source: tuple[str, str],
        uids: dict[str, str],
        label: str,
        count: int | None = None,
        only_dicom: bool = True,
        **tags: object,
    ) -> set[str]:
        """Copy a shared series (its first `count` files) into `folder/name` with fresh UIDs;
        return the new SOPInstanceUIDs."""
        made = set()
        files = sorted(p for p in (dataset(source[0]) / source[1]).iterdir() if p.is_file())
        if only_dicom:
            files = [p for p in files if p.suffix.lower() not in (".txt", ".json")]
        for path in files[:count]:
            made.add(copy_dicom(path, folder / name / path.name, uids, label, **tags))
        return made


def copy_dicom(source: Path, target: Path, uids: dict[str, str], label: str, **tags: object) -> str:
    """A copy of one DICOM file with its UIDs mapped through `uids` (new ones generated) and
    the drop's patient identity; `tags` are set on top. Return its SOPInstanceUID."""
    data = pydicom.dcmread(source)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        old = str(data.get(keyword, "") or "")
        if old:
            setattr(data, keyword, uids.setdefault(old, generate_uid()))
    if "StudyInstanceUID" in data and "study" in uids:
        data.StudyInstanceUID = uids["study"]
    # A PN component and an LO hold 64 characters at most; a name that is not UTF-8 is shown.
    data.PatientName = data.PatientID = names.shown(label)[:64]
    for keyword, value in tags.items():
        setattr(data, keyword, value)
    if "file_meta" in data.__dict__ or getattr(data, "file_meta", None) is not None:
        data.file_meta.MediaStorageSOPInstanceUID = data.SOPInstanceUID
        if "SOPClassUID" in tags:
            data.file_meta.MediaStorageSOPClassUID = tags["SOPClassUID"]
    target.parent.mkdir(parents=True, exist_ok=True)
    data.save_as(target)
    return str(data.SOPInstanceUID)


def add_sidecars(folder: Path) -> None:
    for relative, data in SIDECARS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)


# -- clean sessions --------------------------------------------------------------------------


def clean(
    stager: Stager,
    root: Path,
    label: str,
    sources: tuple[tuple[str, str], ...] = (GE_FMRI,),
    count: int | None = None,
    sidecars: bool = True,
    subject: bool = True,
) -> Drop:
    """A good session: GE series (their first `count` files), sidecars, subject.toml."""
    folder = stager.folder(label)
    uids = {"study": generate_uid()}
    made: set[str] = set()
    for source in sources:
        made |= stager.copy_series(folder, Path(source[1]).name, source, uids, label, count)
    if sidecars:
        add_sidecars(folder)
    if subject:
        (folder / "subject.toml").write_text('sex = "F"\nyob = 1990\n', encoding="utf-8")
    return Drop(label, root, Expect("archived"), "clean GE session", uids=made, study=uids["study"])


def late_part(stager: Stager, first: Drop, root: Path) -> Drop:
    """More series of `first`'s study under the same label, as if copied after it was archived."""
    folder = stager.folder(first.label)
    made = stager.copy_series(folder, "late", GE_FMRI_2, {"study": first.study}, first.label)
    late = Drop(
        first.label,
        root,
        Expect("archived"),
        "late files of an archived session",
        uids=made,
        study=first.study,
    )
    late.also, first.also = set(first.uids), set(made)
    return late


def huge_series(staging: Path, root: Path, label: str, count: int) -> Drop:
    """One series of `count` instances: clones of one real GE fMRI file, each with its own
    SOPInstanceUID, written from a template by replacing a placeholder UID of fixed length."""
    source = sorted((dataset(GE_FMRI[0]) / GE_FMRI[1]).iterdir())[0]
    data = pydicom.dcmread(source)
    base = "2.25." + str(random.SystemRandom().randrange(10**29, 10**30))
    placeholder = f"{base}.99999"
    study = generate_uid()
    data.StudyInstanceUID = study
    data.SeriesInstanceUID = generate_uid()
    data.PatientName = data.PatientID = label[:64]
    data.SOPInstanceUID = data.file_meta.MediaStorageSOPInstanceUID = placeholder
    buffer = io.BytesIO()
    data.save_as(buffer)
    template = buffer.getvalue()
    marker = placeholder.encode()
    assert template.count(marker) == 2
    folder = staging / label / "fmri"
    folder.mkdir(parents=True)
    made = set()
    for index in range(count):
        uid = f"{base}.{10000 + index}"
        (folder / f"i{index:05d}.dcm").write_bytes(template.replace(marker, uid.encode()))
        made.add(uid)
    return Drop(
        label,
        root,
        Expect("archived"),
        f"one series of {count} instances (clones)",
        uids=made,
        study=study,
    )


def place(drop: Drop, staging: Path) -> Drop:
    """Snapshot the staged drop, then move it into its drop root in one rename."""
    source = staging / drop.label
    drop.files = md5s(source)
    os.rename(source, drop.path)
    return drop


# -- bad drops: one builder per case ---------------------------------------------------------

Builder = Callable[[Stager, Path, str], Drop]
BAD: dict[str, Builder] = {}


def bad(name: str) -> Callable[[Builder], Builder]:
    def register(function: Builder) -> Builder:
        BAD[name] = function
        return function

    return register


def _base(
    stager: Stager,
    root: Path,
    label: str,
    source: tuple[str, str] = GE_FMRI,
    count: int | None = None,
) -> tuple[Path, dict[str, str], set[str]]:
    """A drop with one good series; returns (folder, uids map, its SOPInstanceUIDs)."""
    folder = stager.folder(label)
    uids = {"study": generate_uid()}
    made = stager.copy_series(folder, "fmri", source, uids, label, count)
    return folder, uids, made


def _blocked(label: str, root: Path, code: str, note: str, reason: str = "RULES_BLOCKED") -> Drop:
    return Drop(label, root, Expect("quarantined", reason, frozenset({code})), note)


def _archived(label: str, root: Path, made: set[str], note: str, *codes: str) -> Drop:
    return Drop(label, root, Expect("archived", None, frozenset(codes)), note, uids=made)


@bad("EMPTY_FILE")
def _empty_file(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "fmri" / "i9999.MRDC.99").write_bytes(b"")
    return _blocked(
        label,
        root,
        "EMPTY_FILE",
        "a 0-byte file in a series (held as still "
        "copying until settle.max_wait_seconds, then quarantined)",
    )


@bad("CORRUPT_DICOM")
def _corrupt(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "odd").mkdir()
    shutil.copyfile(dataset("nibabel_formats") / "dicom/decimal_rescale.dcm", folder / "odd/x.dcm")
    return _blocked(label, root, "CORRUPT_DICOM", "DICM file without UIDs (nibabel test file)")


@bad("TRUNCATED_DICOM")
def _truncated(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    victim = sorted((folder / "fmri").iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[:-1000])
    return _blocked(label, root, "TRUNCATED_DICOM", "one file cut 1000 bytes short")


@bad("CONVERTED_FILE")
def _converted(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    shutil.copyfile(dataset("nibabel_formats") / "converted/anatomical.nii", folder / "fmri/x.dcm")
    return _blocked(label, root, "CONVERTED_FILE", "a NIfTI named .dcm in a series folder")


@bad("ARCHIVE_FILE")
def _archive(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    shutil.copyfile(
        dataset("nibabel_formats") / "dicom/siemens_dwi_1000.dcm.gz", folder / "fmri/more.dcm.gz"
    )
    return _blocked(label, root, "ARCHIVE_FILE", "a gzip-wrapped DICOM in a series folder")


@bad("nested-archive")
def _nested(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.write(sorted((folder / "fmri").iterdir())[0], "deep/x.dcm")
    with zipfile.ZipFile(folder / "fmri" / "export.zip", "w") as archive:
        archive.writestr("inner.zip", inner.getvalue())
    return _blocked(label, root, "ARCHIVE_FILE", "a zip holding a zip holding DICOM")


@bad("NOT_DICOM")
def _not_dicom(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, made = _base(stager, root, label)
    (folder / "fmri" / "notes.txt").write_text("patient moved in run 2\n", encoding="utf-8")
    return _archived(label, root, made, "a text file in a series folder: left out", "NOT_DICOM")


@bad("DICOM_NO_PREAMBLE")
def _no_preamble(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, made = _base(stager, root, label)
    for path in sorted((folder / "fmri").iterdir())[:3]:
        data = path.read_bytes()
        assert data[128:132] == b"DICM"
        path.write_bytes(data[132:])  # what a tool that drops the preamble writes
    return _archived(label, root, made, "3 files without preamble and DICM", "DICOM_NO_PREAMBLE")


@bad("DERIVED_SERIES")
def _derived(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, made = _base(stager, root, label)
    series = {"x": generate_uid()}
    for path in sorted((dataset(GE_FMRI_2[0]) / GE_FMRI_2[1]).iterdir()):
        copy_dicom(
            path,
            folder / "moco" / path.name,
            {**uids, **series},
            label,
            ImageType=["DERIVED", "PRIMARY", "M", "ND", "NORM", "MOCO"],
            SeriesDescription="MoCoSeries",
            SeriesNumber="30",
            SeriesInstanceUID=series["x"],
        )
    return _archived(
        label, root, made, "a MoCo series (header rewritten): left out", "DERIVED_SERIES"
    )


@bad("NON_IMAGE_OBJECT")
def _non_image(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, made = _base(stager, root, label)
    source = dataset("philips_ingenia_elition_enh_classic") / "In/enh/104165610_ExamCard_Raw.dcm"
    copy_dicom(source, folder / "examcard" / source.name, uids, label)
    return _archived(
        label, root, made, "a Philips ExamCard (Raw Data Storage): left out", "NON_IMAGE_OBJECT"
    )


@bad("PROTOCOL_REPORT")
def _phoenix(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    uids = {"study": generate_uid()}
    made = stager.copy_series(folder, "dwi", XA30_DWI, uids, label)
    made |= stager.copy_series(folder, "phoenix", XA30_PHOENIX, uids, label)
    return _archived(
        label, root, made, "a Siemens Phoenix report in its own folder: uploaded", "PROTOCOL_REPORT"
    )


@bad("LOSSY_COMPRESSED")
def _lossy(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, made = _base(stager, root, label)
    source = dataset("pydicom_data_subset") / "data/MR2_UNCI.dcm"
    copy_dicom(source, folder / "lossy" / source.name, uids, label)
    return _archived(
        label, root, made, "a lossy JPEG MR file (NEMA MR2_UNCI): left out", "LOSSY_COMPRESSED"
    )


@bad("WRONG_MODALITY")
def _ct(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, _ = _base(stager, root, label)
    stager.copy_series(
        folder,
        "ct",
        GE_LOCALIZER,
        uids,
        label,
        3,
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        Modality="CT",
    )
    return _blocked(label, root, "WRONG_MODALITY", "a series rewritten as CT")


@bad("DERIVED_FRAMES")
def _derived_frames(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    uids = {"study": generate_uid()}
    made = stager.copy_series(folder, "dwi", PHILIPS_DWI, uids, label)
    return _archived(
        label, root, made, "Philips DWI with isotropic trace frames (680 files)", "DERIVED_FRAMES"
    )


@bad("SUSPECT_DESCRIPTION")
def _suspect(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    uids = {"study": generate_uid()}
    made = stager.copy_series(
        folder, "t1", GE_FMRI, uids, label, None, SeriesDescription="T1_MPR_sag"
    )
    return _archived(
        label, root, made, "an ORIGINAL series described as an MPR", "SUSPECT_DESCRIPTION"
    )


@bad("LOCALIZER")
def _localizer(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, made = _base(stager, root, label)
    made |= stager.copy_series(folder, "loc", GE_LOCALIZER, uids, label)
    return _archived(label, root, made, "a localizer beside a series: uploaded", "LOCALIZER")


@bad("MIXED_SERIES_FOLDER")
def _mixed(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, _ = _base(stager, root, label)
    for path in sorted((dataset(GE_FMRI_2[0]) / GE_FMRI_2[1]).iterdir())[:5]:
        copy_dicom(path, folder / "fmri" / ("b_" + path.name), uids, label)
    return _blocked(label, root, "MIXED_SERIES_FOLDER", "two series in one folder")


@bad("SPLIT_SERIES")
def _split(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "fmri_part2").mkdir()
    for path in sorted((folder / "fmri").iterdir())[:4]:
        path.rename(folder / "fmri_part2" / path.name)
    return _blocked(label, root, "SPLIT_SERIES", "one series over two folders")


@bad("LOOSE_FILE")
def _loose(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    shutil.copyfile(sorted((folder / "fmri").iterdir())[0], folder / "stray.dcm")
    return _blocked(label, root, "LOOSE_FILE", "a DICOM file at the top of the subject folder")


@bad("DUPLICATE_FILE")
def _duplicate_file(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, made = _base(stager, root, label)
    first = sorted((folder / "fmri").iterdir())[0]
    shutil.copyfile(first, folder / "fmri" / "copy_of_first")
    return _archived(label, root, made, "an identical copy of a file: sent once", "DUPLICATE_FILE")


@bad("DUPLICATE_UID")
def _duplicate_uid(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    first = sorted((folder / "fmri").iterdir())[0]
    data = pydicom.dcmread(first)
    data.StudyComments = "edited"
    data.save_as(folder / "fmri" / "edited_copy")
    return _blocked(label, root, "DUPLICATE_UID", "an edited copy sharing a SOPInstanceUID")


@bad("MULTIPLE_STUDIES")
def _studies(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    stager.copy_series(folder, "other", GE_FMRI_2, {"study": generate_uid()}, label, 5)
    return _blocked(label, root, "MULTIPLE_STUDIES", "two StudyInstanceUIDs in one folder")


@bad("PATIENT_MISMATCH")
def _patient(stager: Stager, root: Path, label: str) -> Drop:
    folder, uids, _ = _base(stager, root, label)
    stager.copy_series(folder, "other", GE_FMRI_2, uids, label, 5, PatientName="Other^Person")
    return _blocked(label, root, "PATIENT_MISMATCH", "a series of another PatientName")


@bad("LABEL_PATTERN")
def _pattern(stager: Stager, root: Path, label: str) -> Drop:
    _base(stager, root, label)
    return _blocked(label, root, "LABEL_PATTERN", "a label outside the root's label_pattern")


@bad("LABEL_MISMATCH")
def _label_mismatch(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    stager.copy_series(
        folder, "fmri", GE_FMRI, {"study": generate_uid()}, label, None, PatientID="SPN01_9999"
    )
    return _blocked(
        label,
        root,
        "LABEL_MISMATCH",
        "PatientID disagrees with the folder name (label_agree = PatientID)",
    )


@bad("INCOMPLETE_MEDIA")
def _media(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    source = dataset("siemens_xa60_dicomdir") / "In/XA60"
    shutil.copytree(source, folder / "XA60")
    return _blocked(label, root, "INCOMPLETE_MEDIA", "a DICOMDIR export missing a referenced file")


@bad("DICOMDIR")
def _dicomdir(stager: Stager, root: Path, label: str) -> Drop:
    from pydicom.fileset import FileSet

    folder = stager.folder(label)
    uids = {"study": generate_uid()}
    made = stager.copy_series(stager.staging, f"{label}.tmp", GE_FMRI, uids, label)
    media = FileSet()
    for path in sorted((stager.staging / f"{label}.tmp").iterdir()):
        media.add(path)
    media.write(folder / "media")
    shutil.rmtree(stager.staging / f"{label}.tmp")
    return _archived(
        label, root, made, "a complete DICOMDIR media export (pydicom FileSet)", "DICOMDIR"
    )


@bad("NO_DICOM")
def _no_dicom(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    add_sidecars(folder)
    return _blocked(label, root, "NO_DICOM", "sidecar folders only")


@bad("UNREADABLE")
def _fifo(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    os.mkfifo(folder / "fmri" / "pipe")
    return _blocked(label, root, "UNREADABLE", "a FIFO in a series folder (never opened)")


@bad("SYMLINK")
def _link_out(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "behav").mkdir()
    (folder / "behav" / "outside").symlink_to("/etc")
    return _blocked(label, root, "SYMLINK", "a link out of the share (behav/outside -> /etc)")


@bad("symlink-loop")
def _link_loop(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "fmri" / "a").symlink_to("b")
    (folder / "fmri" / "b").symlink_to("a")
    (folder / "fmri" / "up").symlink_to("..", target_is_directory=True)
    return _blocked(label, root, "SYMLINK", "a symlink loop and a link to the parent folder")


@bad("BAD_NAME")
def _bad_name(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    first = sorted((folder / "fmri").iterdir())[0]
    first.rename(folder / "fmri" / os.fsdecode(b"Mu\xf1oz.dcm"))
    return _blocked(label, root, "BAD_NAME", "a latin-1 file name in a series folder")


@bad("INCOMPLETE_SERIES")
def _incomplete(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    sorted((folder / "fmri").iterdir(), key=_instance)[10].unlink()
    return _blocked(
        label,
        root,
        "INCOMPLETE_SERIES",
        "a gap in a series' InstanceNumbers (held "
        "as still copying until settle.max_wait_seconds, then quarantined)",
    )


def _instance(path: Path) -> int:
    return int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber)


@bad("subject-toml-invalid")
def _subject_invalid(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "subject.toml").write_text("sex = F\n", encoding="utf-8")
    return Drop(label, root, Expect("quarantined", "SUBJECT_FILE_INVALID"), "subject.toml not TOML")


@bad("subject-toml-future")
def _subject_future(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, _ = _base(stager, root, label)
    (folder / "subject.toml").write_text("dob = 2999-01-01\n", encoding="utf-8")
    return Drop(
        label,
        root,
        Expect("quarantined", "SUBJECT_FILE_INVALID"),
        "subject.toml with a date of birth in the future",
    )


@bad("own-reason-files")
def _resubmitted(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, made = _base(stager, root, label)
    reasonfiles.write(
        folder,
        {
            "label": label,
            "project": "SPN01",
            "code": "RULES_BLOCKED",
            "message": "a NIfTI file in fmri",
            "fix": "remove it",
            "findings": [],
            "step": "check",
            "drop_root": str(root),
            "time": "2026-01-01 00:00:00",
        },
    )
    drop = _archived(
        label,
        root,
        made,
        "copied back with our QUARANTINE.txt/json (written by xnatdrop's own quarantine module)",
    )
    drop.aside = set(REASON_FILES)
    return drop


@bad("space-in-name")
def _space(stager: Stager, root: Path, label: str) -> Drop:
    _base(stager, root, label)
    return _blocked(label, root, "LABEL_PATTERN", "a folder name with spaces")


@bad("leading-dash")
def _dash(stager: Stager, root: Path, label: str) -> Drop:
    made = _base(stager, root, label)[2]
    return _archived(label, root, made, "a label starting with '-' (valid XNAT characters)")


@bad("newline-in-file-name")
def _newline(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, made = _base(stager, root, label)
    first = sorted((folder / "fmri").iterdir())[0]
    first.rename(folder / "fmri" / "evil\nname 'x\".dcm")
    return _archived(label, root, made, "a file name with a newline and quotes")


@bad("long-file-names")
def _long_names(stager: Stager, root: Path, label: str) -> Drop:
    folder, _, made = _base(stager, root, label)
    for index, path in enumerate(sorted((folder / "fmri").iterdir())):
        path.rename(path.with_name(f"{index:03d}_" + "x" * 240 + ".dcm"))
    return _archived(label, root, made, "file names of 248 bytes in a series folder")


@bad("non-utf8-folder")
def _non_utf8_folder(stager: Stager, root: Path, label: str) -> Drop:
    _base(stager, root, label)
    return Drop(
        label, root, Expect("waiting", why="UTF-8"), "a subject folder whose name is latin-1 bytes"
    )


@bad("name-255-bytes")
def _long_label(stager: Stager, root: Path, label: str) -> Drop:
    _base(stager, root, label)
    return Drop(label, root, Expect("quarantined"), "a subject folder name of 255 bytes")


@bad("empty-folder")
def _empty_folder(stager: Stager, root: Path, label: str) -> Drop:
    folder = stager.folder(label)
    (folder / "fmri").mkdir()
    return Drop(label, root, Expect("waiting", why="no files"), "a folder with no files at all")


# Labels: most bad drops are SPN01_<n>; a few need their own name.
SPECIAL_LABELS = {
    "LABEL_PATTERN": "spn01-42",
    "space-in-name": "SPN01 0042",
    "leading-dash": "-SPN01_0043",
    "non-utf8-folder": os.fsdecode(b"SPN01_Mu\xf1oz"),
    "name-255-bytes": "SPN01_" + "L" * 249,
}
# Cases that need the strict drop root (label_pattern SPN01_\d{4}, label_agree PatientID).
STRICT = {"LABEL_PATTERN", "LABEL_MISMATCH"}
