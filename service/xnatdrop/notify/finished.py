"""Reading what the pipeline leaves beside a finished drop (RECEIPT.json in done/,
QUARANTINE.json in quarantine/) for the digest, the share status file and the alerts.

Telling people must never fail a push: a record that is missing, torn or not an object reads
as empty, and the caller falls back to what the ledger says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when it cannot be read or is not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
