"""What the upload does per small file (issue 13, "pack+send ≥ 0.8× read+MD5"): the bytes it
sends and the manifest it writes are those of merge10 (pinned by digest), and it makes no
object per file that it does not need."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from xnatdrop import pack, packplan, rules, zipformat
from xnatdrop.pipeline import spool

MTIME = 1_234_567_890.5  # a second no other test stamps: `zipformat._dos_second` caches by it
UID = "1.2.826.0.1.3680043.8.498."
LONG = "x" * 250  # a name too long for XNAT: renamed in the zip (`pack.upload_name`)

# SHA-256 of the zip and of the manifest's text that merge10 (ad06c0e) sends and writes for
# `session` (TZ=UTC): the per-file work may change, these bytes may not.
ZIP_SHA256 = "bc5ba4fcdb649b5981d97f7bf4523e0c80b3d44b4775d4ad1bd32a5397f9ad9f"
MANIFEST_SHA256 = "8a90a463c1f55619285651ecc949b85323f750246a05b2a8bab9201c0205b279"


def session(folder: Path) -> list[rules.FileEntry]:
    """Two series of small files (runs), one name that is not ASCII, one renamed, one empty
    file, and two files larger than a run (one read whole, one in two passes would need more
    than WHOLE_FILE: kept out, it is not per-file work); fixed contents and mtimes."""
    entries = []
    names = [f"S1/IM{n:04d}.dcm" for n in range(120)]
    names += ["S2/série.dcm", f"S2/{LONG}.dcm", "S2/empty.dcm"]
    names += [f"S2/IM{n:04d}.dcm" for n in range(80)]
    names += ["S3/big.dcm", "S3/after.dcm"]
    for number, name in enumerate(names):
        size = 0 if "empty" in name else (3 << 20 if "big" in name else 1000 + 997 * number)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = hashlib.sha256(name.encode()).digest()
        path.write_bytes((seed * (size // 32 + 1))[:size])
        os.utime(path, (MTIME + number, MTIME + number))
        series = name.split("/")[0]
        entries.append(
            rules.FileEntry(name, size, f"{UID}{number}", "1.2.840.10008.5.1.4.1.1.4",
                            f"{UID}9{series}", series[1:], f"{UID}77", "1.2.840.10008.1.2.1")
        )  # fmt: skip
    return entries


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Zip timestamps are local time: pin the zone, and forget stamps cached under another."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    zipformat._dos_second.cache_clear()
    yield
    monkeypatch.undo()
    time.tzset()
    zipformat._dos_second.cache_clear()


def send(folder: Path, planned: pack.Plan, records: Path) -> tuple[bytes, bytes]:
    """The body's bytes and the manifest's text it saves as it sends (as the import step)."""
    writer = spool.ManifestWriter(records)
    pieces = []
    with pack.Body(folder, planned, manifest_file=writer) as body:
        while piece := body.read(1 << 16):
            pieces.append(bytes(piece))
    return b"".join(pieces), (records / "manifest.json").read_bytes()


def test_the_zip_and_the_manifest_are_merge10s(tmp_path: Path, utc: None) -> None:
    """1. Write a session of 205 files (small ones in runs, a non-ASCII name, a renamed one, an
       empty one, one larger than a run) with fixed contents and mtimes; plan and send it.
    2. Result: the zip is a valid stored zip of every file, and its bytes and the manifest's
       text are, to the byte, those merge10 sent and wrote (SHA-256 pinned above)."""
    folder = tmp_path / "S"
    entries = session(folder)
    planned = pack.plan(folder, entries)
    data, manifest = send(folder, planned, tmp_path / "spool")
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None and len(archive.infolist()) == len(entries)
    assert hashlib.sha256(data).hexdigest() == ZIP_SHA256
    assert hashlib.sha256(manifest).hexdigest() == MANIFEST_SHA256


class Calls:
    """Calls of the given functions on every thread, counted by a profile hook (no function
    replaced): `threading.setprofile` reaches the body's reader threads, started after it."""

    def __init__(self, **functions: Any) -> None:
        self._names = {function.__code__: name for name, function in functions.items()}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _hook(self, frame: FrameType, event: str, _: Any) -> None:
        if event == "call":
            name = self._names.get(frame.f_code)
            if name is not None:
                with self._lock:
                    self.counts[name] += 1

    def __enter__(self) -> Calls:
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *_: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def test_small_files_are_read_from_the_plans_columns(tmp_path: Path, utc: None) -> None:
    """1. Plan the session (203 small files, one larger than a run, one after it); send it,
       counting the `packplan.Planned` and `rules.FileEntry` objects made (their `__init__`
       calls, on every thread) while the body is sent.
    2. Result: one of each, for the file larger than a run (`packread.read_one`); none for
       the small ones, which the readers read from the plan's columns (`Plan.columns`).
       merge10 made a `Planned` and a `FileEntry` per file (205 of each): about 2.6 µs
       a file of the sender's time."""
    folder = tmp_path / "S"
    planned = pack.plan(folder, session(folder))
    assert sum(size > pack.RUN for size in planned.sizes) == 1  # the test means something
    with Calls(planned=packplan.Planned.__init__, entry=rules.FileEntry.__init__) as calls:
        data, _ = send(folder, planned, tmp_path / "spool")
    assert hashlib.sha256(data).hexdigest() == ZIP_SHA256
    assert calls.counts == Counter(planned=1, entry=1)


@pytest.mark.parametrize("change", ["grow", "shrink", "vanish"])
def test_a_small_file_changed_in_the_middle_of_a_run_is_caught_and_named(
    tmp_path: Path, change: str
) -> None:
    """1. Plan the session; then make one small file in the middle of a run (the 18th of the
       second series) one byte longer, one byte shorter, or remove it; send.
    2. Result: the body stops with Changed naming that file (not a neighbour of the run: the
       columns are read by position), and no manifest is committed."""
    folder = tmp_path / "S"
    planned = pack.plan(folder, session(folder))
    target = folder / "S2/IM0017.dcm"
    if change == "grow":
        with open(target, "ab") as handle:
            handle.write(b"+")
    elif change == "shrink":
        os.truncate(target, target.stat().st_size - 1)
    else:
        target.unlink()
    records = tmp_path / "spool"
    with pytest.raises(pack.Changed, match=r"S2/IM0017\.dcm"):
        send(folder, planned, records)
    assert not (records / "manifest.json").exists()
