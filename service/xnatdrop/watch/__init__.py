"""Discovery and settle decisions (moved from watch.py; split by concern next)."""

from xnatdrop.watch.watcher import *  # noqa: F403
