"""What each step of a push is given (`Context`) and what it gives back (`Done`, `Resend`,
`Unsettled`).

A step is a function `step(context, drop) -> Done | Resend | Unsettled` (`Step`); the runner
(`pipeline.run`) calls the steps in the order of the ledger's transition table and records each
before and after. A step says how it went by what it returns, not by raising:

- `Done(summary, fields)`: the work is done; `summary` is its log line, `fields` go into the
  ledger with the new state;
- `Resend(reason)`: the prearchive copy is gone or incomplete and nothing is archived; the
  ledger goes back to `packed` and the upload is made again (`Ledger.resend`);
- `Unsettled(reason)`: the folder is still being copied; it goes back to the drop root to
  settle again (`freeze.thaw`).

Errors stay exceptions: `errors.TransientError` (retry with backoff), `errors.PermanentError`
(quarantine), `errors.AuthenticationError`, `errors.StateError`, and `Stopped`, which a wait
raises when a stop is requested: it unwinds whatever step is waiting, from however deep, to the
runner, which is what an exception is for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xnatdrop import ledger, xnat
from xnatdrop.config import Config, DropSettings

Progress = Callable[[str, int, int], None]
ClientFactory = Callable[[], Any]


class Stopped(Exception):
    """A stop was requested; the drop resumes from the ledger on the next run."""


@dataclasses.dataclass(frozen=True)
class Done:
    """A step did its work: `summary` for its log line, `fields` for the ledger."""

    summary: str
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Resend:
    """The prearchive copy is gone or incomplete and nothing is archived: upload again."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Unsettled:
    """The folder is still being copied (fresh empty or truncated files): let it settle."""

    reason: str


def xnat_client(config: Config, password: str) -> ClientFactory:
    """The client factory of the daemon and of `xnatdrop push`: a new `xnat.XnatClient` per
    call, used as a context manager and opened only when a step needs XNAT."""

    def factory() -> xnat.XnatClient:
        return xnat.XnatClient(config.xnat, password)

    return factory


@dataclasses.dataclass
class Context:
    """Everything one call of `process` needs, handed to each step.

    XNAT is opened when a step first asks for it (`client`) and closed with the call
    (`stack`); `stopping` is checked between steps and is what every wait waits on.
    """

    config: Config
    drop_settings: DropSettings
    book: ledger.Ledger
    client_factory: ClientFactory
    stopping: threading.Event
    progress: Progress | None
    stack: contextlib.ExitStack
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            self._client = self.stack.enter_context(self.client_factory())
        return self._client

    @property
    def connected(self) -> bool:
        """Whether this call has opened XNAT (so an XNAT clean-up can be tried cheaply)."""
        return self._client is not None

    @property
    def project(self) -> str:
        return self.drop_settings.project

    def spool(self, drop: ledger.Drop) -> Path:
        """The drop's folder in the spool (`spool`): `<state>/spool/<drop id>`."""
        return self.config.paths.state / "spool" / str(drop.id)

    def wait(self, seconds: float) -> None:
        """Wait, unless a stop is requested: then raise Stopped."""
        if self.stopping.wait(seconds):
            raise Stopped


Step = Callable[[Context, ledger.Drop], Done | Resend | Unsettled]
