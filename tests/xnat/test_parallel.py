"""A few reads at once (`xnat.fan_out`) and the streamed catalog, against a real sandbox.

The sandbox sits behind `GateFront`, which forwards every request and counts how many of a kind
were in flight together; it holds the first catalog read until a second arrives, so a client
that reads one at a time shows 1 and a concurrent one 2 or more, with no timing in the test.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Dicom
from gate_front import GateFront
from xnat_sandbox import Sandbox
from xnatdrop import config, logsetup, xnat

PROJECT = "SPN01"


def settings_for(url: str) -> config.XnatSettings:
    return config.XnatSettings(url=url, username="svc", timeout_seconds=30)


def catalog_read(method: str, path: str) -> bool:
    return method == "GET" and "/scans/" in path and path.rsplit("/", 2)[-2] == "resources"


@pytest.fixture
def gate(sandbox: Sandbox) -> Iterator[GateFront]:
    with GateFront(sandbox.port, {"catalog": catalog_read}) as front:
        yield front


def archive_two_scans(sandbox: Sandbox, dicom: Dicom, tmp_path: Path, label: str) -> set[str]:
    """Import and archive one session of two scans (GE series 1 and 5); its instance UIDs."""
    files = dicom.study(Dicom.files("1", 3) + Dicom.files("5", 3))
    upload = tmp_path / f"{label}.zip"
    upload.write_bytes(Dicom.zip(files))
    with xnat.XnatClient(settings_for(sandbox.url), "pw") as client:
        uri = client.import_zip(upload, project=PROJECT, subject=label, session=label)
        client.archive(uri, project=PROJECT, subject=label, session=label)
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_catalogs_are_read_concurrently_on_one_login(
    sandbox: Sandbox, gate: GateFront, dicom: Dicom, tmp_path: Path
) -> None:
    """Each worker has its own client from the factory but uses the lead's XNAT session: one
    login in all, the lead's session still good after the workers closed, one logout."""
    label = "SPN01_FAN"
    uids = archive_two_scans(sandbox, dicom, tmp_path, label)
    made = []

    def factory() -> xnat.XnatClient:
        made.append(xnat.XnatClient(settings_for(gate.url), "pw"))
        return made[-1]

    with factory() as lead:
        scans = sorted({f.scan for f in lead.session_files(PROJECT, label, label)})
        assert len(scans) == 2

        def read(client: xnat.XnatClient, scan: str) -> list[xnat.CatalogEntry]:
            return client.scan_catalog(PROJECT, label, label, scan)

        catalogs = xnat.fan_out(lead, factory, read, scans)
        assert lead.whoami() == "svc"  # the workers did not log the shared session out
    assert gate.most["catalog"] == 2
    assert [{e.scan for e in entries} for entries in catalogs] == [{s} for s in scans]
    assert {e.uid for entries in catalogs for e in entries} == uids
    assert len({id(client.http) for client in made}) == 3  # lead + 2 workers, own sessions
    assert (gate.logins, gate.logouts) == (1, 1)


def test_fan_out_raises_a_workers_error_after_all_stopped(
    sandbox: Sandbox, dicom: Dicom, tmp_path: Path
) -> None:
    label = "SPN01_FANERR"
    archive_two_scans(sandbox, dicom, tmp_path, label)

    def factory() -> xnat.XnatClient:
        return xnat.XnatClient(settings_for(sandbox.url), "pw")

    def read(client: xnat.XnatClient, scan: str) -> list[xnat.CatalogEntry]:
        return client.scan_catalog(PROJECT, label, label, scan)

    with factory() as lead, pytest.raises(xnat.XnatAnswer) as caught:
        xnat.fan_out(lead, factory, read, ["NOPE1", "NOPE2", "NOPE3"])
    assert caught.value.status == 404
    assert not [t for t in threading.enumerate() if t.name.startswith("xnat-read-")]


def tiny_dicom(folder: Path, study: str, series: str, index: int) -> Path:
    """A small MR instance without pixel data (a few hundred bytes), for many-file catalogs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = pydicom.Dataset()
    data.file_meta = meta
    data.SOPClassUID = meta.MediaStorageSOPClassUID
    data.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    data.StudyInstanceUID, data.SeriesInstanceUID = study, series
    data.SeriesNumber, data.InstanceNumber, data.Modality = 1, index + 1, "MR"
    data.PatientName, data.PatientID, data.StudyDate = "TINY^ONE", "TINY01", "20240101"
    path = folder / f"IM{index:05d}.dcm"
    data.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.alone
def test_a_large_catalog_is_parsed_in_little_memory(
    sandbox: Sandbox, dicom: Dicom, tmp_path: Path
) -> None:
    """The catalog of a scan of 2,000 files is parsed as it arrives: what is allocated beyond
    the entries kept is bounded by one piece of the answer, not by the document's size."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    files = [tiny_dicom(folder, study, series, i) for i in range(2000)]
    upload = tmp_path / "tiny.zip"
    upload.write_bytes(Dicom.zip(files))
    label = "SPN01_BIG"
    with xnat.XnatClient(settings_for(sandbox.url), "pw") as client:
        uri = client.import_zip(upload, project=PROJECT, subject=label, session=label)
        client.archive(uri, project=PROJECT, subject=label, session=label)
        (scan,) = {f.scan for f in client.session_files(PROJECT, label, label)}
        path = client._session_path(PROJECT, label, label) + f"/scans/{scan}/resources/DICOM"
        document = len(client.request("GET", path).content)
    # The client alone in a process of its own: the sandbox serves from this one, and what it
    # allocates to write the document must not count.
    measure = textwrap.dedent(
        f"""
        import json, tracemalloc
        from xnatdrop import config, xnat
        settings = config.XnatSettings(url={sandbox.url!r}, username="svc", timeout_seconds=30)
        with xnat.XnatClient(settings, "pw") as client:
            client.scan_catalog({PROJECT!r}, {label!r}, {label!r}, {scan!r})  # warmed up
            tracemalloc.start()
            catalog = client.scan_catalog({PROJECT!r}, {label!r}, {label!r}, {scan!r})
            kept, peak = tracemalloc.get_traced_memory()
        print(json.dumps([len(catalog), kept, peak]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", measure], capture_output=True, text=True, check=True, timeout=60
    )
    count, kept, peak = json.loads(done.stdout)
    assert count == 2000
    assert document > 400_000  # over 200 bytes an entry
    # Streamed: one piece's worth of elements at a time, whatever the scan's size (about 0.1
    # MB here); a whole tree and the answer held as bytes came to 2.2 MB for this scan.
    assert peak - kept < 200_000 < document, (peak, kept, document)


def test_workers_log_with_the_callers_label(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's log lines carry the drop's label, as the caller's do (a copied context)."""
    log = logging.getLogger("xnatdrop.test_parallel")

    def factory() -> xnat.XnatClient:
        return xnat.XnatClient(settings_for(sandbox.url), "pw")

    def who(client: xnat.XnatClient, item: int) -> str:
        log.warning("reading item %d", item)
        return client.whoami()

    caplog.set_level(logging.WARNING, logger="xnatdrop.test_parallel")
    with logsetup.log_context("SPN01_LOGGED"), factory() as lead:
        assert xnat.fan_out(lead, factory, who, [1, 2, 3]) == ["svc"] * 3
    lines = [r.getMessage() for r in caplog.records if r.name == "xnatdrop.test_parallel"]
    assert len(lines) == 3
    assert all("SPN01_LOGGED" in line for line in lines), lines
