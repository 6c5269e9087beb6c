"""The plan and the check record in columns (`packplan.Plan`, `filecolumns.Files`) read as the
tuples they replace, and what `pack.Body` makes from the columns (manifest rows, the central
directory) is what it made from a `Planned` per file: paths that need JSON escapes, a file at
the top of the folder, a zip name shortened for XNAT, a field that is not text."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from xnatdrop import filecolumns, pack, rules
from xnatdrop.pipeline import spool
from xnatdrop.rules.model import FileList

PATHS = [
    "S1/IM0001.dcm",
    'Séries "quoted"/IM\\0002.dcm',
    "S2/\u00e9\t\u2028.dcm",
    "top.dcm",
    "S3/" + "x" * 230 + ".dcm",
]


def files(folder: Path) -> list[rules.FileEntry]:
    made = []
    for n, path in enumerate(PATHS):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(bytes([n]) * (100 + n))
        series = (f"2.25.9{n % 2}", str(n % 2), "2.25.7", "1.2.840.10008.1.2.1")
        made.append(rules.FileEntry(path, 100 + n, f"2.25.{n}", "1.2.840.10008.5.1.4", *series))
    return made


def test_files_read_as_their_tuple() -> None:
    entries = [
        rules.FileEntry(p, n, f"2.25.{n}", series_number=str(n % 2)) for n, p in enumerate(PATHS)
    ]
    columns = filecolumns.Files(entries)
    assert columns == tuple(entries) and list(columns) == entries and len(columns) == 5
    assert columns[1:4] == tuple(entries[1:4]) and columns[::2] == tuple(entries[::2])
    assert columns[-1] == entries[-1] and list(columns.paths(1, 3)) == PATHS[1:3]
    assert list(columns.json_rows()) == [e.to_json() for e in entries]
    assert filecolumns.Files.from_rows(e.to_json() for e in entries) == columns


def test_a_plan_from_columns_sends_what_a_plan_of_entries_sends(tmp_path: Path) -> None:
    """The pack step plans from the check record's columns; the zip, its names and the
    manifest written while sending are those of a plan made from `FileEntry`s, and the plan
    reads back from the spool equal, the shortened name kept."""
    entries = files(tmp_path)
    names = {e.path: pack.upload_name(e.path) for e in entries}
    assert names[PATHS[4]] != PATHS[4]
    by_entries = pack.plan(tmp_path, entries, names)
    by_columns = pack.plan(tmp_path, filecolumns.Files(entries), names)
    assert by_columns == by_entries and by_columns.zip_size == by_entries.zip_size
    assert [p.entry for p in by_columns.files] == entries
    assert [p.zip_name for p in by_columns.files] == [names[p] for p in PATHS]
    spool.save(tmp_path / "plan", by_columns)
    assert spool.load(tmp_path / "plan", pack.Plan) == by_entries

    records = tmp_path / "spool"
    with pack.Body(tmp_path, by_columns, manifest_file=spool.ManifestWriter(records)) as body:
        data = b"".join(iter(lambda: body.read(1 << 16), b""))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.namelist() == [names[p] for p in PATHS]
    assert [archive.read(names[p]) for p in PATHS] == [(tmp_path / p).read_bytes() for p in PATHS]
    expected = pack.digest(tmp_path, by_entries)
    spool.save(tmp_path / "again", expected)
    written = (records / "manifest.json").read_text()
    assert written == (tmp_path / "again" / "manifest.json").read_text()
    rows = json.loads(written)["files"]
    assert [r["path"] for r in rows] == PATHS and rows[2]["sop_instance_uid"] == "2.25.2"


def test_a_field_that_is_not_text_takes_the_general_way(tmp_path: Path) -> None:
    """A series number given as a number (not what the check makes, but a FileEntry allows it)
    is written as JSON writes it, as before the rows were made from columns."""
    (tmp_path / "S").mkdir()
    (tmp_path / "S/a.dcm").write_bytes(b"abc")
    odd = rules.FileEntry("S/a.dcm", 3, "2.25.1", series_number=7)  # type: ignore[arg-type]
    planned = pack.plan(tmp_path, filecolumns.Files([odd]))
    records = tmp_path / "spool"
    with pack.Body(tmp_path, planned, manifest_file=spool.ManifestWriter(records)) as body:
        while body.read(1 << 16):
            pass
    row = json.loads((records / "manifest.json").read_text())["files"][0]
    assert row["series_number"] == 7 and row["path"] == "S/a.dcm" and row["size"] == 3


@pytest.mark.alone
def test_a_record_made_of_a_verdict_lists_its_series_files_without_a_copy() -> None:
    """`CheckRecord.of` lists the verdict's series' files as they are (`Chain`): it reads as
    their tuple and holds nothing per file (a copy in columns: ~100 bytes a file; a
    `FileEntry` each: ~250), so the check step's end is not the push's peak."""
    import tracemalloc

    series = [
        FileList(
            rules.FileEntry(f"S{s}/IM{n:05d}.dcm", n, f"2.25.{s}.{n}", series_number=str(s))
            for n in range(2_000)
        )
        for s in range(10)
    ]
    every = [entry for files in series for entry in files]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        chain = filecolumns.Chain(series)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 2_000, f"{held} bytes for 20,000 files"
    assert len(chain) == 20_000 and chain == tuple(every) and list(chain) == every
    assert chain[0] == every[0] and chain[-1] == every[-1] and chain[2_000] == every[2_000]
    assert chain[1_998:2_003] == tuple(every[1_998:2_003])
    assert chain == filecolumns.Files(every) and filecolumns.Files(every) == chain
    assert filecolumns.Chain(()) == () and len(filecolumns.Chain([(), series[0]])) == 2_000


def test_texts_added_after_a_lookup_are_found() -> None:
    """The index of `Texts` is made when first asked; texts appended after that must still be
    found (the index was kept while it was at most half full, so a later text read as absent)."""
    texts = filecolumns.Texts()
    assert texts.append("1.2.3") == 0
    assert texts.index("1.2.3") == 0
    assert texts.append("1.2.4") == 1
    assert texts.index("1.2.4") == 1
    assert texts.append("1.2.3") == 2
    assert texts.index("1.2.3") == 2  # the last position it was appended at
    assert texts.index("1.2.5") == -1


def test_texts_appended_and_looked_up_in_turn_all_stay_found() -> None:
    """Appends and lookups in turn (the index grown in place, then made again larger): every
    text is found at its last position, an absent one is not."""
    texts = filecolumns.Texts()
    for n in range(3_000):
        texts.append(f"2.25.{n}")
        assert texts.index(f"2.25.{n}") == n
        assert texts.index(f"2.25.{n // 2}") == n // 2
    assert texts.index("2.25.3000") == -1
