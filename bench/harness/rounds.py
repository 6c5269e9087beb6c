"""A measurement repeated in interleaved rounds: what of its rounds a figure keeps.

Its least time, because a disturbance (another process's time slice, the host's I/O) only ever
slows a round down; and the highest peak memory of all its rounds, because repeating must never
lower a memory figure. Every round's time stays beside it.
"""

from __future__ import annotations

from typing import Any


def least(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the least `seconds`, every run's as `round_seconds`, and each `*peak_kb`
    the highest of all runs."""
    best = dict(min(runs, key=lambda run: run["seconds"]))
    best["round_seconds"] = [run["seconds"] for run in runs]
    for key in best:
        if key.endswith("peak_kb"):
            best[key] = max(run[key] for run in runs)
    return best
