"""The sd_notify protocol (`xnatdrop.sdnotify`) against real AF_UNIX datagram sockets."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from xnatdrop import sdnotify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound where NOTIFY_SOCKET points, as systemd's would be."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_messages_arrive_in_order_as_one_datagram_each(receiver: socket.socket) -> None:
    assert sdnotify.notify("READY=1", "STATUS=watching 1 root")
    assert sdnotify.notify("WATCHDOG=1")
    assert sdnotify.notify("STOPPING=1")
    got = [receiver.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=watching 1 root", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_namespace_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"xnatdrop-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_a_dead_socket_warns_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    monkeypatch.setattr(sdnotify, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="xnatdrop.sdnotify"):
        assert sdnotify.notify("WATCHDOG=1") is False
        assert sdnotify.notify("WATCHDOG=1") is False
    assert len(caplog.records) == 1 and "NOTIFY_SOCKET" in caplog.records[0].message


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "1", None),  # inherited from another process: not ours
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert sdnotify.watchdog_seconds() == expected
