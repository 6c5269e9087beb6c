"""What each C-STORE status means for the sender: stored, retry, or refuse.

A status table in the manner of pynetdicom's `status.py`, with what xnatdrop does next and what
a person can do. References: DICOM PS3.4 Annex B (Storage Service Class, statuses in B.2.3),
PS3.7 Annex C (general statuses); XNAT's receiver, `CStoreService.doCStore`.
"""

from __future__ import annotations

import dataclasses
import enum

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS


class Next(enum.Enum):
    """What the sender does after a C-STORE response."""

    STORED = "stored"  # success or warning: record it and go on
    RETRY = "retry"  # try the instance again; still failing: stop, retry the push later
    RETRY_THEN_REFUSE = "retry, then refuse"  # try again; still failing: quarantine
    REFUSE = "refuse"  # retrying cannot help: quarantine at once


@dataclasses.dataclass(frozen=True)
class StatusRule:
    """The status codes in `codes`, what the sender does next, and what a person can do."""

    codes: range
    next: Next
    fix: str


_ASK_ADMIN = "ask the XNAT admin what the receiver's log says about it"
# The receiver's C-STORE statuses and what xnatdrop does next, pynetdicom `status.py` style. The
# meaning of each code comes from pynetdicom's STORAGE_SERVICE_CLASS_STATUS (PS3.4 B.2.3, PS3.7
# C). XNAT answers 0xC000 for a ClientException (an unreadable object, missing UIDs, or "Concurrent
# file sends of the same data" while the same file is being written) and 0xA700 for anything else
# that went wrong (disk full, database, anonymisation script): CStoreService.doCStore. So 0xA7xx
# is retried and then left for a later push, and 0xCxxx is retried and then quarantined.
# Warnings (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match SOP
# class, 0x0107, 0x0116) mean the instance was stored: they are recorded and counted.
STATUS_RULES: tuple[StatusRule, ...] = (
    StatusRule(range(0x0000, 0x0001), Next.STORED, ""),
    StatusRule(range(0x0001, 0x0002), Next.STORED, ""),
    StatusRule(range(0x0107, 0x0108), Next.STORED, ""),
    StatusRule(range(0x0116, 0x0117), Next.STORED, ""),
    StatusRule(range(0xB000, 0xC000), Next.STORED, ""),
    StatusRule(
        range(0xA700, 0xA800),
        Next.RETRY,
        "XNAT could not file the instance (disk full, database or anonymisation script); "
        f"xnatdrop tries again later; if it keeps failing, {_ASK_ADMIN}",
    ),
    StatusRule(range(0x0110, 0x0111), Next.RETRY, f"xnatdrop tries again later; {_ASK_ADMIN}"),
    StatusRule(range(0x0210, 0x0211), Next.RETRY, "xnatdrop tries again later"),
    StatusRule(range(0x0213, 0x0214), Next.RETRY, "xnatdrop tries again later"),
    StatusRule(range(0xFE00, 0xFE01), Next.RETRY, "xnatdrop tries again later"),
    StatusRule(
        range(0xA900, 0xAA00),
        Next.REFUSE,
        "the file's content does not match its SOP class: re-export the series from the "
        "scanner, or leave it out of the drop",
    ),
    StatusRule(
        range(0xC000, 0xD000),
        Next.RETRY_THEN_REFUSE,
        "XNAT could not read or file the instance: re-export the series from the scanner; "
        f"if it is intact, {_ASK_ADMIN}",
    ),
    StatusRule(
        range(0x0122, 0x0123),
        Next.REFUSE,
        "the receiver does not store this kind of object: ask the XNAT admin to accept its "
        'SOP class, or use transport = "rest" for this drop',
    ),
    StatusRule(
        range(0x0124, 0x0125),
        Next.REFUSE,
        "the receiver does not let our AE title store here: ask the XNAT admin to allow "
        "dicom.calling_aet",
    ),
)
_UNKNOWN_FAILURE = StatusRule(
    range(0), Next.RETRY_THEN_REFUSE, f"an unexpected failure status; {_ASK_ADMIN}"
)


def status_rule(code: int) -> StatusRule:
    """The rule for one C-STORE status code; any failure code not listed is retried, then
    refused (a code we do not know is not one retrying will fix)."""
    for rule in STATUS_RULES:
        if code in rule.codes:
            return rule
    return _UNKNOWN_FAILURE


def status_meaning(code: int) -> str:
    """The standard's name for a C-STORE status, e.g. "Refused: Out of Resources"."""
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Unknown", "unknown status"))
    return text or category
