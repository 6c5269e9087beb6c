"""The runner's STEPS table and the ledger's transition table name the same steps in the same
order, and every step is a function of its own module (no step registered elsewhere)."""

from __future__ import annotations

from xnatdrop import ledger
from xnatdrop.pipeline import run


def test_steps_follow_the_ledger_order() -> None:
    assert list(run.STEPS) == list(ledger.STEPS)


def test_each_step_lives_in_a_step_module() -> None:
    modules = {step: function.__module__ for step, function in run.STEPS.items()}
    assert all(m.startswith("xnatdrop.pipeline.") for m in modules.values()), modules
    assert "xnatdrop.pipeline.run" not in modules.values()
