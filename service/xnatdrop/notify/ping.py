"""The dead-man's switch: an outside monitor is told after every cycle that xnatdrop still runs.

healthchecks.io's protocol, which other monitors (Uptime Kuma's push monitors, Cronitor,
Better Stack heartbeats) accept too: a GET of the check's URL says "success", of URL + "/fail"
says "failure", of URL + "/start" says "a run begins" (https://healthchecks.io/docs/http_api/).
The monitor raises its own alarm when the pings stop, which is the one failure xnatdrop cannot
report itself: it stopped.

As borgmatic's healthchecks hook does: a 10 s timeout, a User-Agent, and a failed ping only
logs a warning (once per failure streak; `outbox.Channel`). Pings run on their own background
thread, so a slow monitor never delays a scan. The URL carries the check's secret token: it is
never logged, only its host.
"""

from __future__ import annotations

import socket
import urllib.parse

import requests

from xnatdrop import __version__
from xnatdrop.notify import outbox

TIMEOUT_SECONDS = 10.0
USER_AGENT = f"xnatdrop/{__version__} (dead-man's switch)"
SUFFIX = {"success": "", "fail": "/fail", "start": "/start"}


def host_of(url: str) -> str:
    """What messages may show of a ping URL: its host (and port), never its path or token."""
    return urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1]


class Pinger:
    """Pings one URL in the background. A class because it owns a sender thread."""

    def __init__(self, url: str, start: bool = False) -> None:
        self.url = url.rstrip("/")
        self.send_start = start
        self.outbox = outbox.Outbox("ping sender", size=20)
        self.channel = outbox.Channel(f"the dead-man's switch ping to {host_of(url)}")
        self.sent: list[str] = []  # kinds that reached the monitor, for tests and status

    def success(self) -> bool:
        """A cycle ended well (a scan completed without an error to report)."""
        return self._queue("success")

    def fail(self) -> bool:
        """A cycle ended with an error the operator should see (the monitor alarms at once)."""
        return self._queue("fail")

    def start(self) -> bool:
        """A cycle begins; only sent with `notify.ping_start` (lets the monitor time cycles)."""
        return self._queue("start") if self.send_start else False

    def _queue(self, kind: str) -> bool:
        return self.outbox.submit(f"ping {kind}", lambda: self._get(kind))

    def _get(self, kind: str) -> None:
        where = host_of(self.url)
        try:
            response = requests.get(
                self.url + SUFFIX[kind],
                timeout=TIMEOUT_SECONDS,
                headers={"User-Agent": USER_AGENT},
                allow_redirects=False,
            )
        except requests.Timeout:
            self.channel.failed(f"{where} did not answer within {TIMEOUT_SECONDS:.0f} s")
            return
        except requests.ConnectionError:
            self.channel.failed(f"cannot connect to {where}")
            return
        except requests.RequestException as error:
            self.channel.failed(f"the request to {where} failed ({type(error).__name__})")
            return
        response.close()
        if response.status_code >= 300:
            self.channel.failed(
                f"{where} answered HTTP {response.status_code}; check notify.ping_url"
            )
            return
        self.sent.append(kind)
        self.channel.worked()

    def close(self, timeout: float = 10.0) -> int:
        return self.outbox.close(timeout)


def check_url(url: str) -> str:
    """What doctor runs: resolve the ping URL's host (nothing is sent, so the monitor sees no
    ping). Return a one-line description; raise OSError with our words if it does not resolve."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise OSError(
            f"the ping URL's host {host!r} does not resolve; check notify.ping_url and DNS"
        ) from None
    found = sorted({a[4][0] for a in addresses})
    return f"ping URL host {host_of(url)} resolves ({', '.join(found[:3])}); nothing was sent"
