"""The sd_notify protocol: tell systemd we are ready, alive, busy with what, or stopping.

Each message is one datagram of `KEY=value` lines sent to the AF_UNIX socket named by
$NOTIFY_SOCKET; a leading `@` means Linux's abstract namespace (a NUL byte). Reference:
sd_notify(3) and systemd.service(5), `Type=notify` and `WatchdogSec=`. With no $NOTIFY_SOCKET
(not started by systemd) every call is a no-op.

Notification never fails the job (like borgmatic's monitoring hooks): a send error is logged
once as a warning and reported as False.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_warned = False


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=…") as one datagram; True if it was sent."""
    global _warned
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the main loop: if systemd's queue is full, drop this message.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall("\n".join(lines).encode("utf-8"))
    except OSError as error:
        if not _warned:
            log.warning("cannot notify systemd at NOTIFY_SOCKET (%s)", error.strerror or error)
            _warned = True
        return False
    return True


def watchdog_seconds() -> float | None:
    """The watchdog interval systemd expects pings within (WatchdogSec=), if it is for us.

    sd_watchdog_enabled(3): WATCHDOG_USEC holds the interval; WATCHDOG_PID, when set, must be
    our pid (otherwise the variables were inherited from a parent and are not ours).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
