"""The daemon's alerts where things happen (issue 11, point 4), e-mailed to a real SMTP server:
XNAT refusing our login, XNAT unreachable and answering again, pushes held by the circuit
breaker and released. `Daemon` runs in-process with the real pipeline against the sandbox, on
real GE series; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from daemon_helpers import run_with, wait_for
from http_monitor import Monitor
from push_helpers import PASSWORD, PROJECT, SMALL, USER, archived_sessions, stage, write_config
from smtp_server import SmtpServer, body
from xnat_sandbox import Sandbox
from xnatdrop import config, daemon, ledger
from xnatdrop.notify.service import Notifier

pytestmark = pytest.mark.slow


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    server = Monitor()
    yield server
    server.stop()


def settings_for(
    tmp_path: Path, url: str, smtp: SmtpServer, monitor: Monitor, notify: str = "", **push: float
) -> config.Config:
    extra = (
        f'[mail]\nhost = "127.0.0.1"\nport = {smtp.port}\nsecurity = "none"\n'
        'sender = "xnatdrop@example.org"\nto = ["xnat-admin@example.org"]\n'
        f'[notify]\nmin_free_gb = 0\nping_url = "{monitor.url}"\n{notify}'
        "[settle]\nquiet_seconds = 0.3\npoll_seconds = 0.2\n"
    )
    return config.load(write_config(tmp_path, url, extra, **push))


def port_outside_the_ephemeral_range() -> int:
    """A free port below Linux's ephemeral range (32768+): while nothing listens on it, no
    outgoing connection of this machine can be given it as its own port (a connection to a
    free ephemeral port on loopback can even connect to itself), so "nothing listens" holds."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-32000")


def start(settings: config.Config, password: str = PASSWORD) -> daemon.Daemon:
    notifier = Notifier.from_config(settings)
    return daemon.Daemon(
        settings, daemon.pipeline_processor(settings, password, notifier), notifier=notifier
    )


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(m["Subject"]).split("] ", 1)[1] for m in smtp.messages]


def mail(smtp: SmtpServer, subject: str) -> EmailMessage:
    (found,) = [m for m in smtp.messages if str(m["Subject"]).endswith(f"] {subject}")]
    return found


def test_refused_login_is_alerted_once_with_what_to_do(
    tmp_path: Path, smtp: SmtpServer, monitor: Monitor
) -> None:
    """XNAT refuses the password: one e-mail names the server and the user (never the
    password), says every upload is held and how to fix it; the ping reports failure."""
    sandbox = Sandbox(data=tmp_path / "xnat", port=0, users=[f"{USER}:{PASSWORD}"],
                      projects=[PROJECT])  # fmt: skip
    sandbox.start()
    try:
        # Held for an hour after the refusal: the pings fail meanwhile.
        settings = settings_for(tmp_path, sandbox.url, smtp, monitor, retry_max_seconds=3600)
        runner = start(settings, password="Wr0ng-Passw0rd")

        def scenario() -> None:
            stage(tmp_path / "drop", "SPN01_0001", SMALL, sidecars=False)
            wait_for(lambda: "XNAT refused xnatdrop's login" in subjects(smtp))
            wait_for(lambda: any(p.endswith("/fail") for p, _ in monitor.requests))

        assert run_with(runner, scenario) == 0
    finally:
        sandbox.stop()
    text = body(mail(smtp, "XNAT refused xnatdrop's login"))
    assert f"XNAT at {settings.xnat.url} refused the login of user 'svc'" in text
    assert "Every upload is held until" in text and "systemctl restart xnatdrop" in text
    assert "Wr0ng-Passw0rd" not in text and PASSWORD not in text
    assert subjects(smtp).count("XNAT refused xnatdrop's login") == 1


def test_xnat_unreachable_then_answering_again(
    tmp_path: Path, smtp: SmtpServer, monitor: Monitor
) -> None:
    """XNAT is down (nothing listens on its port): once the outage has lasted
    notify.xnat_unreachable_minutes, one alert; XNAT comes back on the same port: the drop is
    archived and a "resolved" note follows."""
    port = port_outside_the_ephemeral_range()
    url = f"http://127.0.0.1:{port}"
    settings = settings_for(tmp_path, url, smtp, monitor, "xnat_unreachable_minutes = 0.01\n")
    runner = start(settings)
    back = Sandbox(data=tmp_path / "xnat", port=port, users=[f"{USER}:{PASSWORD}"],
                   projects=[PROJECT])  # fmt: skip

    def scenario() -> None:
        stage(tmp_path / "drop", "SPN01_0001", SMALL, sidecars=False)
        wait_for(lambda: "XNAT is not answering" in subjects(smtp), what=runner.status)
        back.start()
        wait_for(
            lambda: "resolved: XNAT is not answering" in subjects(smtp),
            what=f"{subjects(smtp)}; {runner.status}",
        )
        # The note comes as XNAT first answers; the push may still be archiving then (a loaded
        # machine), and the SIGTERM after the scenario would interrupt it: wait for the archive.
        wait_for(lambda: archived_sessions(settings), what=runner.status)

    try:
        assert run_with(runner, scenario) == 0
        assert [row["label"] for row in archived_sessions(settings)] == ["SPN01_0001"]
    finally:
        back.stop()
    text = body(mail(smtp, "XNAT is not answering"))
    assert f"XNAT at {url} has not answered since" in text and "cannot connect to" in text
    assert "Uploads resume on their own" in text
    assert "XNAT answers again" in body(mail(smtp, "resolved: XNAT is not answering"))


def test_pushes_held_by_the_breaker_are_alerted_and_released(
    tmp_path: Path, smtp: SmtpServer, monitor: Monitor
) -> None:
    """The circuit breaker is open (three drops in a row got the same suspect answer): one
    "uploads are held" e-mail with the breaker's sentence; the start's try archives a drop,
    which closes the breaker, and a "resolved" note follows."""
    sandbox = Sandbox(data=tmp_path / "xnat", port=0, users=[f"{USER}:{PASSWORD}"],
                      projects=[PROJECT])  # fmt: skip
    sandbox.start()
    try:
        settings = settings_for(tmp_path, sandbox.url, smtp, monitor)
        with ledger.Ledger(settings.paths.state) as book:
            book.open_breaker("HTTP 400 unable to read DICOM object", 3, 4e9)
        runner = start(settings)

        def scenario() -> None:
            wait_for(lambda: "uploads are held" in subjects(smtp))
            stage(tmp_path / "drop", "SPN01_0001", SMALL, sidecars=False)
            wait_for(lambda: "resolved: uploads are held" in subjects(smtp))

        assert run_with(runner, scenario) == 0
        assert [row["label"] for row in archived_sessions(settings)] == ["SPN01_0001"]
    finally:
        sandbox.stop()
    text = body(mail(smtp, "uploads are held"))
    assert "3 different drops in a row got the same answer from XNAT" in text
    assert "Fix XNAT, then run: systemctl restart xnatdrop" in text
    assert subjects(smtp).count("uploads are held") == 1
