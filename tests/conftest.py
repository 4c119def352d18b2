"""Shared fixtures. Quick mode, the Agg backend and PYTHONPATH are set in the root conftest.py."""
from pathlib import Path

import pytest

from browser_support import ARTIFACTS_KEY, SCREENSHOTS, wants_browser_tests  # tests/ is on sys.path here

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    """The course folder (holds solutions/, notebooks/, assessments/)."""
    return ROOT


def pytest_collection_modifyitems(config, items):
    """Browser tests (marker ``browser``) run only when ``-m`` names them: ``python -m pytest -m browser``.
    The README's ``python -m pytest`` deselects them, so it stays fast and needs no Chromium."""
    if wants_browser_tests(config.getoption("markexpr", "")):
        return
    browser = [item for item in items if item.get_closest_marker("browser")]
    if browser:
        config.hook.pytest_deselected(items=browser)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    folder = config.stash.get(ARTIFACTS_KEY, None)
    if folder is not None:
        shots = [name for name in SCREENSHOTS if (folder / name).is_file()]
        terminalreporter.write_line(f"browser test screenshots: {folder} ({', '.join(shots) or 'none saved'})")
