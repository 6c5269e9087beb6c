"""Build and archive timing over real HTTP: the synchronous build behind an import with `dest`
(DicomZipImporter), a proxy's read timeout in front of it, the `_`-prefixed locks that make
`action=build` 409 and a second archive 403, and the archive's FAILED messages and locks as
XNAT's queue reports them.

The slow-build and slow-archive switches hold an operation until the test sets them back to 0,
so every step is observed in a known state; waits poll a condition with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from xnat_sandbox import archive, prearchive

ZIP = {"Content-Type": "application/zip"}
LOCKED_BY_ARCHIVE = "Operation already in progress on this prearchive entry."


def h3(response) -> str:
    return re.search(r"<h3>(.*)</h3>", response.text, re.S).group(1)


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll `condition` until true; fail when the deadline passes."""
    pause = threading.Event()
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        pause.wait(0.02)


@pytest.fixture
def background() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def statuses(svc) -> list[str]:
    return [r["status"] for r in svc.json_rows("/data/prearchive/projects/SPN01")]


def import_url(sandbox) -> str:
    return sandbox.url + "/data/services/import"


def import_params(label: str, dest: str = "/prearchive") -> dict[str, str]:
    return {
        "import-handler": "DICOM-zip",
        "project": "SPN01",
        "subject": label.split("_")[0],
        "session": label,
        "dest": dest,
    }


def prearchived(svc, dicom, label: str, files=None) -> str:
    """A READY prearchive session (built through dest) of a fresh study; its /data URI."""
    files = files or dicom.study(dicom.files(count=2))
    response = svc.import_zip(dicom.zip(files), **import_params(label))
    assert response.status_code == 200, response.text
    return response.text.strip()


def archive_in(sandbox, src: str, **fields: str) -> requests.Response:
    return requests.post(
        sandbox.url + "/data/services/archive", data={"src": src, **fields}, auth=("svc", "pw")
    )


# -- the build --------------------------------------------------------------------------------


def test_an_import_with_dest_answers_only_after_its_build(sandbox, svc, dicom, background):
    """1. slow build on 2. POST the import with dest=/prearchive 3. the row reads BUILDING and the
    import has not answered 4. the build ends. Result: the import answers 200, the row is READY."""
    sandbox.slow_build(60)
    data = dicom.zip(dicom.study(dicom.files(count=2)))
    pending = background.submit(
        requests.post,
        import_url(sandbox),
        params=import_params("T01_MR1"),
        data=data,
        headers=ZIP,
        auth=("svc", "pw"),
    )
    wait_for(lambda: statuses(svc) == ["BUILDING"])
    assert not pending.done()
    sandbox.slow_build(0)
    response = pending.result(timeout=30)
    assert response.status_code == 200
    assert statuses(svc) == ["READY"]


def test_a_proxy_timeout_gives_504_while_the_sandbox_goes_on_building(sandbox, svc, dicom):
    """1. slow build on, a proxy with a read timeout in front of the import 2. POST the import
    Result: 504 from the "proxy" after the whole body was sent; the row reads BUILDING and
    becomes READY when the build ends: one session, which a client must find, not resend."""
    sandbox.slow_build(60)
    sandbox.proxy_timeout("^/data/services/import$", seconds=0.2)
    data = dicom.zip(dicom.study(dicom.files(count=3)))
    response = svc.import_zip(data, **import_params("T02_MR1"))
    assert response.status_code == 504
    assert "<h1>504 Gateway Time-out</h1>" in response.text
    assert statuses(svc) == ["BUILDING"]
    assert sandbox.faults.describe()["rules"] == []  # count 1: consumed
    sandbox.slow_build(0)
    wait_for(lambda: statuses(svc) == ["READY"])
    [row] = svc.json_rows("/data/prearchive/projects/SPN01")
    files = svc.json_rows(f"/data{row['url']}/scans/1/resources/DICOM/files")
    assert len(files) == 3


def test_a_row_deleted_while_it_is_built_fails_the_import(sandbox, svc, dicom, background):
    """BUILDING is not a locked status: a DELETE is accepted mid-build, and the import that was
    building it then fails as DicomZipImporter.xmlBuild reports any failure."""
    sandbox.slow_build(60)
    data = dicom.zip(dicom.study(dicom.files(count=1)))
    pending = background.submit(
        requests.post,
        import_url(sandbox),
        params=import_params("T03_MR1"),
        data=data,
        headers=ZIP,
        auth=("svc", "pw"),
    )
    wait_for(lambda: statuses(svc) == ["BUILDING"])
    [row] = svc.json_rows("/data/prearchive/projects/SPN01")
    assert svc.delete("/data" + row["url"]).status_code == 200
    sandbox.slow_build(0)
    response = pending.result(timeout=30)
    assert (response.status_code, h3(response)) == (
        400,
        "unable to archive for the Prearchive session",
    )
    assert statuses(svc) == []


# -- locks ------------------------------------------------------------------------------------


def test_build_is_refused_409_exactly_while_the_row_is_locked(sandbox, svc, dicom, background):
    """PrearcDatabase.isLocked: only `_`-prefixed statuses lock a row. An archive holds
    `_ARCHIVING` while it runs; meanwhile build and commit are 409 "session document locked", a
    second archive 403, and set-status leaves the row alone."""
    uri = prearchived(svc, dicom, "T04_MR1")
    for status in ("BUILDING", "ARCHIVING", "MOVING", "DELETING", "QUEUED_ARCHIVING", "CONFLICT"):
        assert svc.post(uri, params={"action": "set-status", "status": status}).status_code == 200
        built = svc.post(uri, params={"action": "build"})
        assert built.status_code == 200, (status, built.text)
    sandbox.slow_archive(60)
    pending = background.submit(archive_in, sandbox, uri)
    wait_for(lambda: statuses(svc) == ["_ARCHIVING"])
    for action in ("build", "commit"):
        locked = svc.post(uri, params={"action": action})
        assert (locked.status_code, h3(locked)) == (409, "session document locked")
    second = svc.post("/data/services/archive", data={"src": uri})
    assert (second.status_code, h3(second)) == (403, LOCKED_BY_ARCHIVE)
    assert svc.post(uri, params={"action": "set-status", "status": "READY"}).status_code == 200
    assert statuses(svc) == ["_ARCHIVING"]
    sandbox.slow_archive(0)
    assert pending.result(timeout=30).status_code == 200
    assert statuses(svc) == []


def test_a_locked_row_is_never_archived_twice(sandbox, svc, dicom, background):
    """Behind the 403, archive_session itself refuses a locked row, leaving its status alone
    (PrearchiveArchiveHandler: "Unable to lock session for archiving.")."""
    uri = prearchived(svc, dicom, "T05_MR1")
    sandbox.slow_archive(60)
    pending = background.submit(archive_in, sandbox, uri)
    wait_for(lambda: statuses(svc) == ["_ARCHIVING"])
    project, timestamp, folder = uri.split("/")[-3:]
    row = prearchive.find(sandbox.store, project, timestamp, folder)
    with pytest.raises(archive.ArchiveLocked, match="Unable to lock session for archiving"):
        archive.archive_session(
            sandbox, row, allow_merge=True, override=False, overwrite_files=False
        )
    assert statuses(svc) == ["_ARCHIVING"]
    sandbox.slow_archive(0)
    assert pending.result(timeout=30).status_code == 200


def test_archives_into_one_experiment_at_once_meet_the_destination_lock(
    sandbox, svc, dicom, background
):
    """1. T06_MR1 is archived 2. a second prearchive session of it is being merged in (slow)
    3. a third prearchive session of the same experiment is archived meanwhile. Result: 500
    "FAILED: … Duplicate archive attempt.  Destination session in use." (the archiver's 423,
    reported through XNAT's queue) and that row ERROR; the merge in progress completes."""
    first, second, third = dicom.study(dicom.files(count=3))
    archived = archive_in(sandbox, prearchived(svc, dicom, "T06_MR1", [first]))
    assert archived.status_code == 200, archived.text
    merging = prearchived(svc, dicom, "T06_MR1", [second])
    sandbox.slow_archive(60)
    pending = background.submit(archive_in, sandbox, merging, session="T06_MR1")
    wait_for(lambda: statuses(svc) == ["_ARCHIVING"])
    other = prearchived(svc, dicom, "T06_MR1", [third])  # beside the locked row: a new folder
    assert other != merging
    refused = svc.post("/data/services/archive", data={"src": other, "session": "T06_MR1"})
    folder = other.rsplit("/", 1)[1]
    assert refused.status_code == 500
    assert h3(refused) == (
        f"FAILED: Unable to archive {folder}: Operation Failed: "
        "Duplicate archive attempt.  Destination session in use."
    )
    assert sorted(statuses(svc)) == ["ERROR", "_ARCHIVING"]
    sandbox.slow_archive(0)
    assert pending.result(timeout=30).status_code == 200
    assert statuses(svc) == ["ERROR"]


def test_an_open_workflow_refuses_a_merge_unless_overwrite(sandbox, svc, dicom):
    """PrearcSessionArchiver.preventConcurrentArchiving: merging into an experiment whose
    pipeline is still running is a conflict (row CONFLICT), unless overwrite is given."""
    first, second = dicom.study(dicom.files(count=2))
    assert archive_in(sandbox, prearchived(svc, dicom, "T07_MR1", [first])).status_code == 200
    sandbox.open_workflow("SPN01", "T07_MR1", "AutoRun")
    src = prearchived(svc, dicom, "T07_MR1", [second])
    refused = svc.post("/data/services/archive", data={"src": src})
    assert refused.status_code == 500
    assert h3(refused) == (
        f"FAILED: Unable to archive {src.rsplit('/', 1)[1]}: Operation Failed: Session processing "
        "may already be in progress: AutoRun.  Concurrent modification is discouraged."
    )
    assert statuses(svc) == ["CONFLICT"]
    merged = svc.post("/data/services/archive", data={"src": src, "overwrite": "append"})
    assert merged.status_code == 200, merged.text
    files = svc.json_rows("/data/projects/SPN01/experiments/T07_MR1/scans/ALL/files")
    assert len(files) == 2


def test_the_timing_switches_through_the_admin_api(sandbox, svc):
    admin = f"{sandbox.url}/_sandbox"
    assert svc.post(admin + "/slow-build", json={"seconds": 5}).json()["build_delay"] == 5.0
    rule = svc.post(admin + "/proxy-timeout", json={"path": "import", "seconds": 1}).json()
    assert rule["rules"] == [
        {"kind": "timeout", "path": "import", "method": None, "count": 1, "seconds": 1.0}
    ]
    opened = svc.post(admin + "/workflow", json={"project": "SPN01", "label": "X", "pipeline": "P"})
    assert opened.json() == {"workflows": [["SPN01", "X", "P"]]}
    closed = svc.post(admin + "/workflow", json={"project": "SPN01", "label": "X"})
    assert closed.json() == {"workflows": []}
    cleared = svc.delete(admin + "/faults").json()
    assert (cleared["rules"], cleared["build_delay"]) == ([], 0.0)
