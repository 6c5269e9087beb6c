"""The only code that speaks HTTP to XNAT (moved from xnat.py; split by concern next)."""

from xnatdrop.xnat.client import *  # noqa: F403
