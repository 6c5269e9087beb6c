"""Alerts: an e-mail at once for each thing a person must act on, never a flood, never a wait.

The daemon holds one `Alerts` and calls `alert(kind, key, text, drop_root=None)` where it logs
an ALERT line today, and `resolved(kind, key)` when the condition clears. `kind` says what
happened (`Kind`), `key` which thing it happened to (a drop root, a file system, a label).

- Rate limit: the same (kind, key) is e-mailed at most once per `notify.repeat_minutes`; repeats
  in between are counted and mentioned in the next e-mail. A different key is a different alert.
- Resolved: when an alerted (kind, key) clears, a short note says so (`notify.send_resolved`).
- Recipients: `mail.to` always; a quarantine also goes to the `notify_email` of the drop root it
  came from, so the technologists who use that root hear about their own folders.
- Sending happens on a background thread (`outbox`); a failure is one warning in the log.
- Without `[mail]` nothing is sent, but alerts are still counted and kept for the digest.

Two conditions need a clock and are tracked here too: XNAT unreachable for longer than
`notify.xnat_unreachable_minutes` (`xnat_unreachable` / `xnat_answered`), and low free space
(`check_free_space`, with `low_space` as a plain function doctor can use as well).

Texts carry labels, paths, counts and our own sentences only: never patient data, passwords or
URLs with credentials (the caller's `text` must follow the same rule as a log line).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from enum import StrEnum
from pathlib import Path

from xnatdrop.config import Config
from xnatdrop.notify import mail, outbox

log = logging.getLogger(__name__)


class Kind(StrEnum):
    LOGIN_REFUSED = "login-refused"
    XNAT_UNREACHABLE = "xnat-unreachable"
    DROP_ROOT = "drop-root"
    LOW_SPACE = "low-space"
    PUSHES_HELD = "pushes-held"
    QUARANTINED = "quarantined"


# kind -> (subject, with {key}; what to do, '' when the caller's text says it)
WORDING: dict[Kind, tuple[str, str]] = {
    Kind.LOGIN_REFUSED: (
        "XNAT refused xnatdrop's login",
        "Fix the password (or the account) in XNAT and in xnatdrop's password file, then run: "
        "systemctl restart xnatdrop. Until then nothing is uploaded; nothing is lost.",
    ),
    Kind.XNAT_UNREACHABLE: (
        "XNAT is not answering",
        "Check that XNAT is up and reachable from this machine (xnatdrop doctor). Uploads "
        "resume on their own when it answers; nothing is lost.",
    ),
    Kind.DROP_ROOT: (
        "drop folder {key} is missing or paused",
        "Check that the share is mounted and readable by the service user. Nothing in it is "
        "uploaded or forgotten meanwhile; it resumes on its own.",
    ),
    Kind.LOW_SPACE: (
        "little free space on {key}",
        "Free some space on that file system; xnatdrop needs it to move and pack sessions.",
    ),
    Kind.PUSHES_HELD: (
        "uploads are held",
        "Several sessions in a row got the same error from XNAT, which points at XNAT rather "
        "than at the sessions. Fix XNAT, then run: systemctl restart xnatdrop.",
    ),
    Kind.QUARANTINED: ("{key} was not archived", ""),
}

# Alerts that go to the drop root's own addresses as well as to the site's.
FOR_DROP_ROOT = frozenset({Kind.QUARANTINED})


@dataclasses.dataclass
class _State:
    """One (kind, key): when it was last e-mailed and how often it recurred since."""

    first: float
    last_sent: float | None = None
    repeats: int = 0
    text: str = ""


@dataclasses.dataclass(frozen=True)
class Sent:
    """One alert or resolution as it happened, for the digest's list of errors."""

    at: float
    kind: Kind
    key: str
    text: str
    resolved: bool = False


class Alerts:
    """The daemon's alerts (one per daemon; thread-safe: push threads may alert too)."""

    def __init__(
        self,
        settings: Config,
        smtp_password: str | None = None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.settings = settings
        self.password = smtp_password
        self.clock = clock
        self.host = host or socket.gethostname()
        self.outbox = outbox.Outbox("e-mail sender")
        self.channel = outbox.Channel("e-mail")
        self.history: list[Sent] = []
        self._open: dict[tuple[Kind, str], _State] = {}
        self._lock = threading.Lock()
        self._xnat_down_since: float | None = None
        self._xnat_detail = ""
        self.roots = {d.path: list(d.notify_email) for d in settings.drop}

    # -- the interface the daemon calls ----------------------------------------------------

    def alert(self, kind: Kind, key: str, text: str, drop_root: Path | None = None) -> bool:
        """Record an alert and e-mail it now unless the same (kind, key) was e-mailed within
        `notify.repeat_minutes`. Return True if an e-mail was queued."""
        now = self.clock()
        window = self.settings.notify.repeat_minutes * 60
        with self._lock:
            state = self._open.setdefault((kind, key), _State(first=now))
            state.text = text
            if state.last_sent is not None and now - state.last_sent < window:
                state.repeats += 1
                return False
            repeats, state.repeats, state.last_sent = state.repeats, 0, now
            self.history.append(Sent(now, kind, key, text))
        subject, advice = WORDING[kind]
        body = [text, ""]
        if advice:
            body += [f"What to do: {advice}", ""]
        if repeats:
            body += [f"(This happened {repeats} more time(s) since the last e-mail about it.)", ""]
        body += self._footer(now)
        recipients = self._recipients(kind, drop_root)
        return self._send(recipients, subject.format(key=key), "\n".join(body))

    def resolved(self, kind: Kind, key: str, text: str = "") -> bool:
        """The condition behind (kind, key) has cleared: forget it, and e-mail a short note if
        an alert about it was e-mailed (and `notify.send_resolved`). Return True if queued."""
        now = self.clock()
        with self._lock:
            state = self._open.pop((kind, key), None)
            if state is None:
                return False
            self.history.append(Sent(now, kind, key, text or "resolved", resolved=True))
        if state.last_sent is None or not self.settings.notify.send_resolved:
            return False
        subject = f"resolved: {WORDING[kind][0].format(key=key)}"
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(state.first))
        body = [
            text or "The problem has cleared.",
            "",
            f"It began at {since}.",
            "",
            *self._footer(now),
        ]
        return self._send(self._recipients(kind, None), subject, "\n".join(body))

    def is_open(self, kind: Kind, key: str) -> bool:
        with self._lock:
            return (kind, key) in self._open

    def since(self, start: float) -> list[Sent]:
        """Alerts and resolutions recorded at or after `start` (for the digest)."""
        with self._lock:
            return [s for s in self.history if s.at >= start]

    def forget_before(self, start: float) -> None:
        """Drop history older than `start` (after a digest has reported it)."""
        with self._lock:
            self.history = [s for s in self.history if s.at >= start]

    # -- conditions that need a clock ------------------------------------------------------

    def xnat_unreachable(self, detail: str) -> bool:
        """XNAT did not answer (a TransientError that is a connection failure or timeout).

        The first call starts the clock; an alert goes out once the outage has lasted
        `notify.xnat_unreachable_minutes`. Return True if an e-mail was queued.
        """
        now = self.clock()
        if self._xnat_down_since is None:
            self._xnat_down_since = now
        self._xnat_detail = detail
        down = now - self._xnat_down_since
        if down < self.settings.notify.xnat_unreachable_minutes * 60:
            return False
        since = time.strftime("%H:%M", time.localtime(self._xnat_down_since))
        text = (
            f"XNAT at {self.settings.xnat.url} has not answered since {since} "
            f"({down / 60:.0f} minutes): {detail}"
        )
        return self.alert(Kind.XNAT_UNREACHABLE, "xnat", text)

    def xnat_answered(self) -> bool:
        """XNAT answered again: resolve the outage (if it was alerted)."""
        if self._xnat_down_since is None:
            return False
        since = time.strftime("%H:%M", time.localtime(self._xnat_down_since))
        self._xnat_down_since = None
        return self.resolved(
            Kind.XNAT_UNREACHABLE, "xnat", f"XNAT answers again (down since {since})."
        )

    def check_free_space(self, paths: Mapping[str, Path] | None = None) -> list[LowSpace]:
        """Alert for each file system below `notify.min_free_gb`, resolve those back above it.

        `paths` defaults to `space_paths(settings)`. Return the file systems that are low.
        """
        minimum = int(self.settings.notify.min_free_gb * 1e9)
        if minimum <= 0:
            return []
        watched = space_paths(self.settings) if paths is None else paths
        low = low_space(watched, minimum)
        low_keys = {item.key for item in low}
        for item in low:
            if not self.is_open(Kind.LOW_SPACE, item.key):
                log.error("ALERT: %s", item.sentence(minimum))  # once; the e-mail may repeat
            self.alert(Kind.LOW_SPACE, item.key, item.sentence(minimum))
        with self._lock:
            stale = [k for (kind, k) in self._open if kind is Kind.LOW_SPACE and k not in low_keys]
        for key in stale:
            self.resolved(Kind.LOW_SPACE, key, f"{key}: free space is above the threshold again.")
        return low

    # -- sending ---------------------------------------------------------------------------

    def _recipients(self, kind: Kind, drop_root: Path | None) -> list[str]:
        recipients = list(self.settings.mail.to)
        if kind in FOR_DROP_ROOT and drop_root is not None:
            recipients += [a for a in self.roots.get(drop_root, []) if a not in recipients]
        return recipients

    def _footer(self, now: float) -> list[str]:
        stamp = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(now))
        return [
            "--",
            f"xnatdrop on {self.host}, {stamp}. The same alert is e-mailed at most once every "
            f"{self.settings.notify.repeat_minutes:.0f} minutes while it lasts; "
            "`xnatdrop status` shows the current state.",
        ]

    def _send(self, recipients: list[str], subject: str, text: str) -> bool:
        if not self.settings.mail.enabled or not recipients:
            return False
        message = mail.build(
            self.settings.mail, recipients, f"[xnatdrop {self.host}] {subject}", text
        )
        return self.outbox.submit(f"alert {subject!r}", lambda: self._deliver(message))

    def _deliver(self, message: EmailMessage) -> None:
        try:
            mail.send(self.settings.mail, self.password, message)
        except mail.DeliveryError as error:
            self.channel.failed(str(error))
        else:
            self.channel.worked()

    def send_message(self, message: EmailMessage, what: str) -> bool:
        """Queue any prepared message (the digest) on the same sender; True if queued."""
        if not self.settings.mail.enabled:
            return False
        return self.outbox.submit(what, lambda: self._deliver(message))

    def close(self, timeout: float = 10.0) -> int:
        """Let queued e-mails go out for at most `timeout` seconds; return how many did not."""
        return self.outbox.close(timeout)


# -- free space -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LowSpace:
    """One file system with too little free space; `names` are the settings that live on it."""

    key: str  # the first configured path on it, for the alert's key and subject
    names: tuple[str, ...]
    free: int
    total: int

    def sentence(self, minimum: int) -> str:
        return (
            f"{self.key}: {self.free / 1e9:.1f} GB free of {self.total / 1e9:.1f} GB, below "
            f"the {minimum / 1e9:.0f} GB set in notify.min_free_gb (used for: "
            f"{', '.join(self.names)})."
        )


def space_paths(settings: Config) -> dict[str, Path]:
    """The folders xnatdrop writes to, by what they are: state, quarantine, each work area."""
    paths = {"paths.state": settings.paths.state, "paths.quarantine": settings.paths.quarantine}
    for drop in settings.drop:
        paths[f"work area of {drop.path}"] = drop.path / settings.push.work_folder
    return paths


def _existing(path: Path) -> Path | None:
    """The path or its nearest existing parent (a folder not created yet lives there)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def low_space(paths: Mapping[str, Path], minimum: int) -> list[LowSpace]:
    """File systems holding any of `paths` with less than `minimum` bytes free for us.

    One entry per file system (by device), however many of the paths share it. A path that
    does not exist counts by its nearest existing parent; one that cannot be looked at is
    skipped (the drop-root alert covers a missing share).
    """
    by_device: dict[int, tuple[list[str], Path, int, int]] = {}
    for name, path in paths.items():
        existing = _existing(path)
        if existing is None:
            continue
        try:
            device = os.stat(existing).st_dev
            usage = shutil.disk_usage(existing)
        except OSError:
            continue
        entry = by_device.setdefault(device, ([], path, usage.free, usage.total))
        entry[0].append(name)
    return [
        LowSpace(str(first), tuple(names), free, total)
        for names, first, free, total in by_device.values()
        if free < minimum
    ]
