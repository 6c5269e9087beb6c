"""The console script's entry point (`xnatdrop.entry`) keeps numpy's OpenBLAS to one thread, and
so does the benchmark (bench/run.py) for itself and the children it times.

pydicom loads numpy where it is installed; OpenBLAS then starts a thread for each further core,
which spins waiting for work xnatdrop never gives it (0.10-0.13 s of CPU a process start here).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

STARTS_THEN_READS_DICOM = """
import os, sys
if sys.argv[1] == "entry":
    sys.argv = ["xnatdrop", "--help"]
    from xnatdrop import entry
    try:
        entry.main()
    except SystemExit:
        pass
elif sys.argv[1] == "bench":
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", sys.argv[2])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import pydicom  # loads numpy, and its OpenBLAS, where numpy is installed
print(os.environ.get("OPENBLAS_NUM_THREADS"), len(os.listdir("/proc/self/task")))
"""


def run(how: str, *arguments: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", STARTS_THEN_READS_DICOM, how, *arguments],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.split()[-2:]


def test_openblas_gets_one_thread_and_a_setting_is_kept() -> None:
    """1. A process imports pydicom without the entry point. Result: where numpy is installed,
    OpenBLAS has started a thread for each further core (the control).
    2. The same after the entry point has run. Result: OPENBLAS_NUM_THREADS=1, one thread.
    3. With OPENBLAS_NUM_THREADS=2 set by the site. Result: kept."""
    numpy = importlib.util.find_spec("numpy") is not None
    assert run("plain") == ["None", str(os.cpu_count() if numpy else 1)]
    assert run("entry") == ["1", "1"]
    assert run("entry", OPENBLAS_NUM_THREADS="2")[0] == "2"


def test_the_benchmark_sets_one_thread_before_its_harness_imports_numpy() -> None:
    """bench/run.py is loaded as a module (its harness imports pydicom and matplotlib, both of
    which load numpy). Result: OPENBLAS_NUM_THREADS=1 for it and its children, one thread."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "run.py"
    assert run("bench", str(bench)) == ["1", "1"]
