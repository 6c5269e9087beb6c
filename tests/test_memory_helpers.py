"""The `alone` marker (tests/memory_helpers.py): the test runs in a pytest process of its own,
and its outcome there is its outcome."""

from __future__ import annotations

import os
import threading

import pytest

from memory_helpers import ALONE


@pytest.mark.alone
def test_an_alone_test_runs_in_a_process_of_its_own() -> None:
    assert os.environ.get(ALONE) == "1"
    assert threading.active_count() == 1  # no thread any other test left


def test_other_tests_run_in_the_worker() -> None:
    assert ALONE not in os.environ
