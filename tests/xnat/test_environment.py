"""What the client takes from its environment: proxies and the CA bundle, read once; never
credentials.

`Connection` asks requests for the environment's settings once, for its base URL, and then
turns requests' own per-request reading off (`trust_env`): that reading scanned the process
environment twice and looked for ~/.netrc on every request (issue 13: ~0.3 ms of CPU a request,
1,600 requests in the read-back of a 2 GB session). A ~/.netrc entry for the XNAT host used to
be sent as Basic authentication on every request after the login.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from xnat_sandbox import Sandbox
from xnatdrop import config, xnat
from xnatdrop.errors import TransientError


def settings_for(sandbox: Sandbox) -> config.XnatSettings:
    return config.XnatSettings(url=sandbox.url, username="svc", timeout_seconds=30)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_netrc_entry_for_the_xnat_host_is_never_sent(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale ~/.netrc password for XNAT's host: XNAT refuses every request that carries it
    (a wrong Basic login is a 401 whatever the session cookie), so a client that sent it could
    not read anything after logging in with the configured password."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login svc password stale\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with xnat.XnatClient(settings_for(sandbox), "pw") as client:
        assert client.whoami() == "svc"
        assert client.project_exists("SPN01")


def test_proxies_from_the_environment_are_still_used(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured (here a proxy that is down: no answer), and NO_PROXY too."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with (
        xnat.XnatClient(settings_for(sandbox), "pw") as client,
        pytest.raises(TransientError, match="NewConnectionError"),  # the proxy is down
    ):
        client.whoami()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with xnat.XnatClient(settings_for(sandbox), "pw") as client:
        assert client.whoami() == "svc"
