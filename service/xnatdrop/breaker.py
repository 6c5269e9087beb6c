"""The circuit breaker: one XNAT problem must not quarantine every drop of the night.

XNAT answers some server-side failures with a 4xx that looks permanent: a full disk or a broken
storage mount makes the DICOM importer answer 400 "unable to read DICOM object …"
(GradualDicomImporter.call wraps every server error in that 400, reference §3.5); a revoked
permission or a deleted project turns every import into a routed or forbidden one. Taken drop by
drop, each would be quarantined with a reason no technologist can act on.

So a suspect permanent answer (`xnat.XnatAnswer.suspect`) is not trusted at once:

- the first time a drop gets it, the drop waits and is tried again ("confirm"), unless
- `push.breaker_drops` different drops got the same answer since XNAT last accepted a write:
  then the breaker opens. Every push is held (an ALERT in the log, one sentence in `status`),
  nothing is quarantined, and the held drops keep their state in the ledger;
- a drop that gets the same answer again after XNAT accepted another drop's upload (XNAT works,
  so the answer is about this drop), or three times in all, is quarantined.

Closing: after `push.breaker_hold_seconds` one push is let through as a try (the daemon starts
no other); its success closes the breaker and every held drop is due at once; the same answer
keeps it open twice as long (up to `push.retry_max_seconds`). A restart of the daemon, or an
operator's `xnatdrop push`, tries at once: after fixing XNAT, `systemctl restart xnatdrop`.

The state is in the ledger (tables `xnat_answers` and `breaker`), where the daemon, `push` and
`status` all see it. "Same answer" means the same status and XNAT's fixed wording
(`XnatAnswer.answer`), never free text that holds a label or a file name.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from xnatdrop import ledger as ledger_module
from xnatdrop.config import Config

log = logging.getLogger(__name__)

CONFIRMATIONS = 3  # a drop that got the same suspect answer this many times is quarantined


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with a drop that got a suspect answer: "quarantine", "confirm" (try it
    again later; `retry_at` None means the usual backoff) or "hold" (the breaker is open)."""

    action: str
    message: str
    retry_at: float | None = None


def hold_seconds(config: Config, tries: int) -> float:
    """How long pushes stay held after the `tries`-th failed try (0: just opened)."""
    return min(config.push.retry_max_seconds, config.push.breaker_hold_seconds * 2**tries)


def sentence(state: ledger_module.Breaker) -> str:
    """The breaker in one sentence, for `status`, the daemon's status line and the log."""
    since = time.strftime("%H:%M", time.localtime(state.opened))
    until = time.strftime("%H:%M", time.localtime(state.retry_at))
    return (
        f"pushes held since {since}: {state.drops} different drops in a row got the same answer "
        f"from XNAT ({state.answer}), which points at XNAT itself (a full disk, a broken storage "
        f"mount, a revoked permission); next try at {until}, or at once after fixing XNAT and "
        "restarting xnatdrop"
    )


def decide(
    book: ledger_module.Ledger, config: Config, drop_id: int, answer: str, message: str
) -> Decision:
    """Record XNAT's suspect `answer` to a drop and decide what happens to the drop."""
    now = time.time()
    book.record_answer(drop_id, answer, now)
    state = book.breaker()
    if state is not None:
        retry_at = now + hold_seconds(config, state.tries + 1)
        state = book.open_breaker(state.answer, state.drops, retry_at)
        log.warning("circuit breaker: the try failed again (%s); %s", answer, sentence(state))
        return Decision("hold", sentence(state), state.retry_at)
    answers = book.answers()
    last_success = max((a.at for a in answers if not a.answer), default=0.0)
    drops = {a.drop_id for a in answers if a.answer == answer and a.at > last_success}
    if len(drops) >= config.push.breaker_drops:
        state = book.open_breaker(answer, len(drops), now + hold_seconds(config, 0))
        log.error("ALERT: %s", sentence(state))
        return Decision("hold", sentence(state), state.retry_at)
    mine = [a.at for a in answers if a.drop_id == drop_id and a.answer == answer]
    if len(mine) >= CONFIRMATIONS or any(at < last_success for at in mine):
        return Decision("quarantine", message)
    return Decision(
        "confirm",
        f"{message} — tried again before quarantining, in case XNAT answers every drop this "
        f"way ({len(drops)} of {config.push.breaker_drops} drops so far would hold all pushes)",
    )


def success(book: ledger_module.Ledger, drop_id: int) -> None:
    """XNAT accepted a write for a drop: it works. Close the breaker if it was open."""
    book.record_answer(drop_id, "")
    if book.breaker() is not None:
        released = book.close_breaker()
        log.warning(
            "circuit breaker closed: XNAT accepted an upload again; %d held drop(s) resume",
            released,
        )


def held(book: ledger_module.Ledger, now: float | None = None) -> ledger_module.Breaker | None:
    """The open breaker while pushes are held (before its next try), else None."""
    state = book.breaker()
    if state is None or (time.time() if now is None else now) >= state.retry_at:
        return None
    return state
