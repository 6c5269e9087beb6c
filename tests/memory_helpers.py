"""Helpers for the tests that bound what a step holds per file (issue 13, "memory flat"), and
the `forked` marker they run under (a pytest plugin: tests/conftest.py loads it).

`tracemalloc` counts the allocations of every thread of the process. Under pytest-xdist a worker
runs many tests, and a thread an earlier one left behind (a server's, a pool's) would count in a
later test's bound (a finish step once measured 310 bytes a file, 130 alone). A test marked
`forked` runs its body in a child forked for it alone, whose only thread is the test's.
pytest-forked did this, but fails on pytest 9.2's reports; the call is all that needs a fork.
"""

from __future__ import annotations

import os
import sys
import traceback
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "forked: the test's body runs in a child process forked for it alone"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a `forked` test's body in a forked child; its fixtures are the parent's (inherited).

    The child sends its traceback, if any, through a pipe and leaves by `os._exit`, so none of
    the parent's cleanup (fixtures, atexit, the worker's channel) runs twice."""
    if pyfuncitem.get_closest_marker("forked") is None:
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        status = 0
        try:
            pyfuncitem.obj(**arguments)
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            failure = pipe.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(child, 0)
    if failure or status:
        pytest.fail(f"in the forked child:\n{failure or f'exit status {status}'}", pytrace=False)
    return True
