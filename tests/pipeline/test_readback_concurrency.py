"""A push reads its verification a few requests at once, on one XNAT session.

The push goes through `GateFront` (it forwards every request to the sandbox and counts how many
of a kind were in flight together, holding the first of each kind until a second arrives): the
prearchive's per-scan listings, the archive's per-scan catalogs and the pixel-sample downloads
are each seen 2 or more at a time, never more than `xnat.READERS`, and the whole push logs in
once and out once. A push that read them one by one would show 1 for each.
"""

from __future__ import annotations

from pathlib import Path

from gate_front import GateFront
from push_helpers import (
    MEDIUM,
    assert_archived_once,
    client,
    load,
    snapshot,
    stage,
    write_config,
)
from xnat_sandbox import Sandbox
from xnatdrop import ledger, pipeline, xnat

LABEL = "SPN01_0042"


def prearchive_listing(method: str, path: str) -> bool:
    return method == "GET" and path.startswith("/data/prearchive/") and path.endswith("/files")


def catalog_read(method: str, path: str) -> bool:
    return method == "GET" and "/scans/" in path and path.rsplit("/", 2)[-2] == "resources"


def sample_download(method: str, path: str) -> bool:
    return method == "GET" and "/scans/" in path and "/files/" in path


def test_verification_reads_are_concurrent_on_one_login(tmp_path: Path, server: Sandbox) -> None:
    kinds = {
        "prearchive listing": prearchive_listing,
        "catalog": catalog_read,
        "pixel sample": sample_download,
    }
    with GateFront(server.port, kinds) as gate:
        settings = load(write_config(tmp_path, gate.url))
        folder = stage(tmp_path / "drop", LABEL, MEDIUM, sidecars=False)
        original = snapshot(folder)
        with ledger.Ledger(settings.paths.state) as book:
            outcome = pipeline.process(folder, settings, book, lambda: client(settings))
        assert outcome.kind == "archived", outcome
        assert_archived_once(settings, LABEL, original, dicom_count=92)
    assert gate.seen == {"prearchive listing": 3, "catalog": 3 + 3, "pixel sample": 3}
    assert all(2 <= gate.most[kind] <= xnat.READERS for kind in kinds), gate.most
    # One login of the push; assert_archived_once logs in twice more for the test itself.
    assert (gate.logins, gate.logouts) == (1 + 2, 1 + 2)
