"""The codes a person sees when a DICOM send fails, and the error for "retry later".

Each code lands in QUARANTINE.json or `xnatdrop status`; each raise names its fix.
"""

from __future__ import annotations

from xnatdrop import errors

# Stable codes a person sees in QUARANTINE.json or `status` (see each raise for its fix).
REFUSED_AE = "DICOM_AE_REFUSED"  # A-ASSOCIATE-RJ, permanent: AE titles, application context
CONTEXT_REFUSED = "DICOM_CONTEXT_REFUSED"  # the receiver does not take this SOP class/syntax
STORE_REFUSED = "DICOM_STORE_REFUSED"  # a C-STORE failure status retrying cannot fix
FILE_UNSENDABLE = "DICOM_FILE_UNSENDABLE"  # a file that cannot be sent as stored
UNREACHABLE = "DICOM_UNREACHABLE"  # no connection, no answer, association lost (transient)
RECEIVER_BUSY = "DICOM_RECEIVER_BUSY"  # A-ASSOCIATE-RJ transient, out of resources (transient)
JOURNAL_UNWRITABLE = "DICOM_JOURNAL_UNWRITABLE"  # the journal cannot be written (transient)


class TransientSendError(errors.TransientError):
    """Retry later: the receiver is unreachable, busy, or lost the association.

    `code` and `fix` are for `status` and the operator, like `PermanentError`'s.
    """

    def __init__(self, code: str, message: str, fix: str) -> None:
        self.code = code
        self.fix = fix
        super().__init__(message)
