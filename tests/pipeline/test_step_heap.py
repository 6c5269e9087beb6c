"""What a step freed does not stay resident under the next step (issue 13, "memory flat").

glibc's malloc serves blocks of up to its mmap threshold from the heap, and that threshold
rises to the size of the largest mapped block freed (up to 32 MiB): after that, the upload's
1 MiB buffers lived in the heap and, freed, stayed resident under every later step (an 8 GB
push held 78 MB after its import step against 59 MB before it). The runner hands the free
pages back between steps (`heap.release`). A real push against the sandbox; its pack step is
wrapped to leave 40 MiB freed in the heap below a block still held (as the import left its
buffers), and the import step reads the process's RSS when it starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from push_helpers import client, load, stage, write_config
from xnat_sandbox import Sandbox
from xnatdrop import heap, ledger, pipeline
from xnatdrop.pipeline import run

BLOCKS = 40  # of 1 MiB: well above the noise of a step's own allocations


def rss_kib() -> int:
    return int(re.search(r"^VmRSS:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)[1])


def leave_freed_blocks(pins: list[bytearray]) -> int:
    """Allocate BLOCKS MiB in the heap and a 2 MiB block after them (kept in `pins`), free the
    MiBs and return the RSS then: they stay resident until the heap is trimmed, since the pin
    keeps them off the heap's top."""
    bytearray(4 << 20)  # a mapped block, freed: the mmap threshold rises to 4 MiB
    blocks = [bytearray(1 << 20) for _ in range(BLOCKS)]
    pins.append(bytearray(2 << 20))
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # every page touched: resident
    del blocks
    return rss_kib()


@pytest.mark.alone  # the RSS of a process that ran no other test
@pytest.mark.skipif(not heap.release(), reason="no malloc_trim in this C library")
def test_what_a_step_freed_is_handed_back_before_the_next_step(
    tmp_path: Path, server: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(write_config(tmp_path, server.url))
    folder = stage(tmp_path / "drop", "SPN01_0001", sidecars=False)
    pins: list[bytearray] = []
    seen: dict[str, int] = {}
    pack, upload = run.STEPS["pack"], run.STEPS["import"]

    def pack_then_free(context: Any, drop: ledger.Drop) -> Any:
        done = pack(context, drop)
        seen["freed"] = leave_freed_blocks(pins)
        return done

    def upload_measured(context: Any, drop: ledger.Drop) -> Any:
        seen["next step"] = rss_kib()
        return upload(context, drop)

    monkeypatch.setitem(run.STEPS, "pack", pack_then_free)
    monkeypatch.setitem(run.STEPS, "import", upload_measured)
    with ledger.Ledger(settings.paths.state) as book:
        outcome = pipeline.process(folder, settings, book, lambda: client(settings))
    assert outcome.kind == "archived", outcome
    given_back = seen["freed"] - seen["next step"]
    assert given_back > BLOCKS * 1024 * 3 // 4, f"{given_back} KiB given back of {BLOCKS} MiB"
