"""The dead-man's switch against a real local HTTP server standing in for healthchecks.io: the
success, /fail and /start GETs with our User-Agent; a monitor that is down or answers an error
costs one warning, never the check's URL, and never blocks the caller."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from http_monitor import Monitor
from xnatdrop import __version__
from xnatdrop.notify import ping


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    server = Monitor()
    yield server
    server.stop()


def test_success_fail_and_start_reach_the_monitor(monitor: Monitor) -> None:
    """1. A cycle starts (ping_start on), ends well; the next ends with an error.
    Result: GET /start, GET <url>, GET /fail, in that order, each with our User-Agent."""
    pinger = ping.Pinger(monitor.url + "/", start=True)
    assert pinger.start() and pinger.success() and pinger.fail()
    received = monitor.wait_for(3)
    assert [path for path, _ in received] == [
        "/ping/0f3c-secret-uuid/start",
        "/ping/0f3c-secret-uuid",
        "/ping/0f3c-secret-uuid/fail",
    ]
    assert {agent for _, agent in received} == {f"xnatdrop/{__version__} (dead-man's switch)"}
    assert pinger.outbox.wait_idle(10)
    assert pinger.sent == ["start", "success", "fail"]
    pinger.close()


def test_start_is_not_sent_unless_configured(monitor: Monitor) -> None:
    pinger = ping.Pinger(monitor.url)
    assert not pinger.start()
    pinger.success()
    assert [path for path, _ in monitor.wait_for(1)] == ["/ping/0f3c-secret-uuid"]
    assert pinger.outbox.wait_idle(10)
    assert len(monitor.requests) == 1
    pinger.close()


def test_a_failing_monitor_warns_once_without_the_url(
    monitor: Monitor, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The monitor answers 500 twice; then it is down; then it answers again.
    Result: one warning naming the host and the status (never the secret path), none for the
    next failures, one line when it works again."""
    monitor.status = 500
    pinger = ping.Pinger(monitor.url)
    with caplog.at_level(logging.WARNING, logger="xnatdrop"):
        pinger.success()
        pinger.success()
        assert pinger.outbox.wait_idle(20)
        monitor.status = 200
        pinger.success()
        assert pinger.outbox.wait_idle(20)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    host = monitor.url.split("/")[2]
    assert f"ping to {host} does not work ({host} answered HTTP 500" in lines[0]
    assert "works again" in lines[1]
    assert "secret-uuid" not in caplog.text
    assert pinger.sent == ["success"]
    pinger.close()


def test_monitor_down_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/ping/secret-uuid"
        pinger = ping.Pinger(url)
        with caplog.at_level(logging.WARNING, logger="xnatdrop"):
            pinger.fail()
            pinger.success()
            assert pinger.outbox.wait_idle(30)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "cannot connect to 127.0.0.1:" in line and "secret-uuid" not in line
    assert pinger.channel.failures == 2
    pinger.close()


def test_check_url_resolves_without_pinging(monitor: Monitor) -> None:
    """What doctor runs: the host resolves, and the monitor sees nothing."""
    line = ping.check_url(monitor.url)
    assert "resolves (127.0.0.1)" in line and "secret-uuid" not in line
    with pytest.raises(OSError, match=r"does not resolve; check notify.ping_url"):
        ping.check_url("https://no-such-monitor.invalid/abc")
    assert monitor.requests == []
