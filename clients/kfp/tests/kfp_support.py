"""Shared by the stepcache_kfp tests (their fixtures are in conftest.py).

The components are real ``@dsl.component`` lightweight Python components,
compiled by kfp and executed by kfp.local's SubprocessRunner in this
interpreter (``use_venv=False``, no pip install inside the task). Each one
appends its name to the file named by $STEPCACHE_KFP_COUNTER when it executes:
that file is what says whether a component ran. The process environment is not
part of a task's interface, so the counter does not change any cache key.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from kfp import dsl, local

COUNTER_ENV = "STEPCACHE_KFP_COUNTER"


def component(fn: Callable[..., Any]) -> Any:
    """``@dsl.component`` for the current interpreter: kfp is installed here, so no pip install in the task."""
    return dsl.component(fn, base_image="python:3.11", install_kfp_package=False)


def pipeline(name: str) -> Callable[[Callable[..., Any]], Any]:
    return cast(Callable[[Callable[..., Any]], Any], dsl.pipeline(name=name))


def run_kfp_local(pipeline_func: Any, arguments: dict[str, Any], root: Path) -> dict[str, Any]:
    """The outputs of ``kfp.local`` running the same pipeline (no cache), for comparison."""
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp-local"))
    try:
        return dict(pipeline_func(**arguments).outputs)
    finally:
        local.config.LocalExecutionConfig.instance = None
