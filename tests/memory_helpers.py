"""Helpers for the tests that bound what a step holds per file (issue 13, "memory flat")."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any


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
