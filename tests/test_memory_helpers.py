"""The `forked` marker (tests/memory_helpers.py): a memory bound does not count what another
thread of the worker allocates meanwhile, as it did unforked under pytest-xdist."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from memory_helpers import traced


class Allocator:
    """A thread left running by an earlier test (here: a fixture, set up in the parent):
    it allocates and frees 100 kB, over and over."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.allocated = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.is_set():
            block = bytearray(100_000)
            del block
            self.allocated.set()

    def one_more(self) -> None:
        """Wait until it has allocated once more (within the caller's trace, in its process)."""
        self.allocated.clear()
        self.allocated.wait(0.5)


@pytest.fixture
def allocator() -> Iterator[Allocator]:
    running = Allocator()
    running.thread.start()
    yield running
    running.stop.set()
    running.thread.join()


def test_unforked_a_bound_counts_another_threads_allocations(allocator: Allocator) -> None:
    _, _, peak = traced(allocator.one_more)
    assert peak >= 100_000


@pytest.mark.forked
def test_forked_the_body_is_the_only_thread(allocator: Allocator) -> None:
    assert threading.active_count() == 1
    _, _, peak = traced(allocator.one_more)
    assert peak < 10_000, f"{peak} bytes"
