"""`xnatdrop demo` on the sandbox's stock defaults (issue 8, "Done when").

The demo starts its own sandbox, a fresh XNAT as far as the sandbox goes (site anonymisation on),
writes its two synthetic sessions and runs the real daemon until both are handled.
"""

from __future__ import annotations

import re

import pytest

from xnatdrop import cli


@pytest.mark.slow
def test_demo_archives_the_clean_session_and_says_how_it_was_verified(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^DICOM receiver XNAT@127\.0\.0\.1:\d+ \(AE title XNAT\)$", out, re.M)
    assert "DEMO01_001: ARCHIVED in XNAT project DEMO01" in out
    assert (
        "    verified: instance UIDs and counts of all 20 files; pixel data of 1 file per scan "
        "(2 scans); headers rewritten by XNAT's site anonymisation script, so sizes and MD5s "
        "were not compared"
    ) in out
    assert "DEMO01_002: QUARANTINED (RULES_BLOCKED)" in out
