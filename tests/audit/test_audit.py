"""`xnatdrop audit`: real sessions pushed by the pipeline to the sandbox XNAT, then changed
behind xnatdrop's back through XNAT's REST API (a session deleted, a scan deleted, a resource
file deleted), and the audit run in-process as an operator would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from push_helpers import (
    PASSWORD,
    PROJECT,
    SMALL,
    USER,
    client,
    load,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import cli, config, ledger, pipeline

LABELS = ("SPN01_0101", "SPN01_0102")


@pytest.fixture
def archived(tmp_path: Path, server: Sandbox) -> tuple[Path, config.Config]:
    """Two real GE sessions (21 files, behav/ and physio/ each) pushed and archived."""
    path = write_config(tmp_path, server.url)
    settings = load(path)
    for label in LABELS:
        folder = stage(tmp_path / "drop", label, SMALL)
        with ledger.Ledger(settings.paths.state) as book:
            outcome = pipeline.process(folder, settings, book, lambda: client(settings))
        assert outcome.kind == "archived", outcome
    return path, settings


def audit(config_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["audit", "--config", str(config_path), *extra])
    return code, capsys.readouterr().out


def rest(server: Sandbox, method: str, path: str) -> None:
    response = requests.request(method, server.url + path, auth=(USER, PASSWORD), timeout=30)
    assert response.status_code in (200, 204), response.text


def test_audit_finds_a_session_deleted_behind_our_back(
    archived: tuple[Path, config.Config], server: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. Two sessions are pushed and archived; the audit finds both as received (exit 0).
    2. Someone deletes SPN01_0101 in XNAT through the REST API.
    Result: the audit exits 1, names SPN01_0101 as MISSING with its receipt, and still
    finds SPN01_0102 as received; --json says the same to a script."""
    config_path, _ = archived
    code, out = audit(config_path, capsys)
    assert code == 0, out
    assert "OK         SPN01_0101 (SPN01): as received (1 scans, 21 of 21 instances" in out
    assert "everything is in XNAT as it was received" in out
    rest(server, "DELETE", f"/data/projects/{PROJECT}/subjects/{LABELS[0]}/experiments/{LABELS[0]}")
    code, out = audit(config_path, capsys)
    assert code == 1, out
    assert "MISSING    SPN01_0101 (SPN01):" in out
    assert "session SPN01_0101 is no longer in XNAT project SPN01" in out
    assert "OK         SPN01_0102" in out
    assert out.strip().endswith("1 of 2 session(s) missing or changed: SPN01_0101")
    code, out = audit(config_path, capsys, "--json")
    report = json.loads(out)
    assert code == 1
    assert report["missing_or_changed"] == ["SPN01_0101"]
    assert [s["status"] for s in report["sessions"]] == ["missing", "ok"]


def test_audit_names_a_deleted_scan_and_a_deleted_resource_file(
    archived: tuple[Path, config.Config], server: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. In SPN01_0101 someone deletes scan 1; in SPN01_0102 a file of resource physio.
    Result: both CHANGED, named by series (with its folder and count) and by resource."""
    config_path, settings = archived
    with client(settings) as xnat_client:
        scans = xnat_client.session_scans(PROJECT, LABELS[0], LABELS[0])
        physio = xnat_client.resource_files(PROJECT, LABELS[1], LABELS[1], "physio")
    assert [s["ID"] for s in scans] == ["1"] and physio
    base = f"/data/projects/{PROJECT}/subjects"
    rest(server, "DELETE", f"{base}/{LABELS[0]}/experiments/{LABELS[0]}/scans/1")
    rest(server, "DELETE", physio[0].uri)
    code, out = audit(config_path, capsys)
    assert code == 1, out
    assert "CHANGED    SPN01_0101" in out
    assert "series 1 (01_3_Plane_Localizer_FF): 21 of 21 instances no longer in XNAT" in out
    assert "CHANGED    SPN01_0102" in out
    assert "resource physio is no longer in XNAT (1 files)" in out


def test_since_unreachable_xnat_and_bad_dates(
    archived: tuple[Path, config.Config], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--since after today checks nothing (exit 0); XNAT unreachable exits 3 with one line;
    a date that is not YYYY-MM-DD is a usage error (exit 2)."""
    config_path, _ = archived
    code, out = audit(config_path, capsys, "--since", "2999-01-01")
    assert code == 0 and "audit of 0 session(s) archived since 2999-01-01" in out
    code, out = audit(config_path, capsys, "--since", "2000-01-01")
    assert code == 0 and "audit of 2 session(s)" in out
    offline = tmp_path / "offline"
    offline.mkdir()
    text = config_path.read_text(encoding="utf-8")
    url = next(line for line in text.splitlines() if line.startswith("url = "))
    offline_config = offline / "x.toml"
    offline_config.write_text(text.replace(url, 'url = "http://127.0.0.1:9"'), encoding="utf-8")
    assert cli.main(["audit", "--config", str(offline_config)]) == 3
    err = capsys.readouterr().err
    assert "xnatdrop audit: cannot ask XNAT at http://127.0.0.1:9: cannot connect" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as caught:
        cli.main(["audit", "--config", str(config_path), "--since", "31/01/2026"])
    assert caught.value.code == 2
    assert "'31/01/2026' is not a date; write it as YYYY-MM-DD" in capsys.readouterr().err


def test_an_unreadable_receipt_is_reported_not_skipped(
    archived: tuple[Path, config.Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, settings = archived
    (receipt,) = list(settings.paths.done.glob(f"*/{LABELS[1]}/RECEIPT.json"))
    receipt.write_text("{ not json", encoding="utf-8")
    code, out = audit(config_path, capsys)
    assert code == 1
    assert "UNREADABLE SPN01_0102" in out and "is not a readable xnatdrop receipt" in out
