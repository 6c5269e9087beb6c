"""What an operator meets first: --help with a description and exit codes for every
subcommand, `config example` / `config unit` from package data (also from an installed wheel),
the LICENSE, and `--log-format json` (one object per line with time, level, label, step, code,
message)."""

from __future__ import annotations

import json
import logging
import os
import pkgutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from xnatdrop import cli, commands, config, exitcodes, logsetup

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_help_has_a_description_and_its_exit_codes(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert name in exitcodes.MEANINGS, f"add {name} to exitcodes.MEANINGS"
    with pytest.raises(SystemExit) as caught:
        cli.main([name, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert not description.startswith(("options:", "positional")), out
    assert "exit codes:" in out
    for code, meaning in exitcodes.MEANINGS[name].items():
        first_words = " ".join(meaning.split()[:4])
        assert f"  {int(code)}  {first_words}" in " ".join(out.split("\n")), out


def test_top_level_help_names_the_shared_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit codes (every command" in out and "3 stopped on a retryable problem" in out


def test_config_example_and_unit_print_the_shipped_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["config", "example"]) == 0
    example = capsys.readouterr().out
    assert example == (REPO / "config" / "xnatdrop.example.toml").read_text(encoding="utf-8")
    config.parse(tomllib.loads(example), "example")  # and it is a valid configuration
    assert cli.main(["config", "unit"]) == 0
    unit = capsys.readouterr().out
    assert unit == (REPO / "systemd" / "xnatdrop.service").read_text(encoding="utf-8")
    assert "Type=notify" in unit


def test_license_is_mit_as_pyproject_says() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == {"text": "MIT"}


@pytest.mark.slow
def test_an_installed_wheel_carries_the_example_the_unit_and_the_license(tmp_path: Path) -> None:
    """1. Build a wheel of this checkout with pip; install it into a fresh venv.
    2. Run `python -m xnatdrop config unit` and `config example` from that venv.
    Result: the files come from the installed package (not this checkout) and equal the
    repository's; the LICENSE is in the wheel's metadata."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("xnatdrop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "xnatdrop/data/xnatdrop.service" in names
    assert "xnatdrop/data/xnatdrop.example.toml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    fresh = tmp_path / "venv"
    # Without pip of its own (ensurepip takes most of this test's time): this environment's pip
    # installs into it (`--python`), as the venv's own pip would.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=300
    )
    python = fresh / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The dependencies (pydantic, …) come from this test's environment, appended after the
    # fresh venv's own site-packages by a .pth file (PYTHONPATH would put them before the
    # standard library). That environment's xnatdrop is an editable install, found only
    # through its own .pth file, which a path listed this way never runs.
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import xnatdrop; print(xnatdrop.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(fresh)), where
    for action, source in (
        ("unit", REPO / "systemd" / "xnatdrop.service"),
        ("example", REPO / "config" / "xnatdrop.example.toml"),
    ):
        shown = subprocess.run(
            [python, "-m", "xnatdrop", "config", action],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert shown == source.read_text(encoding="utf-8")


def test_json_log_format_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Each record is one line of JSON with time (ISO 8601, local offset), level, logger,
    label, step and code (from `extra=`, else null) and the message; a traceback stays in
    one line too."""
    logsetup.configure(verbosity=0, log_format="json")
    log = logging.getLogger("xnatdrop.test")
    log.info("import: %d files", 92, extra={"label": "SPN01_0001", "step": "import"})
    log.warning("quarantined\nsecond line", extra={"label": "SPN01_0002", "code": "LABEL_EXISTS"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("a bug")
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "import: 92 files"
    assert (first["level"], first["label"], first["step"], first["code"]) == (
        "info",
        "SPN01_0001",
        "import",
        None,
    )
    assert first["logger"] == "xnatdrop.test"
    assert first["time"][10] == "T" and first["time"][-6] in "+-"
    assert second["message"] == "quarantined\nsecond line" and second["code"] == "LABEL_EXISTS"
    assert second["level"] == "warning" and second["step"] is None
    assert "ValueError: boom" in third["exception"]


def test_log_format_option_reaches_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xnatdrop --log-format json config check …`: the option's value is not taken for the
    subcommand, and a warning from loading the config comes out as JSON."""
    path = tmp_path / "x.toml"
    path.write_text('[xnat]\npassword = "literal"\n', encoding="utf-8")
    assert cli._command(["--log-format", "json", "config", "check"]) == "config"
    assert cli.main(["--log-format", "json", "config", "check", "--config", str(path)]) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and "literal password" in record["message"]
    assert 'literal"' not in line
    with pytest.raises(SystemExit) as caught:
        cli.main(["--log-format", "xml", "status"])
    assert caught.value.code == 2
