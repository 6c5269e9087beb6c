"""Discovery and settle decisions: which subject folders in the drop roots are completely copied.

- `watcher`: `Watcher`, the scan of every drop root and the decision, folder by folder, that a
  copy has finished; paused roots; what waits and why;
- `fingerprint`: what a folder looks like on one scan (full fingerprint, shallow signature);
- `events`: `EventHint`, kernel events that only bring the next scan forward.
"""

from xnatdrop.watch.events import EventHint
from xnatdrop.watch.fingerprint import Fingerprint, fingerprint, matches_any, shallow_signature
from xnatdrop.watch.watcher import MIN_OBSERVATIONS, Folder, Root, ScanResult, State, Watcher

__all__ = [
    "MIN_OBSERVATIONS",
    "EventHint",
    "Fingerprint",
    "Folder",
    "Root",
    "ScanResult",
    "State",
    "Watcher",
    "fingerprint",
    "matches_any",
    "shallow_signature",
]
