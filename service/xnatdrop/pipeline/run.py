"""The runner: one call of `process` takes one drop as far as it goes now.

It holds the drop's lock, runs the steps in the order of the ledger's transition table
(`ledger.NEXT`) from the `STEPS` table below, each recorded before and after
(`Ledger.begin` / `Ledger.advance`), and retries transient errors with backoff,
`push.inline_attempts` times within one call, before handing the drop back (`Kind.TRANSIENT`).
Permanent errors quarantine the folder (`quarantine`), except XNAT's suspect answers
(`xnat.XnatAnswer.suspect`), which go through the circuit breaker first (`breaker`): the drop
waits, and pushes are held when other drops get the same answer. This is the per-drop error
boundary: the one place that catches any exception (STYLE.md, "Catch narrowly, with one
exception"); what is left after the expected ones, code INTERNAL, is a bug, logged with its
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from xnatdrop import breaker, heap, ledger, locks, names, pack, xnat
from xnatdrop.config import Config
from xnatdrop.errors import AuthenticationError, PermanentError, StateError, TransientError
from xnatdrop.logsetup import log_context
from xnatdrop.pipeline import (
    attach,
    check,
    confirm,
    crash,
    finish,
    freeze,
    late,
    quarantine,
    send,
)
from xnatdrop.pipeline.context import (
    ClientFactory,
    Context,
    Done,
    Progress,
    Resend,
    Step,
    Stopped,
    Unsettled,
)
from xnatdrop.pipeline.outcome import Kind, Outcome

log = logging.getLogger(__package__)  # "xnatdrop.pipeline" in the log, as before the split

# The step that leaves each state, in the order of `ledger.NEXT` (a test checks they agree).
STEPS: dict[str, Step] = {
    "freeze": freeze.freeze,
    "check": check.check,
    "pack": send.pack_step,
    "import": send.import_step,
    "verify": confirm.verify_step,
    "archive": confirm.archive_step,
    "attach": attach.attach,
    "finish": finish.finish,
}
MAX_RESENDS = 2  # per call; a prearchive that keeps losing data is a transient server problem


def process(
    drop_folder: Path,
    config: Config,
    book: ledger.Ledger,
    client_factory: ClientFactory,
    stopping: threading.Event | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Take one subject folder as far as it goes now; return what it came to.

    `drop_folder` is `<drop root>/<LABEL>` as the technologist dropped it (after a crash it may
    already have been moved: the ledger knows where). `client_factory()` returns a new
    `xnat.XnatClient` (`context.xnat_client`). `stopping` is checked between steps and used for
    every wait, so a stop request ends the call at the next step boundary. `progress(step,
    done, total)` is called while packing and uploading. Every line logged meanwhile carries
    the label (`logsetup.log_context`).

    Raise ValueError if the folder is not in a configured drop root and FileNotFoundError if it
    does not exist and no unfinished drop of that label is in the ledger.
    """
    drop_folder = Path(os.path.abspath(drop_folder))
    drop_settings = config.drop_for(drop_folder)
    if drop_settings is None:
        raise ValueError(f"{drop_folder} is not inside a configured drop root")
    label = drop_folder.name
    with (
        log_context(label),
        drop_lock(config.paths.state, drop_settings.project, label) as holder,
    ):
        if holder is not None:
            log.info("%s is working on it", holder)
            return Outcome(Kind.BUSY, label, message=f"{holder} is working on this drop now")
        drop = book.active(drop_settings.project, label)
        if drop is None:
            if not drop_folder.is_dir():
                raise FileNotFoundError(f"{drop_folder}: no such folder and nothing pending")
            drop = book.register(drop_settings.project, label, drop_folder, Path(""))
        with contextlib.ExitStack() as stack:
            context = Context(
                config,
                drop_settings,
                book,
                client_factory,
                stopping or threading.Event(),
                progress,
                stack,
            )
            return _attempts(context, drop)


@contextlib.contextmanager
def drop_lock(state: Path, project: str, label: str) -> Iterator[str | None]:
    """An exclusive flock per drop; the kernel drops it when the process dies, even by kill -9.

    Yields None when this process holds it, else who does ("xnatdrop run (pid 4711)"): the
    lock file names its holder, so `push` can say that the daemon is on it.
    """
    try:
        with ledger.state_errors(state):  # a full or read-only state folder: StateError
            folder = ledger.private_dir(state / "locks")
            lock = locks.Lock.acquire(
                folder / names.fit(f"{project}__{label}", ".lock"),
                locks.me(state, locks.this_command(state)),
            )
    except locks.Held as held:
        yield held.owner.describe()
        return
    try:
        yield None
    finally:
        lock.release()


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: uniform in [½, 1] × min(cap, base·2^attempt).

    Half-to-full ("equal") jitter keeps a floor so a burst of 503s is not hammered again at
    once, while drops that failed together still spread out.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return ceiling * random.uniform(0.5, 1.0)


def _attempts(context: Context, drop: ledger.Drop) -> Outcome:
    """Run the drop until it is final or handed back, retrying transient errors inline.

    Expected trouble never reaches the broad catch: a file-system error is sorted by
    `_file_trouble` (the state folder: the "state" outcome, which holds every push; a file of
    the drop or the share: a transient wait that names the file and the fix).
    """
    push = context.config.push
    book = context.book
    tries = resends = 0
    while True:
        try:
            try:
                result = _run_drop(context, drop)
            except pack.FileError as failure:
                raise _file_trouble(context, failure.error) from failure
            except OSError as failure:
                trouble = _file_trouble(context, failure)
                if trouble is failure:
                    raise
                raise trouble from failure
            if isinstance(result, Outcome):
                return result
            resends += 1
            drop = book.resend(book.get(drop.id), result.reason)
            log.warning("%s; sending it again", result.reason)
            if resends <= MAX_RESENDS:
                continue
            error: Exception = TransientError(
                f"XNAT lost the upload {resends} times: {result.reason}"
            )
        except Stopped:
            drop = book.get(drop.id)
            log.info("stopped at %s; it resumes on the next run", drop.state)
            return Outcome(
                Kind.STOPPED, drop.label, drop.id, "stop requested", retry_at=time.time()
            )
        except AuthenticationError as failure:
            # Not retried in a loop: the drop waits the longest backoff (push.retry_max_seconds).
            # Recorded at the step that met it (status names it), not where the call began.
            retry_at = time.time() + push.retry_max_seconds
            drop = _hand_back(context, drop, failure.code, str(failure), retry_at)
            log.error(
                "%s. Uploads stop until the credentials are fixed; nothing was lost.", failure
            )
            return Outcome(
                Kind.AUTH_FAILED, drop.label, drop.id, str(failure), failure.code, retry_at
            )
        except StateError as failure:
            # xnatdrop's own state folder: no drop is at fault and every drop would meet it.
            # Recorded if the ledger still takes it; the caller holds all pushes and backs off.
            retry_at = time.time() + backoff(
                drop.attempts, push.retry_base_seconds, push.retry_max_seconds
            )
            with contextlib.suppress(StateError):
                drop, step = _failed_at(context, drop)
                drop = book.fail(drop, step, code=failure.code, message=str(failure),
                                 retry_at=retry_at)  # fmt: skip
            # Said once by whoever holds the pushes (the daemon's ALERT, push's last line).
            log.debug("%s", failure)
            return Outcome(Kind.STATE, drop.label, drop.id, failure.reason, retry_at=retry_at)
        except TransientError as failure:
            error = failure
        except Exception as failure:
            log.exception("unexpected error in step %s", drop.running or drop.state)
            error = failure
        drop, step = _failed_at(context, drop)
        delay = backoff(drop.attempts, push.retry_base_seconds, push.retry_max_seconds)
        if isinstance(error, TransientError):
            code, message = error.code, str(error)
        else:
            code, message = "INTERNAL", repr(error)
        drop = book.fail(drop, step, code=code, message=message, retry_at=time.time() + delay)
        tries += 1
        handed_back = Outcome(Kind.TRANSIENT, drop.label, drop.id, message, code, drop.next_attempt)
        if context.stopping.is_set():
            log.info("stopped before %s; it resumes on the next run", step)
            return handed_back
        if tries >= push.inline_attempts or delay > push.inline_max_seconds:
            log.warning("%s failed (%s); next attempt in %.0f s", step, message, delay)
            return handed_back
        log.warning("%s failed (%s); retrying in %.1f s", step, message, delay)
        if context.stopping.wait(delay):
            return handed_back


def _hand_back(
    context: Context, drop: ledger.Drop, code: str, message: str, retry_at: float
) -> ledger.Drop:
    """Record that this drop waits until `retry_at` with `code`; it is not retried inline, so
    other drops go on: a refused login, the circuit breaker holding pushes, a suspect XNAT
    answer to be confirmed later (`breaker`). Recorded at the step that met it."""
    drop, step = _failed_at(context, drop)
    return context.book.fail(drop, step, code=code, message=message, retry_at=retry_at)


def _failed_at(context: Context, drop: ledger.Drop) -> tuple[ledger.Drop, str]:
    """The drop as the ledger has it now, and the step that failed: the one running, else the
    next one. Read afresh: the drop passed in may be several steps old."""
    current = context.book.get(drop.id)
    return current, current.running or current.next_step or "finish"


class FileTrouble(TransientError):
    """A file or folder of the drop or the share cannot be read or written (permissions, a
    full share, a folder in the way): waits and is retried with backoff; the message names
    the path and the fix. Three in a row raise one ALERT (`daemon`) and `status` exits 1."""

    code = "FILESYSTEM"


_ERRNO_FIX = {
    errno.ENOSPC: "its file system is full: free space there",
    errno.EDQUOT: "the service user's disk quota is used up: raise it or free space",
    errno.EACCES: "the service user may not access it: fix its permissions",
    errno.EPERM: "the service user may not change it: fix its permissions or owner",
    errno.EROFS: "its file system is mounted read-only: remount it read-write",
    errno.EIO: "the disk or share reports an I/O error: check it",
    errno.ENOTEMPTY: "a folder of that name is in the way: move it aside",
    errno.EEXIST: "a folder of that name is in the way: move it aside",
    errno.ENAMETOOLONG: "the name is too long for the file system: shorten it",
    errno.ENOENT: "it is missing: if the share is unmounted, mount it",
    errno.ESTALE: "the share was remounted under xnatdrop: it is tried again",
}


def _file_trouble(context: Context, error: OSError) -> Exception:
    """What an OSError from a step means for the drop (see `_attempts`).

    Under the state folder with an errno that means "cannot write" it is a StateError; any
    other error with a file name is FileTrouble; an OSError without one is not a file-system
    problem we know of, and stays what it is (INTERNAL).
    """
    if error.filename is None:
        return error
    path = Path(os.fsdecode(error.filename))
    state = context.config.paths.state
    if error.errno in ledger.STATE_ERRNOS and path.is_relative_to(state):
        return StateError(state, error.strerror or str(error))
    fix = _ERRNO_FIX.get(error.errno or 0, "xnatdrop tries again later")
    where = names.shown(str(path))
    if error.filename2 is not None:
        where += f" -> {names.shown(os.fsdecode(error.filename2))}"
    return FileTrouble(f"{where}: {error.strerror or error}; {fix}")


def _run_drop(context: Context, drop: ledger.Drop) -> Outcome | Resend:
    """The steps, and the two ways out that move the folder: quarantine and thaw.

    Errors while moving it (a full disk, another file system) reach `_attempts` like any other.
    """
    try:
        if drop.running == "quarantine":
            # A quarantine was cut short by a crash: finish it with the reason stored at start.
            return quarantine.finish(context, drop, quarantine.stored_reason(context, drop))
        if drop.running == "thaw" or freeze.was_thawed(drop):
            reason = "still being copied (the move back was interrupted)"
            return freeze.finish_thaw(context, drop, reason)
        result = _steps(context, freeze.locate(context, drop))
    except PermanentError as failure:
        drop = context.book.get(drop.id)
        if isinstance(failure, xnat.XnatAnswer) and failure.suspect:
            decision = breaker.decide(
                context.book, context.config, drop.id, failure.answer, str(failure)
            )
            if decision.action in ("hold", "confirm"):
                if decision.action == "hold":
                    code, retry_at = ledger.HELD, decision.retry_at or 0.0
                else:
                    # Long enough for other drops to be tried meanwhile: their answers tell an
                    # XNAT problem (the breaker opens) from a problem of this drop (XNAT
                    # accepts them).
                    code = ledger.SUSPECT
                    retry_at = time.time() + context.config.push.breaker_hold_seconds
                drop = _hand_back(context, drop, code, decision.message, retry_at)
                log.warning("%s", decision.message)
                return Outcome(
                    Kind.TRANSIENT, drop.label, drop.id, decision.message, code, retry_at
                )
        return quarantine.quarantine(context, drop, failure)
    if isinstance(result, Unsettled):
        return freeze.thaw(context, context.book.get(drop.id), result.reason)
    if isinstance(result, Resend):
        return result
    return _final_outcome(result)


def _steps(context: Context, drop: ledger.Drop) -> ledger.Drop | Resend | Unsettled:
    """Run the remaining steps in order, each recorded before and after; stop early on a
    step's Resend or Unsettled."""
    while not drop.final:
        if context.stopping.is_set():
            raise Stopped
        skipped = late.skip_upload(context, drop)
        if skipped is not None:
            drop = skipped
            continue
        step = drop.next_step
        assert step is not None, drop.state
        drop = context.book.begin(drop, step)
        crash.point(step, "before")
        started = time.monotonic()
        with log_context(step=step):
            result = STEPS[step](context, drop)
        # What the step freed goes back to the kernel before the next one builds on top of it.
        heap.release()
        if not isinstance(result, Done):
            return result
        crash.point(step, "after")
        drop = context.book.advance(context.book.get(drop.id), step, **result.fields)
        with log_context(step=step):
            log.info("%s: %s (%.1f s)", step, result.summary, time.monotonic() - started)
    return drop


def _final_outcome(drop: ledger.Drop) -> Outcome:
    path = Path(drop.final_path) if drop.final_path else None
    if drop.state == "done":
        return Outcome(Kind.ARCHIVED, drop.label, drop.id, drop.archive_uri or "", path=path)
    return Outcome(
        Kind.QUARANTINED,
        drop.label,
        drop.id,
        drop.last_error or "",
        drop.last_error_code or "",
        path=path,
    )
