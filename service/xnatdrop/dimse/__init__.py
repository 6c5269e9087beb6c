"""The DICOM transport: C-STORE of one series to XNAT's receiver, and C-ECHO for `doctor`.

The only DICOM networking in xnatdrop (pynetdicom as the service user, SCU). Two public calls:

- `send_series(files, settings, journal, stopping, progress)` stores one series over one
  association and returns a `SendReport`; it raises `TransientSendError` (retry later) or
  `errors.PermanentError` (quarantine) with a code, a message and a fix.
- `echo(settings)` returns an `EchoResult` whose `sentence` is the one line `doctor` prints.

Each instance goes out **as stored** (`instances`), and what the receiver answered is appended
to a journal (`journal`) so a killed push resumes with the instances not yet stored.

- `sender`: `send_series` and its report; the retries inside one push;
- `statuses`: what each C-STORE status means for the sender (pynetdicom `status.py` style);
- `instances`: the files as their file meta describes them; the presentation contexts;
- `journal`: the per-instance record of the receiver's answers;
- `association`: opening, refusing and closing associations; pynetdicom's settings;
- `echo`: C-ECHO for `doctor`;
- `failures`: the codes a person sees and `TransientSendError`.

References: DICOM PS3.4 Annex B (Storage Service Class, statuses in B.2.3), PS3.7 9.1.1 and
Annex C (C-STORE and general statuses), PS3.8 9.3.4 (A-ASSOCIATE-RJ result, source and reason);
XNAT's receiver: reference xnat-rest.md §9 and XNAT `web/src/main/java/org/nrg/dcm/scp/
CStoreService.java`.
"""

from xnatdrop.dimse.association import Target
from xnatdrop.dimse.echo import EchoResult, echo
from xnatdrop.dimse.failures import (
    CONTEXT_REFUSED,
    FILE_UNSENDABLE,
    JOURNAL_UNWRITABLE,
    RECEIVER_BUSY,
    REFUSED_AE,
    STORE_REFUSED,
    UNREACHABLE,
    TransientSendError,
)
from xnatdrop.dimse.instances import META_KEYWORDS, Instance, contexts_for, read_instance
from xnatdrop.dimse.journal import Journal
from xnatdrop.dimse.sender import MAX_CONTEXTS, MAX_RETRY_WAIT, SendReport, send_series
from xnatdrop.dimse.statuses import STATUS_RULES, Next, StatusRule, status_meaning, status_rule

__all__ = [
    "CONTEXT_REFUSED",
    "FILE_UNSENDABLE",
    "JOURNAL_UNWRITABLE",
    "MAX_CONTEXTS",
    "MAX_RETRY_WAIT",
    "META_KEYWORDS",
    "RECEIVER_BUSY",
    "REFUSED_AE",
    "STATUS_RULES",
    "STORE_REFUSED",
    "UNREACHABLE",
    "EchoResult",
    "Instance",
    "Journal",
    "Next",
    "SendReport",
    "StatusRule",
    "Target",
    "TransientSendError",
    "contexts_for",
    "echo",
    "read_instance",
    "send_series",
    "status_meaning",
    "status_rule",
]
