"""The configuration loader: every problem reported at once, with file and key; exit status 2."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from xnatdrop import cli, config
from xnatdrop.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "xnatdrop.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xnatdrop.toml"
    path.write_text(text, encoding="utf-8")
    return path


def valid_text(tmp_path: Path) -> str:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n", encoding="utf-8")
    secret.chmod(0o600)
    return f"""
[xnat]
url = "http://127.0.0.1:8080"
username = "svc"
password_file = "{secret}"

[paths]
state = "{tmp_path / "state"}"
quarantine = "{tmp_path / "quarantine"}"
done = "{tmp_path / "done"}"

[[drop]]
path = "{tmp_path / "drop"}"
project = "SPN01"
label_pattern = '^SPN01_[0-9]{{4}}$'
"""


def test_valid_file_loads_and_resolves_password(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, valid_text(tmp_path)))
    assert settings.drop[0].project == "SPN01"
    assert settings.xnat.resolve_password() == "s3cret"
    assert cli.main(["config", "check", "--config", str(tmp_path / "xnatdrop.toml")]) == 0


BAD_FILES = [
    ('[xnat]\nurl = "ftp://x"\n', r"at 'xnat.url': must start with http"),
    ("[xnat]\nurll = 'http://x'\n", r"at 'xnat.urll': unknown key"),
    (
        "[[drop]]\npath = '/a'\nproject = 'P'\nlabel_pattern = '^(x'\n",
        r"at 'drop\[0\].label_pattern': not a valid regular expression",
    ),
    ("[[drop]]\npath = '/a'\nproject = 'bad id'\n", r"at 'drop\[0\].project'"),
    ("[[drop]]\nproject = 'P'\n", r"at 'drop\[0\].path': Field required"),
    ("[xnat\n", r"not valid TOML"),
    (
        "[paths]\nquarantine = '/srv/d/_q'\n[[drop]]\npath = '/srv/d'\nproject = 'P'\n",
        r"paths.quarantine must not be inside drop root",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_files_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value)
    assert re.search(expected, str(caught.value)), str(caught.value)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[xnat]\nurl = 'nope'\nverify_tls = 'maybe'\nextra = 1\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert len(caught.value.problems) == 3
    assert str(caught.value).startswith(f"{path}: 3 problems")


def test_config_check_exits_2_on_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[xnat]\nurl = 'nope'\n")
    assert cli.main(["config", "check", "--config", str(path)]) == 2
    assert "at 'xnat.url'" in capsys.readouterr().err


def test_group_readable_password_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, valid_text(tmp_path))
    (tmp_path / "secret").chmod(0o640)
    settings = config.load(path)
    with pytest.raises(ConfigError, match=r"chmod 600"):
        settings.xnat.resolve_password(str(path))
    assert cli.main(["config", "check", "--config", str(path)]) == 2


def test_password_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    literal = config.parse({"xnat": {"password": "literal"}}, "test")
    monkeypatch.delenv(config.PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert literal.xnat.resolve_password() == "literal"
    monkeypatch.setenv(config.PASSWORD_ENV, "from-env")
    assert literal.xnat.resolve_password() == "from-env"
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "xnat-password").write_text("from-systemd\n", encoding="utf-8")
    (credentials / "xnat-password").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert literal.xnat.resolve_password() == "from-systemd"


def test_literal_password_is_warned_about_without_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config.parse({"xnat": {"password": "hunter2"}}, "test.toml")
    assert "literal password" in caplog.text
    assert "hunter2" not in caplog.text


def test_missing_password_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="LoadCredential"):
        config.parse({}, "test").xnat.resolve_password()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the config, recursively (`xnat.url`, `drop.label_pattern`, …)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys.extend(_keys(candidate, f"{prefix}{name}."))
    return keys


def test_example_documents_every_key_and_is_valid() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    # Commented-out keys count as documented: `# password = …`.
    documented = set(re.findall(r"^#?\s*([A-Za-z_]+)\s*=", text, re.M))
    tables = set(re.findall(r"^\[+([A-Za-z_.]+)\]+", text, re.M))
    leaves = {key.rsplit(".", 1)[-1] for key in _keys(config.Config)}
    sections = {key.rsplit(".", 1)[-1] for key in _keys(config.Config) if "." not in key}
    missing = {k for k in leaves if k not in documented and k not in tables} - sections
    assert not missing, f"keys missing from {EXAMPLE.name}: {sorted(missing)}"
    parsed = config.parse(tomllib.loads(text), str(EXAMPLE))
    assert parsed.drop, "the example should show a [[drop]] table"


def test_state_directory_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/xnatdrop-test")
    assert config.parse({}, "test").paths.state == Path("/var/lib/xnatdrop-test")
    assert os.environ["STATE_DIRECTORY"] == "/var/lib/xnatdrop-test"


def test_commands_fall_back_to_the_system_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "system.toml"
    monkeypatch.setattr(config.loader, "SYSTEM_PATH", system)  # where load_or_system reads it
    assert config.source_name(None) == "(built-in defaults)"
    assert config.load_or_system(None).drop == []
    system.write_text(valid_text(tmp_path), encoding="utf-8")
    assert config.source_name(None) == str(system)
    assert config.load_or_system(None).drop[0].project == "SPN01"
    other = write(tmp_path, "[xnat]\nurl = 'http://other:8080'\n")
    assert config.load_or_system(other).xnat.url == "http://other:8080"


def test_verify_checksums_still_loads_with_a_one_line_deprecation_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 8: whether sizes and MD5s can be compared is now read from XNAT at push time.
    A config that still sets the old key keeps loading (an upgrade must not stop the service),
    with one warning that names what to use instead."""
    settings = config.parse({"push": {"verify_checksums": False}}, "old.toml")
    assert settings.push.anonymization == "site"
    (record,) = [r for r in caplog.records if "verify_checksums" in r.getMessage()]
    assert record.levelname == "WARNING" and "\n" not in record.getMessage()
    assert 'push.anonymization = "prevent"' in record.getMessage()
    caplog.clear()
    config.parse({"push": {"anonymization": "prevent"}}, "new.toml")
    assert not caplog.records


def test_anonymization_takes_site_or_prevent() -> None:
    with pytest.raises(ConfigError, match=r"at 'push.anonymization'"):
        config.parse({"push": {"anonymization": "off"}}, "test")


@pytest.mark.parametrize(
    "url", ["https://svc:S3cret-pw@xnat.example.org", "http://svc@127.0.0.1:8080/xnat"]
)
def test_credentials_in_the_url_are_refused_without_echoing_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A password written into xnat.url was accepted and then leaked into logs, doctor's
    output and receipts. Result now: the config check refuses it, says to use password_file,
    and never repeats the URL."""
    path = write(tmp_path, f'[xnat]\nurl = "{url}"\n')
    assert cli.main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "at 'xnat.url': must not contain a user name or password" in err
    assert "xnat.password_file" in err
    assert "S3cret" not in err and "svc" not in err


@pytest.mark.parametrize("name", ["xnatdrop-work", ".", "a/.b", ".x/y"])
def test_the_work_folder_must_be_one_hidden_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'[push]\nwork_folder = "{name}"\n')
    with pytest.raises(ConfigError, match=r"at 'push.work_folder': must be one folder name"):
        config.load(path)
