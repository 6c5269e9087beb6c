"""Push one subject folder to XNAT: freeze → check → pack → import → verify → archive → attach →
finish, or quarantine.

Entry point, for `xnatdrop push` and the daemon alike::

    outcome = pipeline.process(drop_folder, config, ledger, client_factory, stopping, progress)

`drop_folder` is `<drop root>/<LABEL>` as the technologist dropped it (after a crash it may
already have been moved: the ledger knows where). `client_factory()` returns a new
`xnat.XnatClient` (used as a context manager, opened only when a step needs XNAT). `stopping`, a
`threading.Event`, is checked between steps and used for every wait, so a stop request ends the
call at the next step boundary. `progress(step, done, total)` is called while packing and
uploading. The result is an `Outcome`:

- `archived`: archived, verified, sidecars attached, folder in done/ (exit 0);
- `quarantined`: a permanent failure, folder in quarantine/ with reason files (exit 1);
- `transient`: stopped on a retryable error (timeout, reset, 5xx, expired session that could
  not be renewed; a file or folder of the drop or the share that cannot be read or written,
  code FILESYSTEM, naming the path and the fix; or an unexpected exception, a bug, recorded as
  INTERNAL with its traceback); `retry_at` says when the ledger considers the drop due again
  (exit 3);
- `state`: xnatdrop's own state folder cannot be written (full, read-only): no drop is at
  fault; the caller holds every push and tries again with backoff (exit 3);
- `auth_failed`: XNAT refused our credentials; the drop is not due again for
  `push.retry_max_seconds`; the caller should stop all uploads and alert (exit 3);
- `busy`: another process holds this drop's lock (exit 3);
- `stopped`: `stopping` was set; the drop stopped at a step boundary (exit 3);
- `incomplete`: the check found empty or truncated files, or visibly incomplete series, younger
  than `settle.max_wait_seconds`, so the folder is probably still being copied: it was moved
  back to the drop root (ledger state `new`) to settle again (exit 3). Older ones quarantine.
  The move back ("thaw") is recorded before and after the rename, so a kill -9 between them
  is finished on the next call.

Each step is written to the ledger before and after (`Ledger.begin` / `Ledger.advance`), and each
is safe to repeat after a `kill -9` at any point:

- freeze renames the folder into `<drop root>/<push.work_folder>/<drop id>/<LABEL>` (same file
  system, checked); a repeat finds it there, and a new copy that the technologist made in the
  meantime is left in the drop root, to be pushed after this drop as a drop of its own. Before
  each later step the folder is looked for where the ledger says (`_located`).
- check runs the rules on the frozen folder and stores the facts the later steps need in the
  spool (`<state>/spool/<drop id>/check.json`); a block finding quarantines.
- pack plans the zip (entry order, names, sizes, exact length) and writes `plan.json`
  atomically; no file data is read (see `pack`).
- import first reads what XNAT will do to the files (anonymisation scripts, series import
  filters, the checksums preference: `verify.Rewriting`, kept in the spool as `xnat.json`),
  then asks XNAT what exists: an archived session with this label (`_join`: of the same study,
  only the instances it lacks are sent and later archived into it, the late files of a copy
  that paused; all of them there: nothing is sent; another study, or other content for an
  instance it holds: quarantine as a label conflict), a READY prearchive
  session holding every file (reused), a copy XNAT is still building (its answer was lost, e.g.
  to a proxy's 504: waited for, never deleted), leftovers of an interrupted upload (deleted once
  XNAT has stopped writing to them); only then uploads, streaming the zip while it reads and
  hashes the files, and saves `manifest.json` (size, MD5 and UIDs of each file) once every file
  is hashed. Zip entry names are the files' paths, shortened where XNAT could not store them
  (`pack.upload_name`). Comparing with XNAT without a manifest (a crash before it was saved)
  hashes the files first, without sending. An upload XNAT files under another project
  (Unassigned) is removed again.
- verify waits for READY (CONFLICT and ERROR end the wait) and compares the number of files of
  each scan with the manifest, and their sizes where XNAT keeps the bytes; series a series
  import filter dropped are recorded for the receipt; anything else missing is deleted and sent
  again (`resend`).
- archive asks for the archived session first (a crash after XNAT archived but before the ledger
  heard of it), archives with explicit labels and no overwrite, and verifies the archived
  session (`verify`): every instance matched by SOPInstanceUID, the pixel data of one file per
  scan, sizes and MD5s where XNAT keeps the bytes. A difference quarantines the folder with a
  reason file saying the session is in XNAT, at which address, and what differs.
- attach lists each sidecar resource and uploads only the files that are not there yet, as a
  zip streamed from the folder (never written to disk); a file that is there with other
  content is a permanent conflict.
- finish sets optional subject fields, writes the receipt and renames the folder to
  `done/<date>/<LABEL>/`; the target is written to the ledger before the rename, and chosen
  again if the configured done/ path changed since (`_aim`; quarantine/ likewise). Names that
  xnatdrop adds to (`__<time>`, `__2`, `.lock`) are shortened to fit (`names.fit`).

Transient errors (`errors.TransientError`) are retried with exponential backoff and jitter,
`push.inline_attempts` times within one call, then handed back. They never quarantine.
Permanent ones (`errors.PermanentError`: a block finding, LABEL_EXISTS, XNAT_CONFLICT, a 4xx)
move the folder to `quarantine/<LABEL>__<time>/` with QUARANTINE.txt and QUARANTINE.json,
except XNAT's suspect answers (`xnat.XnatAnswer.suspect`), which go through the circuit
breaker first (`breaker`): the drop waits, and pushes are held when other drops get the same
answer.

What the daemon and `xnatdrop status` ask the ledger (drops per state, due drops, oldest
pending, recent failures, last finished) is documented in `ledger`.

Test hook: the environment variable `XNATDROP_TEST_CRASH_AT=<step>:<before|after>` makes the
process SIGKILL itself right after the ledger recorded the start of that step (`before`) or right
after the step's work, before the ledger recorded it (`after`); `import:bytes=N` kills it once N
bytes of the upload were sent; `quarantine:before|after` around the move to quarantine/;
`thaw:before|after` around the move back to the drop root. It is read in `_crash_point` only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import errno
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xnatdrop import breaker, locks, names, pack, quarantine, receipt, rules, verify, xnat
from xnatdrop import ledger as ledger_module
from xnatdrop.config import Config, DropSettings
from xnatdrop.errors import AuthenticationError, PermanentError, StateError, TransientError

log = logging.getLogger(__name__)

CRASH_ENV = "XNATDROP_TEST_CRASH_AT"
CHECK_NAME = "check.json"
QUARANTINE_NAME = "quarantine.json"
XNAT_NAME = "xnat.json"  # what XNAT said at push time and what verification found
MAX_RESENDS = 2  # per call; a prearchive that keeps losing data is a transient server problem

# Prearchive statuses (reference §4.2). Locked ones mean XNAT is busy with the session.
READY = "READY"
RECEIVING = frozenset({"RECEIVING", "RECEIVING_INTERRUPT", "_RECEIVING", "_RECEIVING_INTERRUPT"})
BUILDING_NOW = frozenset({"BUILDING", "QUEUED_BUILDING", "_BUILDING"})
BUILDING = RECEIVING | BUILDING_NOW  # not READY yet: wait for it
FAILED = frozenset({"ERROR", "_ERROR"})
CONFLICT = frozenset({"CONFLICT", "_CONFLICT"})

Progress = Callable[[str, int, int], None]
ClientFactory = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one call of `process` achieved; see the module docstring for the kinds."""

    kind: str
    label: str
    drop_id: int | None = None
    message: str = ""
    code: str = ""
    retry_at: float | None = None
    path: Path | None = None

    @property
    def detail(self) -> str:
        """One line for logs and the daemon's status: the code and message, or the path."""
        if self.kind == "archived":
            return f"archived, now in {self.path}"
        return f"{self.code}: {self.message}" if self.code else self.message


class _Resend(Exception):
    """The prearchive copy is gone or incomplete and nothing is archived: upload again."""


class _Stopped(Exception):
    """A stop was requested; the drop resumes from the ledger on the next run."""


class _Incomplete(Exception):
    """The folder is still being copied (fresh empty or truncated files): let it settle."""


class _HandBack(Exception):
    """Stop this drop until `retry_at` with `code`: held by the circuit breaker, or a suspect
    XNAT answer to be confirmed later (`breaker`). Not retried inline, so other drops go on."""

    def __init__(self, code: str, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.code = code
        self.retry_at = retry_at


@dataclasses.dataclass
class _Run:
    """Everything one call of `process` needs, passed to each step."""

    config: Config
    drop_settings: DropSettings
    book: ledger_module.Ledger
    client_factory: ClientFactory
    stopping: threading.Event
    progress: Progress | None
    stack: contextlib.ExitStack
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            self._client = self.stack.enter_context(self.client_factory())
        return self._client

    def spool(self, drop: ledger_module.Drop) -> Path:
        return self.config.paths.state / "spool" / str(drop.id)

    @property
    def project(self) -> str:
        return self.drop_settings.project

    def wait(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise _Stopped


# -- the entry point --------------------------------------------------------------------------


def process(
    drop_folder: Path,
    config: Config,
    book: ledger_module.Ledger,
    client_factory: ClientFactory,
    stopping: threading.Event | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Take one subject folder as far as it goes now; see the module docstring.

    Raise ValueError if the folder is not in a configured drop root and FileNotFoundError if it
    does not exist and no unfinished drop of that label is in the ledger.
    """
    drop_folder = Path(os.path.abspath(drop_folder))
    drop_settings = config.drop_for(drop_folder)
    if drop_settings is None:
        raise ValueError(f"{drop_folder} is not inside a configured drop root")
    label = drop_folder.name
    with _drop_lock(config.paths.state, drop_settings.project, label) as holder:
        if holder is not None:
            log.info("%s: %s is working on it", label, holder)
            return Outcome("busy", label, message=f"{holder} is working on this drop now")
        drop = book.active(drop_settings.project, label)
        if drop is None:
            if not drop_folder.is_dir():
                raise FileNotFoundError(f"{drop_folder}: no such folder and nothing pending")
            drop = book.register(drop_settings.project, label, drop_folder, Path(""))
        with contextlib.ExitStack() as stack:
            run = _Run(
                config,
                drop_settings,
                book,
                client_factory,
                stopping or threading.Event(),
                progress,
                stack,
            )
            return _attempts(run, drop)


@contextlib.contextmanager
def _drop_lock(state: Path, project: str, label: str) -> Iterator[str | None]:
    """An exclusive flock per drop; the kernel drops it when the process dies, even by kill -9.

    Yields None when this process holds it, else who does ("xnatdrop run (pid 4711)"): the
    lock file names its holder, so `push` can say that the daemon is on it.
    """
    try:
        with ledger_module.state_errors(state):  # a full or read-only state folder: StateError
            folder = ledger_module.private_dir(state / "locks")
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


def _attempts(run: _Run, drop: ledger_module.Drop) -> Outcome:
    """Run steps until the drop is final, retrying transient errors inline a few times.

    This is the per-drop boundary: the one place that catches any exception, records it in the
    ledger and turns it into an Outcome (STYLE.md, "Catch narrowly, with one exception").
    Expected trouble never reaches the broad catch: a file-system error is sorted by
    `_file_trouble` (the state folder: the "state" outcome, which holds every push; a file of
    the drop or the share: a transient wait that names the file and the fix). What is left,
    code INTERNAL, is a bug, logged with its traceback.
    """
    push = run.config.push
    tries = 0
    resends = 0
    while True:
        try:
            try:
                return _run_drop(run, drop)
            except pack.FileError as failure:
                raise _file_trouble(run, failure.error) from failure
            except OSError as failure:
                trouble = _file_trouble(run, failure)
                if trouble is failure:
                    raise
                raise trouble from failure
        except _Stopped:
            drop = run.book.get(drop.id)
            log.info("%s: stopped at %s; it resumes on the next run", drop.label, drop.state)
            return Outcome("stopped", drop.label, drop.id, "stop requested", retry_at=time.time())
        except _Resend as reason:
            resends += 1
            drop = run.book.resend(run.book.get(drop.id), str(reason))
            log.warning("%s: %s; sending it again", drop.label, reason)
            if resends <= MAX_RESENDS:
                continue
            error: Exception = TransientError(f"XNAT lost the upload {resends} times: {reason}")
        except _HandBack as handed:
            drop, step = _failed_at(run, drop)
            drop = run.book.fail(drop, step, handed.code, str(handed), handed.retry_at)
            log.warning("%s: %s", drop.label, handed)
            return Outcome(
                "transient", drop.label, drop.id, str(handed), handed.code, handed.retry_at
            )
        except AuthenticationError as failure:
            # Not retried in a loop: the drop waits the longest backoff (push.retry_max_seconds).
            # Recorded at the step that met it (status names it), not where the call began.
            retry_at = time.time() + push.retry_max_seconds
            drop, step = _failed_at(run, drop)
            drop = run.book.fail(drop, step, "AUTHENTICATION", str(failure), retry_at)
            log.error(
                "%s: %s. Uploads stop until the credentials are fixed; nothing was lost.",
                drop.label,
                failure,
            )
            return Outcome(
                "auth_failed", drop.label, drop.id, str(failure), "AUTHENTICATION", retry_at
            )
        except StateError as failure:
            # xnatdrop's own state folder: no drop is at fault and every drop would meet it.
            # Recorded if the ledger still takes it; the caller holds all pushes and backs off.
            wait = backoff(drop.attempts, push.retry_base_seconds, push.retry_max_seconds)
            retry_at = time.time() + wait
            with contextlib.suppress(StateError):
                drop, step = _failed_at(run, drop)
                drop = run.book.fail(drop, step, "STATE", str(failure), retry_at)
            # Said once by whoever holds the pushes (the daemon's ALERT, push's last line).
            log.debug("%s: %s", drop.label, failure)
            return Outcome("state", drop.label, drop.id, failure.reason, retry_at=retry_at)
        except TransientError as failure:
            error = failure
        except Exception as failure:
            log.exception("%s: unexpected error in step %s", drop.label, drop.running or drop.state)
            error = failure
        drop, step = _failed_at(run, drop)
        delay = backoff(drop.attempts, push.retry_base_seconds, push.retry_max_seconds)
        if isinstance(error, TransientError):
            code, message = getattr(error, "code", "TRANSIENT"), str(error)
        else:
            code, message = "INTERNAL", repr(error)
        drop = run.book.fail(drop, step, code, message, time.time() + delay)
        tries += 1
        if run.stopping.is_set():
            log.info("%s: stopped before %s; it resumes on the next run", drop.label, step)
            return Outcome("transient", drop.label, drop.id, message, code, drop.next_attempt)
        if tries >= push.inline_attempts or delay > push.inline_max_seconds:
            log.warning(
                "%s: %s failed (%s); next attempt in %.0f s", drop.label, step, message, delay
            )
            return Outcome("transient", drop.label, drop.id, message, code, drop.next_attempt)
        log.warning("%s: %s failed (%s); retrying in %.1f s", drop.label, step, message, delay)
        if run.stopping.wait(delay):
            return Outcome("transient", drop.label, drop.id, message, code, drop.next_attempt)


def _failed_at(run: _Run, drop: ledger_module.Drop) -> tuple[ledger_module.Drop, str]:
    """The drop as the ledger has it now, and the step that failed: the one running, else the
    next one. Read afresh: the drop passed in may be several steps old."""
    current = run.book.get(drop.id)
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


def _file_trouble(run: _Run, error: OSError) -> Exception:
    """What an OSError from a step means for the drop (see `_attempts`).

    Under the state folder with an errno that means "cannot write" it is a StateError; any
    other error with a file name is FileTrouble; an OSError without one is not a file-system
    problem we know of, and stays what it is (INTERNAL).
    """
    if error.filename is None:
        return error
    path = Path(os.fsdecode(error.filename))
    state = run.config.paths.state
    if error.errno in ledger_module.STATE_ERRNOS and path.is_relative_to(state):
        return StateError(state, error.strerror or str(error))
    fix = _ERRNO_FIX.get(error.errno or 0, "xnatdrop tries again later")
    where = names.shown(str(path))
    if error.filename2 is not None:
        where += f" -> {names.shown(os.fsdecode(error.filename2))}"
    return FileTrouble(f"{where}: {error.strerror or error}; {fix}")


def _run_drop(run: _Run, drop: ledger_module.Drop) -> Outcome:
    """The steps, and the two ways out that move the folder: quarantine and thaw.

    Errors while moving it (a full disk, another file system) reach `_attempts` like any other.
    """
    try:
        if drop.running == "quarantine":
            # A quarantine was cut short by a crash: finish it with the reason stored at start.
            return _complete_quarantine(run, drop, _stored_reason(run, drop))
        if drop.running == "thaw" or _thawed(drop):
            return _complete_thaw(run, drop, "still being copied (the move back was interrupted)")
        return _final_outcome(_steps(run, _located(run, drop)))
    except PermanentError as failure:
        drop = run.book.get(drop.id)
        if isinstance(failure, xnat.XnatAnswer) and failure.suspect:
            decision = breaker.decide(run.book, run.config, drop.id, failure.answer, str(failure))
            if decision.action == "hold":
                raise _HandBack(
                    ledger_module.HELD, decision.message, decision.retry_at or 0.0
                ) from None
            if decision.action == "confirm":
                # Long enough for other drops to be tried meanwhile: their answers tell an XNAT
                # problem (the breaker opens) from a problem of this drop (XNAT accepts them).
                retry_at = time.time() + run.config.push.breaker_hold_seconds
                raise _HandBack(ledger_module.SUSPECT, decision.message, retry_at) from None
        return _quarantine(run, drop, failure)
    except _Incomplete as reason:
        return _thaw(run, run.book.get(drop.id), str(reason))


def _final_outcome(drop: ledger_module.Drop) -> Outcome:
    path = Path(drop.final_path) if drop.final_path else None
    if drop.state == "done":
        return Outcome("archived", drop.label, drop.id, drop.archive_uri or "", path=path)
    return Outcome(
        "quarantined",
        drop.label,
        drop.id,
        drop.last_error or "",
        drop.last_error_code or "",
        path=path,
    )


STEP_FUNCTIONS: dict[str, Callable[[_Run, ledger_module.Drop], tuple[dict[str, Any], str]]] = {}


def _step(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        STEP_FUNCTIONS[name] = function
        return function

    return register


def _steps(run: _Run, drop: ledger_module.Drop) -> ledger_module.Drop:
    """Run the remaining steps in order; each is recorded before and after."""
    while not drop.final:
        if run.stopping.is_set():
            raise _Stopped
        step = drop.next_step
        assert step is not None, drop.state
        drop = run.book.begin(drop, step)
        _crash_point(step, "before")
        started = time.monotonic()
        fields, summary = STEP_FUNCTIONS[step](run, drop)
        _crash_point(step, "after")
        drop = run.book.advance(run.book.get(drop.id), step, **fields)
        log.info("%s: %s: %s (%.1f s)", drop.label, step, summary, time.monotonic() - started)
    return drop


def _crash_point(step: str, when: str, sent: int | None = None) -> None:
    """The test hook described in the module docstring; a no-op unless CRASH_ENV is set."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    if wanted == f"{step}:{when}" or (
        sent is not None
        and wanted.startswith(f"{step}:bytes=")
        and sent >= int(wanted.split("=", 1)[1])
    ):
        os.kill(os.getpid(), signal.SIGKILL)


# -- freeze ----------------------------------------------------------------------------------


def _work_path(run: _Run, drop: ledger_module.Drop) -> Path:
    return run.drop_settings.path / run.config.push.work_folder / str(drop.id) / drop.label


@_step("freeze")
def _freeze(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    """Rename the folder into the working area: one atomic rename on the same file system."""
    source, work = Path(drop.source), _work_path(run, drop)
    run.book.update(drop, work=work)
    if work.is_dir():
        # Renamed before a crash. A folder now in the drop root under the same name is a new
        # copy (the technologist saw the folder vanish and copied it again): it stays there and
        # becomes a drop of its own once this one is finished (see `_located`).
        if source.is_dir():
            log.warning(
                "%s: a new copy appeared in the drop root while this drop was being frozen; "
                "it is left there and pushed after this one as a drop of its own",
                drop.label,
            )
        return {"work": work}, "already frozen"
    if not source.is_dir():
        raise PermanentError(
            "FOLDER_MISSING",
            f"the folder {source} disappeared before xnatdrop could take it",
            "copy the folder into the drop folder again",
        )
    work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if work.parent.stat().st_dev != source.stat().st_dev:
        raise TransientError(
            f"working area {work.parent} is on another file system than {source}; "
            "xnatdrop only moves drops by rename"
        )
    os.rename(source, work)
    return {"work": work}, f"moved into {work.parent}"


# -- check -----------------------------------------------------------------------------------


@_step("check")
def _check(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    """Run the rules; store what later steps need; a block finding quarantines."""
    work = Path(drop.work)
    _set_aside_reason_files(run, drop, work)
    facts = _check_facts(work, run.config, run.drop_settings)
    facts["subject_fields"] = _subject_fields(run, work, facts)
    spool = run.spool(drop)
    with ledger_module.state_errors(run.config.paths.state):  # a full state disk: wait, alert
        ledger_module.private_dir(spool)
        receipt.write_atomic(spool / CHECK_NAME, json.dumps(facts, indent=1), private=True)
    if not facts["ok"]:
        blocks = [f for f in facts["findings"] if f["action"] == "block"]
        _still_copying(run, work, blocks)
        codes = sorted({f["code"] for f in blocks})
        fixes = {f["fix"] for f in blocks if f.get("fix")}
        raise PermanentError(
            "RULES_BLOCKED",
            f"{len(blocks)} problem(s) in the folder stop the upload ({', '.join(codes)})",
            fixes.pop() if len(fixes) == 1 else "fix each problem listed below",
        )
    summary = (
        f"{len(facts['series'])} series, {len(facts['files'])} files to upload, "
        f"{len(facts['excluded'])} excluded, sidecars: {', '.join(facts['sidecars']) or 'none'}"
    )
    return {}, summary


def _set_aside_reason_files(run: _Run, drop: ledger_module.Drop, work: Path) -> None:
    """Move our own QUARANTINE.txt/.json of an earlier quarantine out of a resubmitted folder.

    They are not the technologist's data: they would otherwise travel into done/ beside the
    receipt and contradict it. They are kept under `<state>/requeued/<label>__drop<id>/`.
    """
    found = rules.own_reason_files(work)
    if not found:
        return
    kept = ledger_module.private_dir(
        run.config.paths.state / "requeued" / names.fit(drop.label, f"__drop{drop.id}")
    )
    for path in found:
        target = kept / path.name
        shutil.copyfile(path, target)
        os.chmod(target, 0o600)
        path.unlink()
    log.info(
        "%s: our reason files from an earlier quarantine (%s) moved aside to %s",
        drop.label,
        ", ".join(p.name for p in found),
        kept,
    )


# Findings that mean "the copy is not finished yet": held back (thawed) until
# settle.max_wait_seconds after the files last changed, then quarantined.
COPYING_CODES = frozenset({"EMPTY_FILE", "TRUNCATED_DICOM", "INCOMPLETE_SERIES"})


def _still_copying(run: _Run, work: Path, blocks: list[dict[str, Any]]) -> None:
    """Raise _Incomplete if every block says "not copied yet" and the copy is recent.

    A copy still running, or paused for longer than `settle.quiet_seconds`, when the folder
    looked settled leaves empty or truncated files, or series that visibly lack files
    (INCOMPLETE_SERIES). The change time of those files (set when the copy wrote them; a rename
    of the folder does not touch it) tells a copy in progress from one that died long ago,
    which is quarantined once `settle.max_wait_seconds` have passed.
    """
    if not blocks or any(f["code"] not in COPYING_CODES for f in blocks):
        return
    paths = [work / p for f in blocks for p in (f.get("files") or [f["path"]])]
    newest = max((p.stat().st_ctime for p in paths if p.exists()), default=0.0)
    age = time.time() - newest
    if age < run.config.settle.max_wait_seconds:
        codes = ", ".join(sorted({f["code"] for f in blocks}))
        raise _Incomplete(
            f"still being copied ({codes} in {len(blocks)} place(s); the newest file came "
            f"{age:.0f} s ago); it is checked again once it settles, and quarantined if it "
            f"is still incomplete {run.config.settle.max_wait_seconds:.0f} s after that file"
        )


def _thaw(run: _Run, drop: ledger_module.Drop, reason: str) -> Outcome:
    """Move a frozen folder back to the drop root to settle again; quarantine if it can't.

    Written to the ledger before the rename (`running = "thaw"`) and after it (state `new`):
    a kill -9 between the two once left the ledger pointing at a work folder that no longer
    existed, and every later attempt failed with "is not a directory". `_complete_thaw`
    finishes a thaw that was cut short.
    """
    drop = run.book.begin(drop, "thaw")
    _crash_point("thaw", "before")
    return _complete_thaw(run, drop, reason)


def _thawed(drop: ledger_module.Drop) -> bool:
    """A frozen drop whose folder is back in the drop root and gone from the work area: a thaw
    that a kill -9 cut short before the ledger recorded its start (an older xnatdrop)."""
    return (
        drop.state == "frozen"
        and bool(drop.work)
        and not Path(drop.work).exists()
        and Path(drop.source).is_dir()
    )


def _complete_thaw(run: _Run, drop: ledger_module.Drop, reason: str) -> Outcome:
    work, source = Path(drop.work), Path(drop.source)
    if work.is_dir() and source.exists():
        # The copy went on into a new folder of the same name: the two halves cannot be joined
        # safely by a program.
        return _quarantine(
            run,
            drop,
            PermanentError(
                "COPY_INTERRUPTED",
                f"the folder was still being copied ({reason}) and the rest of the copy went "
                f"into a new folder {source.name}",
                "copy the whole session again into the drop folder, under a new name or after "
                "removing both partial copies",
            ),
        )
    if work.is_dir():
        os.rename(work, source)
        _crash_point("thaw", "after")
    drop = run.book.thaw(drop, reason)
    with contextlib.suppress(OSError):  # the empty <work folder>/<drop id>
        work.parent.rmdir()
    log.info("%s: %s; back in the drop root to settle again", drop.label, reason)
    return Outcome("incomplete", drop.label, drop.id, reason, "INCOMPLETE")


def _located(run: _Run, drop: ledger_module.Drop) -> ledger_module.Drop:
    """Make sure the frozen folder is where the ledger says before a step needs it.

    A folder moved back into the drop root by hand while its drop was under way is taken back
    into the work area (the later steps compare it with what was checked and sent). A folder
    that is in neither place waits with one clear sentence: an unmounted share looks exactly
    like that, and forgetting the drop would leave the folder hidden once the share is back.
    """
    if drop.state in ("new", "done", "quarantined", "requeued") or not drop.work:
        return drop
    work, source = Path(drop.work), Path(drop.source)
    if work.is_dir():
        return drop
    target = Path(drop.target) if drop.target else None
    if drop.state == "attached" and target is not None and target.is_dir():
        return drop  # finish renamed it into done/ before a crash: finish completes
    if source.is_dir():
        log.warning(
            "%s: the folder was moved back into the drop root while drop %d was %s; taking it "
            "back into the work area to carry on",
            drop.label,
            drop.id,
            drop.state,
        )
        work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(source, work)
        return drop
    raise TransientError(
        f"the folder of {drop.label} is neither in the work area ({work}) nor in the drop root "
        f"({source}); if the share is unmounted it waits for it, else put the folder back at "
        f"{work}"
    )


def _facts(run: _Run, drop: ledger_module.Drop) -> dict[str, Any]:
    try:
        return dict(json.loads((run.spool(drop) / CHECK_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        # The spool is xnatdrop's own; losing it is an operator problem, not the drop's.
        raise TransientError(
            f"the check results of drop {drop.id} are unreadable: {error}"
        ) from None


SEX = {"m": "male", "male": "male", "f": "female", "female": "female", "o": "other"}
SEX |= {"other": "other", "u": "unknown", "unknown": "unknown"}
HANDEDNESS = {"r": "right", "right": "right", "l": "left", "left": "left"}
HANDEDNESS |= {"a": "ambidextrous", "ambidextrous": "ambidextrous", "unknown": "unknown"}


def _subject_fields(run: _Run, work: Path, facts: dict[str, Any]) -> dict[str, str]:
    """Subject metadata for XNAT from `subject.toml`, or from the DICOM header if configured.

    A malformed subject.toml is a permanent problem caught before anything is uploaded.
    """
    path = work / run.config.push.subject_file
    if path.is_file():
        return _subject_file(path, run.config.push.subject_file)
    if run.config.push.subject_from_dicom and facts["files"]:
        return _subject_from_header(work / facts["files"][0]["path"])
    return {}


def _subject_file(path: Path, name: str) -> dict[str, str]:
    fix = (
        f'write {name} as TOML with any of: sex = "F" (M, F, O, U), handedness = "right" '
        "(right, left, ambidextrous), yob = 1990 or dob = 1990-04-01"
    )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PermanentError(
            "SUBJECT_FILE_INVALID", f"{name} is not valid TOML: {error}", fix
        ) from None
    fields: dict[str, str] = {}
    unknown = set(data) - {"sex", "handedness", "yob", "dob"}
    if unknown:
        raise PermanentError(
            "SUBJECT_FILE_INVALID", f"{name} has unknown keys: {', '.join(sorted(unknown))}", fix
        )
    if "sex" in data:
        if str(data["sex"]).lower() not in SEX:
            raise PermanentError("SUBJECT_FILE_INVALID", f"{name}: sex must be M, F, O or U", fix)
        fields["gender"] = SEX[str(data["sex"]).lower()]
    if "handedness" in data:
        if str(data["handedness"]).lower() not in HANDEDNESS:
            raise PermanentError(
                "SUBJECT_FILE_INVALID",
                f"{name}: handedness must be right, left or ambidextrous",
                fix,
            )
        fields["handedness"] = HANDEDNESS[str(data["handedness"]).lower()]
    if "dob" in data:
        dob = data["dob"]
        # TOML gives a date-time for 1990-04-01T10:00:00, a subclass of date: refuse it, XNAT
        # keeps a date of birth as a date.
        if type(dob) is not datetime.date:
            raise PermanentError(
                "SUBJECT_FILE_INVALID",
                f"{name}: dob must be a date like 1990-04-01 (no time, no quotes)",
                fix,
            )
        if not datetime.date(1900, 1, 1) <= dob <= datetime.date.today():
            raise PermanentError(
                "SUBJECT_FILE_INVALID",
                f"{name}: dob {dob.isoformat()} is in the future or before 1900",
                fix,
            )
        fields["dob"] = dob.isoformat()
    elif "yob" in data:
        year = data["yob"]
        if type(year) is not int or not 1900 <= year <= datetime.date.today().year:
            raise PermanentError(
                "SUBJECT_FILE_INVALID",
                f"{name}: yob must be a year from 1900 to this year, like 1990",
                fix,
            )
        fields["yob"] = str(year)
    return fields


def _subject_from_header(path: Path) -> dict[str, str]:
    import pydicom
    import pydicom.errors

    try:
        header = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["PatientSex", "PatientBirthDate"]
        )
    except (pydicom.errors.InvalidDicomError, ValueError, EOFError) as error:
        # The rules read this file already; subject fields are optional: go on without them.
        log.warning("%s: no subject fields from its header (%s)", path.name, type(error).__name__)
        return {}
    fields = {}
    sex = str(header.get("PatientSex", "") or "").lower()
    if sex in SEX:
        fields["gender"] = SEX[sex]
    birth = str(header.get("PatientBirthDate", "") or "")
    if len(birth) >= 4 and birth[:4].isdigit():
        fields["yob"] = birth[:4]
    return fields


# -- pack ------------------------------------------------------------------------------------


def _plan(run: _Run, drop: ledger_module.Drop) -> pack.Plan:
    """The zip's plan for this drop, planning (again) if the spool lost it."""
    spool = run.spool(drop)
    planned = pack.load_plan(spool)
    if planned is None:
        items = [_upload_item(f) for f in _facts(run, drop)["files"]]
        planned = pack.plan(Path(drop.work), items)
        pack.save_plan(spool, planned)
    return planned


def _upload_item(fields: dict[str, Any]) -> pack.Item:
    """One DICOM file of the check's facts as a zip entry, its name shortened if too long."""
    name = pack.upload_name(fields["path"])
    return pack.Item(**{**fields, "zip_name": name if name != fields["path"] else ""})


def _manifest(run: _Run, drop: ledger_module.Drop) -> pack.Manifest:
    """The MD5 manifest of this drop's upload.

    The import step saves it while it sends the zip. A step that needs it before that (the
    import after a crash, with something already on the server) or after the spool lost it
    hashes the files without sending them.
    """
    spool = run.spool(drop)
    manifest = pack.load(spool)
    if manifest is None:
        started = time.monotonic()
        manifest = pack.digest(Path(drop.work), _plan(run, drop), spool)
        log.info(
            "%s: hashed %d files for the manifest (%.1f s)",
            drop.label,
            len(manifest.files),
            time.monotonic() - started,
        )
    return manifest


@_step("pack")
def _pack(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    """Plan the streamed zip (names, sizes, its exact length) and save the plan atomically.

    No file data is read here: the import step reads, hashes and sends each file (`pack`).
    """
    spool = run.spool(drop)
    pack.remove(spool)  # a plan or manifest from a killed run is not trusted
    planned = _plan(run, drop)
    if run.progress is not None:
        run.progress("pack", planned.total_bytes, planned.total_bytes)
    return {}, (
        f"{len(planned.files)} files, {planned.total_bytes} bytes planned as a "
        f"{planned.zip_size}-byte zip"
    )


# -- what XNAT said at push time, and what verification found --------------------------------


def _xnat_facts(run: _Run, drop: ledger_module.Drop) -> dict[str, Any]:
    """The spool's `xnat.json`: `rewriting` (what XNAT may change, read at push time),
    `dropped` (series XNAT left out on purpose) and `verification` (what was checked, how)."""
    try:
        return dict(json.loads((run.spool(drop) / XNAT_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _save_xnat_facts(run: _Run, drop: ledger_module.Drop, **changes: Any) -> None:
    spool = run.spool(drop)
    ledger_module.private_dir(spool)
    data = {**_xnat_facts(run, drop), **changes}
    receipt.write_atomic(spool / XNAT_NAME, json.dumps(data, indent=1), private=True)


def _rewriting(run: _Run, drop: ledger_module.Drop, fresh: bool = False) -> verify.Rewriting:
    """What XNAT may change in this drop's files: read from XNAT at push time (the import step
    asks with `fresh`), kept in the spool for the later steps and for a resumed run."""
    stored = _xnat_facts(run, drop).get("rewriting")
    if stored and not fresh:
        return verify.Rewriting.from_json(stored)
    prevent = run.config.push.anonymization == "prevent"
    rewriting = verify.read_rewriting(run.client(), run.project, prevent)
    _save_xnat_facts(run, drop, rewriting=rewriting.to_json())
    log.info("%s: XNAT at push time: %s", drop.label, _describe(rewriting))
    return rewriting


def _describe(rewriting: verify.Rewriting) -> str:
    def state(value: bool | None) -> str:
        return (
            "unknown (not readable by this account)"
            if value is None
            else ("on" if value else "off")
        )

    parts = [
        f"site anonymisation {state(rewriting.site)}",
        f"project anonymisation {state(rewriting.project)}",
        "prevent_anon sent" if rewriting.prevent_anon else "no prevent_anon",
        "series import filters "
        + (
            "unknown"
            if rewriting.filters is None
            else (", ".join(rewriting.filters) if rewriting.filters else "off")
        ),
        f"checksums {state(rewriting.checksums)}",
    ]
    return "; ".join(parts)


@dataclasses.dataclass
class _Inspection:
    """An archived session against the manifest: `problems` says what differs (none: ours)."""

    check: verify.ArchiveCheck
    dropped: list[dict[str, Any]]
    pixel: list[dict[str, str]]
    problems: list[str]
    bytes_compared: bool
    unexplained: list[pack.Entry] = dataclasses.field(default_factory=list)
    not_yet: bool = False  # appending: none of the new instances is in XNAT yet

    @property
    def other_instances(self) -> bool:
        """XNAT holds instances this folder lacks, or lacks some it has (not a content issue)."""
        return bool(self.check.extra or self.unexplained)


def _inspect(
    run: _Run,
    drop: ledger_module.Drop,
    session: Any,
    manifest: pack.Manifest,
    rewriting: verify.Rewriting,
    compare_bytes: bool,
    ours: bool,
) -> _Inspection:
    """Read the archived session's DICOM catalogs and sample its pixel data (verify module)."""
    files, catalog = _catalogued(run, session)
    check = verify.check_archive(manifest, catalog, files, compare_bytes)
    join = _xnat_facts(run, drop).get("append")
    if join is not None:
        # Late files: what XNAT held before this drop was appended is expected to be there.
        existing = set(join["existing"])
        check = dataclasses.replace(check, extra=[c for c in check.extra if c.uid not in existing])
        sent = set(join["send"])
        if not ours and sent and not sent & {c.uid for c in catalog}:
            return _Inspection(check, [], [], [], compare_bytes, not_yet=True)
    problems: list[str] = []
    dropped: list[dict[str, Any]] = []
    unexplained: list[pack.Entry] = []
    recorded = {d["uid"] for d in _xnat_facts(run, drop).get("dropped", [])}
    missing = [e for e in check.missing if e.series_instance_uid not in recorded]
    if missing:
        # Just archived: only the project script runs now. Found archived (a resubmission, a
        # crash): whatever XNAT's configuration drops at import may also explain it.
        reason = rewriting.drops_at_archive() or ("" if ours else rewriting.drops_at_import())
        if reason:
            for item in verify.series_of(missing):
                dropped.append({**item.to_json(), "stage": "archive", "reason": reason})
        else:
            unexplained = missing
            problems.append(verify.ArchiveCheck(missing, [], [], []).describe())
    if check.extra or check.changed:
        problems.append(verify.ArchiveCheck([], check.extra, check.changed, []).describe())
    pixel = []
    for entry, file in verify.smallest_per_scan(check.matched):
        result = _pixel_result(run, drop, entry, file, rewriting)
        pixel.append({"scan": file.scan, "file": entry.path, "result": result})
        if result not in ("identical", "no pixel data", "changed by an alterPixels statement"):
            problems.append(f"pixel data of {entry.path} (scan {file.scan}): {result}")
    return _Inspection(check, dropped, pixel, problems, compare_bytes, unexplained)


def _pixel_result(
    run: _Run,
    drop: ledger_module.Drop,
    entry: pack.Entry,
    file: xnat.RemoteFile,
    rewriting: verify.Rewriting,
) -> str:
    """Compare the Pixel Data of XNAT's copy of one file with the local file's."""
    try:
        remote = verify.pixel_digest(run.client().download(file.uri))
    except ValueError:
        return "XNAT's copy is not readable as DICOM"
    try:
        local = verify.pixel_digest(Path(drop.work) / entry.path)
    except (ValueError, OSError) as error:
        raise TransientError(f"cannot read {entry.path} to compare pixel data: {error}") from None
    if local == remote:
        return "identical" if local is not None else "no pixel data"
    if rewriting.alters_pixels():
        return "changed by an alterPixels statement"
    if local is not None and remote is not None and local[0] != remote[0]:
        return f"transcoded by XNAT (transfer syntax {local[0]} sent, {remote[0]} stored)"
    if remote is None:
        return "XNAT's copy has no pixel data"
    return "differs from the file sent"


def _verification(
    inspection: _Inspection,
    rewriting: verify.Rewriting,
    dropped: list[dict[str, Any]],
    join: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What was verified and how, for the log, RECEIPT.json and RECEIPT.txt (honestly)."""
    check = inspection.check
    parts = [f"instance UIDs and counts of all {len(check.matched)} files"]
    appended = None
    if join is not None:
        appended = {
            "session_held": len(join["existing"]),
            "new": len(join["send"]),
            "already_there": len(check.matched) - len(join["send"]),
        }
        parts.append(
            f"{appended['new']} of them added to a session that already held "
            f"{appended['session_held']} instance(s)"
        )
    samples = [p for p in inspection.pixel if p["result"] != "no pixel data"]
    if samples:
        parts.append(f"pixel data of 1 file per scan ({len(samples)} scans)")
    if len(samples) < len(inspection.pixel):
        parts.append(f"{len(inspection.pixel) - len(samples)} scan(s) without pixel data")
    md5 = False
    if inspection.bytes_compared:
        md5 = check.md5_compared
        parts.append(
            "sizes and MD5s of every file"
            if md5
            else "sizes of every file (XNAT recorded no MD5s: its checksums preference is off)"
        )
    elif rewriting.rewrites_at_archive():
        parts.append(f"{rewriting.why_bytes_differ()}, so sizes and MD5s were not compared")
    else:
        parts.append("sizes and MD5s not compared (the session was found already archived)")
    if rewriting.alters_pixels():
        parts.append("pixel data may be edited by an anonymisation script (alterPixels)")
    return {
        "summary": "; ".join(parts),
        "instances": len(check.matched),
        "bytes": sum(entry.size for entry, _ in check.matched),
        "instance_uids": "all matched",
        "pixel_data": inspection.pixel,
        "sizes_compared": inspection.bytes_compared,
        "md5_compared": md5,
        "rewriting": rewriting.to_json(),
        "not_archived": dropped,
        "appended": appended,
    }


def _archived(
    run: _Run,
    drop: ledger_module.Drop,
    manifest: pack.Manifest,
    ours: bool = False,
    bytes_too: bool = False,
) -> Any | None:
    """The archived session for this label if it holds exactly our instances; None if absent.

    Instances are matched by SOPInstanceUID and the pixel data of one file per scan compared
    (`verify`); sizes and MD5s too with `bytes_too`, where XNAT keeps the bytes. Raise
    PermanentError if it differs: ARCHIVE_MISMATCH when `ours` (we just archived it) or when it
    holds exactly our instances but other content; LABEL_EXISTS when the label holds other
    instances. Either way the error's `in_xnat` is the session's page, for the reason file.
    """
    client = run.client()
    session = client.find_session(run.project, drop.label)
    if session is None:
        return None
    rewriting = _rewriting(run, drop)
    compare = bytes_too and not rewriting.rewrites_at_archive()
    found = _inspect(run, drop, session, manifest, rewriting, compare, ours)
    if found.not_yet:
        return None
    url = client.session_url(run.project, session.id)
    if found.problems:
        differences = "; ".join(found.problems)
        if ours or not found.other_instances:
            error = PermanentError(
                "ARCHIVE_MISMATCH",
                f"session {drop.label} is in XNAT ({url}) but differs from this folder: "
                f"{differences}",
                "nothing is lost: this folder is complete. Ask the XNAT administrator to compare "
                f"session {drop.label} in XNAT with this folder and repair or delete it there; "
                "then copy this folder back into the drop folder: xnatdrop checks the session "
                "again and finishes (sidecars, receipt) once XNAT holds exactly these instances",
            )
        else:
            error = PermanentError(
                "LABEL_EXISTS",
                f"session {drop.label} already exists in XNAT project {run.project} ({url}) "
                f"with other data: {differences}",
                "if this is a new session, rename the folder to a new label; if it replaces the "
                f"existing one, ask the XNAT administrator to delete session {drop.label} first",
            )
        error.in_xnat = url  # type: ignore[attr-defined]
        raise error
    dropped = [*_xnat_facts(run, drop).get("dropped", []), *found.dropped]
    if found.dropped:
        names = ", ".join(f"series {d['number'] or '?'} ({d['folder']})" for d in found.dropped)
        log.warning(
            "%s: XNAT left out %s at archive time: %s; the receipt lists them",
            drop.label,
            names,
            found.dropped[0]["reason"],
        )
    join = _xnat_facts(run, drop).get("append")
    verification = _verification(found, rewriting, dropped, join)
    _save_xnat_facts(run, drop, dropped=dropped, verification=verification)
    return session


def _delete_prearchive(run: _Run, uri: str) -> None:
    """Delete a prearchive copy of ours. A refusal is retried later, never a quarantine: the
    data is fine, XNAT is busy with the session or permissions need fixing."""
    try:
        run.client().delete_prearchive(uri)
    except PermanentError as error:
        raise TransientError(f"XNAT refused to delete the prearchive copy {uri}: {error}") from None


def _ours(run: _Run, drop: ledger_module.Drop, planned: pack.Plan) -> list[Any]:
    """Prearchive sessions of this project that hold (parts of) this drop."""
    studies = planned.study_uids()
    return [
        entry
        for entry in run.client().prearchive_entries(run.project)
        if entry.name == drop.label and (not studies or not entry.tag or entry.tag in studies)
    ]


def _quiet(run: _Run, entry: Any) -> bool:
    """True if a RECEIVING copy stays unchanged for `push.receiving_quiet_seconds`: a leftover
    of a cut upload. XNAT touches `lastmod` while it stores files (at most every 15 s,
    GradualDicomImporter.updateSessionLastMod), so a copy it still writes to changes."""
    run.wait(run.config.push.receiving_quiet_seconds)
    again = run.client().prearchive_entry(entry.uri)
    return again is None or (again.status, again.lastmod) == (entry.status, entry.lastmod)


def _remove_routed(run: _Run, answer: xnat.XnatAnswer) -> xnat.XnatAnswer:
    """XNAT filed the upload elsewhere (Unassigned, for an unknown or unwritable project;
    pitfall 17): remove that copy, which xnatdrop caused, and say whether it could."""
    uri = str(getattr(answer, "leftover", ""))
    try:
        run.client().delete_prearchive(uri)
        note = "; xnatdrop removed that copy from XNAT's prearchive"
    except (PermanentError, TransientError) as error:
        note = (
            f"; xnatdrop could not remove that copy ({error}): ask the XNAT administrator to "
            f"delete {uri} from the prearchive"
        )
    return xnat.XnatAnswer(
        answer.code,
        f"{answer}{note}",
        answer.fix,
        status=answer.status,
        answer=answer.answer,
        suspect=answer.suspect,
    )


# -- import ----------------------------------------------------------------------------------


@_step("import")
def _import(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    """Ask XNAT what it does to uploads and what is there, then stream the zip (`pack.Body`).

    The manifest (MD5s) is made while sending; only when XNAT already holds something to
    compare it with and the manifest is missing (a crash before it was saved) are the files
    hashed first without sending. A copy XNAT is still building (its answer to an earlier
    import was lost, e.g. to a proxy's 504: XNAT builds before it answers, stock row 4) is
    waited for, never deleted; a copy it is still receiving is left alone until it is quiet.
    """
    client = run.client()
    rewriting = _rewriting(run, drop, fresh=True)
    session = client.find_session(run.project, drop.label)
    if session is None:
        _save_xnat_facts(run, drop, append=None)  # an earlier decision no longer holds
    elif not _join(run, drop, session, _manifest(run, drop), rewriting):
        return {}, "already archived with every instance; nothing sent"
    planned = _upload_plan(run, drop)
    join = _xnat_facts(run, drop).get("append")
    for entry in _ours(run, drop, planned):
        if entry.status == READY:
            files = client.prearchive_files(entry.uri)
            check = verify.check_prearchive(
                _sent(run, drop), files, not rewriting.rewrites_at_import()
            )
            if not (check.incomplete or check.changed) and (
                not check.missing or rewriting.drops_at_import()
            ):
                return {"prearchive_uri": entry.uri}, "already in the prearchive; nothing sent"
        elif entry.status in BUILDING_NOW:
            return {"prearchive_uri": entry.uri}, (
                f"XNAT is still building an earlier upload ({entry.status}); waiting for it, "
                "nothing sent"
            )
        elif entry.status in RECEIVING:
            if not _quiet(run, entry):
                raise TransientError(
                    f"XNAT is still receiving an earlier upload of {drop.label}; looking again "
                    "later"
                )
        elif entry.status not in FAILED | CONFLICT:
            raise TransientError(f"XNAT is busy with a prearchive copy ({entry.status})")
        log.info("%s: deleting an incomplete prearchive copy (%s)", drop.label, entry.status)
        _delete_prearchive(run, entry.uri)
    total = planned.zip_size
    spool, work = run.spool(drop), Path(drop.work)
    started = time.monotonic()
    last_byte = [started]

    def sent(count: int) -> None:
        last_byte[0] = time.monotonic()
        _crash_point("import", "bytes", sent=count)
        if run.progress is not None:
            run.progress("import", count, total)

    if join is None:
        body = functools.partial(pack.Body, work, planned, spool)
    else:
        # Only the new instances go; the manifest of the whole folder is kept as it is, and
        # each file sent must still be the one hashed into it.
        hashed = {e.path: e.md5 for e in _manifest(run, drop).files}
        body = functools.partial(
            pack.Body, work, planned, on_manifest=functools.partial(_unchanged, hashed)
        )
    try:
        uri = client.import_zip(
            body,
            project=run.project,
            subject=join["subject"] if join else drop.label,
            session=drop.label,
            progress=sent,
            prevent_anon=rewriting.prevent_anon,
        )
    except pack.Changed:
        # The frozen folder changed under us (it should not): the next attempt plans again from
        # the folder as it is then. What XNAT got of this upload is cleaned up before it resends.
        pack.remove(spool)
        raise
    except xnat.XnatAnswer as answer:
        if answer.code == "XNAT_ROUTED_ELSEWHERE":
            raise _remove_routed(run, answer) from None
        reason = rewriting.drops_at_import()
        if answer.code == "XNAT_NOTHING_IMPORTED" and reason:
            raise xnat.XnatAnswer(
                answer.code,
                f"XNAT kept none of the {len(planned.files)} files of {drop.label}: every "
                f"series was left out by {reason}",
                "these series are excluded by the XNAT site's own configuration; if they "
                "should be archived, ask the XNAT administrator to change it, then copy the "
                "folder back into the drop folder",
                suspect=False,
            ) from None
        raise
    breaker.success(run.book, drop.id)
    # Sending ends with the last byte; the rest is XNAT storing and building the session.
    sending = max(last_byte[0] - started, 1e-6)
    waiting = time.monotonic() - last_byte[0]
    what = f"{len(planned.files)} new instance(s), " if join else ""
    return {"prearchive_uri": uri}, (
        f"{what}{total} bytes sent in {sending:.1f} s ({total / sending / 1e6:.1f} MB/s), "
        f"XNAT answered {waiting:.1f} s later"
    )


def _unchanged(hashed: dict[str, str], sent: pack.Manifest) -> None:
    """Raise pack.Changed if a file sent differs from the one hashed into the manifest."""
    for entry in sent.files:
        if hashed.get(entry.path) != entry.md5:
            raise pack.Changed(f"{entry.path} changed after it was hashed")


# -- late files: a session XNAT already holds under this label ---------------------------------


def _catalogued(run: _Run, session: Any) -> tuple[list[xnat.RemoteFile], list[xnat.CatalogEntry]]:
    """The DICOM files of an archived session and its catalog entries (instance UIDs)."""
    client = run.client()
    listing = client.session_files(run.project, session.subject, session.label)
    files = verify.dicom_files(listing)
    catalog: list[xnat.CatalogEntry] = []
    for scan, resource in sorted({(f.scan, f.resource) for f in files}):
        catalog += client.scan_catalog(run.project, session.subject, session.label, scan, resource)
    return files, catalog


def _join(
    run: _Run,
    drop: ledger_module.Drop,
    session: Any,
    manifest: pack.Manifest,
    rewriting: verify.Rewriting,
) -> int:
    """Decide what to send when XNAT already holds a session with this label; return how many
    instances (0: every one is there already, nothing is sent).

    Files that arrive for a session already archived (a copy that paused, a series exported
    later) are appended to it: only the instances XNAT lacks are sent, and archived into the
    existing session. XNAT merges them with `overwrite=none` (the Archiver allows a session
    merge; PrearcSessionArchiver.checkForConflicts needs the same StudyInstanceUID, project,
    subject and modality, and a scan of the same number to have the same SeriesInstanceUID),
    but refuses the merge when an incoming instance's UID or file name is already catalogued
    in the destination (MergeSessionsA.checkForConflict: SessionOverwriteCheck, "Session
    already exists with the same resources."; FindFirstMatch, "... with matching files."): so
    nothing XNAT holds is ever sent again, and a new file whose name is taken in its scan is
    sent under another name. What is already there must have the same content (pixel data of
    one file per scan; sizes and MD5s where XNAT keeps the bytes); another study, or other
    content, is a conflict a person must resolve. The decision is kept in the spool (`append`
    in xnat.json) for the later steps: the instances XNAT held before are expected there.
    """
    client = run.client()
    files, catalog = _catalogued(run, session)
    check = verify.check_archive(manifest, catalog, files, not rewriting.rewrites_at_archive())
    url = client.session_url(run.project, session.id)
    studies = manifest.study_uids()
    same_study = bool(session.uid) and studies == {session.uid}
    differs = [verify.ArchiveCheck([], [], check.changed, []).describe()] if check.changed else []
    for entry, file in verify.smallest_per_scan(check.matched):
        result = _pixel_result(run, drop, entry, file, rewriting)
        if result not in ("identical", "no pixel data", "changed by an alterPixels statement"):
            differs.append(f"pixel data of {entry.path} (scan {file.scan}): {result}")
    if differs or (check.missing and not same_study):
        if differs:
            what = f"instances of this folder are in it with other content: {'; '.join(differs)}"
        elif session.uid:
            what = (
                f"it is another study (StudyInstanceUID {session.uid}; this folder: "
                f"{', '.join(sorted(studies)) or 'none'})"
            )
        else:
            what = "XNAT does not say which study it is, so these files cannot be added to it"
        error = PermanentError(
            "LABEL_EXISTS",
            f"session {drop.label} already exists in XNAT project {run.project} ({url}) and {what}",
            "if this is a new session, rename the folder to a new label; if it replaces the "
            f"existing one, ask the XNAT administrator to delete session {drop.label} first",
        )
        error.in_xnat = url  # type: ignore[attr-defined]
        raise error
    existing = sorted({c.uid for c in catalog})
    renamed = _free_names(check.missing, catalog)
    _save_xnat_facts(
        run,
        drop,
        append={
            "session": session.id,
            "subject": session.subject,
            "existing": existing,
            "send": [e.sop_instance_uid for e in check.missing],
            "names": renamed,
        },
    )
    if check.missing:
        log.info(
            "%s: session %s in XNAT holds %d instance(s) of this study; appending the %d of "
            "this folder it lacks (%d already there)",
            drop.label,
            session.id,
            len(existing),
            len(check.missing),
            len(check.matched),
        )
    return len(check.missing)


def _free_names(new: list[pack.Entry], catalog: list[xnat.CatalogEntry]) -> dict[str, str]:
    """Zip entry names for new instances whose name XNAT already uses in their scan.

    XNAT stores a file under its zip entry name made file-name-safe (getSafeFile, stock row
    12) in the scan of its SeriesNumber (Restructurer.determineScanSubdir); a name taken there
    would make the merge fail ("Session already exists with matching files.")."""
    taken: dict[str, set[str]] = collections.defaultdict(set)
    for entry in catalog:
        taken[entry.scan].add(entry.path.rsplit("/", 1)[-1])
    renamed = {}
    for entry in new:
        name = pack.upload_name(entry.path)
        if xnat_file_name(name) in taken[verify.scan_folder(entry)]:
            stem, dot, extension = name.rpartition(".")
            head, tail = (stem, f".{extension}") if dot and stem else (name, "")
            digest = hashlib.sha1(entry.sop_instance_uid.encode()).hexdigest()[:10]
            renamed[entry.path] = names.fit(f"{head}~{digest}", tail, limit=pack.ZIP_NAME_MAX)
    return renamed


def xnat_file_name(entry_name: str) -> str:
    """The name XNAT gives a file from its zip entry name: `Files.toFileNameChars`, anything
    but ASCII letters, digits, `_`, `.` and `-` becomes `_` (stock row 12)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", entry_name)


def _upload_plan(run: _Run, drop: ledger_module.Drop) -> pack.Plan:
    """The zip to send: the whole folder, or, when appending, only what XNAT lacks."""
    planned = _plan(run, drop)
    join = _xnat_facts(run, drop).get("append")
    if join is None:
        return planned
    send, renamed = set(join["send"]), join["names"]
    items = [
        dataclasses.replace(p.item, zip_name=renamed.get(p.item.path, p.item.zip_name))
        for p in planned.files
        if p.item.sop_instance_uid in send
    ]
    return pack.plan(Path(drop.work), items)


def _sent(run: _Run, drop: ledger_module.Drop) -> pack.Manifest:
    """The manifest of what the import sends: all of it, or the new instances when appending."""
    manifest = _manifest(run, drop)
    join = _xnat_facts(run, drop).get("append")
    if join is None:
        return manifest
    send = set(join["send"])
    return pack.Manifest(0, tuple(e for e in manifest.files if e.sop_instance_uid in send))


# -- verify ----------------------------------------------------------------------------------


def _wait_ready(run: _Run, drop: ledger_module.Drop) -> Any:
    """Wait until the prearchive session is READY; CONFLICT and ERROR end the wait.

    A session still RECEIVING or BUILDING is waited for up to `push.ready_timeout_seconds`;
    then XNAT is asked to build it (a 409 "session document locked" means it is busy: later).
    """
    client = run.client()
    deadline = time.monotonic() + run.config.push.ready_timeout_seconds
    rebuilt = False
    while True:
        entry = client.prearchive_entry(drop.prearchive_uri)
        if entry is None:
            raise _Resend("the prearchive session is gone")
        if entry.status == READY:
            return entry
        if entry.status in CONFLICT:
            raise PermanentError(
                "XNAT_CONFLICT",
                f"XNAT marked the prearchive session of {drop.label} as CONFLICT",
                "ask the XNAT administrator to look at the prearchive; the session label may "
                "already be in use",
            )
        if entry.status in FAILED:
            if rebuilt:
                raise xnat.XnatAnswer(
                    "XNAT_BUILD_ERROR",
                    f"XNAT could not build the session {drop.label} from the upload (ERROR)",
                    "ask the XNAT administrator to read the prearchive log of this session",
                    answer="prearchive ERROR after a rebuild",
                )
            client.build(entry.uri)
            rebuilt = True
            continue
        if time.monotonic() > deadline:
            if not rebuilt:
                client.build(entry.uri)
            raise TransientError(f"prearchive session still {entry.status}; asked XNAT to build")
        run.wait(run.config.push.poll_seconds)


@_step("verify")
def _verify(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    """Compare the READY prearchive copy with the manifest.

    XNAT exposes no instance UIDs in the prearchive, so this compares the number of files of
    each scan, and their sizes only when XNAT keeps the bytes (no site script, or prevent_anon;
    the project script runs later, at archive time). Series of which nothing arrived are
    XNAT's configuration at work when a series import filter (or a site script with a reject
    statement) may drop them: they are recorded, warned about once and listed in the receipt,
    never sent again. Anything else missing means a lost upload: delete and send again.
    """
    manifest = _manifest(run, drop)
    rewriting = _rewriting(run, drop)
    if drop.prearchive_uri is None:
        if _archived(run, drop, manifest) is not None:
            return {}, "already archived"
        raise _Resend("no prearchive session recorded")
    try:
        _wait_ready(run, drop)
    except _Resend:
        if _archived(run, drop, manifest) is not None:
            return {}, "already archived"
        raise
    files = run.client().prearchive_files(drop.prearchive_uri)
    sizes = not rewriting.rewrites_at_import()
    check = verify.check_prearchive(_sent(run, drop), files, compare_sizes=sizes)
    if check.incomplete:
        _delete_prearchive(run, drop.prearchive_uri)
        raise _Resend(f"the prearchive session is incomplete ({check.incomplete})")
    dropped = []
    if check.missing:
        names = ", ".join(s.name() for s in check.missing)
        reason = rewriting.drops_at_import()
        if not reason:
            _delete_prearchive(run, drop.prearchive_uri)
            raise _Resend(f"the prearchive session lacks {names}")
        dropped = [{**s.to_json(), "stage": "import", "reason": reason} for s in check.missing]
        log.warning(
            "%s: XNAT left out %s at import: %s; they are not archived, and the receipt lists them",
            drop.label,
            names,
            reason,
        )
    _save_xnat_facts(run, drop, dropped=dropped)
    if check.changed:
        # Every file arrived but with other bytes, where XNAT said it would keep them.
        _delete_prearchive(run, drop.prearchive_uri)
        raise PermanentError(
            "XNAT_CHANGED_FILES",
            f"XNAT holds every file of {drop.label} but {check.changed}, although no "
            "anonymisation script runs on this upload",
            "ask the XNAT administrator why XNAT rewrites files on import (for instance it may "
            "decompress some transfer syntaxes); nothing was archived",
        )
    scans = len({f.scan for f in files})
    what = "counts and sizes" if sizes else "counts per scan"
    return {}, f"READY, {scans} scans, {len(files)} files: {what} match the manifest"


# -- archive ---------------------------------------------------------------------------------


@_step("archive")
def _archive(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    """Archive with explicit labels and no overwrite, then verify the archived session.

    First ask whether it is archived already (a crash after XNAT archived but before the ledger
    heard of it). After archiving, every instance is matched by UID and one file per scan has its
    pixel data compared (`_archived`); any difference leaves the session in XNAT and the folder
    in quarantine with a reason file that says so.
    """
    manifest = _manifest(run, drop)
    client = run.client()
    session = _archived(run, drop, manifest, bytes_too=True)
    if session is None:
        if drop.prearchive_uri is None or client.prearchive_entry(drop.prearchive_uri) is None:
            raise _Resend("the prearchive session is gone and nothing is archived")
        join = _xnat_facts(run, drop).get("append")
        try:
            client.archive(
                drop.prearchive_uri,
                project=run.project,
                subject=join["subject"] if join else drop.label,
                session=drop.label,
            )
        except TransientError as error:
            cause = getattr(error, "cause", None)
            if cause is not None:
                _archive_failed(run, drop, cause)
            raise
        except xnat.XnatAnswer as answer:
            if answer.status != 404:
                raise
            # "Unknown prearchive session." / "{uri} not found.": the copy went away meanwhile.
            if _archived(run, drop, manifest, ours=True, bytes_too=True) is None:
                raise _Resend("the prearchive session is gone and nothing is archived") from None
        breaker.success(run.book, drop.id)
        session = _archived(run, drop, manifest, ours=True, bytes_too=True)
        if session is None:
            raise TransientError("XNAT answered the archive request but shows no session yet")
        summary = f"archived as {session.id}"
    else:
        summary = f"already archived as {session.id}"
        if drop.prearchive_uri and client.prearchive_entry(drop.prearchive_uri) is not None:
            _delete_prearchive(run, drop.prearchive_uri)  # a leftover of the same data
    verification = _xnat_facts(run, drop).get("verification", {})
    return {"archive_uri": session.uri}, f"{summary}; verified {verification.get('summary', '')}"


def _archive_failed(run: _Run, drop: ledger_module.Drop, cause: str) -> None:
    """An archive answered 500 with a cause XNAT does not word as a conflict or as busy.

    If XNAT left the prearchive row ERROR it has given up on it (an empty session after the
    project script rejected every file answers so, RT TestPrearchiveMgmt): a permanent,
    suspect answer. Otherwise (a timeout, the row still ARCHIVING) it is transient.
    """
    entry = run.client().prearchive_entry(drop.prearchive_uri)
    if entry is None or entry.status not in FAILED:
        return
    rewriting = _rewriting(run, drop)
    hint = ""
    if rewriting.drops_at_archive():
        hint = (
            f" ({rewriting.drops_at_archive()} may have rejected every file; XNAT does not "
            "archive an empty session)"
        )
    raise xnat.XnatAnswer(
        "XNAT_ARCHIVE_FAILED",
        f"XNAT could not archive {drop.label}: {cause}{hint}",
        "ask the XNAT administrator to read the prearchive log of this session; nothing was "
        "archived and this folder is complete",
        status=500,
        answer=f"HTTP 500 {xnat.fixed_wording(cause) or 'archive failed'}",
    )


# -- attach ----------------------------------------------------------------------------------


def _local_files(folder: Path) -> dict[str, tuple[int, str]]:
    """Relative path → (size, MD5) of every file under a sidecar folder."""
    result = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            while chunk := handle.read(pack.CHUNK):
                digest.update(chunk)
        result[path.relative_to(folder).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return result


def uncatalogued(path: str) -> bool:
    """A file XNAT stores on extraction but never catalogues, so never lists: its name ends
    in "_catalog.xml" or starts with ".~lock-" (CatalogUtils.XNAT_CATALOGABLE_FILE_FILTER).
    Uploading it would leave the resource "lacking" it forever (xnat-stock, "lacks entirely")."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith("_catalog.xml") or name.startswith(".~lock-")


def _missing(name: str, local: dict[str, tuple[int, str]], remote: list[Any] | None) -> list[str]:
    """Files not yet in the resource; PermanentError if one is there with other content."""
    there = {f.path: f for f in remote or []}
    missing, different = [], []
    for path, (size, md5) in local.items():
        found = there.get(path)
        if found is None:
            missing.append(path)
        elif found.size != size or (found.digest and found.digest.lower() != md5):
            different.append(path)
    if different:
        raise PermanentError(
            "RESOURCE_CONFLICT",
            f"XNAT already holds other versions of {len(different)} file(s) in resource "
            f"{name}: {', '.join(different[:5])}",
            f"ask the XNAT administrator to remove the old files from resource {name}, or rename "
            "your files, then resubmit",
        )
    return missing


def _sidecar_body(folder: Path, paths: list[str]) -> Callable[[], pack.Body]:
    """A factory of the streamed zip of `paths` under `folder`: entry names kept as they are,
    since XNAT extracts them into the resource with their folders."""
    items = [pack.Item(path, sop_instance_uid="", series_instance_uid="") for path in paths]
    planned = pack.plan(folder, items)
    return lambda: pack.Body(folder, planned)


@_step("attach")
def _attach(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    facts = _facts(run, drop)
    client = run.client()
    work = Path(drop.work)
    session = client.find_session(run.project, drop.label)
    if session is None:
        raise TransientError("the archived session is not visible")
    done = []
    for name, relative in sorted(facts["sidecars"].items()):
        local = _local_files(work / relative)
        kept = {path: value for path, value in local.items() if not uncatalogued(path)}
        if len(kept) < len(local):
            log.warning(
                "%s: %s: %d file(s) not uploaded: XNAT never catalogues files named *_catalog.xml "
                "or .~lock-* (CatalogUtils); they stay in the folder and the receipt lists them",
                drop.label,
                name,
                len(local) - len(kept),
            )
        local = kept
        if not local:
            continue
        args = (run.project, session.subject, session.label, name)
        missing = _missing(name, local, client.resource_files(*args))
        if missing:
            # Streamed, never written to disk: a zip built in the state folder once blocked a
            # drop at attach, after its session was archived, when the sidecar was larger than
            # the state folder's free space.
            client.create_resource(*args)
            client.upload_resource_zip(
                *args, _sidecar_body(work / relative, missing), f"{name}.zip"
            )
        still = _missing(name, local, client.resource_files(*args))
        if still:
            raise TransientError(f"resource {name} lacks {len(still)} file(s) after the upload")
        done.append(f"{name} {len(local)} files ({len(missing)} sent)")
    return {}, "; ".join(done) or "no sidecars"


# -- finish ----------------------------------------------------------------------------------


def _aim(run: _Run, drop: ledger_module.Drop, base: Path, day: str = "") -> ledger_module.Drop:
    """Record where the folder goes (done/ or quarantine/) before it is moved there.

    The target stored by an earlier attempt is kept while it lies under `base` as configured
    *now* and is still free; otherwise a new one is chosen. So an operator who fixes a wrong
    done or quarantine path (another file system, no permission) sees drops under way use the
    new path at their next attempt, instead of retrying the old one forever. Only called while
    the folder has not moved yet (it is still in the work area or the drop root).
    """
    if drop.target:
        stored = Path(drop.target)
        if stored.is_relative_to(base) and not stored.exists():
            return drop
    if day:
        target = _free_target(base / day, drop.label)
    else:
        target = _free_target(base, drop.label, f"__{time.strftime('%Y%m%d-%H%M%S')}")
    if drop.target and Path(drop.target) != target:
        log.info("%s: now goes to %s (was %s)", drop.label, target, drop.target)
    return run.book.update(drop, target=target)


def _free_target(folder: Path, name: str, suffix: str = "") -> Path:
    """`folder/<name><suffix>`, or with `__2`, `__3`, … if a folder of that name exists; each
    name shortened to fit NAME_MAX (`names.fit`), so a 255-byte label still finds a place."""
    target, number = folder / names.fit(name, suffix), 1
    while target.exists():
        number += 1
        target = folder / names.fit(name, f"{suffix}__{number}")
    return target


def _receipt(run: _Run, drop: ledger_module.Drop, session: Any) -> dict[str, Any]:
    facts = _facts(run, drop)
    manifest = _manifest(run, drop)
    work = Path(drop.work)
    resources = []
    for name, relative in sorted(facts["sidecars"].items()):
        local = _local_files(work / relative)
        skipped = sorted(path for path in local if uncatalogued(path))
        local = {path: value for path, value in local.items() if path not in skipped}
        if local or skipped:
            resources.append(
                {
                    "name": name,
                    "folder": relative,
                    "file_count": len(local),
                    "bytes": sum(size for size, _ in local.values()),
                    "not_uploaded": skipped,
                }
            )
    verification = _xnat_facts(run, drop).get("verification")
    if verification is None:  # the spool lost it after archiving: verify again
        _archived(run, drop, manifest)
        verification = _xnat_facts(run, drop).get("verification", {})
    dropped = {d["uid"]: d for d in verification.get("not_archived", [])}
    scans, not_archived = [], []
    for series in facts["series"]:
        left_out = dropped.get(series["series_instance_uid"])
        kept = series["file_count"] - (left_out["files"] if left_out else 0)
        if kept > 0:
            scans.append({**series, "file_count": kept} if left_out else series)
        if left_out:
            not_archived.append({**left_out, "description": series.get("description", "")})
    return {
        "label": drop.label,
        "project": run.project,
        "subject": session.subject,
        "session_id": session.id,
        "xnat_url": run.client().session_url(run.project, session.id),
        "archive_uri": drop.archive_uri,
        "finished": receipt.now_text(),
        "file_count": verification.get("instances", len(manifest.files)),
        "bytes": verification.get("bytes", manifest.total_bytes),
        "checksums_verified": bool(verification.get("md5_compared")),
        "verification": verification,
        "appended": verification.get("appended"),
        "scans": scans,
        "not_archived": not_archived,
        "resources": resources,
        "excluded": facts["excluded"],
        "subject_fields": facts["subject_fields"],
        "files": [dataclasses.asdict(e) for e in manifest.files],
    }


@_step("finish")
def _finish(run: _Run, drop: ledger_module.Drop) -> tuple[dict[str, Any], str]:
    work = Path(drop.work)
    if work.is_dir():
        drop = _aim(run, drop, run.config.paths.done, time.strftime("%Y-%m-%d"))
    target = Path(drop.target or "")
    if work.is_dir():
        client = run.client()
        session = client.find_session(run.project, drop.label)
        if session is None:
            raise TransientError("the archived session is not visible")
        fields = _facts(run, drop)["subject_fields"]
        if fields:
            client.set_subject_fields(run.project, session.subject, fields)
        receipt.write(work, _receipt(run, drop, session))
        target.parent.mkdir(parents=True, exist_ok=True)
        _rename(work, target)
    elif not target.is_dir():
        raise TransientError(
            f"the folder of {drop.label} is neither in the work area ({work}) nor in done/ "
            f"({target}); if the share is unmounted it waits for it, else put the folder back "
            f"at {work}"
        )
    _cleanup(run, drop)
    return {"final_path": target}, f"moved to {target}"


def _rename(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise TransientError(
                f"{target.parent} is on another file system than the drop root; xnatdrop moves "
                "drops only by rename: put done/ and quarantine/ on the drop share"
            ) from None
        raise


def _cleanup(run: _Run, drop: ledger_module.Drop) -> None:
    """Remove xnatdrop's own files of a finished drop: the spool and the empty work folder."""
    spool = run.spool(drop)
    pack.remove(spool)
    for leftover in (spool / CHECK_NAME, spool / QUARANTINE_NAME, spool / XNAT_NAME):
        leftover.unlink(missing_ok=True)
    for folder in (spool, Path(drop.work).parent if drop.work else None):
        if folder is not None:
            with contextlib.suppress(OSError):  # not empty or already gone: leave it
                for zipped in folder.glob("*.zip"):
                    zipped.unlink()
                folder.rmdir()


# -- quarantine ------------------------------------------------------------------------------


def _quarantine(run: _Run, drop: ledger_module.Drop, failure: PermanentError) -> Outcome:
    """Move the folder, untouched, to quarantine/<label>__<time>/ with both reason files."""
    spool = run.spool(drop)
    findings: list[dict[str, Any]] = []
    with contextlib.suppress(TransientError):
        findings = list(_facts(run, drop).get("findings", []))
    reason = {
        "label": drop.label,
        "project": run.project,
        "code": failure.code,
        "message": str(failure),
        "fix": failure.fix,
        "step": drop.running or drop.next_step,
        "findings": findings,
        "drop_root": str(run.drop_settings.path),
        "time": receipt.now_text(),
    }
    in_xnat = getattr(failure, "in_xnat", None)
    if in_xnat:
        reason["in_xnat"] = in_xnat
    ledger_module.private_dir(spool)
    receipt.write_atomic(spool / QUARANTINE_NAME, json.dumps(reason, indent=1), private=True)
    drop = run.book.begin(drop, "quarantine", last_error_code=failure.code, last_error=str(failure))
    return _complete_quarantine(run, drop, reason)


def _stored_reason(run: _Run, drop: ledger_module.Drop) -> dict[str, Any]:
    try:
        text = (run.spool(drop) / QUARANTINE_NAME).read_text(encoding="utf-8")
        return dict(json.loads(text))
    except (OSError, ValueError):
        return {
            "label": drop.label,
            "project": run.project,
            "code": drop.last_error_code or "QUARANTINE",
            "message": drop.last_error or "",
            "fix": "",
            "step": None,
            "findings": [],
            "drop_root": str(run.drop_settings.path),
            "time": receipt.now_text(),
        }


def _complete_quarantine(run: _Run, drop: ledger_module.Drop, reason: dict[str, Any]) -> Outcome:
    stored = Path(drop.target) if drop.target else None
    # A target is chosen free (`_aim`): if it exists, the folder was moved there before a
    # crash, and a folder of that label in the drop root now is a new copy, not ours.
    moved = stored is not None and stored.is_dir() and (stored / quarantine.JSON_NAME).is_file()
    folder = next(
        (Path(p) for p in (drop.work, drop.source) if p and Path(p).is_dir() and Path(p) != stored),
        None,
    )
    if moved:
        folder = None
    if folder is not None:
        drop = _aim(run, drop, run.config.paths.quarantine)
    target = Path(drop.target or "")
    if folder is not None:
        quarantine.write(folder, reason)
        _crash_point("quarantine", "before")
        target.parent.mkdir(parents=True, exist_ok=True)
        _rename(folder, target)
    _crash_point("quarantine", "after")
    if drop.prearchive_uri and run._client is not None:
        # Our upload would otherwise sit in the prearchive; the data is safe in quarantine/.
        with contextlib.suppress(TransientError, PermanentError, AuthenticationError):
            _delete_prearchive(run, drop.prearchive_uri)
    _cleanup(run, drop)
    drop = run.book.quarantine(
        drop, reason["code"], reason["message"], final_path=target if target.is_dir() else None
    )
    log.error(
        "%s: quarantined (%s): %s -> %s", drop.label, reason["code"], reason["message"], target
    )
    return Outcome(
        "quarantined", drop.label, drop.id, reason["message"], reason["code"], path=target
    )


# -- the rules, as facts for the later steps -------------------------------------------------


def _check_facts(work: Path, config: Config, drop_settings: DropSettings) -> dict[str, Any]:
    """Run `rules.check_folder` and keep what pack, attach, finish and quarantine need.

    The result is plain JSON (stored in the spool): `ok`, `findings` (code, action, path,
    message, fix, files), `files` (`pack.Item` fields), `series`, `excluded` (what is left out
    and why), `sidecars` (resource name → folder relative to the subject folder).
    """
    verdict = rules.check_folder(
        work,
        config.rules_for(drop_settings),
        drop_settings,
        control_files=config.control_files(),
    )
    findings = [f.to_json() for f in verdict.reported()]
    files = [
        dataclasses.asdict(
            pack.Item(
                path=entry.path.as_posix(),
                sop_instance_uid=entry.sop_instance_uid,
                series_instance_uid=entry.series_instance_uid,
                series_number=entry.series_number,
                study_instance_uid=entry.study_instance_uid,
            )
        )
        for entry in verdict.upload_entries()
    ]
    return {
        "label": verdict.label,
        "ok": verdict.ok,
        "findings": findings,
        "files": files,
        "upload_bytes": sum(s.bytes for s in verdict.series),
        "series": [s.to_json() for s in verdict.series],
        "excluded": [
            {"path": f["path"], "code": f["code"], "message": f["message"]}
            for f in findings
            if f["action"] == "exclude"
        ],
        "sidecars": {
            name: Path(path).relative_to(work).as_posix() if Path(path).is_absolute() else str(path)
            for name, path in verdict.sidecars.items()
        },
    }
