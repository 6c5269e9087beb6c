"""Run a Python module as `__main__` and, as it exits, write its peak memory to a file.

    python bench/harness/hwm.py OUT.json MODULE [ARGS...]

Why not GNU time or a wait4 of the child: the ru_maxrss the kernel reports for a child that was
forked from a large process (this harness) and then exec'd also counts the pages it shared with
that parent before the exec. Reading the process's own VmHWM at exit measures only itself; the
largest of its own children (forked workers) comes from RUSAGE_CHILDREN.
"""

from __future__ import annotations

import atexit
import json
import re
import resource
import runpy
import sys
from pathlib import Path


def _write(out: Path) -> None:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    out.write_text(
        json.dumps(
            {
                "peak_kb": int(match.group(1)) if match else 0,
                "children_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            }
        )
    )


if __name__ == "__main__":
    target, module, *rest = sys.argv[1:]
    atexit.register(_write, Path(target))
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
