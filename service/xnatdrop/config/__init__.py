"""The xnatdrop configuration (moved from config.py; split by section next)."""

from xnatdrop.config.model import *  # noqa: F403
