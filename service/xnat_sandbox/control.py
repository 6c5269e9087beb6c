"""Test control: the sandbox clock and the fault-injection rules.

The clock drives everything XNAT does "after a while" (the prearchive's idle rebuild, session
expiry): it is wall time plus an offset that `advance()` moves forward, so a test can say "five
minutes pass" without waiting. Faults are rules matched against each request's path (a regular
expression searched in the full path, e.g. `/data/services/import`) and optional method.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field


class Clock:
    """Wall time plus a test-controlled offset."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += seconds
        return self.now()


@dataclass
class Rule:
    """One fault: which requests it matches, how many more times, and what it does."""

    kind: str  # "fail" | "latency" | "drop" | "timeout"
    path: str
    method: str | None = None
    count: int | None = 1  # None = forever
    status: int = 503
    body: str | None = None
    seconds: float = 0.0
    after_bytes: int = 0
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pattern = re.compile(self.path)
        if self.method:
            self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        return bool(self.pattern.search(path))

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "path": self.path, "method": self.method}
        out["count"] = self.count
        if self.kind == "fail":
            out["status"] = self.status
        elif self.kind in ("latency", "timeout"):
            out["seconds"] = self.seconds
        else:
            out["after_bytes"] = self.after_bytes
        return out


@dataclass
class Fired:
    """The faults that apply to one request."""

    fail: Rule | None = None
    latency: float = 0.0
    drop_after: int | None = None
    timeout: float | None = None  # a proxy's read timeout: 504 while the server goes on


class Faults:
    """The active fault rules plus the behaviour switches (slow archive, slow build)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.archive_delay = 0.0
        self.build_delay = 0.0
        #: Set to end the slow archives and builds waiting now (a delay set to 0, or a stop).
        self.archive_released = threading.Event()
        self.build_released = threading.Event()

    def set_archive_delay(self, seconds: float) -> None:
        self.archive_delay = seconds
        (self.archive_released.clear if seconds > 0 else self.archive_released.set)()

    def set_build_delay(self, seconds: float) -> None:
        self.build_delay = seconds
        (self.build_released.clear if seconds > 0 else self.build_released.set)()

    def release(self) -> None:
        """End every slow archive and build that is waiting (the sandbox is stopping)."""
        self.archive_released.set()
        self.build_released.set()

    def add(self, rule: Rule) -> None:
        if rule.count is not None and rule.count < 1:
            raise ValueError("count must be at least 1 (or null for every request)")
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
        self.set_archive_delay(0.0)
        self.set_build_delay(0.0)

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {
                "rules": [r.describe() for r in self._rules],
                "archive_delay": self.archive_delay,
                "build_delay": self.build_delay,
            }

    def fire(self, method: str, path: str) -> Fired:
        """Consume one use of every rule that matches this request and say what to do."""
        fired = Fired()
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path):
                    continue
                if rule.kind == "fail":
                    if fired.fail is not None:
                        continue
                    fired.fail = rule
                elif rule.kind == "latency":
                    fired.latency += rule.seconds
                elif rule.kind == "drop":
                    if fired.drop_after is not None:
                        continue
                    fired.drop_after = rule.after_bytes
                elif rule.kind == "timeout":
                    if fired.timeout is not None:
                        continue
                    fired.timeout = rule.seconds
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
        return fired


#: Bodies of the "proxy" failures, as nginx writes them; others get XNAT's status page.
PROXY_PAGES = {
    502: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n",
    504: "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    "<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n",
}
