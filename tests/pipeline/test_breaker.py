"""The circuit breaker (`xnatdrop.breaker`): one XNAT problem never quarantines every drop.

Over real HTTP against the sandbox, on real GE series (`ge_signa_premier_table`, BSD-2-Clause,
see push_helpers). XNAT's storage failing is staged with `/_sandbox/fail`: every import answers
400 with XNAT's status page "unable to read DICOM object {entry}", which is what
GradualDicomImporter.call answers for any server-side failure, a full disk included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from daemon_helpers import run_with, wait_for
from push_helpers import (
    PASSWORD,
    SMALL,
    archived_sessions,
    client,
    load,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox, tables
from xnatdrop import cli, config, daemon, ledger, pipeline

LABELS = ("SPN01_0021", "SPN01_0022", "SPN01_0023")


def push(settings: config.Config, folder: Path) -> pipeline.Outcome:
    with ledger.Ledger(settings.paths.state) as book:
        return pipeline.process(folder, settings, book, lambda: client(settings))


def storage_fails(server: Sandbox, entry: str = "series/IM0001.dcm") -> None:
    page = tables.error_page(400, f"unable to read DICOM object {entry}")
    server.fail("^/data/services/import$", status=400, count=None, body=page.decode())


def quarantined(tmp_path: Path) -> list[str]:
    folder = tmp_path / "quarantine"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_burst_of_identical_400s_holds_pushes_instead_of_quarantining(
    tmp_path: Path,
    server: Sandbox,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1. XNAT's storage fails: every import answers 400 "unable to read DICOM object …".
    2. Three different drops are pushed, then the first again.
    Result: nothing is quarantined. The first two wait to see whether XNAT answers others the
    same way; the third opens the breaker: one ALERT, pushes held, `status` says so in one
    sentence and exits 1, and the first drop, tried again, is held too.
    3. XNAT is fixed; a restart tries at once. Result: the try archives, the breaker closes and
    every drop that waited is due at once and archived; each session once, nothing lost."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    config_path = write_config(tmp_path, server.url, breaker_hold_seconds=3600)
    settings = load(config_path)
    folders = [stage(tmp_path / "drop", label, SMALL, sidecars=False) for label in LABELS]
    storage_fails(server)
    outcomes = [push(settings, folder) for folder in folders]
    assert [o.code for o in outcomes] == [ledger.SUSPECT, ledger.SUSPECT, ledger.HELD]
    assert all(o.kind == "transient" for o in outcomes)
    assert "HTTP 400 unable to read DICOM object" in outcomes[2].message
    assert push(settings, folders[0]).code == ledger.HELD
    assert quarantined(tmp_path) == []
    assert caplog.text.count("ALERT") == 1

    assert cli.main(["status", "--config", str(config_path)]) == 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("ATTENTION: pushes held")]
    assert "3 different drops in a row got the same answer from XNAT" in line

    server.clear_faults()
    with ledger.Ledger(settings.paths.state) as book:
        assert book.try_breaker_now() is not None  # what a restart of the daemon does
    assert push(settings, folders[0]).kind == "archived"
    with ledger.Ledger(settings.paths.state) as book:
        assert book.breaker() is None
        assert [d.label for d in book.pending()] == list(LABELS[1:])  # due at once
    assert [push(settings, folder).kind for folder in folders[1:]] == ["archived", "archived"]
    assert sorted(row["label"] for row in archived_sessions(settings)) == list(LABELS)
    assert quarantined(tmp_path) == []


def test_the_same_answer_to_one_drop_while_xnat_accepts_others_quarantines_it(
    tmp_path: Path, server: Sandbox
) -> None:
    """A 400 that is about the drop, not XNAT: the drop waits once; XNAT then archives another
    drop; the same answer to the first drop again quarantines it with XNAT's message."""
    settings = load(write_config(tmp_path, server.url))
    bad = stage(tmp_path / "drop", LABELS[0], SMALL, sidecars=False)
    good = stage(tmp_path / "drop", LABELS[1], SMALL, sidecars=False)
    storage_fails(server)
    assert push(settings, bad).code == ledger.SUSPECT
    server.clear_faults()
    assert push(settings, good).kind == "archived"
    storage_fails(server)
    outcome = push(settings, bad)
    assert outcome.kind == "quarantined" and outcome.code == "XNAT_REJECTED", outcome
    assert "unable to read DICOM object series/IM0001.dcm" in outcome.message
    assert outcome.path is not None and quarantined(tmp_path) == [outcome.path.name]


def test_the_daemon_holds_pushes_while_the_breaker_is_open_and_a_restart_tries_at_once(
    tmp_path: Path, server: Sandbox
) -> None:
    """The daemon starts no push while the breaker is open (its status line says why); once
    the breaker's try is due it pushes one drop, whose success closes the breaker. A start of
    the daemon makes the try due at once."""
    settings = load(write_config(tmp_path, server.url, extra="[settle]\nquiet_seconds = 0.3\n"))
    with ledger.Ledger(settings.paths.state) as book:
        book.open_breaker("HTTP 400 unable to read DICOM object", 3, 4e9)
    runner = daemon.Daemon(settings, daemon.pipeline_processor(settings, PASSWORD))

    def scenario() -> None:
        # The start made the try due: the first drop is pushed and closes the breaker.
        stage(tmp_path / "drop", LABELS[0], SMALL, sidecars=False)
        wait_for(lambda: len(archived_sessions(settings)) == 1)
        wait_for(lambda: "PUSHES HELD" not in runner.status)
        with ledger.Ledger(settings.paths.state) as book:
            assert book.breaker() is None
            book.open_breaker("HTTP 400 unable to read DICOM object", 3, 4e9)
        stage(tmp_path / "drop", LABELS[1], SMALL, sidecars=False)
        wait_for(lambda: "PUSHES HELD: pushes held since" in runner.status)
        scans = runner.scans
        wait_for(lambda: runner.scans >= scans + 3)  # settled, and still not pushed
        assert server.requests.get("POST /data/services/import", 0) == 1
        with ledger.Ledger(settings.paths.state) as book:
            book.try_breaker_now()
        wait_for(lambda: len(archived_sessions(settings)) == 2)

    assert run_with(runner, scenario) == 0
    with ledger.Ledger(settings.paths.state) as book:
        assert book.breaker() is None
    assert quarantined(tmp_path) == []
