"""The crash hook of the kill -9 tests: the process kills itself at a chosen point.

`XNATDROP_TEST_CRASH_AT=<step>:<before|after>` makes the process SIGKILL itself right after the
ledger recorded the start of that step (`before`) or right after the step's work, before the
ledger recorded it (`after`); `import:bytes=N` once N bytes of the upload were sent,
`import:instances=N` once the DICOM receiver stored N instances (`transport = "dicom"`);
`quarantine:before|after` around the move to quarantine/; `thaw:before|after` around the move
back to the drop root. Unset (always, outside the tests) it does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "XNATDROP_TEST_CRASH_AT"


def point(step: str, when: str, sent: int | None = None) -> None:
    """Die here if the hook asks for `step:when` (or, with `sent`, for `step:when=N` and
    `sent >= N`; `when` is then the unit: bytes, instances)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    if wanted == f"{step}:{when}" or (
        sent is not None
        and wanted.startswith(f"{step}:{when}=")
        and sent >= int(wanted.split("=", 1)[1])
    ):
        os.kill(os.getpid(), signal.SIGKILL)
