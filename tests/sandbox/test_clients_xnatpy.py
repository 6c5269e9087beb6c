"""Conformance: the unmodified xnatpy client (`import xnat`) against the sandbox, over sockets.

What a site's own scripts do with xnatpy must work against `xnatdrop sandbox` exactly as against
XNAT 1.8: connect (JSESSION login, version probe, data model built from /xapi/schemas), list
projects, import a DICOM zip to the prearchive, archive it, read the experiment back down to file
bytes, and attach a session resource from a zip. The DICOM is a real GE series from the shared
set `ge_signa_premier_table` (tests/shared_data.py), copied to tmp_path.

Failures here mean the SERVER differs from XNAT (docs/sandbox-clients.md lists what each call
needs); the client is never patched.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import xnat
import xnat.exceptions
from xnat import convert_xsd, mixin

import shared_data
from xnat_sandbox import prearchive_build, xapi

SERIES = "In/GE/Exam1486_Laser794mm/02_Ax_fMRI_FF_I11.1_S15.9"  # 50 files, SeriesNumber 2
SERIES_FILES = 50
LOCALIZER = "In/GE/Exam1486_Laser794mm/01_3_Plane_Localizer_FF"  # 21 files, SeriesNumber 1
LOCALIZER_FILES = 21


# --- helpers ---------------------------------------------------------------------------------


def _stage(name: str, tmp_path: Path) -> Path:
    """Copy one series of the shared GE exam into tmp_path and return the folder."""
    source = shared_data.dataset("ge_signa_premier_table") / name
    target = tmp_path / "drop" / Path(name).name
    shutil.copytree(source, target)
    return target


def _zip(folder: Path, target: Path) -> Path:
    """Zip a series folder the way a site script would: one entry per file, folder prefix kept."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    return target


def _md5s(folder: Path) -> list[str]:
    return sorted(hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file())


def _downloaded_md5s(files) -> list[str]:
    """Download every file of an xnatpy file listing (xnatpy verifies `digest` on the way)."""
    digests = []
    for file_ in files.values():
        buffer = io.BytesIO()
        file_.download_stream(buffer)
        digests.append(hashlib.md5(buffer.getvalue()).hexdigest())
    return sorted(digests)


def _store_as_sent(session: xnat.session.XNATSession) -> None:
    """Switch XNAT's site anonymisation off through its admin endpoint, with xnatpy itself, as
    XNAT's integration tests do before comparing bytes (RT `TestArchive.disableSiteAnonScript`)."""
    session.put("/xapi/anonymize/site/enabled", query={"enable": "false"})
    assert session.get_json("/xapi/anonymize/site/enabled") is False


def _connect(sandbox) -> xnat.session.XNATSession:
    """Log in as the sandbox's first user; xnatpy logs to "xnatpy" (propagates to caplog)."""
    user, password = sandbox.users[0].split(":", 1)
    return xnat.connect(
        sandbox.url, user=user, password=password, logger=logging.getLogger("xnatpy")
    )


# --- the schema, without a server ------------------------------------------------------------


class _Logger(logging.Logger):
    """xnatpy's parser logs through `logger.verbose`, which xnat.connect patches in globally."""

    def verbose(self, message, *args, **kwargs):
        self.debug(message, *args, **kwargs)


def test_xnatpy_builds_its_classes_from_the_served_schemas():
    """xnatpy's own SchemaParser turns every schema listed by /xapi/schemas into classes.

    Result: each xsi:type the sandbox returns has a class with XNAT's inheritance, so listings and
    `create_object` can map `xsiType` / `meta["xsi:type"]` to an object.
    """
    parser = convert_xsd.SchemaParser(logger=_Logger("xsd"))
    status, content_type, body = xapi.handle("GET", "/xapi/schemas", {"format": ["json"]}, "u")
    assert (status, content_type) == (200, "application/json")
    for name in json.loads(body):
        status, _, schema = xapi.handle("GET", f"/xapi/schemas/{name}", {}, "u")
        assert status == 200
        assert parser.parse_schema_xmlstring(schema.decode(), schema_uri=f"/xapi/schemas/{name}")

    code = io.StringIO()
    parser.write(code)
    namespace: dict[str, object] = {}
    exec(compile(code.getvalue(), "<xnatpy model>", "exec"), namespace)
    lookup: dict[str, type] = {}
    for prototype in parser.class_list.values():
        cls = namespace.get(prototype.writer.python_name)
        if cls is not None and hasattr(cls, "__register__"):
            cls.__register__(lookup)

    # Every type the sandbox can file, from the same functions the prearchive and archive use.
    modalities = ("MR", "CT", "PT", "US", "SR", "SC", "OT", "")
    served = {
        "xnat:projectData": mixin.ProjectData,
        "xnat:subjectData": mixin.SubjectData,
        "xnat:resourceCatalog": mixin.AbstractResource,
        "xnat:petmrSessionData": mixin.ImageSessionData,
    }
    for modality in modalities:
        served[prearchive_build.session_xsi_type({modality})] = mixin.ImageSessionData
        served[prearchive_build.scan_xsi_type(modality)] = mixin.ImageScanData
    assert prearchive_build.session_xsi_type({"PT", "MR"}) == "xnat:petmrSessionData"
    for xsi_type, base in served.items():
        assert issubclass(lookup[xsi_type], base), xsi_type
    assert issubclass(lookup["xnat:mrSessionData"], mixin.SubjectAssessorData)
    assert {row["ELEMENT_NAME"] for row in xapi.search_elements()} <= set(lookup)
    assert issubclass(lookup["xnat:mrSessionData"], mixin.ExperimentData)


# --- over sockets ----------------------------------------------------------------------------


def test_connect_probes_version_builds_model_and_lists_projects(sandbox, caplog):
    """1. xnat.connect logs in (PUT /data/services/auth, JSESSIONID) 2. probes the version
    3. builds classes from /xapi/schemas 4. lists projects. Result: an 1.8 session that sees the
    sandbox's project, a clean logout on exit, and not one warning from xnatpy on the way (a
    missing cookie, route or type would each be logged as one)."""
    caplog.set_level(logging.DEBUG, logger="xnatpy")
    with _connect(sandbox) as session:
        assert session.xnat_version == xapi.XNAT_VERSION
        assert session.xnat_build_info["version"] == xapi.XNAT_VERSION
        assert session.jsession
        assert "xnat:mrSessionData" in session.XNAT_CLASS_LOOKUP
        assert sandbox.projects[0] in session.projects
        assert session.projects[sandbox.projects[0]].id == sandbox.projects[0]
        assert session.session_expiration_time is not None
    assert sandbox.requests["DELETE /data/JSESSION"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def test_connect_with_a_wrong_password_is_a_login_error(sandbox):
    user = sandbox.users[0].split(":", 1)[0]
    with pytest.raises(xnat.exceptions.XNATLoginFailedError):
        xnat.connect(
            sandbox.url, user=user, password="not-the-password", logger=logging.getLogger("xnatpy")
        )


def test_access_levels_read_xnats_role_names(sandbox):
    """xnatpy's `access_levels` maps `/xapi/access/projects` rows to {ID: role}; it skips rows
    without an ID, such as the admin's ALL_DATA_ADMIN row, so the site admin (svc) has none."""
    with _connect(sandbox) as admin:
        assert admin.access_levels == {}
    with xnat.connect(
        sandbox.url, user="other", password="pw", logger=logging.getLogger("xnatpy")
    ) as owner:
        assert owner.access_levels == {"SPN01": "Owners", "SPN02": "Owners"}


def test_import_to_prearchive_archive_and_read_back(sandbox, tmp_path):
    """1. services.import_ a 50-file DICOM zip to /prearchive 2. find it in prearchive.sessions()
    3. archive it with explicit labels 4. read experiment, scan, DICOM resource and files back.
    Result: one MR session with scan 2 holding the same 50 files, byte for byte."""
    project = sandbox.projects[0]
    series = _stage(SERIES, tmp_path)
    upload = _zip(series, tmp_path / "series.zip")

    with _connect(sandbox) as session:
        _store_as_sent(session)
        prearchived = session.services.import_(
            upload,
            project=project,
            subject="SUBJ01",
            experiment="SUBJ01_MR1",
            destination="/prearchive",
            import_handler="DICOM-zip",
        )
        assert isinstance(prearchived, xnat.prearchive.PrearchiveSession)
        assert prearchived.status == "READY"

        listed = session.prearchive.sessions(project)
        assert [s.uri for s in listed] == [prearchived.uri]
        assert [s.uri for s in session.prearchive.sessions()] == [prearchived.uri]
        assert listed[0].name == "SUBJ01_MR1"
        assert listed[0].subject == "SUBJ01"
        assert [scan.id for scan in listed[0].scans.values()] == ["2"]

        experiment = prearchived.archive(project=project, subject="SUBJ01", experiment="SUBJ01_MR1")
        assert experiment.__xsi_type__ == "xnat:mrSessionData"
        assert experiment.label == "SUBJ01_MR1"
        assert session.prearchive.sessions(project) == []

        session.clearcache()
        subject = session.projects[project].subjects["SUBJ01"]
        experiment = subject.experiments["SUBJ01_MR1"]
        assert experiment.project == project
        assert list(experiment.scans.keys()) == ["2"]
        scan = experiment.scans["2"]
        assert scan.__xsi_type__ == "xnat:mrScanData"
        assert scan.type == "Ax fMRI"
        dicom = scan.resources["DICOM"]
        assert dicom.file_count == SERIES_FILES
        assert len(dicom.files) == SERIES_FILES
        assert _downloaded_md5s(dicom.files) == _md5s(series)
        first = next(iter(dicom.files.values()))
        assert int(first.size) == int(first.file_size) > 0  # HEAD on the file
        assert [s.label for s in session.subjects.values()] == ["SUBJ01"]


def test_import_dir_to_archive_then_attach_session_resources(sandbox, tmp_path):
    """1. services.import_dir a series folder (plus a stray text file, skipped because of
    ignore_unparsable) straight to /archive 2. create_resource("behav") and upload a zip with
    extract=True 3. create_resource("physio") and upload_dir (tar.gz + extract).
    Result: the experiment has the 21 DICOM files and both resources with the unpacked files."""
    project = sandbox.projects[0]
    series = _stage(LOCALIZER, tmp_path)
    upload = tmp_path / "upload"
    shutil.copytree(series, upload / series.name)
    (upload / series.name / "README.txt").write_text("exported by the console\n")

    sidecar = tmp_path / "behav"
    (sidecar / "run1").mkdir(parents=True)
    (sidecar / "run1" / "events.tsv").write_text("onset\tduration\n0\t1.5\n")
    (sidecar / "notes.txt").write_text("subject was calm\n")
    physio = tmp_path / "physio"
    physio.mkdir()
    (physio / "pulse.log").write_bytes(bytes(range(256)) * 40)

    with _connect(sandbox) as session:
        _store_as_sent(session)
        experiment = session.services.import_dir(
            upload,
            project=project,
            subject="SUBJ02",
            experiment="SUBJ02_MR1",
            destination=f"/archive/projects/{project}",
            import_handler="DICOM-zip",
            ignore_unparsable=True,
        )
        assert experiment.__xsi_type__ == "xnat:mrSessionData"
        assert experiment.label == "SUBJ02_MR1"
        dicom = experiment.scans["1"].resources["DICOM"]
        assert len(dicom.files) == LOCALIZER_FILES
        assert _downloaded_md5s(dicom.files) == _md5s(series)

        behav = experiment.create_resource("behav")
        bundle = shutil.make_archive(str(tmp_path / "behav"), "zip", sidecar)
        behav.upload(bundle, "behav.zip", extract=True)
        physio_resource = experiment.create_resource("physio")
        physio_resource.upload_dir(physio)

        session.clearcache()
        experiment = session.projects[project].subjects["SUBJ02"].experiments["SUBJ02_MR1"]
        assert {r.label for r in experiment.resources.values()} == {"behav", "physio"}
        behav = experiment.resources["behav"]
        assert sorted(behav.files.keys()) == ["notes.txt", "run1/events.tsv"]
        assert _downloaded_md5s(behav.files) == _md5s(sidecar)
        physio_files = experiment.resources["physio"].files
        assert list(physio_files.keys()) == ["pulse.log"]
        assert _downloaded_md5s(physio_files) == _md5s(physio)
