"""Fixtures of stepcache-kfp's tests.

The live server (``server_addr``, ``namespace``, ``client``, ``repo_root``)
is the core client's: clients/python/tests/conftest.py, loaded from there
rather than copied, so that both packages' tests start the server one way.
That directory is also put on ``sys.path`` for its ``example_runs`` helper.
"""

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kfp_support import COUNTER_ENV

CORE_TESTS = Path(__file__).resolve().parents[2] / "python" / "tests"
sys.path.append(str(CORE_TESTS))


def _core_conftest() -> Any:
    spec = importlib.util.spec_from_file_location("stepcache_core_conftest", CORE_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up there.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_core = _core_conftest()
server_addr = _core.server_addr
namespace = _core.namespace
client = _core.client
repo_root = _core.repo_root


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
