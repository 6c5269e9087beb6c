"""C-ECHO for `xnatdrop doctor`: is the receiver there, and does it take our AE titles?"""

from __future__ import annotations

import dataclasses
import time

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import Verification

from xnatdrop.config import DicomSettings
from xnatdrop.dimse.association import (
    Target,
    associate,
    close_association,
    configure_pynetdicom,
    refusal,
    why_unreachable,
)
from xnatdrop.dimse.statuses import status_meaning


@dataclasses.dataclass(frozen=True)
class EchoResult:
    """The outcome of a C-ECHO: `sentence` is what `doctor` prints."""

    ok: bool
    sentence: str
    milliseconds: float | None = None


def echo(settings: DicomSettings) -> EchoResult:
    """C-ECHO the receiver (PS3.7 9.1.5, Verification SOP class) and say in one sentence how it
    went: "ok in 12 ms", "cannot connect to HOST:PORT (…)", "the receiver … refused …"."""
    configure_pynetdicom()
    target = Target.of(settings)
    began = time.monotonic()
    opened = associate(settings, target, [(Verification, ExplicitVRLittleEndian)])
    assoc = opened.assoc
    if assoc is None or not opened.connected:
        why = why_unreachable(settings, target)
        return EchoResult(False, f"cannot connect to {target.address} ({why})")
    if assoc.is_rejected:
        _, sentence, fix = refusal(assoc, target)
        return EchoResult(False, f"{sentence}; {fix}")
    if not assoc.is_established:
        if assoc.rejected_contexts:
            return EchoResult(
                False, f"the receiver at {target.address} does not answer C-ECHO (Verification)"
            )
        return EchoResult(
            False,
            f"the receiver at {target.address} did not accept the association "
            f"(no answer within {settings.acse_timeout_seconds:g} s, or it aborted)",
        )
    try:
        status = assoc.send_c_echo()
    finally:
        close_association(assoc)
    elapsed = (time.monotonic() - began) * 1000
    if status is None or "Status" not in status:
        return EchoResult(
            False,
            f"the receiver at {target.address} did not answer C-ECHO within "
            f"{settings.dimse_timeout_seconds:g} s",
        )
    if int(status.Status) != 0x0000:
        code = int(status.Status)
        return EchoResult(
            False,
            f"the receiver at {target.address} answered C-ECHO with 0x{code:04X} "
            f"({status_meaning(code)})",
        )
    return EchoResult(True, f"ok in {elapsed:.0f} ms ({target.name})", elapsed)
