"""Shared fixtures. Quick mode, the Agg backend and PYTHONPATH are set in the root conftest.py."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    """The course folder (holds solutions/, notebooks/, assessments/)."""
    return ROOT
