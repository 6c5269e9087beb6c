"""A local XNAT: `xnatdrop sandbox`, and the server that tests and benchmarks run in-process.

Usage: `Sandbox(data=..., port=0, users=["svc:pw"], projects=["SPN01"]).start()`; see
docs/sandbox.md for the endpoints, the `/_sandbox/` admin API and the known differences.
"""

from xnat_sandbox.dicom_receiver import Receiver
from xnat_sandbox.server import Sandbox
from xnat_sandbox.users import parse_user

__all__ = ["Receiver", "Sandbox", "parse_user"]
