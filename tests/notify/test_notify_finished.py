"""`notify.finished.read_record`: the one reader of receipts and reason files for the digest, the
share status file and the metrics. Telling people must never fail a push, so a record that is
missing, torn by a kill or not a JSON object reads as empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnatdrop.notify import finished


def test_a_record_is_read_as_its_json_object(tmp_path: Path) -> None:
    path = tmp_path / "RECEIPT.json"
    path.write_text('{"file_count": 92, "xnat_url": "http://xnat/x"}', encoding="utf-8")
    assert finished.read_record(path) == {"file_count": 92, "xnat_url": "http://xnat/x"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "missing"),
        ('{"file_count": 9', "torn by a kill mid-write"),
        ("[1, 2]", "a list, not an object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_record_that_cannot_be_used_reads_as_empty(
    tmp_path: Path, text: str | bytes | None, why: str
) -> None:
    path = tmp_path / "QUARANTINE.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text, encoding="utf-8")
    assert finished.read_record(path) == {}, why
