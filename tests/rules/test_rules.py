"""The upload rules on real scanner data (../shared/dicom), one case per finding code.

Drops are built in tmp_path by hard-linking (or copying) series from the shared sets into
`<LABEL>/<series folder>/files`. Where no real data exists (MoCo, a mismatched PatientName, a
CT object, a truncated file), a copy's header is rewritten with pydicom or cut with `head -c`
semantics; each such case says so.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest

from shared_data import dataset
from xnatdrop import config, reasonfiles, rules

GE_EXAM = "In/GE/Exam1486_Laser794mm"
GE_LOCALIZER = ("ge_signa_premier_table", f"{GE_EXAM}/01_3_Plane_Localizer_FF")
GE_FMRI = ("ge_signa_premier_table", f"{GE_EXAM}/02_Ax_fMRI_FF_I11.1_S15.9")
SI_MOSAIC = ("ge_nih_mr750", "In/20180918Si/mr_0003")
GE_NIH = ("ge_nih_mr750", "In/20180918GE/mr_0004")


def first_file(source: tuple[str, str]) -> Path:
    return min((dataset(source[0]) / source[1]).iterdir())


def link(source: Path, target: Path) -> Path:
    """Hard-link a shared file into the drop (copy if links are impossible); return target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def add_series(
    subject: Path, name: str, source: tuple[str, str], only_dicom: bool = True
) -> list[Path]:
    """Put every file of a shared series folder into `subject/name/`."""
    folder = dataset(source[0]) / source[1]
    made = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not (only_dicom and path.suffix == ".txt"):
            made.append(link(path, subject / name / path.name))
    return made


def add_files(subject: Path, name: str, set_name: str, relatives: Iterable[str]) -> list[Path]:
    return [link(dataset(set_name) / r, subject / name / Path(r).name) for r in relatives]


def rewrite(path: Path, **fields: str) -> None:
    """Rewrite header fields of a drop file (unlinking it first: never touch shared data)."""
    dataset_ = pydicom.dcmread(path)
    path.unlink()
    for keyword, value in fields.items():
        setattr(dataset_, keyword, value)
        if keyword == "SOPClassUID":
            dataset_.file_meta.MediaStorageSOPClassUID = value
        if keyword == "SOPInstanceUID":
            dataset_.file_meta.MediaStorageSOPInstanceUID = value
    dataset_.save_as(path, enforce_file_format=True)


def codes(verdict: rules.Verdict) -> set[str]:
    return {f.code for f in verdict.findings}


def finding(verdict: rules.Verdict, code: str) -> rules.Finding:
    found = [f for f in verdict.findings if f.code == code]
    assert found, f"{code} not found in {sorted(codes(verdict))}"
    return found[0]


@pytest.fixture
def subject(tmp_path: Path) -> Path:
    folder = tmp_path / "SPN01_0001"
    folder.mkdir()
    return folder


def check(folder: Path, drop: config.DropSettings | None = None, **rule_settings) -> rules.Verdict:
    settings = config.RulesSettings(**rule_settings)
    return rules.check_folder(folder, settings, drop)


# ---- every staged scanner session, raw series only, passes --------------------------------

# (set, sub-folder holding the session, SeriesNumbers that are raw acquisitions) from each
# set's README: everything else in the session is derived, non-image or another export.
RAW_SESSIONS = [
    ("ge_signa_premier_table", GE_EXAM, {"1", "2", "3", "4", "5", "6", "7", "8"}),
    ("ge_nih_mr750", "In/20180918GE", {"4", "5", "6", "7"}),
    ("ge_nih_mr750", "In/20180918Si", {"3", "4", "5", "6"}),
    ("siemens_xa30_enhanced", "In", {"5", "6", "7", "8", "9", "10", "17", "25"}),
    ("siemens_xa30_classic_interop", "In", {"7001", "7002", "9001", "18001"}),
    ("siemens_xa60_dicomdir", "In/XA60", {"2", "4", "6", "8", "10", "12", "14", "16", "18", "20"}),
    ("philips_ingenia_elition_enh_classic", "In/cl", {"2001"}),
    ("philips_ingenia_elition_enh_classic", "In/enh", {"1903", "2001"}),
    ("philips_achieva_dwi_isotropic", "In", {"601"}),
]
MR_CLASSES = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"}


def rearrange_raw(set_name: str, session: str, raw: set[str], subject: Path) -> int:
    """Lay out one staged session as `<LABEL>/<number>_<description>/files`, raw series only.

    Series membership and SeriesNumber come from pydicom, independently of xnatdrop's reader.
    """
    count = 0
    for path in sorted((dataset(set_name) / session).rglob("*")):
        if not path.is_file() or path.name == "DICOMDIR":
            continue
        try:
            header = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["SeriesNumber", "SOPClassUID", "SeriesInstanceUID"],
            )
        except pydicom.errors.InvalidDicomError:
            continue
        if str(header.get("SeriesNumber", "")) not in raw or header.SOPClassUID not in MR_CLASSES:
            continue
        name = f"{header.SeriesNumber}_{header.SeriesInstanceUID[-8:]}"
        link(path, subject / name / path.name)
        count += 1
    return count


@pytest.mark.parametrize(
    ("set_name", "session", "raw"), RAW_SESSIONS, ids=[f"{s}:{p}" for s, p, _ in RAW_SESSIONS]
)
def test_every_staged_session_of_raw_series_passes(
    subject: Path, set_name: str, session: str, raw: set[str]
) -> None:
    count = rearrange_raw(set_name, session, raw, subject)
    verdict = check(subject)
    assert verdict.ok, [f.message for f in verdict.blocking()]
    assert not verdict.blocking()
    assert len(verdict.upload_files()) == count > 0
    assert {s.series_number for s in verdict.series} == raw
    assert not verdict.excluded_series
    assert codes(verdict) <= {"LOCALIZER", "DERIVED_FRAMES"}


# Every derived series in the data, as (set, files), checked on the sets exactly as staged.
DERIVED = [
    ("siemens_xa30_enhanced", [f"In/{n}_DWI_dir80_PA" for n in (11, 12, 13, 14, 16)]),
    ("siemens_xa30_enhanced", [f"In/{n}_DWI_dir80_AP" for n in (19, 20, 21, 22, 24)]),
    ("siemens_xa30_enhanced", ["In/27_asl_2d_tra", "In/28_asl_2d_tra"]),
    (
        "siemens_xa30_classic_interop",
        [f"In/{n}_AAHead_Scout" for n in (2001, 3001, 4001)]
        + [f"In/{n}_DWI_dir80_AP" for n in (12001, 14001, 15001)]
        + ["In/19001_asl_2d_tra"],
    ),
    (
        "heudiconv_testdata",
        ["MRI_102TD_PHA_S.MR.Chen_Matthews_1.3.1.2022.11.16.15.50.20.357.31204541.dcm"],
    ),
    ("nibabel_formats", ["dicom/slicethickness_empty_string.dcm"]),
    (
        "pydicom_data_subset",
        [f"data/{n}" for n in ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCI.dcm", "SC_rgb.dcm")]
        + [f"data/{n}" for n in ("liver.dcm", "parametric_map_float.dcm", "OT-PAL-8-face.dcm")],
    ),
    ("philips_ingenia_elition_enh_classic", ["In/enh/1901_WIP_3DpCASL_real.dcm"]),
    ("philips_ingenia_elition_enh_classic", [f"In/cl/1901_{n:04d}.dcm" for n in range(1, 41)]),
]


@pytest.mark.parametrize(("set_name", "targets"), DERIVED, ids=[d[0] for d in DERIVED])
def test_every_derived_series_in_the_data_is_found(set_name: str, targets: list[str]) -> None:
    root = dataset(set_name)
    verdict = rules.check_folder(root, config.RulesSettings())
    derived = {p for f in verdict.findings if f.code == "DERIVED_SERIES" for p in f.files}
    uploaded = set(verdict.upload_files())
    for target in targets:
        files = [p.relative_to(root) for p in (root / target).rglob("*") if p.is_file()]
        files = files or [Path(target)]
        assert files and set(files) <= derived, target
        assert not set(files) & uploaded, target


def test_raw_neighbours_of_derived_series_are_not_flagged() -> None:
    """ORIGINAL series beside the derived ones stay in (SOURCE pCASL, phase map, scouts)."""
    verdict = rules.check_folder(dataset("philips_ingenia_elition_enh_classic"), None)
    uploaded = {p.as_posix() for p in verdict.upload_files()}
    assert "In/enh/1903_WIP_SOURCE_-_3DpCASL.dcm" in uploaded
    assert "In/enh/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm" in uploaded
    assert sum(1 for p in uploaded if p.startswith("In/cl/2001_")) == 212


# ---- one case per code -------------------------------------------------------------------


def test_empty_file_blocks(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    (subject / "fmri" / "i9999.MRDC.1").write_bytes(b"")
    verdict = check(subject)
    found = finding(verdict, "EMPTY_FILE")
    assert found.action == "block" and found.path == Path("fmri/i9999.MRDC.1")
    assert not verdict.ok and "copy the session again" in found.message


def test_corrupt_dicom_without_uids_and_a_header_cut_at_700_bytes(subject: Path) -> None:
    add_files(subject, "a", "nibabel_formats", ["dicom/decimal_rescale.dcm"])
    paths = add_series(subject, "fmri", GE_FMRI)
    data = paths[0].read_bytes()
    paths[0].unlink()
    paths[0].write_bytes(data[:700])
    verdict = check(subject)
    corrupt = {f.path: f.message for f in verdict.findings if f.code == "CORRUPT_DICOM"}
    assert Path("a/decimal_rescale.dcm") in corrupt
    assert "SeriesInstanceUID" in corrupt[Path("a/decimal_rescale.dcm")]
    assert paths[0].relative_to(subject) in corrupt
    assert not verdict.ok
    assert paths[0].relative_to(subject) not in verdict.upload_files()


def test_truncated_dicom_real_and_cut_copies(subject: Path) -> None:
    add_files(
        subject, "a", "pydicom_data_subset", ["data/emri_small_jpeg_2k_lossless_too_short.dcm"]
    )
    add_files(subject, "b", "nibabel_formats", ["dicom/csa_slice_norm.dcm"])
    paths = add_series(subject, "fmri", GE_FMRI)
    data = paths[3].read_bytes()
    paths[3].unlink()
    paths[3].write_bytes(data[:-1000])  # like `head -c $((size-1000))`
    verdict = check(subject)
    truncated = {f.path for f in verdict.findings if f.code == "TRUNCATED_DICOM"}
    assert truncated == {
        Path("a/emri_small_jpeg_2k_lossless_too_short.dcm"),
        Path("b/csa_slice_norm.dcm"),
        paths[3].relative_to(subject),
    }
    assert not verdict.ok


def test_converted_files_block_by_content_not_extension(subject: Path) -> None:
    add_series(subject, "dwi", ("siemens_xa30_enhanced", "In/10_DWI_dir80_PA"))
    add_files(
        subject,
        "dwi",
        "siemens_xa30_enhanced",
        ["Ref-sample/11_DWI_dir80_PA.json", "Ref-sample/10_DWI_dir80_PA.bval"],
    )
    nifti = link(dataset("nibabel_formats") / "converted/anatomical.nii", subject / "dwi" / "x.dcm")
    verdict = check(subject)
    converted = {f.path: f.message for f in verdict.findings if f.code == "CONVERTED_FILE"}
    assert "NIfTI-1" in converted[nifti.relative_to(subject)]
    assert len(converted) == 3
    assert not verdict.ok


def test_archives_block_and_name_their_content(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    add_files(subject, "fmri", "nibabel_formats", ["dicom/siemens_dwi_1000.dcm.gz"])
    with zipfile.ZipFile(subject / "fmri" / "more", "w") as archive:
        archive.write(first_file(GE_LOCALIZER), "x.dcm")
    verdict = check(subject)
    archives = {f.path.name: f.message for f in verdict.findings if f.code == "ARCHIVE_FILE"}
    assert "gzip containing DICOM" in archives["siemens_dwi_1000.dcm.gz"]
    assert "zip" in archives["more"]
    assert not verdict.ok


def test_not_dicom_is_excluded_and_os_litter_ignored(subject: Path) -> None:
    add_series(subject, "mr_0004", GE_NIH, only_dicom=False)
    (subject / "mr_0004" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (subject / "mr_0004" / "._i0001.dcm").write_bytes(b"\0\5\26\7")
    (subject / "__MACOSX").mkdir()
    (subject / "__MACOSX" / "junk").write_bytes(b"x")
    verdict = check(subject)
    found = finding(verdict, "NOT_DICOM")
    assert found.action == "exclude" and found.path == Path("mr_0004/README-Series.txt")
    assert [f.code for f in verdict.findings] == ["NOT_DICOM"]
    assert verdict.ok
    assert len(verdict.upload_files()) == 150
    assert all(p.suffix == ".dcm" for p in verdict.upload_files())


def test_moco_series_rewritten_from_a_siemens_mosaic_is_derived(subject: Path) -> None:
    """No licensed MoCoSeries exists: the header of a Skyra mosaic copy is rewritten."""
    add_series(subject, "epi", SI_MOSAIC)
    moco = add_series(subject, "moco", SI_MOSAIC)
    uid = pydicom.uid.generate_uid()
    for path in moco:
        rewrite(
            path,
            ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOCO", "MOSAIC"],
            SeriesDescription="MoCoSeries",
            SeriesInstanceUID=uid,
            SeriesNumber="4",
            SOPInstanceUID=pydicom.uid.generate_uid(),
        )
    verdict = check(subject)
    found = finding(verdict, "DERIVED_SERIES")
    assert found.path == Path("moco") and found.action == "exclude"
    assert "MOCO" in found.message
    assert verdict.ok
    assert [s.folder for s in verdict.series] == [Path("epi")]
    assert [s.folder for s in verdict.excluded_series] == [Path("moco")]
    assert all(p.parts[0] == "epi" for p in verdict.upload_files())


def test_non_image_objects_and_the_phoenix_report(subject: Path) -> None:
    add_series(subject, "dwi", ("siemens_xa30_enhanced", "In/10_DWI_dir80_PA"))
    add_series(subject, "phoenix", ("siemens_xa30_enhanced", "In/99_Phoenix_Document"))
    add_files(
        subject,
        "examcard",
        "philips_ingenia_elition_enh_classic",
        ["In/enh/104165610_ExamCard_Raw.dcm"],
    )
    add_series(subject, "tensor", ("siemens_xa30_classic_interop", "In/16_DWI_dir80_AP"))
    verdict = check(subject)
    non_image = {f.path for f in verdict.findings if f.code == "NON_IMAGE_OBJECT"}
    assert non_image == {
        Path("examcard/104165610_ExamCard_Raw.dcm"),
        next((subject / "tensor").iterdir()).relative_to(subject),
    }
    report = finding(verdict, "PROTOCOL_REPORT")
    assert report.action == "ignore" and report.path == Path("phoenix")
    assert {s.folder for s in verdict.series} == {Path("dwi"), Path("phoenix")}
    # Without the override the Phoenix report is uploaded; with it, it is left out.
    excluded = check(subject, actions={"PROTOCOL_REPORT": "exclude"})
    assert {s.folder for s in excluded.series} == {Path("dwi")}
    # A Multiple-study mix of sets: this drop only uses one session (xa30 + Philips ExamCard).
    assert "MIXED_SERIES_FOLDER" not in codes(verdict)


def test_phoenix_mixed_into_an_image_folder_is_a_non_image_object() -> None:
    verdict = rules.check_folder(dataset("siemens_xa60_dicomdir"), None)
    found = finding(verdict, "NON_IMAGE_OBJECT")
    assert "in an image folder" in found.message and len(found.files) == 13
    assert "PROTOCOL_REPORT" not in codes(verdict)


def test_mixed_series_folder_blocks_real_flat_exports() -> None:
    for set_name, folder in (
        ("philips_ingenia_elition_enh_classic", "In/cl"),
        ("siemens_xa60_dicomdir", "In/XA60/DICOM/24100413/39280000"),
    ):
        verdict = rules.check_folder(dataset(set_name), None)
        mixed = {f.path for f in verdict.findings if f.code == "MIXED_SERIES_FOLDER"}
        assert Path(folder) in mixed, set_name
        assert not verdict.ok


def test_split_series_blocks(subject: Path) -> None:
    paths = add_series(subject, "fmri", GE_FMRI)
    (subject / "fmri_part2").mkdir()
    for path in paths[:10]:
        path.rename(subject / "fmri_part2" / path.name)
    verdict = check(subject)
    found = finding(verdict, "SPLIT_SERIES")
    assert "fmri" in found.message and "fmri_part2" in found.message
    assert len(found.files) == 50
    assert not verdict.ok


def test_loose_file_blocks(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    loose = link(first_file(GE_LOCALIZER), subject / "x")
    verdict = check(subject)
    found = finding(verdict, "LOOSE_FILE")
    assert found.path == loose.relative_to(subject) and not verdict.ok


def test_control_files_are_neither_findings_nor_uploaded(subject: Path) -> None:
    """subject.toml and the settle marker are ours; a stray file beside them still blocks."""
    add_series(subject, "fmri", GE_FMRI)
    (subject / "subject.toml").write_text('sex = "F"\n', encoding="utf-8")
    (subject / "READY").write_text("", encoding="utf-8")
    settings = config.parse({"settle": {"marker_name": "READY"}}, "test")
    assert settings.control_files() == {"subject.toml", "READY"}
    verdict = rules.check_folder(subject, control_files=settings.control_files())
    assert verdict.ok and not verdict.findings
    assert all(p.parent != Path(".") for p in verdict.upload_files())
    (subject / "notes.txt").write_text("hello\n", encoding="utf-8")
    verdict = rules.check_folder(subject, control_files=settings.control_files())
    assert finding(verdict, "LOOSE_FILE").path == Path("notes.txt")
    assert {f.path for f in verdict.findings} == {Path("notes.txt")}


def test_duplicates_identical_are_kept_once_different_block(subject: Path) -> None:
    paths = add_series(subject, "fmri", GE_FMRI)
    link(paths[0], subject / "fmri" / "copy_of_first")
    verdict = check(subject)
    found = finding(verdict, "DUPLICATE_FILE")
    assert found.action == "warn" and verdict.ok
    assert len(verdict.upload_files()) == 50
    # MR2_UNCR/MR2_UNCI differ in SOPInstanceUID (…5.1.1 vs …5.1.3, whatever the set's
    # README says), so the different-bytes case is a copy with one header field rewritten.
    edited = link(paths[1], subject / "fmri" / "edited_copy")
    rewrite(edited, StudyComments="edited")
    verdict = check(subject)
    found = finding(verdict, "DUPLICATE_UID")
    assert found.action == "block" and "edited_copy" in found.message
    assert not verdict.ok


def test_multiple_studies_block() -> None:
    """ge_nih_mr750: GE and Siemens studies of one PatientID in one folder (rule D3)."""
    verdict = rules.check_folder(dataset("ge_nih_mr750") / "In", None)
    found = finding(verdict, "MULTIPLE_STUDIES")
    assert found.message.startswith("2 studies") and not verdict.ok


def test_patient_mismatch_rewritten_patient_name(subject: Path) -> None:
    add_series(subject, "loc", GE_LOCALIZER)
    paths = add_series(subject, "fmri", GE_FMRI)
    for path in paths:
        rewrite(path, PatientName="Other^Person")
    verdict = check(subject)
    found = finding(verdict, "PATIENT_MISMATCH")
    assert "PatientName" in found.message and "Other" not in found.message
    assert not verdict.ok


def test_label_pattern_from_the_drop(tmp_path: Path) -> None:
    folder = tmp_path / "spn01-42"
    add_series(folder, "fmri", GE_FMRI)
    drop = config.DropSettings(path=tmp_path, project="SPN01", label_pattern=r"SPN01_\d{4}")
    verdict = check(folder, drop)
    found = finding(verdict, "LABEL_PATTERN")
    assert "spn01-42" in found.message and not verdict.ok
    bad = tmp_path / "bad label"
    add_series(bad, "fmri", GE_FMRI)
    assert "only letters" in finding(check(bad), "LABEL_PATTERN").message


def test_label_source_and_agreement(subject: Path) -> None:
    paths = add_series(subject, "fmri", GE_FMRI)
    verdict = check(subject, label_agree=["PatientName"])
    found = finding(verdict, "LABEL_MISMATCH")
    assert "PatientName of 50 file(s)" in found.message and not verdict.ok
    for path in paths:
        rewrite(path, PatientID="SPN01_0001", PatientName="SPN01_0099")
    assert check(subject, label_agree=["PatientID"]).ok
    by_name = check(subject, label_source="PatientName", label_agree=["PatientID", "folder"])
    assert by_name.label == "SPN01_0099"
    [mismatch] = by_name.blocking()
    assert mismatch.code == "LABEL_MISMATCH"
    assert "PatientID of 50 file(s)" in mismatch.message
    assert "folder name 'SPN01_0001'" in mismatch.message


def test_incomplete_media_from_a_dicomdir() -> None:
    verdict = rules.check_folder(dataset("siemens_xa60_dicomdir"), None)
    found = finding(verdict, "INCOMPLETE_MEDIA")
    assert found.path == Path("In/XA60/DICOMDIR")
    assert "DICOM/24100413/39280000/75739321" in found.message
    assert finding(verdict, "DICOMDIR").action == "ignore"
    assert Path("In/XA60/DICOMDIR") not in verdict.upload_files()


def test_no_dicom_and_sidecars(subject: Path) -> None:
    (subject / "behav").mkdir()
    (subject / "behav" / "events.tsv").write_text("onset\n")
    (subject / "Physio").mkdir()
    verdict = check(subject)
    assert verdict.sidecars == {"behav": subject / "behav", "physio": subject / "Physio"}
    assert [f.code for f in verdict.findings] == ["NO_DICOM"]
    assert not verdict.ok


def test_unreadable_special_file_and_symlinks_are_never_followed(subject: Path) -> None:
    paths = add_series(subject, "fmri", GE_FMRI)
    os.mkfifo(subject / "fmri" / "pipe")
    (subject / "fmri" / "link.dcm").symlink_to(paths[0])
    (subject / "behav").mkdir()
    (subject / "behav" / "outside").symlink_to("/etc")
    verdict = check(subject)
    assert finding(verdict, "UNREADABLE").path == Path("fmri/pipe")
    links = {f.path for f in verdict.findings if f.code == "SYMLINK"}
    assert links == {Path("fmri/link.dcm"), Path("behav/outside")}
    assert Path("fmri/link.dcm") not in verdict.upload_files()
    assert not verdict.ok


def test_no_preamble_lossy_and_wrong_modality(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    add_files(subject, "face", "pydicom_data_subset", ["data/OT-PAL-8-face.dcm"])
    add_files(subject, "lossy", "pydicom_data_subset", ["data/MR2_UNCI.dcm"])
    ct = add_series(subject, "ct", GE_LOCALIZER)
    for path in ct:
        rewrite(path, SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT")
    verdict = check(subject)
    assert finding(verdict, "DICOM_NO_PREAMBLE").action == "warn"
    assert finding(verdict, "LOSSY_COMPRESSED").path == Path("lossy/MR2_UNCI.dcm")
    assert finding(verdict, "WRONG_MODALITY").action == "block"
    assert not verdict.ok


def test_derived_frames_warn_on_philips_isotropic_dwi() -> None:
    verdict = rules.check_folder(dataset("philips_achieva_dwi_isotropic") / "In", None)
    found = finding(verdict, "DERIVED_FRAMES")
    assert found.action == "warn" and len(found.files) == 80
    assert "80 of 680 files" in found.message
    assert len(verdict.upload_files()) == 680


def test_suspect_description_and_localizer(subject: Path) -> None:
    add_series(subject, "loc", GE_LOCALIZER)
    paths = add_series(subject, "fmri", GE_FMRI)
    for path in paths:
        rewrite(path, SeriesDescription="T1_MPR_sag")
    verdict = check(subject)
    assert finding(verdict, "SUSPECT_DESCRIPTION").action == "warn"
    assert finding(verdict, "LOCALIZER").path == Path("loc")
    assert verdict.ok and len(verdict.upload_files()) == 71
    without = check(subject, actions={"LOCALIZER": "exclude"})
    assert [s.folder for s in without.series] == [Path("fmri")]


def test_actions_are_configurable_globally_and_per_drop(tmp_path: Path) -> None:
    folder = tmp_path / "SPN01_0001"
    add_series(folder, "dwi", ("siemens_xa30_enhanced", "In/10_DWI_dir80_PA"))
    add_series(folder, "adc", ("siemens_xa30_enhanced", "In/11_DWI_dir80_PA"))
    loaded = config.parse(
        {
            "rules": {"actions": {"DERIVED_SERIES": "warn"}},
            "drop": [
                {
                    "path": str(tmp_path),
                    "project": "SPN01",
                    "rules": {"actions": {"DERIVED_SERIES": "block"}},
                }
            ],
        },
        "test",
    )
    drop = loaded.drop_for(folder)
    assert drop is not None
    blocked = rules.check_folder(folder, loaded.rules_for(drop), drop)
    assert not blocked.ok and finding(blocked, "DERIVED_SERIES").action == "block"
    warned = rules.check_folder(folder, loaded.rules_for(None))
    assert warned.ok and len(warned.series) == 2
    default = rules.check_folder(folder, None)
    assert default.ok and [s.folder for s in default.series] == [Path("dwi")]


def test_verdict_json_and_upload_entries(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    (subject / "logs").mkdir()
    (subject / "logs" / "scan.log").write_text("ok\n")
    verdict = check(subject)
    data = verdict.to_json(files=True)
    assert data["ok"] is True and data["label"] == "SPN01_0001"
    assert data["series"][0]["file_count"] == 50
    entry = data["series"][0]["files"][0]
    header = pydicom.dcmread(subject / entry["path"], stop_before_pixels=True)
    assert entry["sop_instance_uid"] == header.SOPInstanceUID
    assert entry["study_instance_uid"] == header.StudyInstanceUID
    assert entry["size"] == (subject / entry["path"]).stat().st_size
    assert all(e.path.split("/")[0] == "fmri" for e in verdict.upload_entries())
    assert data["sidecars"] == {"logs": str(subject / "logs")}


def test_a_mixed_folder_whose_series_are_all_left_out_is_not_a_block(subject: Path) -> None:
    """The Siemens XA30 classic export puts Perfusion_Weighted as MR and as Secondary Capture
    (same SeriesNumber 19001, two SeriesInstanceUIDs) in one folder; both are derived and left
    out. Every such export was quarantined for a block that protected nothing. Result now: the
    whole session (as exported, every folder) would upload; 19001 is reported as left out."""
    source = dataset("siemens_xa30_classic_interop") / "In"
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        add_series(subject, folder.name, ("siemens_xa30_classic_interop", f"In/{folder.name}"))
    verdict = check(subject)
    assert verdict.ok, [f.message for f in verdict.blocking()]
    assert "MIXED_SERIES_FOLDER" not in codes(verdict)
    left_out = {f.path for f in verdict.findings if f.code == "DERIVED_SERIES"}
    assert Path("19001_asl_2d_tra") in left_out
    assert not any(p.parts[0] == "19001_asl_2d_tra" for p in verdict.upload_files())


def test_a_mixed_folder_with_a_series_to_upload_still_blocks(subject: Path) -> None:
    add_series(subject, "mixed", GE_FMRI)
    add_series(subject, "mixed", GE_LOCALIZER)
    verdict = check(subject)
    assert finding(verdict, "MIXED_SERIES_FOLDER").action == "block" and not verdict.ok


LATIN1 = b"Mu\xf1oz"  # "Muñoz" written by an SMB/USB copy with a latin-1 code page


def _latin1_file(folder: Path, data: bytes = b"x" * 200) -> None:
    with open(os.path.join(os.fsencode(folder), LATIN1 + b".dcm"), "wb") as handle:
        handle.write(data)


@pytest.mark.parametrize("where", ["fmri", "behav", "fmri/sub"])
def test_a_name_that_is_not_utf8_blocks_with_the_bytes_escaped(subject: Path, where: str) -> None:
    """In a series folder, a sidecar or a nested folder: a BAD_NAME block that names the file
    with its bytes escaped, so every report can be written; the file is never read or sent."""
    add_series(subject, "fmri", GE_FMRI)
    (subject / where).mkdir(parents=True, exist_ok=True)
    _latin1_file(subject / where)
    verdict = check(subject)
    found = finding(verdict, "BAD_NAME")
    assert found.path == Path(where) / "Mu\\xf1oz.dcm"
    assert found.action == "block" and not verdict.ok
    assert "Mu\\xf1oz.dcm is not valid UTF-8" in found.message and "rename it" in found.message
    assert len(verdict.upload_files()) == 50
    text = reasonfiles.render_text(
        {
            "label": "L",
            "project": "P",
            "message": "m",
            "code": "RULES_BLOCKED",
            "time": "t",
            "drop_root": "/d",
            "findings": [f.to_json() for f in verdict.findings],
        }
    )
    text.encode("utf-8")  # no surrogate reaches a reason file
    assert "Mu\\xf1oz.dcm" in text


def test_a_folder_name_that_is_not_utf8_blocks_and_is_not_entered(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    bad = os.path.join(os.fsencode(subject), LATIN1)
    os.mkdir(bad)
    shutil.copy(first_file(GE_LOCALIZER), os.path.join(bad, b"a.dcm"))
    verdict = check(subject)
    assert finding(verdict, "BAD_NAME").message.startswith("folder name Mu\\xf1oz is not")
    assert {s.series_number for s in verdict.series} == {"2"}


def test_own_reason_files_in_a_resubmitted_folder_are_recognised(subject: Path) -> None:
    """A folder copied back from quarantine with its QUARANTINE.txt/.json: those were read as
    a BIDS sidecar and loose files. Result now: recognised as ours, no finding, not uploaded."""
    add_series(subject, "fmri", GE_FMRI)
    reasonfiles.write(
        subject,
        {
            "label": subject.name,
            "project": "SPN01",
            "code": "RULES_BLOCKED",
            "message": "m",
            "fix": "f",
            "findings": [],
            "drop_root": "/srv/drop",
            "time": "t",
        },
    )
    verdict = check(subject)
    assert verdict.ok and not verdict.findings
    assert verdict.reason_files == (Path("QUARANTINE.json"), Path("QUARANTINE.txt"))
    assert reasonfiles.find_own(subject) == [
        subject / "QUARANTINE.txt",
        subject / "QUARANTINE.json",
    ]


def test_files_named_like_reason_files_but_not_ours_are_judged(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    (subject / "QUARANTINE.json").write_text('{"RepetitionTime": 2.0}', encoding="utf-8")
    verdict = check(subject)
    assert verdict.reason_files == ()
    assert finding(verdict, "LOOSE_FILE").path == Path("QUARANTINE.json") and not verdict.ok


def _keep(paths: list[Path], keep: list[Path]) -> None:
    for path in paths:
        if path not in keep:
            path.unlink()


def test_a_half_copied_ge_series_is_incomplete(subject: Path) -> None:
    """GE announces its images: 25 of the 50 files of a Premier fMRI run (the first 25 by file
    name, as a paused copy leaves them) and 88 of the 150 of an MR750 EPI run."""
    fmri = add_series(subject, "fmri", GE_FMRI)
    _keep(fmri, fmri[:25])
    epi = add_series(subject, "epi", GE_NIH)
    _keep(epi, epi[:88])
    verdict = check(subject)
    found = {f.path: f for f in verdict.findings if f.code == "INCOMPLETE_SERIES"}
    assert set(found) == {Path("fmri"), Path("epi")} and not verdict.ok
    assert "ImagesInAcquisition announce 50 images, 25 are here" in found[Path("fmri")].message
    assert (
        "GE LocationsInAcquisition 15 × NumberOfTemporalPositions 10 announce 150 images, "
        "88 are here" in found[Path("epi")].message
    )
    assert "InstanceNumbers run from 1 to" in found[Path("fmri")].message  # names ≠ order


def test_a_gap_in_the_instance_numbers_is_incomplete(subject: Path) -> None:
    """Siemens classic series announce no count; a missing instance in the middle shows."""
    series = add_series(
        subject, "bold", ("siemens_xa30_classic_interop", "In/7001_func-bold_task-fa_run-1")
    )
    by_number = {pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber: p for p in series}
    by_number[17].unlink()
    verdict = check(subject)
    found = finding(verdict, "INCOMPLETE_SERIES")
    assert "InstanceNumbers run from 1 to 33 but 32 files are here (1 missing)" in found.message


def test_complete_series_and_odd_numbering_are_not_incomplete(subject: Path) -> None:
    """Every raw session of the shared data passes (test above); a Philips DTI numbered from
    16 upwards with gaps is left alone, and a series whose last files are missing without any
    announced count cannot be told from a complete one (documented limit)."""
    add_series(
        subject, "dti", ("philips_achieva_dwi_isotropic", "In/Vanderbilt_2018/601_WIP_dti_ax")
    )
    bold = add_series(
        subject, "bold", ("siemens_xa30_classic_interop", "In/7001_func-bold_task-fa_run-1")
    )
    numbers = {pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber: p for p in bold}
    numbers[33].unlink()
    verdict = check(subject)
    assert "INCOMPLETE_SERIES" not in codes(verdict)


def test_a_folder_that_goes_away_while_it_is_read_gets_no_verdict(tmp_path: Path) -> None:
    """Found by the campaign (local/share-unmounted): the share went away while the check read
    a subject folder, every later read failed, and the drop was quarantined as UNREADABLE
    although nothing was wrong with its data. 1. 250 files are read in order. 2. After 200
    (the first progress report), the folder is moved away, as an unmount does. Result:
    FolderGone, a transient error (check again later), not a verdict."""
    subject = tmp_path / "SPN01_0001"
    for name in (
        "02_Ax_fMRI_FF_I11.1_S15.9",
        "03_Ax_fMRI_FF_I21.1_S05.9",
        "04_Ax_fMRI_FF_I01.1_S25.9",
        "06_Ax_fMRI_HF_I11.1_S15.9",
        "07_Ax_fMRI_HF_I21.1_S05.9",
    ):
        add_series(subject, name, ("ge_signa_premier_table", f"{GE_EXAM}/{name}"))

    def unmount(done: int, total: int) -> None:
        if done < total and subject.exists():
            subject.rename(tmp_path / "elsewhere")

    with pytest.raises(rules.FolderGone, match="went away while it was checked"):
        rules.check_folder(subject, None, progress=unmount, workers=1)
    assert rules.check_folder(tmp_path / "elsewhere", None).ok  # the data itself is fine


@pytest.mark.parametrize(
    "content",
    [b"", b'{\n  "code": "RULES_B', b"xnatdrop did NOT arch"],
    ids=["empty", "json", "text"],
)
def test_leftovers_of_our_own_cut_writes_are_ours(subject: Path, content: bytes) -> None:
    """Found by the campaign (local/share-disk-full): a reason file written onto a full share
    leaves QUARANTINE.json.part (empty, or the start of our text); the folder's next check
    reported it as EMPTY_FILE and LOOSE_FILE, and the technologist read about a file they never
    made. Result: recognised as ours (the pipeline moves it aside), no finding."""
    add_series(subject, "fmri", GE_FMRI)
    name = "QUARANTINE.txt.part" if content.startswith(b"xnatdrop") else "QUARANTINE.json.part"
    (subject / name).write_bytes(content)
    (subject / "RECEIPT.json.part").write_bytes(b"")
    verdict = check(subject)
    assert verdict.ok and not verdict.findings, verdict.findings
    assert set(reasonfiles.find_own(subject)) == {subject / name, subject / "RECEIPT.json.part"}


def test_a_part_file_that_is_not_ours_is_judged(subject: Path) -> None:
    add_series(subject, "fmri", GE_FMRI)
    (subject / "QUARANTINE.json.part").write_bytes(b"trial,rt\n1,0.4\n")
    assert finding(check(subject), "LOOSE_FILE").path == Path("QUARANTINE.json.part")
