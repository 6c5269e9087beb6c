"""`logsetup.log_context`: every line xnatdrop logs about one drop carries its label.

Records are read from pytest's own capture (a handler xnatdrop does not configure), so the
label is shown to be in the message itself, wherever the record goes; the JSON format reads the
record's `label` and `step` attributes.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

from xnatdrop import logsetup

log = logging.getLogger("xnatdrop.test")


def test_lines_inside_a_context_carry_the_label_and_the_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="xnatdrop")
    with logsetup.log_context("SPN01_0042"):
        log.info("registered")
        with logsetup.log_context(step="import"):
            log.info("import: %d files", 212)
        log.info("SPN01_0042: named already")
    log.info("outside")
    logging.getLogger("urllib3.test").warning("not ours")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "SPN01_0042: registered",
        "SPN01_0042: import: 212 files",
        "SPN01_0042: named already",
        "outside",
        "not ours",
    ]
    labels = [(getattr(r, "label", None), getattr(r, "step", None)) for r in caplog.records]
    assert labels == [
        ("SPN01_0042", None),
        ("SPN01_0042", "import"),
        ("SPN01_0042", None),
        (None, None),
        (None, None),
    ]


def test_a_percent_in_a_label_stays_literal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xnatdrop")
    with logsetup.log_context("100%_done"):
        log.info("%d files", 3)
        log.info("no arguments, 50% literal")
    assert [r.getMessage() for r in caplog.records] == [
        "100%_done: 3 files",
        "100%_done: no arguments, 50% literal",
    ]


def test_each_thread_has_its_own_context(caplog: pytest.LogCaptureFixture) -> None:
    """Two pushes at once (the daemon's push threads): each line names its own drop."""
    caplog.set_level(logging.INFO, logger="xnatdrop")
    barrier = threading.Barrier(2)

    def push(label: str) -> None:
        with logsetup.log_context(label):
            barrier.wait(5)
            log.info("pushing")
            barrier.wait(5)

    threads = [threading.Thread(target=push, args=(f"SPN01_000{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(r.getMessage() for r in caplog.records) == [
        "SPN01_0001: pushing",
        "SPN01_0002: pushing",
    ]


def test_the_json_format_takes_label_and_step_from_the_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logsetup.configure(verbosity=0, log_format="json")
    try:
        with logsetup.log_context("SPN01_0007", step="verify"):
            log.warning("verify: %s", "counts match", extra={"code": "XNAT_CONFLICT"})
    finally:
        logging.getLogger("xnatdrop").handlers.clear()
    line = json.loads(capsys.readouterr().err)
    assert (line["label"], line["step"], line["code"]) == ("SPN01_0007", "verify", "XNAT_CONFLICT")
    assert line["message"] == "SPN01_0007: verify: counts match"
