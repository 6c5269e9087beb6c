"""`atomicfile.write`: the one way xnatdrop writes a file so that no reader sees half of it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xnatdrop import atomicfile


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_by_default_and_replaces_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "check.json"
    path.write_text("old", encoding="utf-8")
    leftover = tmp_path / "check.json.part"  # left by a killed run, with another mode
    leftover.write_text("half", encoding="utf-8")
    leftover.chmod(0o666)
    atomicfile.write(path, "new")
    assert path.read_text(encoding="utf-8") == "new"
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.json"]


def test_mode_none_keeps_the_umask_and_bytes_are_written_as_they_are(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomicfile.write(tmp_path / "RECEIPT.txt", "Ünïcode\n", mode=None)
        atomicfile.write(tmp_path / "blob", b"\x00\xff", mode=None)
    finally:
        os.umask(previous)
    assert (tmp_path / "RECEIPT.txt").read_bytes() == "Ünïcode\n".encode()
    assert (tmp_path / "blob").read_bytes() == b"\x00\xff"
    assert mode_of(tmp_path / "RECEIPT.txt") == 0o644


def test_shared_mode_is_forced_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        atomicfile.write(tmp_path / "STATUS.txt", "x", mode=atomicfile.SHARED, hidden=True)
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "STATUS.txt") == 0o644


def test_a_failure_names_the_temporary_file_and_leaves_nothing(tmp_path: Path) -> None:
    """The rename fails (the target is a folder): the error names the file the pipeline sorts
    by path, and no `.part` is left in the folder (it would travel into done/)."""
    target = tmp_path / "RECEIPT.json"
    target.mkdir()
    with pytest.raises(OSError) as failure:
        atomicfile.write(target, "{}", hidden=True)
    assert failure.value.filename == str(tmp_path / ".RECEIPT.json.part")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RECEIPT.json"]
    with pytest.raises(FileNotFoundError) as missing:
        atomicfile.write(tmp_path / "gone" / "x.json", "{}")
    assert missing.value.filename == str(tmp_path / "gone" / "x.json.part")
