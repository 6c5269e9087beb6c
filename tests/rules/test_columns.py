"""The check's columnar holdings read as the objects they replace: a `FactsTable` gives the
`FileFacts` a plain sniff gives, a `FileList` the `FileEntry`s it was given, `tree.Names` the
files in the order of their Paths, and rule D2 on UID hashes finds exactly the repeated UIDs.
"""

from __future__ import annotations

import dataclasses
from array import array
from pathlib import Path

import pytest

from shared_data import SHARED_DICOM
from test_many_files import many_files
from xnatdrop import dicomfiles, rules
from xnatdrop.pipeline import spool
from xnatdrop.rules import series, tree
from xnatdrop.rules.model import FileEntry, FileList, Series


def entry(path: str, sop: str, size: int = 10, series_uid: str = "1.2.3") -> FileEntry:
    return FileEntry(
        path, size, sop, "1.2.840.10008.5.1.4.1.1.4", series_uid, "3", "1.2", "1.2.840.10008.1.2.1"
    )


def test_a_file_list_reads_as_the_tuple_it_was_given() -> None:
    entries = (
        entry("S1/a.dcm", "1.1", 5),
        entry("S1/b.dcm", "1.22", 7, series_uid="9.9"),  # another shared combination
        entry("S1/c.dcm", "", 0),
    )
    files = FileList(entries)
    assert len(files) == 3
    assert tuple(files) == entries and list(files) == list(entries)
    assert files == entries and entries == files and files == FileList(entries)
    assert files[1] == entries[1] and files[-1] == entries[-1] and files[1:] == entries[1:]
    assert files != entries[:2] and files != (entries[0], entries[2], entries[1])
    assert hash(files) == hash(entries)
    with pytest.raises(IndexError):
        files[3]
    assert FileList(()) == () and len(FileList(())) == 0
    # Paths not under one folder are kept whole.
    mixed = (entry("a.dcm", "1"), entry("S2/b.dcm", "2"))
    assert tuple(FileList(mixed)) == mixed


def test_a_series_holds_its_files_by_column_and_reads_the_same() -> None:
    entries = tuple(entry(f"S1/IM{i:05d}.dcm", f"1.2.{i}", 100 + i) for i in range(50))
    made = Series(Path("S1"), "1.2.3", "3", "T1", "MR", "1.2.840.10008.5.1.4.1.1.4", "", entries)
    assert isinstance(made.files, FileList)
    assert made.files == entries and made.file_count == 50
    assert made.bytes == sum(e.size for e in entries)
    assert made == dataclasses.replace(made, files=entries)
    assert made.to_json(files=True)["files"] == [e.to_json() for e in entries]


def test_a_facts_table_gives_the_facts_a_plain_sniff_gives() -> None:
    folder = SHARED_DICOM
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())[:400]
    table = dicomfiles.sniff_table(folder, names, workers=1)
    assert len(table) == len(names)
    assert list(table) == dicomfiles.sniff_folder(folder, names, workers=1)
    assert table[-1] == dicomfiles.sniff_folder(folder, names[-1:], workers=1)[0]


def test_the_walk_lists_files_in_the_order_of_their_paths(tmp_path: Path) -> None:
    for name in ["a/x", "a-b/x", "a/b/y", "a/c", "a.txt", "b/a/z", "b/a-/z", "b/a.b", "Z/q"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    listing = tree.scan(tmp_path, (), frozenset())
    expected = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert list(listing.files) == [p.as_posix() for p in expected]
    assert list(listing.files.folders()) == [p.parent for p in expected]
    assert listing.files[2:4] == [p.as_posix() for p in expected[2:4]]


def test_rule_d2_finds_exactly_the_repeated_uids(tmp_path: Path) -> None:
    """Thousands of distinct UIDs share bits of the hash bitmap (32 bits a file): each such
    pair is compared in full, so none is reported; the one UID repeated is."""
    folder = tmp_path / "S"
    many_files(folder, series=2, per_series=1500)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.dcm"))
    table = dicomfiles.sniff_table(folder, names, workers=1)
    view = table.view(range(len(table)))
    assert series._repeated_uids(view) == {}
    assert series._repeated_uids(list(view)) == {}
    # A copy of one file under another name: its UID is repeated, at those two positions.
    (folder / "S001" / "ZZ.dcm").write_bytes((folder / names[7]).read_bytes())
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.dcm"))
    table = dicomfiles.sniff_table(folder, names, workers=1)
    view = table.view(range(len(table)))
    uid = table.sop(7)
    assert series._repeated_uids(view) == {uid: [7, names.index("S001/ZZ.dcm")]}
    assert series._repeated_uids(list(view)) == series._repeated_uids(view)


def test_the_spool_record_of_a_columnar_verdict_reads_back_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "MANY"
    count = many_files(folder, series=3, per_series=40)
    verdict = rules.check_folder(folder, None, workers=1)
    assert verdict.ok and len(verdict.upload_entries()) == count
    record = spool.CheckRecord.of(verdict, {})
    spool.save(tmp_path / "spool", record)
    loaded = spool.load(tmp_path / "spool", spool.CheckRecord)
    assert loaded is not None
    assert loaded.files == tuple(verdict.upload_entries())
    assert loaded.series == tuple(s.to_json() for s in verdict.series)
    assert all(isinstance(s.files, FileList) for s in verdict.series)


def test_values_beyond_four_bytes_keep_their_value(monkeypatch) -> None:
    """The 4-byte columns (a file's size, its InstanceNumber, a name's end) hold what does not
    fit beside them: a file of 5 GiB, an InstanceNumber beyond 32 bits, names past the end
    offset an array("I") holds, each read back as given."""
    big, number = 5 << 30, -(1 << 40)
    names = ["S/a.dcm", "S/b.dcm"]
    fields = dicomfiles.SeriesFields(series_instance_uid="2.25.1", sop_class_uid="1.2")
    table = dicomfiles.FactsTable(names)
    kind = dicomfiles.Kind.DICOM
    table.add(big, kind, "", fields, "2.25.7", number, True, "", dicomfiles.NO_INODE)
    table.add(100, kind, "", fields, "2.25.8", 3, True, "", dicomfiles.NO_INODE)
    table.finish()
    assert [(f.size, f.header.instance_number) for f in table] == [(big, number), (100, 3)]
    assert table.size(0) == big and table.number(0) == number
    listed = FileList([FileEntry("S/a.dcm", 100, "2.25.8"), FileEntry("S/b.dcm", big, "2.25.7")])
    assert [e.size for e in listed] == [100, big] and list(listed.sizes) == [100, big]
    monkeypatch.setattr(tree, "_ENDS_MAX", 12)
    walked = tree.Names()
    walked.add_folder("A/", Path("A"), ["x.dcm"])
    walked.add_folder("B/", Path("B"), ["a-longer-name.dcm", "y.dcm"])
    assert list(walked) == ["A/x.dcm", "B/a-longer-name.dcm", "B/y.dcm"]


def test_the_folders_of_some_rows_are_those_of_the_walk(tmp_path: Path) -> None:
    """`Names.folders_of(rows)`: each row's folder as the walk gives it, read, never listed."""
    many_files(tmp_path / "S", series=3, per_series=4)
    names = tree.scan(tmp_path / "S", (), frozenset()).files
    every = list(names.folders())
    rows = array("I", [0, 5, 6, 11])
    folders = names.folders_of(rows)
    assert len(folders) == 4 and list(folders) == [every[r] for r in rows]
    assert folders[1] == Path("S001") and folders[1:3] == [Path("S001"), Path("S001")]
