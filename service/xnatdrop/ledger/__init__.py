"""The ledger (moved from ledger.py; split by concern next)."""

from xnatdrop.ledger.book import *  # noqa: F403
