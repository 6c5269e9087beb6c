"""The unattended daemon behind `xnatdrop run`: scan, settle, push in the upload window.

Threads and who owns what:

- the **main thread** installs signal handlers (they only set flags), then ticks: every few
  seconds it sends `WATCHDOG=1` and a `STATUS=` line to systemd, but only while the scan job keeps
  completing, so a stuck scan gets the unit restarted (`WatchdogSec=`);
- one **apscheduler job thread** runs the `scan` job (every `settle.poll_interval`, brought
  forward by kernel events) and the `dispatch` job (every poll interval, at the window's opening
  time, and after each scan and each finished push). It alone touches the `Watcher`; with one
  worker the two jobs never overlap;
- up to `schedule.max_concurrent_pushes` **push threads**, each running the pipeline for one drop
  with its own ledger connection, reporting back through a queue.

The ledger decides what to do; the daemon only triggers. Unfinished drops that are due
(`Ledger.pending`) are resumed first, then newly settled folders are handed over, oldest first.
Pushes start only inside `schedule.upload_window`; one running when the window closes finishes.

One daemon per state folder: `run` takes the state lock before anything else (`locks`), and
the lock of each drop root before READY=1 (a root that appears later, on the scan that sees
it). A root another configuration holds is held back in the watcher with one alert. When the
state folder cannot be written (full, read-only), every push is held and the daemon tries again
with backoff (5 s doubling to 10 min), alerting once; it never exits or restarts for it. After a
restart, drops held because XNAT refused our login are due at once: a restart is how the
operator says the password is fixed. A drop failing the same way REPEATED_FAILURES times in a
row is reported once, as an ALERT; the same traceback is logged once an hour at most.

Shutdown follows uvicorn's order: on SIGTERM or SIGINT send `STOPPING=1`, stop intake (no scan,
no new push), let running pushes reach a checkpoint (they see `stopping` between steps) within
`schedule.stop_timeout_seconds`, log what was cut short, exit 0. A second SIGINT skips the wait.
After any restart the ledger resumes what was cut short.
"""

from xnatdrop.daemon.loop import Daemon
from xnatdrop.daemon.repeats import RepeatedTracebacks, quiet_repeats
from xnatdrop.daemon.status import REPEATED_FAILURES, STATUS_FILE
from xnatdrop.daemon.window import UploadWindow
from xnatdrop.daemon.work import Processor, Result, Work, pipeline_processor

__all__ = [
    "REPEATED_FAILURES",
    "STATUS_FILE",
    "Daemon",
    "Processor",
    "RepeatedTracebacks",
    "Result",
    "UploadWindow",
    "Work",
    "pipeline_processor",
    "quiet_repeats",
]
