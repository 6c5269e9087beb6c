"""Helpers for the tests that bound what a step holds per file (issue 13, "memory flat"), and
the `alone` marker they run under (a pytest plugin: tests/conftest.py loads it).

`tracemalloc` counts every allocation of the process, and under pytest-xdist a worker process
runs hundreds of tests before a bound, and what they left counts in it: threads still running,
and more (a check record's read-back measured 286 bytes a file in a child forked from a worker
for the test, 94 in a process of its own; the cause is not found). A test marked `alone` runs
in a pytest process of its own, which reports to the worker: what it measures is what the test
does, in any order, on any worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest


def traced(action: Callable[[], Any]) -> tuple[Any, int, int]:
    """(result, bytes still held after `action`, its peak), both above what was held before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = action()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held - base, peak - base


ALONE = "XNATDROP_TEST_ALONE"  # set in the process a test marked `alone` runs in


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run an `alone` test in a new `pytest` process (fixtures included: none is made here)
    and report its outcome there as this test's; in that process, run it as any other."""
    if item.get_closest_marker("alone") is None or os.environ.get(ALONE) == "1":
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    call = pytest.CallInfo.from_call(lambda: _run_alone(item), when="call")
    report = pytest.TestReport.from_item_and_call(item, call)
    item.ihook.pytest_runtest_logreport(report=report)
    item.session._setupstate.teardown_exact(nextitem)  # what the previous test left set up
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_alone(item: pytest.Item) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", item.nodeid],
        cwd=item.config.rootpath, env={**os.environ, ALONE: "1"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if ran.returncode != 0:
        pytest.fail(f"in a process of its own:\n{ran.stdout[-6000:]}{ran.stderr[-2000:]}", False)
