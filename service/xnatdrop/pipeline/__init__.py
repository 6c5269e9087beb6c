"""Push one subject folder to XNAT: freeze → check → pack → import → verify → archive → attach →
finish, or quarantine.

Entry point, for `xnatdrop push` and the daemon alike::

    outcome = pipeline.process(drop_folder, config, ledger, client_factory, stopping, progress)

The result is an `Outcome` of one `Kind` (`outcome`), which carries its exit code.

One module per step, in the order the runner calls them (`run.STEPS`, beside the ledger's
transition table `ledger.NEXT`):

- `freeze`: the rename into the work area (and `thaw`, the way back to settle again);
- `check`: the rules on the frozen folder; the subject's fields (`subject`);
- `send`: `pack` plans the zip, `import` streams it into the prearchive (`late` when XNAT
  already holds a session of this label; `prearchive` for finding and waiting for our copy);
- `confirm`: `verify` the prearchive copy, `archive` it and read the archive back (`readback`);
- `attach`: the sidecar folders as session resources;
- `finish`: subject fields, the receipt, the move into done/ (`destination`);
- `quarantine`: the move into quarantine/ with its reason files, and `requeue`'s way back.

The runner (`run`) holds the drop's lock, records each step before and after, retries transient
errors with backoff and is the per-drop error boundary. What one step hands on to the next is
in the spool as typed records (`spool`); each step gets a `context.Context` and says how it went
by what it returns (`context.Done`, `Resend`, `Unsettled`). The kill -9 tests stop the process at
chosen points through `crash` (`XNATDROP_TEST_CRASH_AT`).
"""

from xnatdrop.pipeline.context import xnat_client
from xnatdrop.pipeline.outcome import Kind, Outcome
from xnatdrop.pipeline.run import STEPS, backoff, process

__all__ = ["STEPS", "Kind", "Outcome", "backoff", "process", "xnat_client"]
