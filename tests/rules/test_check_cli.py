"""`xnatdrop check PATH [--config FILE] [--json]`, in-process and as the installed script."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared_data import dataset
from test_rules import GE_FMRI, GE_LOCALIZER, add_series
from xnatdrop import cli
from xnatdrop.commands import check


@pytest.fixture
def good(tmp_path: Path) -> Path:
    folder = tmp_path / "drop" / "SPN01_0001"
    add_series(folder, "01_localizer", GE_LOCALIZER)
    add_series(folder, "02_fmri", GE_FMRI)
    (folder / "behav").mkdir()
    (folder / "behav" / "events.tsv").write_text("onset\tduration\n")
    return folder


def test_human_report_for_a_folder_that_would_upload(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SPN01_0001: would upload — 2 series, 71 files")
    assert "3-Plane Localizer" in out and "[02_fmri]" in out
    assert "sidecars: behav" in out
    assert out.rstrip().endswith("verdict: would upload")
    assert "LOCALIZER" not in out  # an `ignore` finding is not reported


def test_blocked_folder_exits_1_and_names_file_code_and_fix(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (good / "02_fmri" / "notes.nii").write_bytes(
        (dataset("nibabel_formats") / "converted/anatomical.nii").read_bytes()
    )
    assert cli.main(["check", str(good)]) == 1
    out = capsys.readouterr().out
    assert "BLOCK   CONVERTED_FILE  02_fmri/notes.nii" in out
    assert "Fix: remove converted files" in out
    assert "verdict: BLOCKED by 1 finding(s)" in out


def test_json_output(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (good / "stray.txt").write_text("hello\n")
    assert cli.main(["check", str(good), "--json", "--files"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["label"] == "SPN01_0001"
    assert [s["series_number"] for s in data["series"]] == ["1", "2"]
    assert len(data["series"][1]["files"]) == 50
    codes = {(f["code"], f["action"], f["path"]) for f in data["findings"]}
    assert ("LOOSE_FILE", "block", "stray.txt") in codes
    assert ("NOT_DICOM", "exclude", "stray.txt") in codes
    assert all(f["fix"] and f["message"] for f in data["findings"])


def test_config_sets_pattern_and_actions(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "xnatdrop.toml"
    config_file.write_text(
        f"""
[rules.actions]
LOCALIZER = "exclude"

[[drop]]
path = "{good.parent}"
project = "SPN01"
label_pattern = '^SPN01_[0-9]{{3}}$'
"""
    )
    assert cli.main(["check", str(good), "--config", str(config_file), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in data["findings"] if f["action"] == "block"] == ["LABEL_PATTERN"]
    assert [s["series_number"] for s in data["excluded_series"]] == ["1"]


def test_usage_and_config_errors_exit_2(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.actions]\nDERIVED = "block"\n')
    assert cli.main(["check", str(good), "--config", str(bad)]) == 2
    assert "unknown finding code(s) DERIVED" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check"])
    assert exit_info.value.code == 2


def read_until(controller: int, end: str, timeout: float = 30) -> str:
    """What the terminal shows, up to `end`: one read of a pty may return only part of what
    was written (the line discipline hands it over in pieces)."""
    shown = ""
    while end not in shown and select.select([controller], [], [], timeout)[0]:
        shown += os.read(controller, 65536).decode()
    return shown


def test_progress_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """600 files: a progress line on a tty (a real pty), nothing when stderr is a file."""
    folder = tmp_path / "SPN01_0002"
    add_series(
        folder, "601_dti", ("philips_achieva_dwi_isotropic", "In/Vanderbilt_2018/601_WIP_dti_ax")
    )
    controller, terminal = os.openpty()
    with open(terminal, "w", closefd=True) as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        assert cli.main(["check", str(folder)]) == 0
        tty.flush()
        shown = read_until(controller, "\r\033[K")
    os.close(controller)
    assert "checking: 680/680 files (100%)" in shown
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    assert cli.main(["check", str(folder)]) == 0
    assert "checking:" not in plain.getvalue()


def test_report_lists_ten_findings_per_code_then_counts(tmp_path: Path) -> None:
    folder = tmp_path / "SPN01_0003"
    add_series(folder, "fmri", GE_FMRI)
    for n in range(13):
        (folder / "fmri" / f"note{n}.txt").write_text("x")
    from xnatdrop import rules

    text = check.report(rules.check_folder(folder, None))
    assert text.count("NOT_DICOM  fmri/note") == 10
    assert "… and 3 more NOT_DICOM (see --json)" in text


def test_installed_script_exit_codes(good: Path) -> None:
    script = shutil.which("xnatdrop")
    assert script is not None
    ok = subprocess.run([script, "check", str(good), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    (good / "02_fmri" / "empty.dcm").write_bytes(b"")
    blocked = subprocess.run([script, "check", str(good)], capture_output=True, text=True)
    assert blocked.returncode == 1 and "EMPTY_FILE" in blocked.stdout
    usage = subprocess.run([script, "check"], capture_output=True, text=True)
    assert usage.returncode == 2


def _config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f'[[drop]]\npath = "{root}"\nproject = "SPN01"\nlabel_pattern = "SPN01_[0-9]{{4}}"\n',
        encoding="utf-8",
    )
    return path


def test_outside_a_drop_root_the_label_rule_comes_from_the_named_project(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder on a USB stick, named against the site's pattern. Without a project, check
    used to say "would upload" and the daemon then quarantined it. Result now: without
    --project the report says the label was NOT checked; with it, the pattern applies."""
    stick = tmp_path / "usb" / "spn01-1"
    shutil.copytree(good, stick)
    site = _config(tmp_path, tmp_path / "drop")

    assert cli.main(["check", str(stick), "--config", str(site)]) == 0
    out = capsys.readouterr().out
    assert "label: NOT checked: " in out and "give --project P" in out

    assert cli.main(["check", str(stick), "--config", str(site), "--project", "SPN01"]) == 1
    out = capsys.readouterr().out
    assert "LABEL_PATTERN" in out and "pattern: SPN01_[0-9]{4}" in out

    assert cli.main(["check", str(good), "--config", str(site), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["label_checked"] is True and data["label_pattern"] == "SPN01_[0-9]{4}"

    assert cli.main(["check", str(stick), "--config", str(site), "--project", "NOPE"]) == 2
    assert "no drop root for project NOPE" in capsys.readouterr().err


def test_a_drop_root_is_checked_folder_by_folder_never_inside_the_work_area(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check <drop root>` treated the whole share as one session and read inside
    .xnatdrop-work. Result now: one verdict per subject folder; the work area is not read."""
    root = good.parent
    blocked = root / "SPN01_0002"
    add_series(blocked, "fmri", GE_FMRI)
    (blocked / "notes.txt").write_text("a loose file\n")
    work = root / ".xnatdrop-work" / "7" / "SPN01_0003"
    work.mkdir(parents=True)
    shutil.copy(dataset("nibabel_formats") / "converted" / "anatomical.nii", work)
    site = _config(tmp_path, root)

    assert cli.main(["check", str(root), "--config", str(site)]) == 1
    out = capsys.readouterr().out
    assert "SPN01_0001: would upload — 2 series, 71 files" in out
    assert "SPN01_0002: BLOCKED" in out and "LOOSE_FILE" in out
    assert "anatomical.nii" not in out and "SPN01_0003" not in out
    assert out.rstrip().endswith("verdict: 1 would upload, 1 blocked")

    assert cli.main(["check", str(root), "--json"]) == 1  # found as a root by its work area
    data = json.loads(capsys.readouterr().out)
    assert [f["label"] for f in data["folders"]] == ["SPN01_0001", "SPN01_0002"]
    assert data["folders"][0]["label_checked"] is False


def test_a_folder_unmounted_while_it_is_checked_exits_3_in_one_line(good: Path) -> None:
    """1. `xnatdrop check` runs as its own process. 2. It is frozen (SIGSTOP, by the campaign's
    fault hook) at its fifth file read, and the folder is moved away, as an unmounted share
    does. 3. It goes on. Result: exit 3 (try again) with one sentence, not a verdict of
    UNREADABLE files (found by the campaign, local/share-unmounted)."""
    hooks = Path(__file__).resolve().parents[1] / "campaign_hooks"
    fault = {
        "action": "stop",
        "kinds": ["read"],
        "nth": 5,
        "under": str(good),
        "modules": ["xnatdrop.dicomfiles"],
    }
    env = {**os.environ, "PYTHONPATH": str(hooks), "XNATDROP_CAMPAIGN_FAULT": json.dumps(fault)}
    process = subprocess.Popen(
        [sys.executable, "-m", "xnatdrop", "check", str(good)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stat = Path(f"/proc/{process.pid}/stat")
    pause = threading.Event()
    for _ in range(600):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
            break
        pause.wait(0.05)
    good.rename(good.with_name("elsewhere"))
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, out + err
    assert err.strip().splitlines() == [
        f"xnatdrop check: {good} went away while it was checked (share unmounted or "
        "disconnected?); it is checked again once it is back"
    ]
