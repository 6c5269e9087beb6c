"""Alerts e-mailed through a real SMTP server (aiosmtpd, STARTTLS with a login): content,
recipients, the rate limit, the resolved note, the XNAT-outage and free-space conditions, and
a mail server that is down or hangs, which never blocks the caller and costs one warning.

Time is a counter the test advances (`Clock`), so the rate limit is tested without waiting.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_server import SmtpServer, body
from xnatdrop import config
from xnatdrop.notify import alerts as alerts_module
from xnatdrop.notify.alerts import Alerts, Kind

USER, PASSWORD = "xnatdrop", "smtp-s3cret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp", "starttls", {USER: PASSWORD})
    server.start()
    yield server
    server.stop()


def settings_for(tmp_path: Path, host: str, port: int, **notify: object) -> config.Config:
    ca = tmp_path / "smtp" / "smtp-cert.pem"
    return config.parse(
        {
            "xnat": {"url": "https://xnat.example.org"},
            "paths": {
                "state": str(tmp_path / "state"),
                "quarantine": str(tmp_path / "quarantine"),
                "done": str(tmp_path / "done"),
            },
            "drop": [
                {
                    "path": str(tmp_path / "drop"),
                    "project": "SPN01",
                    "notify_email": "spn01-techs@example.org",
                },
                {"path": str(tmp_path / "other"), "project": "SPN02"},
            ],
            "mail": {
                "host": host,
                "port": port,
                "security": "starttls",
                "username": USER,
                "sender": "xnatdrop@example.org",
                "to": ["xnat-admin@example.org"],
                "ca_bundle": str(ca),
                "timeout_seconds": 2,
            },
            "notify": {"repeat_minutes": 60, **notify},
        },
        "test",
    )


def make(tmp_path: Path, smtp: SmtpServer, clock: Clock, **notify: object) -> Alerts:
    return Alerts(
        settings_for(tmp_path, smtp.host, smtp.port, **notify), PASSWORD, clock, host="mri-gw"
    )


def test_quarantine_alert_reaches_site_and_drop_root_addresses(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """1. A folder of drop root `drop` is quarantined.
    Result: one e-mail, to the site address and to that root's notify_email, whose subject
    names the label and whose body carries the caller's reason and fix; an alert about another
    root's trouble goes to the site only."""
    alerts = make(tmp_path, smtp, Clock())
    text = (
        "SPN01_0042 was not archived: a NIfTI file is in a series folder.\n"
        "Fix: remove t1/anat.nii and copy the folder back."
    )
    assert alerts.alert(Kind.QUARANTINED, "SPN01_0042", text, drop_root=tmp_path / "drop")
    (message,) = smtp.wait_for(1)
    assert smtp.envelopes[0][1] == ["xnat-admin@example.org", "spn01-techs@example.org"]
    assert message["Subject"] == "[xnatdrop mri-gw] SPN01_0042 was not archived"
    assert "Fix: remove t1/anat.nii" in body(message)
    assert alerts.alert(Kind.DROP_ROOT, str(tmp_path / "other"), "missing", tmp_path / "other")
    smtp.wait_for(2)
    assert smtp.envelopes[1][1] == ["xnat-admin@example.org"]
    assert alerts.close(10) == 0


def test_same_alert_is_rate_limited_then_repeated_with_a_count(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """1. XNAT refuses our login; the daemon alerts on every try (three in ten minutes).
    2. An hour later it still does.
    Result: one e-mail at first, with what to do; the repeats are not sent but counted in the
    second e-mail an hour later. A different key is not held back by the first."""
    clock = Clock()
    alerts = make(tmp_path, smtp, clock)
    assert alerts.alert(Kind.LOGIN_REFUSED, "xnat", "XNAT refused the login of 'svc' (HTTP 401)")
    for _ in range(2):
        clock.now += 300
        assert not alerts.alert(Kind.LOGIN_REFUSED, "xnat", "XNAT refused the login (HTTP 401)")
    assert alerts.outbox.wait_idle(10)
    (first,) = smtp.wait_for(1)
    assert first["Subject"] == "[xnatdrop mri-gw] XNAT refused xnatdrop's login"
    assert "What to do: Fix the password" in body(first)
    assert "systemctl restart xnatdrop" in body(first)
    clock.now += 3600
    assert alerts.alert(Kind.LOGIN_REFUSED, "xnat", "XNAT refused the login (HTTP 401)")
    second = smtp.wait_for(2)[1]
    assert "This happened 2 more time(s) since the last e-mail" in body(second)
    assert alerts.alert(Kind.DROP_ROOT, "/srv/a", "the drop root does not exist")
    smtp.wait_for(3)
    alerts.close(10)


def test_resolved_note_only_for_what_was_e_mailed(tmp_path: Path, smtp: SmtpServer) -> None:
    clock = Clock()
    alerts = make(tmp_path, smtp, clock)
    alerts.alert(Kind.PUSHES_HELD, "breaker", "3 drops in a row got HTTP 400 from XNAT")
    smtp.wait_for(1)
    clock.now += 120
    assert alerts.resolved(Kind.PUSHES_HELD, "breaker", "XNAT accepted a drop again.")
    resolved = smtp.wait_for(2)[1]
    assert resolved["Subject"] == "[xnatdrop mri-gw] resolved: uploads are held"
    assert "XNAT accepted a drop again." in body(resolved)
    assert not alerts.resolved(Kind.PUSHES_HELD, "breaker")  # nothing open any more
    quiet = make(tmp_path, smtp, clock, send_resolved=False)
    quiet.alert(Kind.PUSHES_HELD, "breaker", "held")
    smtp.wait_for(3)
    assert not quiet.resolved(Kind.PUSHES_HELD, "breaker")
    assert [s.resolved for s in alerts.since(0)] == [False, True]
    alerts.close(10)
    quiet.close(10)


def test_xnat_outage_alerts_only_after_the_set_time(tmp_path: Path, smtp: SmtpServer) -> None:
    """1. XNAT stops answering; the daemon reports each failed try.
    2. 29 minutes later it still does not answer; then 31 minutes.
    3. It answers again.
    Result: nothing for the first 29 minutes, one alert after 30 naming the URL and how long,
    and a resolved note when it answers."""
    clock = Clock()
    alerts = make(tmp_path, smtp, clock, xnat_unreachable_minutes=30)
    assert not alerts.xnat_unreachable("cannot connect to xnat.example.org:443")
    clock.now += 29 * 60
    assert not alerts.xnat_unreachable("cannot connect to xnat.example.org:443")
    clock.now += 2 * 60
    assert alerts.xnat_unreachable("cannot connect to xnat.example.org:443")
    (alert,) = smtp.wait_for(1)
    assert alert["Subject"] == "[xnatdrop mri-gw] XNAT is not answering"
    assert "https://xnat.example.org has not answered since" in body(alert)
    assert "(31 minutes)" in body(alert)
    assert alerts.xnat_answered()
    assert "XNAT answers again" in body(smtp.wait_for(2)[1])
    assert not alerts.xnat_answered()
    alerts.close(10)


def test_low_free_space_is_alerted_per_file_system_and_resolved(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """The real free space of the test's file system, against a threshold above it and then
    below it: one alert naming every setting on that file system, then a resolved note."""
    (tmp_path / "drop").mkdir()
    clock = Clock()
    alerts = make(tmp_path, smtp, clock, min_free_gb=10**9)  # more than any disk has
    low = alerts.check_free_space()
    assert len(low) == 1  # state, quarantine and the work area share tmp_path's file system
    assert set(low[0].names) == {
        "paths.state",
        "paths.quarantine",
        f"work area of {tmp_path / 'drop'}",
        f"work area of {tmp_path / 'other'}",
    }
    (alert,) = smtp.wait_for(1)
    assert alert["Subject"].startswith("[xnatdrop mri-gw] little free space on ")
    assert "below the 1000000000 GB set in notify.min_free_gb" in body(alert)
    alerts.settings = settings_for(tmp_path, smtp.host, smtp.port, min_free_gb=0.000001)
    assert alerts.check_free_space() == []
    assert "resolved: little free space" in smtp.wait_for(2)[1]["Subject"]
    alerts.close(10)


def test_low_space_function_on_its_own(tmp_path: Path) -> None:
    """The plain function doctor can call: folders not created yet count by their parent."""
    paths = {"a": tmp_path / "not" / "yet", "b": tmp_path}
    assert alerts_module.low_space(paths, 1) == []
    (low,) = alerts_module.low_space(paths, 1 << 62)
    assert low.names == ("a", "b") and low.free > 0 and low.total >= low.free


def test_a_hung_mail_server_never_blocks_and_warns_once(
    tmp_path: Path, smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The SMTP port accepts connections but never greets (a hung server).
    2. Two alerts are raised.
    Result: `alert` returns while the first delivery is still waiting on the server; after
    the timeout one warning names the server, none repeats it; once the server works again,
    one line says so and the next alert arrives."""
    hung = socket.create_server(("127.0.0.1", 0))  # listens, never accepts: no greeting
    try:
        clock = Clock()
        settings = settings_for(tmp_path, "127.0.0.1", hung.getsockname()[1])
        alerts = Alerts(settings, PASSWORD, clock, host="mri-gw")
        with caplog.at_level(logging.WARNING, logger="xnatdrop"):
            assert alerts.alert(Kind.DROP_ROOT, "/srv/a", "the drop root does not exist")
            assert not alerts.outbox.idle.is_set()  # still waiting for the greeting
            assert alerts.alert(Kind.DROP_ROOT, "/srv/b", "the drop root does not exist")
            assert alerts.outbox.wait_idle(30)
        warnings = [r.getMessage() for r in caplog.records if "does not work" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert f"127.0.0.1:{hung.getsockname()[1]} did not answer within 2 s" in warnings[0]
        assert PASSWORD not in caplog.text
        assert alerts.channel.failures == 2
        alerts.settings = settings_for(tmp_path, smtp.host, smtp.port)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xnatdrop"):
            alerts.alert(Kind.DROP_ROOT, "/srv/c", "the drop root does not exist")
            smtp.wait_for(1)
            assert alerts.outbox.wait_idle(10)
        assert "e-mail works again" in caplog.text
        alerts.close(10)
    finally:
        hung.close()


def test_without_mail_alerts_are_kept_but_not_sent(tmp_path: Path) -> None:
    settings = config.parse({"drop": [{"path": str(tmp_path / "d"), "project": "P"}]}, "t")
    alerts = Alerts(settings, None, Clock())
    assert not alerts.alert(Kind.LOW_SPACE, "/var/lib/xnatdrop", "2 GB free")
    assert alerts.is_open(Kind.LOW_SPACE, "/var/lib/xnatdrop")
    assert [s.key for s in alerts.since(0)] == ["/var/lib/xnatdrop"]
    assert alerts.close(1) == 0


def test_digest_only_when_there_is_something_to_say(tmp_path: Path, smtp: SmtpServer) -> None:
    """1. A quiet day: an empty ledger, no alerts. The digest is due.
    2. The same with digest_when_empty = true.
    3. An alert happens; the SMTP server is down when the next digest is due, then back.
    Result: nothing sent for the quiet day (its period is over all the same); an "all quiet"
    digest when asked for; the undelivered digest's period is not lost: the next one covers it
    and lists the alert."""
    from xnatdrop import ledger
    from xnatdrop.notify.service import Notifier

    clock = Clock()
    settings = settings_for(tmp_path, smtp.host, smtp.port)
    book = ledger.Ledger(settings.paths.state)
    quiet = Notifier(settings, PASSWORD, "mri-gw", clock)
    assert not quiet.send_digest(book)
    assert quiet.digest_start() == clock.now
    clock.now += 86400
    chatty = Notifier(
        settings_for(tmp_path, smtp.host, smtp.port, digest_when_empty=True),
        PASSWORD,
        "mri-gw",
        clock,
    )
    assert chatty.send_digest(book)
    (message,) = smtp.wait_for(1)
    assert (
        message["Subject"] == "[xnatdrop mri-gw] daily digest: 0 archived, 0 quarantined, 0 waiting"
    )
    assert "Nothing was archived, quarantined or waiting" in body(message)
    assert chatty.alerts.outbox.wait_idle(10)
    delivered = chatty.digest_start()
    assert delivered == clock.now
    chatty.close(5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # refused: the mail server is down
        down = Notifier(
            settings_for(tmp_path, "127.0.0.1", probe.getsockname()[1]), PASSWORD, "mri-gw", clock
        )
        clock.now += 600
        down.alert(Kind.DROP_ROOT, "/srv/a", "the drop root does not exist")
        clock.now += 86400
        assert down.send_digest(book)
        assert down.alerts.outbox.wait_idle(20)
    assert down.digest_start() == delivered  # not delivered: the period stays open
    down.settings = down.alerts.settings = settings
    assert down.send_digest(book)
    later = smtp.wait_for(2)[-1]  # the alert itself was e-mailed while the server was down
    assert "daily digest: 0 archived, 0 quarantined, 0 waiting, 1 error(s)" in later["Subject"]
    assert "alert: drop folder /srv/a is missing or paused" in body(later)
    down.close(5)
    book.close()
