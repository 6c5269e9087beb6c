"""The reliability campaign, bounded for CI (issue 9 point 9): `tests/campaign.py` at a fixed seed.

Each test is one scenario of the campaign's `BOUNDED` list, run exactly as the full campaign
(`python tests/campaign.py`) runs it: real `xnatdrop run` processes against a sandbox XNAT with
a fresh install's defaults, faults injected, then every invariant checked (files byte-identical
in done/ or quarantine/, each accepted session in XNAT once with every instance, nothing blocked
sent, no drop stuck, the ledger in agreement). A failure prints the scenario's report with the
command that replays it. Known failures of the full campaign are never part of this list.
Data: the shared scanner sets named in tests/campaign_drops.py (copies in tmp_path).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import campaign
from xnatdrop import codes

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", campaign.BOUNDED)
def test_scenario(scenario: str, tmp_path: Path) -> None:
    result = campaign.run_scenario(scenario, campaign.BOUNDED_SEED, tmp_path, bounded=True)
    assert result.ok, result.report()
    assert result.faults > 0, f"no fault was injected:\n{result.report()}"


def test_the_bounded_campaign_covers_every_kind_and_no_known_failure() -> None:
    """A handful of kills (step boundaries, renames, upload bytes, a file operation, a random
    moment), one storm of each kind, one local fault of each kind, every bad drop in one daemon
    run (each rule code has one), two daemons and a push racing the daemon; nothing known to
    fail."""
    assert not set(campaign.BOUNDED) & set(campaign.KNOWN_FAILURES)
    assert set(campaign.BOUNDED) <= set(campaign.SCENARIOS)
    kills = {s.split("/")[1] for s in campaign.BOUNDED if s.startswith("kill/")}
    assert kills >= {"steps-and-renames", "upload-bytes", "file-operation", "random-moment"}
    kinds = [s for s in campaign.SCENARIOS if " #" not in s]  # not the full campaign's repeats
    storms = {s for s in kinds if s.startswith("storm/")}
    local = {s for s in kinds if s.startswith("local/")}
    assert storms <= set(campaign.BOUNDED) | set(campaign.KNOWN_FAILURES) | campaign.FULL_ONLY
    assert local <= set(campaign.BOUNDED) | set(campaign.KNOWN_FAILURES) | campaign.FULL_ONLY
    assert {"bad/all", "ops/two-daemons-one-state", "ops/push-races-daemon"} <= set(
        campaign.BOUNDED
    )
    assert set(codes.rule_codes()) <= set(campaign.BAD)
    assert len(campaign.BAD) >= 40
