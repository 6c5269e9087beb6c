"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from push_helpers import start_sandbox
from xnat_sandbox import Sandbox


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox XNAT of the test's own, stopped after it (a module's own `server` wins)."""
    sandbox = start_sandbox(tmp_path / "xnat")
    yield sandbox
    sandbox.stop()
