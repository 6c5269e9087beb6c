"""The `[dicom]` section and the per-drop `transport` (issue 12): defaults of a stock XNAT
receiver, the host taken from `xnat.url`, and bad values reported with their key."""

from __future__ import annotations

import re

import pytest

from xnatdrop import config
from xnatdrop.errors import ConfigError


def test_defaults_are_a_stock_xnat_receiver_on_the_xnat_host() -> None:
    settings = config.parse({"xnat": {"url": "https://xnat.example.org:8443/xnat"}}, "test")
    assert settings.dicom.host == "xnat.example.org"
    assert (settings.dicom.port, settings.dicom.called_aet, settings.dicom.calling_aet) == (
        8104,
        "XNAT",
        "XNAT",
    )


def test_an_explicit_host_wins_and_titles_lose_insignificant_spaces() -> None:
    settings = config.parse(
        {"dicom": {"host": "pacs-gw.example.org", "called_aet": " XNAT2 ", "port": 11112}}, "test"
    )
    assert settings.dicom.host == "pacs-gw.example.org"
    assert settings.dicom.called_aet == "XNAT2"


def test_transport_defaults_to_rest_and_accepts_dicom() -> None:
    drops = [
        {"path": "/srv/a", "project": "P1"},
        {"path": "/srv/b", "project": "P2", "transport": "dicom"},
    ]
    settings = config.parse({"drop": drops}, "test")
    assert [d.transport for d in settings.drop] == ["rest", "dicom"]


BAD = [
    ({"dicom": {"host": "xnat:8104"}}, r"at 'dicom.host': must be a host name or address only"),
    ({"dicom": {"host": "dicom://xnat"}}, r"at 'dicom.host'"),
    ({"dicom": {"port": 0}}, r"at 'dicom.port'"),
    ({"dicom": {"called_aet": "A_TITLE_TOO_LONG_"}}, r"at 'dicom.called_aet': must be 1-16"),
    ({"dicom": {"calling_aet": "   "}}, r"at 'dicom.calling_aet'"),
    ({"dicom": {"calling_aet": "BACK\\SLASH"}}, r"at 'dicom.calling_aet'"),
    ({"dicom": {"dimse_timeout_seconds": 0}}, r"at 'dicom.dimse_timeout_seconds'"),
    ({"dicom": {"attempts": 0}}, r"at 'dicom.attempts'"),
    ({"dicom": {"aet": "XNAT"}}, r"at 'dicom.aet': unknown key"),
    (
        {"drop": [{"path": "/srv/a", "project": "P", "transport": "ftp"}]},
        r"at 'drop\[0\].transport': Input should be 'rest' or 'dicom'",
    ),
]


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_bad_values_name_their_key(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(data, "test.toml")
    assert re.search(expected, str(caught.value)), str(caught.value)
