"""The daemon (`xnatdrop.daemon`): window, concurrency, signals, sd_notify, shutdown.

The fast tests run `Daemon.run()` in-process on the main thread (signal handlers need it) with
a small processor standing in for the pipeline, so scheduling is tested on its own: it renames
each pushed folder into done/, as the pipeline's last step does. A scenario thread drives each
test and ends it with a real SIGTERM. Nothing sleeps to wait: conditions are polled with a
deadline. The daemon-process tests against the sandbox are marked `slow` (test_daemon_process.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon_helpers import run_with
from xnatdrop import config, daemon, signals

DEADLINE = 30.0


def wait_for(condition: Callable[[], object], timeout: float = DEADLINE) -> None:
    """Poll `condition` until true; fail with its source line when the deadline passes."""
    pause = threading.Event()
    end = dt.datetime.now() + dt.timedelta(seconds=timeout)
    while not condition():
        if dt.datetime.now() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        pause.wait(0.02)


def make_settings(tmp_path: Path, **schedule: object) -> config.Config:
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    return config.parse(
        {
            "paths": {
                "state": str(tmp_path / "state"),
                "quarantine": str(tmp_path / "quarantine"),
                "done": str(tmp_path / "done"),
            },
            "drop": [{"path": str(drop), "project": "SPN01"}],
            "settle": {"quiet_seconds": 0.3},
            "schedule": {"stop_timeout_seconds": 10, **schedule},
        },
        "test",
    )


def drop_session(settings: config.Config, name: str, files: int = 2) -> Path:
    folder = settings.drop[0].path / name
    for index in range(files):
        path = folder / "series1" / f"{index:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM" * 10)
    return folder


class Recorder:
    """A processor: records calls, optionally blocks, then moves the folder into done/."""

    def __init__(self, settings: config.Config, block: threading.Event | None = None) -> None:
        self.done = settings.paths.done
        self.block = block
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.saw_stopping: list[str] = []
        self.outcomes: dict[str, daemon.Result] = {}

    def __call__(self, work: daemon.Work, stopping: threading.Event) -> daemon.Result:
        assert work.folder is not None
        name = work.folder.name
        with self.lock:
            self.calls.append(name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.block is not None:
                while not self.block.is_set():
                    if stopping.wait(0.01):
                        self.saw_stopping.append(name)
                        return daemon.Result("stopped", "checkpointed")
            if name in self.outcomes:
                return self.outcomes.pop(name)
            self.done.mkdir(exist_ok=True)
            work.folder.path.rename(self.done / name)
            return daemon.Result("archived")
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: ticks every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("20:00-06:00", ["20:00", "23:59", "00:00", "05:59"], ["06:00", "12:00", "19:59"]),
        ("09:30-17:00", ["09:30", "16:59"], ["09:29", "17:00", "23:00"]),
        ("00:00-24:00", ["00:00", "12:00", "23:59"], []),
        ("always", ["00:00", "13:37"], []),
    ],
)
def test_upload_window(text: str, inside: list[str], outside: list[str]) -> None:
    window = daemon.UploadWindow.parse(config.ScheduleSettings(upload_window=text).upload_window)

    def at(hhmm: str) -> dt.datetime:
        return dt.datetime.combine(dt.date(2026, 1, 1), dt.time.fromisoformat(hhmm))

    assert all(window.contains(at(t)) for t in inside)
    assert not any(window.contains(at(t)) for t in outside)


def test_settled_folders_are_pushed_and_systemd_hears_it_in_order(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """1. Three sessions are dropped. 2. They settle and are pushed. 3. SIGTERM.

    Result: each folder pushed exactly once, exit 0, and systemd got READY=1 first, then
    WATCHDOG=1 pings with STATUS, and STOPPING=1 last.
    """
    settings = make_settings(tmp_path)
    recorder = Recorder(settings)
    runner = daemon.Daemon(settings, recorder)
    names = ["SPN01_0001", "SPN01_0002", "SPN01_0003"]
    for name in names:
        drop_session(settings, name)

    def scenario() -> None:
        wait_for(lambda: sorted(p.name for p in settings.paths.done.glob("*")) == names)
        wait_for(lambda: runner.pushes == {})

    assert run_with(runner, scenario) == 0
    assert sorted(recorder.calls) == names
    messages = received(notify_socket)
    assert messages[0].startswith("READY=1\n")
    assert messages[-1].startswith("STOPPING=1\n")
    pings = [m for m in messages[1:-1]]
    assert pings and all(m.startswith("WATCHDOG=1\nSTATUS=") for m in pings)


def test_nothing_is_pushed_while_the_window_is_closed(tmp_path: Path) -> None:
    """Scanning runs all the time; pushes start only once the window opens."""
    settings = make_settings(tmp_path, upload_window="20:00-06:00")
    recorder = Recorder(settings)
    clock = {"now": dt.datetime(2026, 1, 1, 12, 0)}
    runner = daemon.Daemon(settings, recorder, now=lambda: clock["now"])
    drop_session(settings, "SPN01_0001")

    def scenario() -> None:
        wait_for(lambda: runner.watcher.counts().get("settled") == 1)
        scans = runner.scans
        wait_for(lambda: runner.scans >= scans + 3)  # several dispatches with the window shut
        assert recorder.calls == []
        assert "closed" in runner.status
        clock["now"] = dt.datetime(2026, 1, 1, 21, 0)
        wait_for(lambda: recorder.calls == ["SPN01_0001"])

    assert run_with(runner, scenario) == 0


def test_concurrency_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrent_pushes=2)
    release = threading.Event()
    recorder = Recorder(settings, block=release)
    runner = daemon.Daemon(settings, recorder)
    names = [f"SPN01_{i:04d}" for i in range(5)]
    for name in names:
        drop_session(settings, name)

    def scenario() -> None:
        wait_for(lambda: len(recorder.calls) == 2)
        wait_for(lambda: runner.watcher.counts().get("settled") == 3)
        scans = runner.scans
        wait_for(lambda: runner.scans >= scans + 2)
        assert len(recorder.calls) == 2  # the other three wait for a free slot
        release.set()
        wait_for(lambda: len(list(settings.paths.done.glob("*"))) == 5)

    assert run_with(runner, scenario) == 0
    assert recorder.most_at_once == 2
    assert sorted(recorder.calls) == names


def test_sigterm_mid_push_checkpoints_and_exits_zero(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """1. A push is running. 2. SIGTERM. Result: STOPPING=1, the push sees `stopping` and
    checkpoints, the daemon exits 0, and the folder is left for the next start."""
    settings = make_settings(tmp_path)
    recorder = Recorder(settings, block=threading.Event())  # never released
    runner = daemon.Daemon(settings, recorder)
    folder = drop_session(settings, "SPN01_0001")

    def scenario() -> None:
        wait_for(lambda: recorder.running == 1)

    assert run_with(runner, scenario) == 0
    assert recorder.saw_stopping == ["SPN01_0001"]
    assert folder.is_dir()
    assert received(notify_socket)[-1].startswith("STOPPING=1")


def test_a_push_that_ignores_stopping_is_cut_short_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, stop_timeout_seconds=0.2)
    never = threading.Event()

    def stubborn(work: daemon.Work, stopping: threading.Event) -> daemon.Result:
        never.wait(DEADLINE)  # a step that does not look at `stopping`
        return daemon.Result("stopped")

    runner = daemon.Daemon(settings, stubborn)
    drop_session(settings, "SPN01_0001")
    with caplog.at_level(logging.INFO, logger="xnatdrop.daemon"):
        assert run_with(runner, lambda: wait_for(lambda: runner.pushes)) == 0
    never.set()
    assert any("cut short" in r.message and "SPN01/SPN01_0001" in r.message for r in caplog.records)


def test_a_stop_never_finds_a_push_registered_but_not_started(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """Found under load: SIGTERM arrived while the job thread had registered a push thread
    but not started it; `_shutdown` took it in its list and `join` raised "cannot join thread
    before it is started". 1. Stop the daemon while it logs "push starts" (a log handler holds
    that moment for up to 2 s, watching the systemd socket for the stop's STOPPING=1, which
    `_shutdown` sends right after taking its list). 2. Result: no STOPPING=1 inside that
    moment (the stop waits until the push thread is started), the push runs, exit 0."""
    settings = make_settings(tmp_path)
    starting = threading.Event()
    inside: list[list[str]] = []

    def stop_sent() -> list[str]:
        notify_socket.settimeout(0.1)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                message = notify_socket.recv(4096).decode()
            except TimeoutError:
                continue
            if message.startswith("STOPPING=1"):
                return [message]
        return []

    class Moment(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().endswith("push starts (new)"):
                starting.set()
                inside.append(stop_sent())

    recorder = Recorder(settings)
    runner = daemon.Daemon(settings, recorder)
    drop_session(settings, "SPN01_0001")
    handler = Moment()
    logger = logging.getLogger("xnatdrop.daemon")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert run_with(runner, lambda: wait_for(starting.is_set)) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert inside == [[]]
    assert any(m.startswith("STOPPING=1") for m in received(notify_socket))
    assert recorder.calls == ["SPN01_0001"]


def test_transient_result_leaves_the_folder_to_be_tried_again(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    recorder = Recorder(settings)
    recorder.outcomes["SPN01_0001"] = daemon.Result("transient", "XNAT unreachable")
    runner = daemon.Daemon(settings, recorder)
    drop_session(settings, "SPN01_0001")

    def scenario() -> None:
        wait_for(lambda: (settings.paths.done / "SPN01_0001").is_dir())

    assert run_with(runner, scenario) == 0
    assert recorder.calls == ["SPN01_0001", "SPN01_0001"]


def test_a_folder_whose_drop_root_went_away_as_its_push_began_is_pushed_once_it_is_back(
    tmp_path: Path,
) -> None:
    """The share is renamed (or unmounted) just as a push starts: the push finds no folder and
    stops. Once the root is back the folder must settle again and be pushed, not stay "handed
    over" for good, unseen (found by the campaign, local/root-renamed)."""
    settings = make_settings(tmp_path)
    root = settings.drop[0].path
    away = root.with_name("drop-away")
    recorder = Recorder(settings)
    first: list[str] = []

    def processor(work: daemon.Work, stopping: threading.Event) -> daemon.Result:
        if not first:
            first.append(work.key)
            root.rename(away)
            return daemon.Result("stopped", "no such folder and nothing pending", time.time())
        return recorder(work, stopping)

    runner = daemon.Daemon(settings, processor)
    drop_session(settings, "SPN01_0001")

    def scenario() -> None:
        wait_for(
            lambda: (
                first
                and not runner.pushes
                and any(r.blocked for r in runner.watcher.roots.values())
            )
        )
        away.rename(root)
        wait_for(lambda: (settings.paths.done / "SPN01_0001").is_dir(), 15)

    assert run_with(runner, scenario) == 0
    assert recorder.calls == ["SPN01_0001"]


def test_signal_handlers_are_restored(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    runner = daemon.Daemon(settings, Recorder(settings))
    assert run_with(runner, lambda: None) == 0
    assert {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS} == before


def test_second_sigint_forces_the_exit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    runner = daemon.Daemon(settings, Recorder(settings))
    runner.handle_exit(signal.SIGINT, None)
    assert runner.stopping.is_set() and not runner.force
    runner.handle_exit(signal.SIGINT, None)
    assert runner.force


def test_a_drop_failing_the_same_way_again_and_again_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A drop that fails at the same step with the same code on every attempt. Result: one
    ALERT line (an error) when it has failed REPEATED_FAILURES times, none after (it keeps
    being retried with backoff), and no traceback."""
    from xnatdrop import ledger

    settings = make_settings(tmp_path)
    with ledger.Ledger(settings.paths.state) as book:
        book.register("SPN01", "SPN01_0001", settings.drop[0].path / "SPN01_0001", Path(""))
    attempts: list[int] = []

    def failing(work: daemon.Work, stopping: threading.Event) -> daemon.Result:
        assert work.drop is not None
        with ledger.Ledger(settings.paths.state) as book:
            book.fail(book.get(work.drop.id), "freeze", "INTERNAL", "OSError(5)", 0)
        attempts.append(1)
        return daemon.Result("transient", "INTERNAL: OSError(5)")

    runner = daemon.Daemon(settings, failing)
    with caplog.at_level(logging.INFO, logger="xnatdrop.daemon"):
        assert run_with(runner, lambda: wait_for(lambda: len(attempts) >= 8)) == 0
    alerts = [r for r in caplog.records if "times in a row" in r.getMessage()]
    assert [r.getMessage() for r in alerts] == [
        "ALERT SPN01_0001: failed 3 times in a row at freeze (INTERNAL: OSError(5)); it is "
        "retried with backoff, but a person should look (xnatdrop status)"
    ]
    assert alerts[0].levelname == "ERROR"
    assert all(r.exc_info is None for r in caplog.records)


def test_a_folder_named_in_latin1_waits_for_a_person_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """A subject folder whose name is not UTF-8 beside a good one. Result: the good one is
    pushed; the other is never handed over, and the status file names it (escaped) for
    `xnatdrop status`, which then exits 1."""
    import json

    from xnatdrop.commands import status

    settings = make_settings(tmp_path)
    recorder = Recorder(settings)
    runner = daemon.Daemon(settings, recorder)
    drop_session(settings, "SPN01_0001")
    bad = os.path.join(os.fsencode(settings.drop[0].path), b"Mu\xf1oz")
    os.makedirs(os.path.join(bad, b"series1"))
    with open(os.path.join(bad, b"series1", b"a.dcm"), "wb") as handle:
        handle.write(b"DICM" * 10)

    def scenario() -> None:
        wait_for(lambda: recorder.calls == ["SPN01_0001"] and not runner.pushes)
        scans = runner.scans
        wait_for(lambda: runner.scans >= scans + 3)
        report = status.collect(settings)
        assert "Mu\\xf1oz: its name is not valid UTF-8" in status.needs_attention(report)

    assert run_with(runner, scenario) == 0
    assert recorder.calls == ["SPN01_0001"]
    live = json.loads((settings.paths.state / daemon.STATUS_FILE).read_text(encoding="utf-8"))
    assert live["troubles"] == [["Mu\\xf1oz", "its name is not valid UTF-8"]]


def test_the_same_traceback_is_logged_once_then_only_its_line() -> None:
    """A drop hitting the same unexpected error on every attempt: the first record keeps its
    traceback, the repeats keep one line that names the error."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("xnatdrop.test-repeats")
    logger.addHandler(handler)
    logger.propagate = False
    handler.addFilter(daemon.RepeatedTracebacks())
    try:
        for _ in range(3):
            try:
                raise OSError(5, "Input/output error")
            except OSError:
                logger.exception("SPN01_0001: unexpected error in step %s", "pack")
        try:
            raise ValueError("another")
        except ValueError:
            logger.exception("SPN01_0001: unexpected error in step %s", "pack")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert text.count("Traceback") == 2  # the OSError once, the ValueError once
    assert (
        text.count(
            "SPN01_0001: unexpected error in step pack (OSError: [Errno 5] Input/output error; the "
            "same error as before, traceback not repeated)"
        )
        == 2
    )


def test_a_folder_gone_between_settling_and_its_push_is_not_a_crash(tmp_path: Path) -> None:
    """A settled folder is removed before its push starts (nothing of it in the ledger).
    Result: the real processor reports it stopped, with the reason, instead of raising
    FileNotFoundError into the push thread (a traceback, reported as a crash)."""
    from xnatdrop import watch

    settings = make_settings(tmp_path)
    root = settings.drop[0].path
    processor = daemon.pipeline_processor(settings, "pw")
    folder = watch.Folder(root / "SPN01_0001", root, 0.0)
    result = processor(daemon.Work("SPN01/SPN01_0001", folder=folder), threading.Event())
    assert result.kind == "stopped"
    assert "SPN01_0001: no such folder and nothing pending" in result.detail


def test_the_roots_are_watched_before_the_first_scan(tmp_path: Path) -> None:
    """Found as a flaky test under load: the first scan ran before the event watches were in
    place, so a folder made in between waited a whole poll. 1. Record, when the first scan
    starts, whether the drop root is watched. 2. Result: it is."""
    settings = make_settings(tmp_path)
    runner = daemon.Daemon(settings, Recorder(settings))
    watched_at_first_scan: list[bool] = []
    scan = runner._scan

    def first_scan_sees_watches() -> None:
        if not watched_at_first_scan:
            watched_at_first_scan.append(settings.drop[0].path in runner.hint.watches)
        scan()

    runner._scan = first_scan_sees_watches  # type: ignore[method-assign]
    assert run_with(runner, lambda: wait_for(lambda: runner.scans >= 1)) == 0
    assert watched_at_first_scan == [True]


def test_an_event_while_a_scan_job_runs_brings_another_scan(tmp_path: Path) -> None:
    """1. Scans are 200 s apart (quiet 600 s). 2. The first scan job is held in its dispatch.
    3. A folder appears meanwhile: its event asks for a scan while the job still runs.
    Result: once the job ends, a scan sees the folder, not the next poll 200 s later. It
    waited before: apscheduler skips a run brought forward while the job runs (one instance)
    and sets the next one a poll away; the event was lost, as it was under load in CI."""
    settings = make_settings(tmp_path)
    slow = settings.settle.model_copy(update={"quiet_seconds": 600.0})
    settings = settings.model_copy(update={"settle": slow})
    runner = daemon.Daemon(settings, Recorder(settings))
    assert runner.poll == 200.0
    release = threading.Event()
    dispatch = runner._dispatch

    def held_dispatch(scanned: bool = False) -> None:
        if runner.scans == 1:
            release.wait(30)
        dispatch(scanned)

    runner._dispatch = held_dispatch  # type: ignore[method-assign]
    hints: list[float] = []
    wake = runner.hint.wake

    def counted_wake() -> None:
        wake()
        hints.append(time.monotonic())

    runner.hint.wake = counted_wake

    def scenario() -> None:
        wait_for(lambda: runner.scans >= 1)  # the scan at start, now held in its dispatch
        drop_session(settings, "SPN01_0001")
        wait_for(lambda: hints)  # the scan was asked for while the job runs
        release.set()
        wait_for(lambda: runner.scans >= 2)  # counted once the scan is over, not before
        assert runner.watcher.find(settings.drop[0].path / "SPN01_0001")
        assert runner.scans == 2

    assert run_with(runner, scenario) == 0


def test_a_second_event_soon_after_the_first_still_brings_a_scan(tmp_path: Path) -> None:
    """1. Scans are 200 s apart (quiet 600 s). 2. A folder appears (an event: a scan comes at
    once). 3. Right after that scan, a second folder appears, inside the 2 s the events are
    spaced by. Result: a scan sees the second folder well before the next poll. It was dropped
    before: a copy's last event (its folder's times set on close) came within 2 s of its first,
    and its final state waited a whole poll unseen, which the settle latency carried (issue 13).
    """
    settings = make_settings(tmp_path)
    slow = settings.settle.model_copy(update={"quiet_seconds": 600.0})
    settings = settings.model_copy(update={"settle": slow})
    runner = daemon.Daemon(settings, Recorder(settings))
    assert runner.poll == 200.0

    def scenario() -> None:
        wait_for(lambda: runner.scans >= 1)  # the scan at start
        drop_session(settings, "SPN01_0001")
        wait_for(lambda: runner.watcher.find(settings.drop[0].path / "SPN01_0001"))
        drop_session(settings, "SPN01_0002")
        wait_for(lambda: runner.watcher.find(settings.drop[0].path / "SPN01_0002"))

    assert run_with(runner, scenario) == 0


def test_the_status_file_is_written_after_each_scan_and_otherwise_only_when_it_changes(
    tmp_path: Path,
) -> None:
    """Its time is the heartbeat `xnatdrop status` judges a stuck daemon by, so every scan
    writes it; the dispatch job beside each scan rewrote the same view (and fsynced it) once
    more every poll, which the idle daemon (issue 13) no longer does."""
    import json

    settings = make_settings(tmp_path, upload_window="03:00-03:01")
    runner = daemon.Daemon(settings, Recorder(settings), now=lambda: dt.datetime(2026, 1, 1, 12))
    path = settings.paths.state / daemon.STATUS_FILE

    def updated() -> float:
        return float(json.loads(path.read_text(encoding="utf-8"))["updated"])

    try:
        drop_session(settings, "SPN01_0001")
        runner._scan()
        first = updated()
        runner._dispatch_job()  # nothing new to say: the file stays as the scan left it
        assert updated() == first
        runner._scan()  # a scan always writes: its time is the heartbeat
        second = updated()
        assert second > first
        runner.held_until = time.time() + 60  # the view changes: the dispatch job writes it
        runner._dispatch_job()
        assert updated() > second
        assert "PUSHES HELD" in json.loads(path.read_text(encoding="utf-8"))["status"]
    finally:
        for lock in runner.root_locks.values():
            lock.release()
