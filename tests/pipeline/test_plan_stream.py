"""The import step sends the plan read from the spool a page at a time (`planstream`), not
held whole (issue 13, "memory flat": at 8 GB the plan held through the import was ~5 MB of the
push's peak). The zip and the manifest it writes are byte for byte those of the plan held
whole, whatever the pages: runs across a page's end, files renamed in the zip, files larger
than a run and than a reader's whole read, a page read again for a second body."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from memory_helpers import traced
from test_plan_memory import COUNT
from test_plan_memory import entry as full_entry
from xnatdrop import pack, planstream, rules
from xnatdrop.pipeline import spool

SIZES = [100 + 37 * n for n in range(60)] + [(1 << 20) + 5, 3000, (9 << 20) + 1] + [0, 1, 2] * 20


def entry(n: int) -> rules.FileEntry:
    series = n // 25
    return rules.FileEntry(
        f"{series:02d}_series/IM{n:05d}.dcm",
        SIZES[n],
        f"2.25.{10**37 + n}",
        "1.2.840.10008.5.1.4.1.1.4",
        f"2.25.{10**36 + series}",
        str(series + 1),
        "2.25.1234567890",
        "1.2.840.10008.1.2.1",
    )


def sent(folder: Path, planned: planstream.Sendable, spooled: Path) -> bytes:
    """The zip's bytes, with the manifest written into `spooled` as the import step does."""
    pieces = []
    with pack.Body(folder, planned, manifest_file=spool.ManifestWriter(spooled)) as body:
        while piece := body.read(1 << 20):
            pieces.append(bytes(piece))
    return b"".join(pieces)


@pytest.fixture
def session(tmp_path: Path) -> Path:
    folder = tmp_path / "session"
    for n, size in enumerate(SIZES):
        path = folder / entry(n).path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            hashlib.sha256(str(n).encode()).digest() * (size // 32) + b"x" * (size % 32)
        )
    return folder


def test_a_plan_sent_a_page_at_a_time_sends_the_same_zip_and_manifest(
    session: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planstream, "PAGE", 7)  # runs of small files cross pages' ends
    monkeypatch.setattr(planstream, "PAGES", 2)
    spooled = tmp_path / "spool"
    renamed = {entry(n).path: f"renamed/{n}.dcm" for n in (3, 6, 7, 61)}
    spool.save(spooled, pack.plan(session, [entry(n) for n in range(len(SIZES))], renamed))
    whole = spool.load(spooled, pack.Plan)
    assert whole is not None
    expected = sent(session, whole, tmp_path / "whole")
    streamed = spool.streamed_plan(spooled, session, 1)
    assert sent(session, streamed, tmp_path / "streamed") == expected
    assert sent(session, streamed, tmp_path / "again") == expected  # pages read again
    manifest = (tmp_path / "whole" / "manifest.json").read_text()
    assert (tmp_path / "streamed" / "manifest.json").read_text() == manifest
    assert (tmp_path / "again" / "manifest.json").read_text() == manifest
    assert streamed.study_uids() == whole.study_uids() == {"2.25.1234567890"}
    assert (streamed.zip_size, streamed.total_bytes) == (whole.zip_size, whole.total_bytes)
    assert list(streamed.files) == list(whole.files) and streamed.files[-1] == whole.files[-1]


def test_a_plan_cut_short_in_the_spool_is_made_again(session: Path, tmp_path: Path) -> None:
    spooled = tmp_path / "spool"
    files = tuple(entry(n) for n in range(len(SIZES)))
    spool.save(spooled, spool.CheckRecord("L", True, (), files, (), {}, {}, sum(SIZES)))
    planned = spool.plan_for(spooled, session, 1)
    text = (spooled / "plan.json").read_text()
    (spooled / "plan.json").write_text(text[: len(text) // 2])
    streamed = spool.streamed_plan(spooled, session, 1)
    assert (spooled / "plan.json").read_text() == text
    assert list(streamed.files) == list(planned.files)


@pytest.mark.alone
def test_a_streamed_plan_holds_under_30_bytes_a_file(tmp_path: Path) -> None:
    """What the import step holds of a plan of 20,000 files before it sends: each file's size
    (8 bytes) and the pages around the body's window; the plan read back whole in columns held
    ~90 bytes a file (`spool.load`), through the whole upload."""
    files = tuple(full_entry(n) for n in range(COUNT))
    planned = pack.Plan(0, (pack.Planned(e, 1000, 1.5, e.path) for e in files))
    spool.save(tmp_path, planned)
    del planned, files

    def read() -> tuple[planstream.StreamedPlan, pack.Planned]:
        streamed = spool.streamed_plan(tmp_path, tmp_path, 1)
        return streamed, streamed.planned(COUNT // 2)  # a page read, as the body reads

    (streamed, middle), held, _ = traced(read)
    assert held / COUNT < 30, f"{held / COUNT:.0f} B a file"
    assert middle.entry.sop_instance_uid == f"2.25.{10**37 + COUNT // 2}"
    assert len(streamed.files) == COUNT
