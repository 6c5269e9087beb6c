"""Conformance: the unmodified pyxnat client against the sandbox, over sockets.

pyxnat speaks to XNAT differently from xnatpy: Basic auth on every request, every table read as
`format=csv`, resources addressed by numeric ID, files POSTed raw with `inbody=true` and no
Content-Type. This module drives those paths with a real GE series from the shared set
`ge_signa_premier_table` (copied to tmp_path): list projects, put a session in the prearchive and
inspect it through `interface.manage.prearchive`, archive it (pyxnat has no archive call, so
through its own `Interface.post`), walk project/subject/experiment/scan/resource/file, create a
resource and upload files and a zip with extract.

Failures here mean the SERVER differs from XNAT (docs/sandbox-clients.md); the client is never
patched.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
import pyxnat
import pyxnat.core.errors

import shared_data
from xnat_sandbox import xapi

SERIES = "In/GE/Exam1486_Laser794mm/01_3_Plane_Localizer_FF"  # 21 files, SeriesNumber 1
SERIES_FILES = 21


def _stage(tmp_path: Path) -> Path:
    source = shared_data.dataset("ge_signa_premier_table") / SERIES
    target = tmp_path / "drop" / Path(SERIES).name
    shutil.copytree(source, target)
    return target


def _zip(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _md5s(folder: Path) -> list[str]:
    return sorted(_md5(p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def _interface(sandbox, password: str | None = None) -> pyxnat.Interface:
    user, secret = sandbox.users[0].split(":", 1)
    return pyxnat.Interface(server=sandbox.url, user=user, password=password or secret)


def _prearchive(interface: pyxnat.Interface, project: str, folder: Path, tmp_path: Path) -> str:
    """POST a DICOM zip to the import service with pyxnat's own request wrapper.

    pyxnat has no import call; scripts use `Interface.post` exactly like this.
    """
    upload = _zip(folder, tmp_path / "series.zip")
    response = interface.post(
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "dest": f"/prearchive/projects/{project}",
            "PROJECT_ID": project,
            "SUBJECT_ID": "PX01",
            "EXPT_LABEL": "PX01_MR1",
        },
        data=upload.read_bytes(),
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 200, response.text
    return response.text.strip()


def test_interface_lists_projects_and_reports_version(sandbox):
    """pyxnat: Basic auth, GET /data/JSESSION, tables as CSV; version() falls back to /xapi."""
    interface = _interface(sandbox)
    try:
        assert sandbox.projects[0] in interface.select.projects().get()
        assert interface.select.project(sandbox.projects[0]).exists()
        assert not interface.select.project("NO_SUCH_PROJECT").exists()
        assert interface.version()["version"] == xapi.XNAT_VERSION
    finally:
        interface.disconnect()


def test_wrong_password_is_refused(sandbox):
    """A bad Basic password is a 401 on every call (collections swallow errors; `_exec` doesn't)."""
    interface = _interface(sandbox, password="not-the-password")
    assert interface.select.projects().get() == []
    with pytest.raises(pyxnat.core.errors.DatabaseError, match="status code: 401"):
        interface.manage.prearchive.get()


def test_prearchive_archive_and_walk_the_archive(sandbox, tmp_path):
    """1. import a 21-file zip to the prearchive 2. see it through manage.prearchive (get, status,
    scans, resources, files) 3. archive it 4. walk the archive down to the files and download one.
    Result: the archived scan holds the same bytes as the source series."""
    project = sandbox.projects[0]
    series = _stage(tmp_path)
    interface = _interface(sandbox)
    try:
        # XNAT's site script would rewrite every header: off, through its admin endpoint.
        interface.put("/xapi/anonymize/site/enabled?enable=false")
        assert interface.get("/xapi/anonymize/site/enabled").json() is False
        uri = _prearchive(interface, project, series, tmp_path)
        assert uri.startswith(f"/data/prearchive/projects/{project}/")
        _, timestamp, folder = uri.rsplit("/", 2)
        triple = [project, timestamp, folder]

        prearchive = interface.manage.prearchive
        assert triple in prearchive.get()
        assert prearchive.status(triple) == "READY"
        assert prearchive.get_uri(triple) == uri.removeprefix("/data")
        # JsonTable.get answers a bare value for a one-row table, a list otherwise.
        assert prearchive.get_scans(triple) == "1"
        assert prearchive.get_resources(triple, "1") == "DICOM"
        assert len(prearchive.get_files(triple, "1", "DICOM")) == SERIES_FILES

        response = interface.post(
            "/data/services/archive",
            data={"src": uri, "subject": "PX01", "session": "PX01_MR1"},
        )
        assert response.status_code == 200, response.text
        assert response.text.strip() == (
            f"/data/archive/projects/{project}/subjects/PX01/experiments/PX01_MR1"
        )
        assert triple not in prearchive.get()

        subject = interface.select.project(project).subject("PX01")
        assert subject.exists()
        experiment = subject.experiment("PX01_MR1")
        assert experiment.exists()
        assert experiment.datatype() == "xnat:mrSessionData"
        assert experiment.label() == "PX01_MR1"
        assert experiment.xpath("//xnat:scan/@ID") == ["1"]  # the session XML (format=xml)
        assert experiment.scans().get() == ["1"]
        scan = experiment.scan("1")
        assert scan.datatype() == "xnat:mrScanData"
        assert repr(scan).startswith("<Scan Object> 1 (`3-Plane Localizer`")  # columns=...frames
        assert [resource.label() for resource in scan.resources()] == ["DICOM"]
        files = [f.attributes() for f in scan.resource("DICOM").files()]
        assert len(files) == SERIES_FILES
        assert sorted(f["digest"] for f in files) == _md5s(series)
        assert {int(f["Size"]) for f in files} <= {p.stat().st_size for p in series.iterdir()}
        first = scan.resource("DICOM").file(files[0]["path"])
        downloaded = Path(first.get(str(tmp_path / "one.dcm")))
        assert _md5(downloaded.read_bytes()) == files[0]["digest"]
    finally:
        interface.disconnect()


def test_create_resource_and_upload_files(sandbox, tmp_path):
    """1. put a session in the archive 2. resource("behav").create() 3. file(...).put(path) (raw
    POST, inbody=true, resource addressed by ID) 4. put_zip(..., extract=True).
    Result: the resource lists the single file and the unpacked zip members with their MD5s."""
    project = sandbox.projects[0]
    interface = _interface(sandbox)
    try:
        uri = _prearchive(interface, project, _stage(tmp_path), tmp_path)
        response = interface.post("/data/services/archive", data={"src": uri})
        assert response.status_code == 200, response.text
        experiment = interface.select.project(project).subject("PX01").experiment("PX01_MR1")

        behav = experiment.resource("behav")
        assert not behav.exists()
        behav.create()
        assert behav.exists()
        assert [resource.label() for resource in experiment.resources()] == ["behav"]

        events = tmp_path / "events.tsv"
        events.write_text("onset\tduration\n0\t1.5\n")
        behav.file("events.tsv").put(str(events))

        bundle_dir = tmp_path / "bundle"
        (bundle_dir / "run1").mkdir(parents=True)
        (bundle_dir / "run1" / "log.txt").write_text("run 1 ok\n")
        (bundle_dir / "summary.csv").write_text("run,ok\n1,yes\n")
        behav.put_zip(str(_zip(bundle_dir, tmp_path / "bundle.zip")), extract=True)

        files = [f.attributes() for f in behav.files()]
        assert sorted(f["path"] for f in files) == ["events.tsv", "run1/log.txt", "summary.csv"]
        assert sorted(f["digest"] for f in files) == sorted(
            [_md5(events.read_bytes()), *_md5s(bundle_dir)]
        )
        fetched = Path(behav.file("run1/log.txt").get(str(tmp_path / "log.txt")))
        assert fetched.read_text() == "run 1 ok\n"
    finally:
        interface.disconnect()
