"""`transport = "dicom"`: the pipeline sends by C-STORE to the sandbox's DICOM receiver (XNAT's
DicomSCP, reference §9) and ends with the same archived session as the REST transport.

Real parts only: the sandbox over HTTP with its pynetdicom receiver on a free port, xnatdrop's
sender (`dimse`), real processes for kill -9 (the `XNATDROP_TEST_CRASH_AT` hook). Data: two
whole GE 3-Plane Localizer series (21 instances each) of `ge_signa_premier_table` plus sidecar
files (`push_helpers.stage`). Their headers carry no `Project:` comment and no StudyDescription
or AccessionNumber naming a project, so a stock receiver files them in Unassigned, and a
receiver bound to the project files them there.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from push_helpers import (
    PASSWORD,
    PROJECT,
    USER,
    assert_archived_once,
    client,
    done_folder,
    load,
    push_process,
    snapshot,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox
from xnat_sandbox.dicom_receiver import Receiver
from xnatdrop import config, ledger, pipeline

LABEL = "SPN01_0007"
SERIES = ("01_3_Plane_Localizer_FF", "05_3_Plane_Localizer_HF")  # 42 instances
INSTANCES = 42
Factory = Callable[..., Sandbox]


def dicom_config(tmp_path: Path, server: Sandbox, called_aet: str = "XNAT", **push: Any) -> Path:
    """A config whose one drop root goes by C-STORE to `server`'s receiver."""
    path = write_config(
        tmp_path,
        server.url,
        f'[dicom]\nhost = "127.0.0.1"\nport = {server.dicom_port}\ncalled_aet = "{called_aet}"\n'
        "retry_wait_seconds = 0.01\nattempts = 2\n",
        **push,
    )
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(f'project = "{PROJECT}"\n', f'project = "{PROJECT}"\ntransport = "dicom"\n'),
        encoding="utf-8",
    )
    return path


def push(settings: config.Config, folder: Path) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings))


def archived(settings: config.Config, label: str) -> dict[str, Any]:
    """What XNAT holds of the session, as a person would compare two of them: project, subject,
    label, scans (ID, type, file count), SOPInstanceUIDs, session resources and their files."""
    with client(settings) as xnat_client:
        session = xnat_client.find_session(PROJECT, label)
        assert session is not None
        scans = xnat_client.session_scans(PROJECT, session.subject, label)
        uids = sorted(
            entry.uid
            for scan in scans
            for entry in xnat_client.scan_catalog(PROJECT, session.subject, label, scan["ID"])
        )
        resources = {
            name: sorted(f.path for f in files)
            for name in ("behav", "physio", "logs")
            if (files := xnat_client.resource_files(PROJECT, session.subject, label, name))
            is not None
        }
        files = xnat_client.session_files(PROJECT, session.subject, label)
    counts: dict[str, int] = {}
    for f in files:
        if f.resource == "DICOM":
            counts[f.scan] = counts.get(f.scan, 0) + 1
    return {
        "project": session.project,
        "subject": session.subject,
        "label": session.label,
        "scans": sorted((s["ID"], s.get("type", ""), counts.get(s["ID"], 0)) for s in scans),
        "uids": uids,
        "resources": resources,
    }


@pytest.mark.parametrize(
    "receivers",
    [
        pytest.param([Receiver()], id="stock-receiver-files-in-unassigned"),
        pytest.param([Receiver(project=PROJECT)], id="receiver-bound-to-the-project"),
    ],
)
def test_dicom_transport_archives_the_same_session_as_rest(
    tmp_path: Path, sandbox_factory: Factory, receivers: list[Receiver]
) -> None:
    """1. The same subject folder (two series, behav/ and physio/) is staged twice.
    2. One copy is pushed by REST into one sandbox, the other by C-STORE into a second one
       whose receiver is a stock one (XNAT files the study in Unassigned; xnatdrop, as a site
       admin, moves it into the project) or one bound to the project.
    Result: the same archived session in both (project, subject, label, scans, instance UIDs,
    resources); the DICOM one went through the receiver (42 C-STOREs, no import request), left
    no prearchive row anywhere, and its receipt says it went by DICOM.
    """
    users = [f"{USER}:{PASSWORD}"]
    rest_server = sandbox_factory(users=users, projects=[PROJECT])
    dicom_server = sandbox_factory(
        users=users, projects=[PROJECT], dicom_port=0, dicom_receivers=receivers
    )
    for side in ("rest", "dicom"):
        (tmp_path / side).mkdir()
    rest_settings = load(write_config(tmp_path / "rest", rest_server.url))
    dicom_settings = load(dicom_config(tmp_path / "dicom", dicom_server))
    for side in ("rest", "dicom"):
        stage(tmp_path / side / "drop", LABEL, SERIES)
    original = snapshot(tmp_path / "dicom" / "drop" / LABEL)

    by_rest = push(rest_settings, tmp_path / "rest" / "drop" / LABEL)
    by_dicom = push(dicom_settings, tmp_path / "dicom" / "drop" / LABEL)

    assert (by_rest.kind, by_dicom.kind) == ("archived", "archived"), (by_rest, by_dicom)
    assert_archived_once(dicom_settings, LABEL, original, dicom_count=INSTANCES)
    expected = archived(rest_settings, LABEL)
    assert archived(dicom_settings, LABEL) == expected
    assert expected["resources"] == {
        "behav": ["responses.csv", "run2/responses.csv"],
        "physio": ["resp_001.log"],
    }
    assert dicom_server.dicom is not None and dicom_server.dicom.stored == INSTANCES
    assert dicom_server.requests.get("POST /data/services/import", 0) == 0
    with client(dicom_settings) as xnat_client:
        assert xnat_client.prearchive_all() == []  # nothing left in Unassigned either
    done = done_folder(tmp_path / "dicom", LABEL)
    receipt = json.loads((done / "RECEIPT.json").read_text(encoding="utf-8"))
    assert receipt["transport"] == "dicom"
    assert receipt["sent"]["instances"] == INSTANCES
    assert receipt["sent"]["moved_from_unassigned"] is (receivers[0].project is None)
    text = (done / "RECEIPT.txt").read_text(encoding="utf-8")
    receiver = f"XNAT@127.0.0.1:{dicom_server.dicom_port}"
    assert f"Sent by DICOM (C-STORE) to XNAT's receiver {receiver}, 42 instances." in text
    rest_receipt = json.loads(
        (done_folder(tmp_path / "rest", LABEL) / "RECEIPT.json").read_text(encoding="utf-8")
    )
    assert rest_receipt["transport"] == "rest"
    assert not list((tmp_path / "dicom" / "state" / "spool").rglob("*.jsonl")), "journal kept"


@pytest.mark.slow
def test_kill_9_mid_series_then_rerun_sends_only_the_rest(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """1. `xnatdrop push` is SIGKILLed once the receiver has stored 10 instances of the first
       series (the crash hook `import:instances=10`).
    2. It is run again without the hook.
    Result: the receiver got each of the 42 instances exactly once (10 + the 32 the journal
    lacked), and one session is archived with every instance.
    """
    server = sandbox_factory(
        users=[f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0,
        dicom_receivers=[Receiver(project=PROJECT)],
    )  # fmt: skip
    config_path = dicom_config(tmp_path, server)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at="import:instances=10")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert server.dicom is not None and server.dicom.stored == 10
    [journal] = (tmp_path / "state" / "spool").rglob("dicom-journal.jsonl")
    stored = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert [entry["outcome"] for entry in stored] == ["stored"] * 10
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 0, rerun.stderr
    assert server.dicom.stored == INSTANCES  # only the 32 not yet stored were sent again
    assert_archived_once(settings, LABEL, original, dicom_count=INSTANCES)
    assert "10 stored before" in rerun.stderr
    assert not journal.exists()


def test_a_refused_called_ae_title_quarantines_with_the_title_and_the_fix(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """The receiver knows AE title XNAT only; the config calls WRONG_AE. Result: quarantined
    at once (a permanent refusal, no retry loop) with DICOM_AE_REFUSED, a reason naming the AE
    title and the [dicom] key to fix, nothing stored, the folder intact."""
    server = sandbox_factory(users=[f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0)
    settings = load(dicom_config(tmp_path, server, called_aet="WRONG_AE"))
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    original = snapshot(folder)
    outcome = push(settings, folder)
    assert (outcome.kind, outcome.code) == ("quarantined", "DICOM_AE_REFUSED"), outcome
    assert "is not AE title WRONG_AE" in outcome.message
    assert outcome.path is not None
    reason = json.loads((outcome.path / "QUARANTINE.json").read_text(encoding="utf-8"))
    assert reason["code"] == "DICOM_AE_REFUSED"
    assert "dicom.called_aet" in reason["fix"]
    kept = snapshot(outcome.path)
    assert {k: v for k, v in kept.items() if not k.startswith("QUARANTINE")} == original
    assert server.dicom is not None and server.dicom.stored == 0
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        assert drop.attempts <= 1  # quarantined on the first refusal, not retried


def test_a_study_the_account_cannot_see_is_explained_not_retried(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """The upload account owns the project but is not a site admin, so it does not see
    Unassigned, where the stock receiver files the study (it has no `Project:` comment).
    Result: one push quarantines it with XNAT_DICOM_UNFILED and a reason that says where the
    data went and how to bind the receiver; the push does not loop."""
    server = sandbox_factory(
        users=["admin:admin", f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0
    )
    settings = load(dicom_config(tmp_path, server, ready_timeout_seconds=1))
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    outcome = push(settings, folder)
    assert (outcome.kind, outcome.code) == ("quarantined", "XNAT_DICOM_UNFILED"), outcome
    assert "Unassigned" in outcome.message and USER in outcome.message
    assert outcome.path is not None
    reason = json.loads((outcome.path / "QUARANTINE.json").read_text(encoding="utf-8"))
    assert "bind XNAT's DICOM receiver to project SPN01" in reason["fix"]
    assert server.dicom is not None and server.dicom.stored == INSTANCES


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_at", ["import:before", "import:after", "verify:after", "archive:after"]
)
def test_kill_9_at_a_step_boundary_then_rerun(
    tmp_path: Path, sandbox_factory: Factory, crash_at: str
) -> None:
    """`xnatdrop push` with a stock receiver (the study lands in Unassigned and is moved) is
    SIGKILLed around the C-STORE import and the archive, then run again: it resumes from the
    ledger and the journal, sends no instance twice, and archives exactly once."""
    server = sandbox_factory(users=[f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0)
    config_path = dicom_config(tmp_path, server)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 0, rerun.stderr
    assert server.dicom is not None and server.dicom.stored == INSTANCES
    assert_archived_once(settings, LABEL, original, dicom_count=INSTANCES)
    with client(settings) as xnat_client:
        assert xnat_client.prearchive_all() == []
    receipt = json.loads((done_folder(tmp_path, LABEL) / "RECEIPT.json").read_text("utf-8"))
    assert receipt["transport"] == "dicom" and receipt["sent"]["moved_from_unassigned"] is True


@pytest.mark.slow
def test_a_prearchive_copy_lost_after_sending_is_sent_again_whole(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """1. `xnatdrop push` is SIGKILLed before the verify step: every instance is stored and the
       journal says so.
    2. Someone deletes the prearchive session in XNAT.
    3. The push is run again.
    Result: the verify step finds the session gone and asks for a resend; the journal's claims
    no longer hold (XNAT shows nothing of the study), so every instance is sent again, and one
    session is archived with all of them.
    """
    server = sandbox_factory(
        users=[f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0,
        dicom_receivers=[Receiver(project=PROJECT)],
    )  # fmt: skip
    config_path = dicom_config(tmp_path, server)
    settings = load(config_path)
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    original = snapshot(folder)
    killed = push_process(config_path, folder, crash_at="verify:before")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with client(settings) as xnat_client:
        [entry] = xnat_client.prearchive_entries(PROJECT)
        xnat_client.delete_prearchive(entry.uri)
    rerun = push_process(config_path, folder)
    assert rerun.returncode == 0, rerun.stderr
    assert server.dicom is not None and server.dicom.stored == 2 * INSTANCES
    assert "sending every series again" in rerun.stderr
    assert_archived_once(settings, LABEL, original, dicom_count=INSTANCES)


def test_an_unreachable_receiver_is_a_wait_not_a_quarantine(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """The receiver is stopped after the config was written. Result: the push ends transient
    with DICOM_UNREACHABLE and a message naming the address; the folder waits (nothing moved to
    quarantine), and `status`'s sentence is that message."""
    server = sandbox_factory(users=[f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0)
    settings = load(dicom_config(tmp_path, server, inline_attempts=1))
    port = server.dicom_port
    assert server.dicom is not None
    server.dicom.stop()
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    outcome = push(settings, folder)
    assert (outcome.kind, outcome.code) == ("transient", "DICOM_UNREACHABLE"), outcome
    assert f"cannot connect to 127.0.0.1:{port}" in outcome.message
    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())
    with ledger.Ledger(settings.paths.state) as book:
        (drop,) = book.drops(PROJECT, LABEL)
        assert drop.last_error_code == "DICOM_UNREACHABLE"
        assert drop.state == "packed" and not drop.final


def test_a_receiver_failing_every_instance_goes_through_the_circuit_breaker(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """XNAT's importer fails every instance (a site script writes a value the header cannot
    hold), so the receiver answers 0xC000 "cannot understand", which XNAT also answers for its
    own disk or database failures. Result: after the retries inside the push, the drop is not
    quarantined at once but waits (XNAT_SUSPECT) as a REST drop with the importer's 400 does;
    the folder stays where it is, nothing is in quarantine/."""
    server = sandbox_factory(users=[f"{USER}:{PASSWORD}"], projects=[PROJECT], dicom_port=0)
    with client(load(dicom_config(tmp_path, server))) as xnat_client:
        xnat_client.request(
            "PUT",
            "/xapi/anonymize/site",
            data='(0020,0013) := "not a number"',
            headers={"Content-Type": "text/plain"},
        )
    settings = load(dicom_config(tmp_path, server))
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    outcome = push(settings, folder)
    assert (outcome.kind, outcome.code) == ("transient", "XNAT_SUSPECT"), outcome
    assert "0xC000" in outcome.message and "tried again before quarantining" in outcome.message
    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())
    with ledger.Ledger(settings.paths.state) as book:
        [answer] = {a.answer for a in book.answers() if a.answer}
        assert answer == "C-STORE status 0xC000"


def test_a_study_routed_into_another_project_is_left_there_and_explained(
    tmp_path: Path, sandbox_factory: Factory
) -> None:
    """The receiver is bound to SPN02, the drop root to SPN01. Result: quarantined with
    XNAT_ROUTED_ELSEWHERE naming SPN02; the session XNAT filed in SPN02 is not moved or
    deleted (it is another project's), and nothing is archived in SPN01."""
    server = sandbox_factory(
        users=[f"{USER}:{PASSWORD}"], projects=[PROJECT, "SPN02"], dicom_port=0,
        dicom_receivers=[Receiver(project="SPN02")],
    )  # fmt: skip
    settings = load(dicom_config(tmp_path, server))
    folder = stage(tmp_path / "drop", LABEL, SERIES)
    outcome = push(settings, folder)
    assert (outcome.kind, outcome.code) == ("quarantined", "XNAT_ROUTED_ELSEWHERE"), outcome
    assert "in project SPN02, not in SPN01" in outcome.message
    with client(settings) as xnat_client:
        assert [e.project for e in xnat_client.prearchive_all()] == ["SPN02"]
        assert xnat_client.find_session(PROJECT, LABEL) is None
