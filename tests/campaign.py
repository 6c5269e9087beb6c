"""The reliability campaign (issue 9): the real daemon against a sandbox XNAT, attacked on purpose.

    python tests/campaign.py                 # the full campaign (about 20 minutes on 2 cores)
    python tests/campaign.py --seed 1234     # replay a run: every random choice follows the seed
    python tests/campaign.py --only 'kill/'  # scenarios whose id matches a regular expression
    python tests/campaign.py --list          # the scenario ids, and the known failures
    python tests/campaign.py --bounded       # the CI subset (what tests/test_campaign.py runs)

Run it as root from the checkout, in the project's venv (`. .venv/bin/activate`), with the shared
scanner data at ../shared/dicom (or XNATDROP_SHARED_DICOM): it mounts small tmpfs file systems,
bind-mounts a share to unmount it, and runs some daemons as the unprivileged user `nobody` to make
files unreadable to them. Everything it builds lives under a temporary folder that is deleted
afterwards (`--keep` leaves it for a post-mortem). It prints the seed first, one line per scenario
as it ends, then the table that docs/reliability.md holds, and exits 1 if any scenario that is not
a known failure found a problem.

Every scenario runs in its own `Lab` (campaign_lab.py): a fresh sandbox XNAT with a stock XNAT's
defaults, drop roots, done/, quarantine/, a state folder, and real `python -m xnatdrop run`
processes. It builds drops from real scanner data (campaign_drops.py), injects its faults, lets
the daemon finish (restarting it after each kill), and then `audit` (campaign_audit.py) checks the
invariants: files, XNAT, verdicts, stuck drops, the ledger. Families:

- **kill**: SIGKILL at every step boundary (`XNATDROP_TEST_CRASH_AT`), after N bytes of the
  upload, at random file-system operations of the pipeline, before or just after them (renames
  included: freeze, thaw, finish, quarantine, receipts, spool), and at random moments;
- **storm**: XNAT faults through the sandbox's control API: 5xx bursts, connections cut
  mid-body, slow answers, an outage (the server stopped), session expiry, a slow build behind a
  proxy timeout, a slow archive beyond XNAT's timeout, a "full disk" answer storm, an expired
  password;
- **local**: the state and the share file systems full, a drop root unmounted or renamed, files
  and folders unreadable to the service user, files changing while checked and while sent;
- **bad**: more than 40 distinct bad drops: every rule code, hostile names, links, FIFOs, nested
  archives, a 20,000-file series, label collisions, late files;
- **ops**: two daemons on one state folder, two configurations on one drop root, `push` racing
  the daemon, a drop root missing at start, a wrong password fixed, a bad label requeued under a
  new name, a wrong quarantine path fixed.

`KNOWN_FAILURES` lists scenarios that find a defect in a module another change owns; they stay
in the full campaign (reported apart) and out of the bounded one until that change lands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import campaign_drops as drops_module
from campaign_audit import Audit, audit, explained, locate, places
from campaign_drops import BAD, Drop, Expect, Stager, clean, place
from campaign_lab import Lab, wait_for
from xnatdrop import codes
from xnatdrop import config as config_module
from xnatdrop.commands import status as status_command

FINISH_TIMEOUT = 180.0  # seconds a scenario's drops get to reach their verdicts after the faults
STEPS = ("freeze", "check", "pack", "import", "verify", "archive", "attach", "finish")
CRASH_POINTS = [f"{s}:{w}" for s in STEPS for w in ("before", "after")]
CRASH_POINTS += ["quarantine:before", "quarantine:after"]
BOUNDED_SEED = 20261125
BOUNDED_SETTLE = {"quiet_seconds": 0.6, "poll_seconds": 0.2}

# Scenario id -> why it fails now, and whose change fixes it. Never in the bounded campaign.
KNOWN_FAILURES: dict[str, str] = {}


# -- results -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One scenario's outcome, for the table."""

    id: str
    family: str
    seed: int
    faults: int = 0
    seconds: float = 0.0
    audit: Audit = dataclasses.field(default_factory=Audit)
    notes: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    known: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.audit.problems

    def report(self) -> str:
        lines = [
            f"scenario {self.id} (seed {self.seed}): {self.faults} fault(s), "
            f"{self.audit.drops} drops, {self.seconds:.0f} s"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  PROBLEM {p}" for p in self.audit.problems]
        if self.error:
            lines.append("  HARNESS ERROR " + self.error)
        lines.append(
            f"  replay: python tests/campaign.py --seed {self.seed} --only "
            f"'^{re.escape(self.id)}$' --keep"
        )
        return "\n".join(lines)


class ScenarioFailed(Exception):
    """The scenario could not run as designed (a harness problem, reported as an error)."""


# -- the run context ---------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What a scenario body gets: its random source, where to build, and its result."""

    id: str
    base: Path
    rng: random.Random
    result: Result
    keep: bool = False
    bounded: bool = False  # the CI campaign: same faults, shorter durations (see `size`)
    counter: int = 0

    def lab(self, **options: Any) -> Lab:
        self.counter += 1
        name = re.sub(r"[^A-Za-z0-9]+", "-", self.id).strip("-")[:40] + f"-{self.counter}"
        lab = Lab(self.base, name, keep=self.keep, **options)
        if self.bounded:  # drops arrive by rename (atomic): a short quiet period is enough
            lab.extra = {"settle": dict(BOUNDED_SETTLE)}
        return lab

    def size(self, full: Any, bounded: Any) -> Any:
        """How long or how many, for the full campaign or the CI one. Only the durations and
        counts of faults shrink in CI: every kind of fault is injected, every invariant checked."""
        return bounded if self.bounded else full

    def fault(self, count: int = 1) -> None:
        self.result.faults += count

    def note(self, text: str) -> None:
        self.result.notes.append(text)


SCENARIOS: dict[str, tuple[str, Callable[[Run], None]]] = {}


def scenario(id_: str, family: str) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    def register(body: Callable[[Run], None]) -> Callable[[Run], None]:
        SCENARIOS[id_] = (family, body)
        return body

    return register


# -- shared steps ------------------------------------------------------------------------------


def standard_drops(lab: Lab, rng: random.Random, first: int = 1) -> list[Drop]:
    """Three drops: a clean session with sidecars and subject.toml, a small clean one, and one
    with a NIfTI in a series folder (quarantined): every step, and the quarantine, get used."""
    stager = Stager(lab.staging, rng)
    root = lab.roots[0]
    made = [
        clean(stager, root, f"SPN01_{first:04d}"),
        clean(
            stager,
            root,
            f"SPN01_{first + 1:04d}",
            (drops_module.SI_MOSAIC,),
            sidecars=False,
            subject=False,
        ),
        BAD["CONVERTED_FILE"](stager, root, f"SPN01_{first + 2:04d}"),
    ]
    return made


def put(lab: Lab, drops: list[Drop]) -> None:
    for drop in drops:
        place(drop, lab.staging)


def ledger_rows(lab: Lab) -> list[sqlite3.Row]:
    path = lab.state / "ledger.sqlite3"
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM drops").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def finished(lab: Lab, drops: list[Drop]) -> bool:
    """Every drop that must end somewhere is there, and the ledger has nothing unfinished."""
    try:
        where = places(lab)
    except FileNotFoundError:
        return False  # the daemon moved a folder while it was listed: not settled yet, look again
    for drop in drops:
        if drop.expect.kind == "waiting":
            continue
        want = "done" if drop.expect.kind == "archived" else "quarantine"
        if not any(p == want for p, _ in locate(drop, where)):
            return False
    waiting = {d.label for d in drops if d.expect.kind == "waiting"}
    return not any(
        r["state"] not in ("done", "quarantined", "requeued") and r["label"] not in waiting
        for r in ledger_rows(lab)
    )


def status_of(lab: Lab) -> tuple[int, str, dict[str, Any]]:
    """`xnatdrop status` in this process (the same code as the command): code, text, report."""
    settings = config_module.load(lab.config_path)
    report = status_command.collect(settings)
    text = status_command.render(report)
    return (1 if status_command.needs_attention(report) else 0), text, report


def conclude(run: Run, lab: Lab, drops: list[Drop], timeout: float = FINISH_TIMEOUT) -> None:
    """Make sure a clean daemon runs, wait for every verdict, read status, stop, audit."""
    if not any(d.alive() for d in lab.daemons):
        lab.daemon()
    reached = wait_for(lambda: finished(lab, drops), timeout, every=0.25)
    waiting = [d for d in drops if d.expect.kind == "waiting"]
    if waiting:  # a wait is explained once it has lasted settle.max_wait_seconds at most
        wait_for(lambda: all(explained(d, status_of(lab)) for d in waiting), 30, every=0.5)
    status = status_of(lab)
    if not reached:
        run.note(f"not every drop reached its verdict within {timeout:.0f} s")
    for daemon in lab.daemons:
        if daemon.alive():
            code = daemon.stop()
            if code != 0:
                run.result.audit.add(
                    "daemon",
                    None,
                    f"daemon {daemon.number} stopped with {code} after SIGTERM (expected 0)",
                )
    run.result.audit.merge(audit(lab, drops, status))
    tracebacks(run, lab)


def tracebacks(run: Run, lab: Lab) -> None:
    """Every traceback in a daemon log is a bug (expected errors are one line, STYLE.md)."""
    seen: dict[str, int] = {}
    for daemon in lab.daemons:
        lines = daemon.log().splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = next(
                    (
                        lines[j]
                        for j in range(index + 1, len(lines))
                        if lines[j] and not lines[j].startswith((" ", "Traceback"))
                    ),
                    "?",
                )
                seen[end] = seen.get(end, 0) + 1
    for last, count in seen.items():
        run.result.audit.add("traceback", None, f"{count}x in the daemon log: {last[:300]}")


def _pause(seconds: float) -> None:
    """Let a fault last, or pick its moment: the timing is the fault, not a wait for an outcome
    (every wait for an outcome is `wait_for`, a condition with a deadline)."""
    threading.Event().wait(seconds)


def died(daemon: Any, timeout: float) -> bool:
    return wait_for(lambda: not daemon.alive(), timeout, every=0.05)


# -- kills -------------------------------------------------------------------------------------


def kill_chain(run: Run, kills: list[dict[str, Any]]) -> None:
    """Start the daemon armed with each kill in turn (it dies, the next one resumes), then a
    clean one; audit. A kill whose point the daemon never reached is noted, not counted."""
    with run.lab() as lab:
        drops = standard_drops(lab, run.rng)
        put(lab, drops)
        for kill in kills:
            armed = lab.daemon(
                fault=kill.get("fault"),
                crash_at=kill.get("crash_at"),
            )
            if "after_seconds" in kill:
                _pause(kill["after_seconds"])
                if armed.alive():
                    armed.signal(signal.SIGKILL)
                    armed.wait_exit(10)
                    run.fault()
                    run.note(f"killed at t={kill['after_seconds']:.2f} s")
                continue
            wait_for(lambda d=armed: not d.alive() or finished(lab, drops), 60, every=0.05)
            if not armed.alive():
                run.fault()
                # the fault log holds the hook's kills only: a crash point is named by itself
                run.note(
                    f"killed at {kill['crash_at']}"
                    if kill.get("crash_at")
                    else "killed " + (_hit(lab) or "at an unrecorded point")
                )
            else:
                run.note(f"kill point {kill.get('crash_at') or kill.get('fault')} not reached")
                armed.stop()
            if finished(lab, drops):
                break
        conclude(run, lab, drops)


def _hit(lab: Lab) -> str:
    try:
        last = lab.faults_log.read_text(encoding="utf-8").splitlines()[-1]
        entry = json.loads(last)
    except (OSError, IndexError, ValueError):
        return ""
    paths = " -> ".join(Path(p).name for p in entry["paths"])
    failed = f" (which failed: {entry['failed']})" if entry.get("failed") else ""
    return f"{entry.get('when', '')} {entry['kind']} {paths} in {entry['site']}{failed}".strip()


def calibrate(run: Run) -> int:
    """How many pipeline file operations a clean run of the standard drops makes."""
    with run.lab() as lab:
        drops = standard_drops(lab, run.rng)
        put(lab, drops)
        lab.daemon(fault={"action": "record"})
        conclude(run, lab, drops)
        try:
            count = len(lab.faults_log.read_text(encoding="utf-8").splitlines())
        except OSError:
            count = 0
    if count == 0:
        raise ScenarioFailed("the fault hook recorded no file operation")
    return count


_CALIBRATED: list[int] = []


def mutation_count(run: Run) -> int:
    if not _CALIBRATED:
        probe = Run(
            run.id + "/calibrate",
            run.base,
            random.Random(0),
            Result("calibrate", "kill", run.result.seed),
            keep=run.keep,
        )
        _CALIBRATED.append(calibrate(probe))
        if not probe.result.ok:
            raise ScenarioFailed("the calibration run failed:\n" + probe.result.report())
    return _CALIBRATED[0]


for _point in CRASH_POINTS:

    def _crash(run: Run, point: str = _point) -> None:
        kill_chain(run, [{"crash_at": point}])

    scenario(f"kill/crash-at/{_point}", "kill")(_crash)


@scenario("kill/upload-bytes", "kill")
def _upload_bytes(run: Run) -> None:
    """SIGKILL after a random number of bytes of the upload, three times in a row."""
    kill_chain(run, [{"crash_at": f"import:bytes={run.rng.randint(1, 400_000)}"} for _ in range(3)])


# Just after each kind of rename, before anything else runs (the ledger write that follows it
# included): the rename's destination identifies it.
RENAMES = {
    "freeze": "/.xnatdrop-work/",  # the drop into the work area
    "finish": "/done/",  # the work folder into done/
    "quarantine": "/quarantine/",  # the work folder into quarantine/
    "receipt": "/RECEIPT.json",  # RECEIPT.json.part over RECEIPT.json
    "reason-file": "/QUARANTINE.json",  # QUARANTINE.json.part over QUARANTINE.json
    "spool": "/spool/",  # check.json, plan.json, manifest.json, xnat.json in the state folder
}
for _name, _target in RENAMES.items():

    def _renamed(run: Run, target: str = _target) -> None:
        fault = {
            "action": "kill",
            "nth": 1,
            "when": "after",
            "kinds": ["rename"],
            "match": target,
            "target": True,
        }
        kill_chain(run, [{"fault": fault}])

    scenario(f"kill/after-rename/{_name}", "kill")(_renamed)


@scenario("kill/steps-and-renames", "kill")
def _steps_and_renames(run: Run) -> None:
    """Five kills in a row in one lab, each at another step boundary or rename: after the
    freeze, just after a spool file's rename, before a quarantine, after the archive, just
    after the rename into done/ (before the ledger hears of it). The CI campaign's kills."""
    after = {"action": "kill", "nth": 1, "when": "after", "kinds": ["rename"], "target": True}
    kill_chain(
        run,
        [
            {"crash_at": "freeze:after"},
            {"fault": {**after, "match": RENAMES["spool"]}},
            {"crash_at": "quarantine:before"},
            {"crash_at": "archive:after"},
            {"fault": {**after, "match": RENAMES["finish"]}},
        ],
    )


for _index in range(12):

    def _mutations(run: Run) -> None:
        """Kills at random file operations of the pipeline (three per scenario, chained), half
        of them just after the operation (a rename done, its ledger write not)."""
        total = mutation_count(run)
        run.note(f"a clean run of these drops makes {total} file operations")
        kills = []
        for index in range(3):
            nth = run.rng.randint(1, max(1, total // (index + 1)))
            when = run.rng.choice(["before", "after"])
            kills.append({"fault": {"action": "kill", "nth": nth, "when": when}})
        kill_chain(run, kills)

    scenario(f"kill/file-operation/{_index + 1}", "kill")(_mutations)


for _index in range(6):

    def _timed(run: Run) -> None:
        """SIGKILL at random moments (0.5-8 s after start), twice, then a clean restart."""
        kill_chain(
            run, [{"after_seconds": run.rng.uniform(0.5, run.size(8.0, 3.0))} for _ in range(2)]
        )

    scenario(f"kill/random-moment/{_index + 1}", "kill")(_timed)


@scenario("kill/thaw-rename", "kill")
def _thaw(run: Run) -> None:
    """A folder checked while still being copied (a gap in a series) goes back to the drop root
    to settle again: kill just after that rename, before the ledger hears of it; then the copy
    finishes. Result: archived once, complete."""
    with run.lab() as lab:
        lab.write_config(settle={"max_wait_seconds": 120.0})
        stager = Stager(lab.staging, run.rng)
        drop = clean(stager, lab.roots[0], "SPN01_0001")
        folder = lab.staging / drop.label / Path(drops_module.GE_FMRI[1]).name
        held = sorted(folder.iterdir(), key=drops_module._instance)[10]
        missing = held.read_bytes()
        held.unlink()
        os.rename(lab.staging / drop.label, drop.path)
        armed = lab.daemon(
            fault={
                "action": "kill",
                "nth": 1,
                "when": "after",
                "target": True,
                "kinds": ["rename"],
                "match": str(drop.path),
            }
        )
        if died(armed, 60):
            run.fault()
            run.note("killed just after the thaw rename: " + _hit(lab))
        else:
            run.note("the thaw rename was not reached")
        (drop.path / folder.name / held.name).write_bytes(missing)
        drop.snapshot()
        conclude(run, lab, [drop])


# -- XNAT fault storms -------------------------------------------------------------------------


class Injector:
    """The sandbox's fault rules, counted: `fired()` is how many requests they actually hit."""

    def __init__(self, lab: Lab, run: Run) -> None:
        self.sandbox = lab.sandbox
        self.size = run.size
        self.given = 0
        self.events = 0  # faults that are not counted rules (an outage, expiry, a slow build)

    def rule(self, kind: str, path: str, count: int, **options: Any) -> None:
        getattr(self.sandbox, kind)(path, count=count, **options)
        self.given += count

    def fired(self) -> int:
        rules = self.sandbox.faults.describe()["rules"]
        remaining = sum(int(r["count"]) for r in rules if r["count"] is not None)  # type: ignore[index]
        return self.given - remaining + self.events


def storm(
    run: Run,
    inject: Callable[[Injector, random.Random], None],
    drops_count: int = 4,
    xnat_timeout: float = 20.0,
    **config: Any,
) -> None:
    """Clean drops flow while `inject` attacks XNAT; every drop must end archived. The faults
    counted are those that hit a request (or happened, for an outage)."""
    with run.lab() as lab:
        lab.xnat_timeout = xnat_timeout
        lab.write_config(**config)
        stager = Stager(lab.staging, run.rng)
        sources = [drops_module.GE_FMRI, drops_module.GE_FMRI_2, drops_module.SI_MOSAIC]
        drops = [
            clean(
                stager,
                lab.roots[0],
                f"SPN01_{i:04d}",
                (run.rng.choice(sources),),
                sidecars=i % 2 == 1,
            )
            for i in range(1, drops_count + 1)
        ]
        lab.daemon()
        put(lab, drops)
        injector = Injector(lab, run)
        inject(injector, run.rng)
        conclude(run, lab, drops)
        run.fault(injector.fired())
        if injector.fired() == 0:
            run.result.audit.add("harness", None, "no fault of this storm hit a request")


PATHS = [
    r"^/data/services/import$",
    r"^/data/services/archive$",
    r"^/data/prearchive/",
    r"^/data/projects/SPN01/experiments",
    r"^/data/JSESSION",
    r"^/data/experiments/",
    r"/resources/",
    r"^/xapi/",
    r".",
]


def _paced(rng: random.Random, rounds: int, low: float, high: float) -> Iterator[int]:
    pause = threading.Event()
    for index in range(rounds):
        pause.wait(rng.uniform(low, high))  # the storm's rhythm, not a wait for an outcome
        yield index


@scenario("storm/5xx-bursts", "storm")
def _bursts(run: Run) -> None:
    def inject(faults: Injector, rng: random.Random) -> None:
        for _ in _paced(rng, faults.size(6, 4), 0.2, faults.size(1.0, 0.6)):
            faults.rule(
                "fail",
                rng.choice(PATHS),
                rng.randint(2, faults.size(8, 5)),
                status=rng.choice([500, 502, 503, 504]),
            )

    storm(run, inject)


@scenario("storm/cut-mid-body", "storm")
def _cut(run: Run) -> None:
    def inject(faults: Injector, rng: random.Random) -> None:
        for _ in _paced(rng, 5, 0.2, 1.5):
            path = rng.choice([r"^/data/services/import$", r"/resources/.*/files/"])
            faults.rule("drop", path, rng.randint(1, 2), after_bytes=rng.randint(100, 300_000))

    storm(run, inject)


@scenario("storm/slow-answers", "storm")
def _slow(run: Run) -> None:
    def inject(faults: Injector, rng: random.Random) -> None:
        faults.rule(
            "delay",
            ".",
            faults.size(rng.randint(20, 60), rng.randint(8, 16)),
            seconds=rng.uniform(0.3, faults.size(1.5, 0.8)),
        )
        faults.rule("delay", rng.choice(PATHS[:4]), 1, seconds=faults.size(8.0, 6.0))  # > timeout

    storm(run, inject, drops_count=3, xnat_timeout=5.0)


@scenario("storm/outage", "storm")
def _outage(run: Run) -> None:
    """XNAT goes away (connection refused) for 4-10 s at a random moment, then comes back."""

    def inject(faults: Injector, rng: random.Random) -> None:
        _pause(rng.uniform(0.5, faults.size(3.0, 1.5)))
        faults.sandbox.stop()
        _pause(faults.size(rng.uniform(4.0, 10.0), rng.uniform(3.0, 5.0)))
        faults.sandbox.start()
        faults.events += 1

    storm(run, inject)


@scenario("storm/long-outage", "storm")
def _long_outage(run: Run) -> None:
    """XNAT is down for 45-90 s: drops fail again and again (reported once, not retried in a
    tight loop), then all archive once it is back."""

    def inject(faults: Injector, rng: random.Random) -> None:
        _pause(rng.uniform(0.5, 2.0))
        faults.sandbox.stop()
        _pause(rng.uniform(45.0, 90.0))
        faults.sandbox.start()
        faults.events += 1

    storm(run, inject)


@scenario("storm/session-expiry", "storm")
def _expiry(run: Run) -> None:
    def inject(faults: Injector, rng: random.Random) -> None:
        # The first expiry lands as soon as a push has logged in (a fast push could otherwise
        # fall between the paced rounds, and the storm would test nothing); then the rhythm.
        pause, deadline = threading.Event(), time.monotonic() + 60
        while not (expired := faults.sandbox.expire_sessions()) and time.monotonic() < deadline:
            pause.wait(0.02)
        faults.events += expired
        for _ in _paced(rng, faults.size(20, 10), 0.1, 0.6):
            faults.events += faults.sandbox.expire_sessions()

    storm(run, inject)


@scenario("storm/slow-build-behind-proxy", "storm")
def _slow_build(run: Run) -> None:
    """The import answers only after XNAT built the session (stock row 4), slower than the
    proxy's read timeout: the client gets 504 while XNAT goes on."""

    def inject(faults: Injector, rng: random.Random) -> None:
        faults.sandbox.slow_build(rng.uniform(2.0, 4.0))
        faults.rule("proxy_timeout", r"^/data/services/import$", 3, seconds=1.0)
        _pause(faults.size(8.0, 5.0))
        faults.sandbox.slow_build(0)

    storm(run, inject, drops_count=3)


@scenario("storm/slow-archive", "storm")
def _slow_archive(run: Run) -> None:
    """Archiving outlasts XNAT's own timeout: 500 to the client, the archive completes anyway."""

    def inject(faults: Injector, rng: random.Random) -> None:
        faults.sandbox.apply_settings(archive_timeout=1.5)
        faults.sandbox.slow_archive(rng.uniform(2.0, 3.0))
        before = faults.sandbox.requests["POST /data/services/archive"]
        _pause(faults.size(6.0, 4.0))
        faults.sandbox.slow_archive(0)
        faults.events += faults.sandbox.requests["POST /data/services/archive"] - before

    storm(run, inject, drops_count=3)


@scenario("storm/full-disk-answers", "storm")
def _full_disk(run: Run) -> None:
    """XNAT answers every import 400 'unable to read DICOM object' (its disk is full) for a
    while: pushes are held by the circuit breaker, nothing is quarantined, all archive after."""

    def inject(faults: Injector, rng: random.Random) -> None:
        body = "<html><body><h3>unable to read DICOM object upload.zip</h3></body></html>"
        before = faults.sandbox.requests["POST /data/services/import"]
        faults.sandbox.fail(r"^/data/services/import$", status=400, count=None, body=body)
        _pause(faults.size(rng.uniform(5.0, 8.0), rng.uniform(3.0, 4.0)))
        faults.sandbox.clear_faults()
        faults.events += faults.sandbox.requests["POST /data/services/import"] - before

    storm(run, inject)


@scenario("storm/password-expired", "storm")
def _password(run: Run) -> None:
    """The account's password expires mid-run (XNAT 302s to the change-password page), then
    is renewed; the daemon is restarted, as the ALERT says."""
    with run.lab() as lab:
        stager = Stager(lab.staging, run.rng)
        drops = [clean(stager, lab.roots[0], f"SPN01_{i:04d}") for i in (1, 2)]
        lab.sandbox.expire_password("svc")
        first = lab.daemon()
        put(lab, drops)
        run.fault()
        if not wait_for(lambda: "credentials" in status_of(lab)[1], 60):
            run.note("status never said that XNAT refused the credentials")
        lab.sandbox.expire_password("svc", expired=False)
        first.stop()
        conclude(run, lab, drops)


# -- local faults ------------------------------------------------------------------------------


def mid_push(run: Run, lab: Lab, drops: list[Drop]) -> Any:
    """Start the daemon and freeze it (SIGSTOP) at a random file operation of the pipeline, so
    that the fault the caller injects next lands in the middle of a push; the caller SIGCONTs."""
    total = mutation_count(run)
    nth = run.rng.randint(1, total)
    daemon = lab.daemon(fault={"action": "stop", "nth": nth})
    put(lab, drops)
    if wait_for(lambda: daemon.stopped_by_signal() or finished(lab, drops), 60, every=0.05):
        if daemon.stopped_by_signal():
            run.note("fault injected while paused " + _hit(lab))
        else:
            run.note(f"the pause point {nth}/{total} was not reached: fault after the pushes")
    return daemon


@scenario("local/state-disk-full", "local")
def _state_full(run: Run) -> None:
    """The state folder's file system fills up in the middle of a push; the daemon holds
    pushes and says so, then carries on once there is space."""
    with run.lab() as lab:
        lab.tmpfs(lab.state, "16m")
        drops = standard_drops(lab, run.rng)
        daemon = mid_push(run, lab, drops)
        filler = fill(lab.state)
        run.fault()
        daemon.signal(signal.SIGCONT)
        explained = wait_for(lambda: "state folder" in status_of(lab)[1], 30)
        if not explained:
            run.note("status did not mention the full state folder within 30 s")
        filler.unlink()
        conclude(run, lab, drops)


@scenario("local/share-disk-full", "local")
def _share_full(run: Run) -> None:
    """The share (drop root, done/, quarantine/ and the work area on one file system) fills up
    in the middle of a push; nothing is lost, all finish once there is space."""
    with run.lab() as lab:
        share = lab.dir / "share"
        lab.tmpfs(share, "96m")
        _use_share(lab, share)
        drops = standard_drops(lab, run.rng)
        daemon = mid_push(run, lab, drops)
        filler = fill(share)
        run.fault()
        daemon.signal(signal.SIGCONT)
        _pause(run.rng.uniform(*run.size((3.0, 8.0), (2.0, 4.0))))  # how long it stays full
        filler.unlink()
        conclude(run, lab, drops)


def _use_share(lab: Lab, share: Path) -> None:
    """Put the drop root, done/ and quarantine/ on `share` (one file system, as required)."""
    lab.roots = [share / "drop"]
    lab.roots[0].mkdir()
    lab.staging = share / "staging"  # drops are moved in by rename: same file system
    lab.staging.mkdir()
    lab.done, lab.quarantine = share / "done", share / "quarantine"
    lab.write_config(paths={"done": lab.done, "quarantine": lab.quarantine})


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` until ENOSPC (fs_helpers.fill); return the filler."""
    from fs_helpers import fill as fill_up

    return fill_up(folder, ".filler")


@scenario("local/share-unmounted", "local")
def _unmounted(run: Run) -> None:
    """The share (a bind mount) is unmounted in the middle of a push, then mounted again."""
    with run.lab() as lab:
        real = lab.dir / "server"
        real.mkdir()
        share = lab.dir / "share"
        lab.mount(share, "--bind", str(real))
        _use_share(lab, share)
        drops = standard_drops(lab, run.rng)
        daemon = mid_push(run, lab, drops)
        lab.umount(share)
        run.fault()
        daemon.signal(signal.SIGCONT)
        paused = wait_for(lambda: "paused" in status_of(lab)[1], 30)
        if not paused:
            run.note("status did not report the drop root paused within 30 s")
        lab.mount(share, "--bind", str(real))
        conclude(run, lab, drops)


@scenario("local/root-renamed", "local")
def _renamed(run: Run) -> None:
    """The drop root is renamed away in the middle of a push, then back."""
    with run.lab() as lab:
        drops = standard_drops(lab, run.rng)
        daemon = mid_push(run, lab, drops)
        root = lab.roots[0]
        away = root.with_name("drop-away")
        root.rename(away)
        run.fault()
        daemon.signal(signal.SIGCONT)
        if not wait_for(lambda: "paused" in status_of(lab)[1], 30):
            run.note("status did not report the drop root paused within 30 s")
        away.rename(root)
        conclude(run, lab, drops)


@scenario("local/unreadable", "local")
def _unreadable(run: Run) -> None:
    """The service cannot read one file of a drop (quarantined as UNREADABLE), nor a whole
    series folder of another until its permissions are fixed (then archived)."""
    with run.lab(no_dac=True) as lab:
        stager = Stager(lab.staging, run.rng)
        root = lab.roots[0]
        one_file = drops_module._base(stager, root, "SPN01_0001")[0]
        file_drop = Drop(
            "SPN01_0001",
            root,
            Expect("quarantined", "RULES_BLOCKED", frozenset({"UNREADABLE"})),
            "one file mode 000",
        )
        folder_drop = clean(stager, root, "SPN01_0002")
        fine = clean(stager, root, "SPN01_0003", sidecars=False)
        drops = [file_drop, folder_drop, fine]
        put(lab, drops)
        victim = sorted((file_drop.path / "fmri").iterdir())[2]
        victim.chmod(0)
        series = next(p for p in folder_drop.path.iterdir() if p.name.startswith("02_"))
        series.chmod(0)
        run.fault(2)
        daemon = lab.daemon()
        explained = wait_for(lambda: "SPN01_0002" in status_of(lab)[1], 30)
        if not explained:
            run.note("status did not name the unreadable folder within 30 s")
        series.chmod(0o755)
        conclude(run, lab, drops)
        del daemon, one_file


def change_while(run: Run, modules: list[str], what: str) -> None:
    """Pause the daemon (SIGSTOP) at its first read of a drop file from `modules`, rewrite two
    files of the drop in place (a DICOM header and a sidecar), continue. The session must be
    archived as the files are at the end, or the drop held back; never with the old bytes."""
    with run.lab() as lab:
        stager = Stager(lab.staging, run.rng)
        drop = clean(stager, lab.roots[0], "SPN01_0001")
        put(lab, [drop])
        daemon = lab.daemon(
            fault={
                "action": "stop",
                "kinds": ["read"],
                "nth": 1,
                "match": "/.xnatdrop-work/",
                "modules": modules,
            }
        )
        if not wait_for(daemon.stopped_by_signal, 60):
            run.note(f"the daemon never paused {what}")
        else:
            run.fault()
            work = next(lab.roots[0].glob(".xnatdrop-work/*/SPN01_0001"))
            series = next(p for p in work.iterdir() if p.name.startswith("02_"))
            target = sorted(series.iterdir())[0]
            import pydicom

            data = pydicom.dcmread(target)
            data.StudyComments = "rewritten while " + what
            data.save_as(target)
            (work / "behav" / "responses.csv").write_bytes(b"trial,rt\n1,0.999\n")
            drop.files = drops_module.md5s(work)
            daemon.signal(signal.SIGCONT)
        conclude(run, lab, [drop])


@scenario("local/changed-while-checked", "local")
def _changed_checked(run: Run) -> None:
    change_while(run, ["xnatdrop.rules", "xnatdrop.dicomfiles"], "checked")


@scenario("local/changed-while-sent", "local")
def _changed_sent(run: Run) -> None:
    change_while(run, ["xnatdrop.pack"], "sent")


# -- bad drops ---------------------------------------------------------------------------------


def bad_lab(run: Run, cases: list[str]) -> None:
    """Every case of `cases` as its own drop, with two clean drops beside them, in one daemon
    run: each must get its verdict, and none may hold up another."""
    with run.lab(roots=("drop", "strict")) as lab:
        lab.root_settings[1] = {
            "label_pattern": r"SPN01_\d{4}",
            "rules": {"label_agree": ["PatientID"]},
        }
        lab.write_config()
        stager = Stager(lab.staging, run.rng)
        made = []
        for index, case in enumerate(cases):
            label = drops_module.SPECIAL_LABELS.get(case, f"SPN01_{100 + index:04d}")
            root = lab.roots[1] if case in drops_module.STRICT else lab.roots[0]
            made.append(BAD[case](stager, root, label))
        made.append(clean(stager, lab.roots[0], "SPN01_0001"))
        made.append(clean(stager, lab.roots[1], "SPN01_0002", sidecars=False))
        put(lab, made)
        run.fault(len(cases))
        lab.daemon()
        conclude(run, lab, made)


RULE_CASES = sorted(c for c in BAD if c in codes.rule_codes())
OTHER_CASES = sorted(c for c in BAD if c not in codes.rule_codes())


@scenario("bad/rule-codes", "bad")
def _rule_codes(run: Run) -> None:
    """One drop per rule code (codes.rule_codes()), each with its expected verdict."""
    missing = sorted(set(codes.rule_codes()) - set(BAD))
    if missing:
        raise ScenarioFailed(f"no bad drop for the rule codes {missing}")
    bad_lab(run, RULE_CASES)


@scenario("bad/hostile", "bad")
def _hostile(run: Run) -> None:
    """Hostile names, links, nested archives, subject files, our own reason files."""
    bad_lab(run, OTHER_CASES)


@scenario("bad/all", "bad")
def _all_bad(run: Run) -> None:
    """Every bad drop of the two scenarios above (all but the 20,000-file series) side by side
    in one daemon run: one drop's trouble must hold up no other."""
    missing = sorted(set(codes.rule_codes()) - set(BAD))
    if missing:
        raise ScenarioFailed(f"no bad drop for the rule codes {missing}")
    bad_lab(run, RULE_CASES + OTHER_CASES)


@scenario("bad/20000-files", "bad")
def _huge(run: Run) -> None:
    """One series of 20,000 instances: synthetic clones of a real GE fMRI file with fresh UIDs
    (built in the lab, deleted after)."""
    with run.lab() as lab:
        drop = drops_module.huge_series(lab.staging, lab.roots[0], "SPN01_0001", 20_000)
        put(lab, [drop])
        run.fault()
        lab.daemon()
        conclude(run, lab, [drop], timeout=900)


@scenario("bad/label-collision", "bad")
def _collision(run: Run) -> None:
    """A session is archived; then another study arrives under the same label: LABEL_EXISTS."""
    with run.lab() as lab:
        stager = Stager(lab.staging, run.rng)
        first = clean(stager, lab.roots[0], "SPN01_0001")
        lab.daemon()
        put(lab, [first])
        if not wait_for(lambda: finished(lab, [first]), 90):
            raise ScenarioFailed("the first session was not archived")
        second = clean(stager, lab.roots[0], "SPN01_0001", sidecars=False)
        second.expect = Expect("quarantined", "LABEL_EXISTS")
        second.uids = set()
        put(lab, [second])
        run.fault()
        conclude(run, lab, [first, second])


@scenario("bad/late-files", "bad")
def _late(run: Run) -> None:
    """The rest of a session (same study, new instances) arrives after the first part was
    archived: the new instances are appended to that session (issue 9 point 4)."""
    with run.lab() as lab:
        stager = Stager(lab.staging, run.rng)
        first = clean(stager, lab.roots[0], "SPN01_0001")
        lab.daemon()
        put(lab, [first])
        if not wait_for(lambda: finished(lab, [first]), 90):
            raise ScenarioFailed("the first part was not archived")
        second = drops_module.late_part(stager, first, lab.roots[0])
        put(lab, [second])
        run.fault()
        conclude(run, lab, [first, second])


# -- operating it ------------------------------------------------------------------------------


@scenario("ops/two-daemons-one-state", "ops")
def _two_daemons(run: Run) -> None:
    with run.lab() as lab:
        drops = standard_drops(lab, run.rng)
        first = lab.daemon()
        put(lab, drops)
        _pause(run.rng.uniform(0.0, 3.0))
        second = lab.daemon()
        run.fault()
        code = second.wait_exit(30)
        log = second.log()
        if code != 2 or f"pid {first.process.pid}" not in log:  # type: ignore[union-attr]
            run.result.audit.add(
                "ops",
                None,
                f"second `run` exited {code}, not 2 naming pid "
                f"{first.process.pid}: {log.strip()[-300:]}",
            )  # type: ignore[union-attr]
        conclude(run, lab, drops)


@scenario("ops/two-configs-one-root", "ops")
def _two_configs(run: Run) -> None:
    """A second configuration (another state folder) on the same drop root is held back with
    an alert and touches nothing; the first archives everything."""
    with run.lab() as lab:
        drops = standard_drops(lab, run.rng)
        lab.daemon()
        other = lab.dir / "other.toml"
        text = lab.config_path.read_text(encoding="utf-8")
        other.write_text(text.replace(f'"{lab.state}"', f'"{lab.dir / "state2"}"'), "utf-8")
        second = lab.daemon(config=other)
        put(lab, drops)
        run.fault()
        conclude(run, lab, drops)
        if "ALERT" not in second.log():
            run.result.audit.add("ops", None, "the second configuration raised no alert")
        rows = ledger_rows_at(lab.dir / "state2")
        if rows:
            run.result.audit.add("ops", None, f"the second configuration took {len(rows)} drops")


def ledger_rows_at(state: Path) -> list[Any]:
    path = state / "ledger.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT label FROM drops").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


@scenario("ops/push-races-daemon", "ops")
def _push_race(run: Run) -> None:
    """`xnatdrop push` of the same folders while the daemon takes them, at random offsets."""
    with run.lab() as lab:
        drops = standard_drops(lab, run.rng)
        lab.daemon()
        answers: list[subprocess.CompletedProcess[str]] = []

        def push(drop: Drop, delay: float) -> None:
            _pause(delay)
            answers.append(lab.xnatdrop("push", str(drop.path), "--config", str(lab.config_path)))

        put(lab, drops)
        threads = [threading.Thread(target=push, args=(d, run.rng.uniform(0, 3))) for d in drops]
        threads += [threading.Thread(target=push, args=(drops[0], run.rng.uniform(0, 3)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        run.fault(len(threads))
        for answer in answers:
            text = (answer.stdout + answer.stderr).strip()
            run.note(f"push exit {answer.returncode}: {text.splitlines()[-1] if text else ''}")
            if "Traceback" in text or answer.returncode not in (0, 1, 2, 3) or not text:
                run.result.audit.add("ops", None, f"push answered {answer.returncode}: {text}")
        conclude(run, lab, drops)


@scenario("ops/root-missing-at-start", "ops")
def _missing_root(run: Run) -> None:
    """One of two drop roots is missing when the daemon starts; the other works; the missing
    one is used once it appears."""
    with run.lab(roots=("drop", "late")) as lab:
        stager = Stager(lab.staging, run.rng)
        first = clean(stager, lab.roots[0], "SPN01_0001")
        later = clean(stager, lab.roots[1], "SPN01_0002")
        lab.roots[1].rmdir()
        put(lab, [first])
        daemon = lab.daemon()
        if not daemon.alive():
            run.result.audit.add("ops", None, f"run did not start: {daemon.log()[-300:]}")
        run.fault()
        lab.roots[1].mkdir()
        put(lab, [later])
        conclude(run, lab, [first, later])


@scenario("ops/wrong-password-fixed", "ops")
def _wrong_password(run: Run) -> None:
    with run.lab() as lab:
        secret = lab.dir / "secret"
        secret.write_text("wrong\n", encoding="utf-8")
        stager = Stager(lab.staging, run.rng)
        drops = [clean(stager, lab.roots[0], "SPN01_0001")]
        first = lab.daemon()
        put(lab, drops)
        run.fault()
        if not wait_for(lambda: "credentials" in status_of(lab)[1], 60):
            run.note("status never said that XNAT refused the credentials")
        first.stop()
        lab.write_config()  # writes the right password again
        conclude(run, lab, drops, timeout=60)


@scenario("ops/requeue-as-new-label", "ops")
def _requeue(run: Run) -> None:
    """A drop named against the pattern is quarantined; `requeue NAME --as LABEL` sends it back
    under a good label, and it is archived under that label."""
    with run.lab() as lab:
        lab.root_settings[0] = {"label_pattern": r"SPN01_\d{4}"}
        lab.write_config()
        stager = Stager(lab.staging, run.rng)
        drop = clean(stager, lab.roots[0], "spn01-7")
        lab.daemon()
        put(lab, [drop])
        if not wait_for(lambda: any(lab.quarantine.glob("spn01-7__*")), 60):
            raise ScenarioFailed("the badly named drop was not quarantined")
        name = next(lab.quarantine.glob("spn01-7__*")).name
        answer = lab.xnatdrop(
            "requeue", name, "--as", "SPN01_0007", "--config", str(lab.config_path)
        )
        run.fault()
        run.note(f"requeue exit {answer.returncode}: {(answer.stdout + answer.stderr).strip()}")
        drop.label = "SPN01_0007"
        drop.aside = set(drops_module.REASON_FILES)
        drop.files.update(
            {
                n: _md5_of(lab.roots[0] / drop.label / n)
                for n in drops_module.REASON_FILES
                if (lab.roots[0] / drop.label / n).exists()
            }
        )
        conclude(run, lab, [drop])


def _md5_of(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@scenario("ops/quarantine-path-fixed", "ops")
def _quarantine_fixed(run: Run) -> None:
    """quarantine/ stops being writable (for a service without DAC override) while a blocked
    drop is under way: it waits, and status says why. The operator points the config at a
    good folder and restarts: the drop goes there. (`run` refuses an unwritable quarantine at
    start; this is the path going bad after the start.)"""
    with run.lab(no_dac=True) as lab:
        wrong = lab.dir / "old-quarantine"
        wrong.mkdir()
        lab.write_config(paths={"quarantine": wrong})
        stager = Stager(lab.staging, run.rng)
        drop = BAD["CONVERTED_FILE"](stager, lab.roots[0], "SPN01_0001")
        first = lab.daemon()
        wrong.chmod(0o555)
        put(lab, [drop])
        run.fault()
        said = wait_for(
            lambda: (
                "SPN01_0001" in status_of(lab)[1]
                and any(r["state"] == "checked" or r["last_error"] for r in ledger_rows(lab))
            ),
            60,
        )
        run.note(
            "status while it waited: "
            + (_line(status_of(lab)[1], "SPN01_0001") if said else "nothing about SPN01_0001")
        )
        first.stop()
        lab.quarantine = lab.dir / "quarantine"
        lab.write_config(paths={"quarantine": lab.quarantine})
        conclude(run, lab, [drop], timeout=60)


def _line(text: str, word: str) -> str:
    return next((line.strip() for line in text.splitlines() if word in line), "")


# -- running and reporting ---------------------------------------------------------------------

# The full campaign runs every storm and local fault three times: the seed of each run is drawn
# from its id, so the faults land elsewhere each time.
REPEATS = 3
for _id, (_family, _body) in list(SCENARIOS.items()):
    if _family in ("storm", "local"):
        for _copy in range(2, REPEATS + 1):
            SCENARIOS[f"{_id} #{_copy}"] = (_family, _body)

# In the full campaign only: more of the same kinds, and the slow 20,000-file series.
FULL_ONLY = {"bad/20000-files", "storm/long-outage"}

BOUNDED = [
    "kill/steps-and-renames",
    "kill/upload-bytes",
    "kill/file-operation/1",
    "kill/random-moment/1",
    "storm/5xx-bursts",
    "storm/cut-mid-body",
    "storm/slow-answers",
    "storm/outage",
    "storm/session-expiry",
    "storm/slow-build-behind-proxy",
    "storm/slow-archive",
    "storm/full-disk-answers",
    "storm/password-expired",
    "local/state-disk-full",
    "local/share-disk-full",
    "local/share-unmounted",
    "local/root-renamed",
    "local/unreadable",
    "local/changed-while-checked",
    "local/changed-while-sent",
    "bad/all",
    "ops/two-daemons-one-state",
    "ops/push-races-daemon",
]


def run_scenario(
    id_: str, seed: int, base: Path, keep: bool = False, bounded: bool = False
) -> Result:
    """Run one scenario; `bounded` gives its faults the CI campaign's shorter durations."""
    family, body = SCENARIOS[id_]
    result = Result(id_, family, seed, known=KNOWN_FAILURES.get(id_, ""))
    run = Run(id_, base, random.Random(f"{seed}/{id_}"), result, keep, bounded)
    started = time.monotonic()
    try:
        body(run)
    except ScenarioFailed as error:
        result.error = str(error)
    except Exception:
        result.error = traceback.format_exc()
    result.seconds = time.monotonic() - started
    return result


def table(results: list[Result]) -> str:
    """The campaign's table (Markdown), per family and in total."""
    head = (
        "| family | scenarios | faults injected | drops | files verified | instances "
        "verified | lost | duplicated | wrong verdicts | stuck | other problems |"
    )
    lines = [head, "|" + "---|" * 11]
    for family in ["kill", "storm", "local", "bad", "ops", "total"]:
        chosen = [r for r in results if (r.family == family or family == "total") and not r.known]
        if not chosen:
            continue
        merged = Audit()
        for r in chosen:
            merged.merge(r.audit)
        faults = sum(r.faults for r in chosen)
        other = sum(
            1 for p in merged.problems if not p.startswith(("lost", "duplicated", "wrong", "stuck"))
        )
        other += sum(1 for r in chosen if r.error)
        lines.append(
            f"| {family} | {len(chosen)} | {faults} | {merged.drops} | {merged.files} | "
            f"{merged.instances} | {merged.lost} | {merged.duplicated} | {merged.wrong} | "
            f"{merged.stuck} | {other} |"
        )
    return "\n".join(lines)


def scenario_table(results: list[Result]) -> str:
    """One row per kind of scenario (its repeats together): runs, faults, drops, outcome."""
    lines = [
        "| scenario | runs | faults injected | drops | files verified | result |",
        "|---|---|---|---|---|---|",
    ]
    kinds: dict[str, list[Result]] = {}
    for r in results:
        kinds.setdefault(r.id.split(" #")[0], []).append(r)
    for kind, runs in kinds.items():
        failed = [r for r in runs if not r.ok]
        outcome = (
            "ok"
            if not failed
            else ("KNOWN FAILURE" if all(r.known for r in failed) else f"FAILED {len(failed)}")
        )
        lines.append(
            f"| {kind} | {len(runs)} | {sum(r.faults for r in runs)} | "
            f"{sum(r.audit.drops for r in runs)} | "
            f"{sum(r.audit.files for r in runs)} | {outcome} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--only", default=None, help="regular expression on scenario ids")
    parser.add_argument("--bounded", action="store_true", help="the CI subset, seed fixed")
    parser.add_argument("--keep", action="store_true", help="keep the lab folders afterwards")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--markdown", type=Path, default=None, help="write both tables here")
    parser.add_argument("-v", "--verbose", action="store_true", help="notes of every scenario")
    args = parser.parse_args(argv)
    if args.list:
        for id_, (family, _) in SCENARIOS.items():
            mark = f"  KNOWN FAILURE: {KNOWN_FAILURES[id_]}" if id_ in KNOWN_FAILURES else ""
            print(f"{family:6} {id_}{' (bounded)' if id_ in BOUNDED else ''}{mark}")
        return 0
    seed = (
        args.seed
        if args.seed is not None
        else (BOUNDED_SEED if args.bounded else random.SystemRandom().randrange(1, 10**6))
    )
    chosen = BOUNDED if args.bounded else list(SCENARIOS)
    if args.only:
        chosen = [s for s in chosen if re.search(args.only, s)]
    load_at_start = os.getloadavg()[0]
    print(
        f"campaign seed {seed}: {len(chosen)} scenario(s); load {load_at_start:.1f} on "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    base = Path(tempfile.mkdtemp(prefix="xnatdrop-campaign-"))
    results = []
    started = time.monotonic()
    try:
        for id_ in chosen:
            result = run_scenario(id_, seed, base, args.keep, args.bounded)
            results.append(result)
            mark = "ok" if result.ok else ("KNOWN" if result.known else "FAIL")
            print(
                f"{mark:5} {id_} ({result.seconds:.0f} s, {result.faults} faults, "
                f"{result.audit.drops} drops)",
                flush=True,
            )
            if not result.ok or args.verbose:
                print(result.report(), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(
        f"seed {seed}; {len(results)} scenarios in {(time.monotonic() - started) / 60:.1f} min; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(table(results))
    known = [r for r in results if r.known]
    if known:
        print("\nknown failures (waiting on another change):")
        for r in known:
            print(f"- {r.id}: {r.known} ({'still fails' if not r.ok else 'passes now'})")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    if args.markdown:
        minutes = (time.monotonic() - started) / 60
        args.markdown.write_text(
            f"Run of {time.strftime('%Y-%m-%d %H:%M')}: seed {seed}, {len(results)} scenarios in "
            f"{minutes:.0f} min on {os.cpu_count()} cores, load average {load_at_start:.1f} at "
            f"the start and {os.getloadavg()[0]:.1f} at the end.\n\n{table(results)}\n\n"
            f"{scenario_table(results)}\n",
            encoding="utf-8",
        )
    return 0 if all(r.ok for r in results if not r.known) else 1


if __name__ == "__main__":
    sys.exit(main())
