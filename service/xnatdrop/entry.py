"""The console script's entry point: only what Ctrl-C needs before `cli` is imported.

Importing `cli` takes ~0.15 s (its commands' configuration pulls in pydantic). A Ctrl-C in that
time would end in a traceback, or inside pydantic-core's native code in a PanicException; held
back until the import is whole, it ends in one sentence and exit 130, like a Ctrl-C later on.

Also before any import: one OpenBLAS thread. pydicom loads numpy where it is installed, and
numpy's OpenBLAS starts a thread for each further core that spins for a while waiting for work
xnatdrop never gives it: 0.10-0.13 s of CPU at every start of a process that imports pydicom
(the sandbox, the DICOM transport, verify's pixel comparison), taken from a 2-core VM's other
work. An OPENBLAS_NUM_THREADS already set is kept.
"""

from __future__ import annotations

import os
import sys

from xnatdrop import signals


def main() -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        with signals.deferred():
            from xnatdrop import cli
    except KeyboardInterrupt:
        print(signals.STOPPED_WHILE_STARTING, file=sys.stderr)
        return signals.INTERRUPTED
    return cli.main()
