"""Fixtures of the stepcache_kfp tests, loaded with ``pytest_plugins = ["kfp_fixtures"]``."""

from collections.abc import Callable
from pathlib import Path

import pytest
from kfp_support import COUNTER_ENV


@pytest.fixture
def counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """The names of the components executed so far, in order."""
    path = tmp_path / "executed.txt"
    path.touch()
    monkeypatch.setenv(COUNTER_ENV, str(path))
    return lambda: path.read_text().split()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "pipeline-root"
