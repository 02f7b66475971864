"""Run Kubeflow Pipelines v2 pipelines locally, with stepcache in front of every task.

``kfp.local`` (``SubprocessRunner``) executes a ``@dsl.pipeline`` on one machine
but has no cache. ``run_pipeline`` gives it one:

1. The pipeline (a pipeline function, or the path of a compiled pipeline YAML)
   is compiled with ``kfp.compiler`` to its ``PipelineSpec``.
   It and the arguments are checked before anything runs (``check_arguments``,
   constructs kfp.local cannot run, kfp installs that would clash).
2. Every component task becomes a stepcache ``TaskInterface`` built from
   that spec (``task_interface``): the component name, the executor's container
   image/command/args/env (an importer's spec and the digest of what it
   imports), the task's input parameter values (with the component's
   defaults), the stepcache artifact IDs of the artifacts that feed its input
   artifacts, and its output spec.
3. The DAGs run in dependency order (``dependentTasks`` and the producers the
   inputs name), independent tasks concurrently (threads): a condition is
   evaluated on the task's inputs (false: nothing runs or records); a loop runs
   one DAG instance per item; a nested pipeline is a DAG instance. Each
   component task is looked up with a reservation (owner ``<run id>/<task>``):

   - ``HIT``: nothing runs, once the hit's local outputs are found to be still
     there (gone ones are marked ``ARTIFACT_STATE_DELETED``, and the task is
     looked up again). The recorded output artifacts (same IDs, same URIs
     under the pipeline root of the run that produced them, same metadata) are
     turned back into kfp artifacts (``to_kfp_artifact``) and, with the
     recorded output parameters, handed to the downstream tasks.
   - ``IN_PROGRESS``: an identical task (in this run or another) holds the
     reservation; ``WaitForCachedExecution`` blocks until it publishes (then
     ``HIT``), or until it gives up (then this task takes the reservation over
     and runs).
   - ``MISS``/``RESERVED``/``DISABLED``: the task runs with kfp's own local
     executor (``kfp.local.task_dispatcher.run_single_task_implementation``:
     ExecutorInput, placeholders, the runner), while a heartbeat extends the
     reservation; then ``PutExecution`` records it with its output artifacts
     (``to_stepcache_artifact``: kfp's URI, type = schema title, metadata in
     the properties) and output parameters, which publishes the entry and
     wakes the waiters.

The mapping between the two worlds is explicit: ``TaskRun.artifacts[name]`` is
a list of ``ArtifactBinding(artifact_id, kfp_artifact)``; downstream
interfaces name the ``artifact_id`` (the run maps each kfp artifact's URI to
it), downstream executors receive the ``kfp_artifact``.

Policy: a normal run looks every task up with trigger ``PIPELINE``; the tasks
named in ``rerun`` are run on purpose with trigger ``MANUAL`` (they read no
cache, run, and emit new artifact IDs, so the tasks that consume their
artifacts miss);
``enable_caching=False`` disables the lookups of the whole run, as kfp's own
flag does (``None`` follows each task's ``set_caching_options``). Every
successful execution is recorded and published either way, so later runs can
hit it.

Scope: container executors (``@dsl.component`` lightweight components with
``SubprocessRunner``, or ``DockerRunner``) and importers, in DAGs with
``dsl.If``/``Elif``/``Else``, ``ParallelFor``/``Collected``, nested pipelines,
``ExitHandler``, ``ignore_upstream_failure`` and ``set_retry``. What kfp.local
2.16 cannot run (``PipelineTaskFinalStatus``, ``dsl.OneOf``) is refused with
``NotImplementedError`` before anything runs.

Package ``stepcache-kfp`` (``pip install ./clients/kfp``), on the core
``stepcache`` client and kfp 2.16.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import json_format
from stepcache.client import CacheResult, Client, DurationLike, ExecutionState, Outcome, Trigger
from stepcache.v1 import metadata_store_service_pb2, types_pb2

#: The kfp minor release whose kfp.local internals this runner drives
#: (pyproject.toml pins the same).
KFP_MINOR = "2.16"
KFP_REQUIREMENT = "kfp>=2.16.0,<2.17"


def check_kfp_version(version: str) -> None:
    """Raises ``ImportError`` naming both versions unless ``version`` is a ``KFP_MINOR`` release."""
    if version.split(".")[:2] != KFP_MINOR.split("."):
        raise ImportError(
            f"stepcache_kfp drives kfp.local {KFP_MINOR}, but kfp {version} is installed here: "
            f"pip install '{KFP_REQUIREMENT}' "
            "(components compiled with another kfp pip-install theirs when run with "
            "SubprocessRunner(use_venv=False); run_pipeline refuses those)"
        )


try:
    check_kfp_version(importlib.metadata.version("kfp"))
except importlib.metadata.PackageNotFoundError as e:  # pragma: no cover
    raise ImportError(f"stepcache_kfp needs kfp {KFP_MINOR}: pip install stepcache-kfp") from e

from kfp import compiler as kfp_compiler  # noqa: E402
from kfp import components as kfp_components  # noqa: E402
from kfp import dsl  # noqa: E402
from kfp.dsl.types import type_utils  # noqa: E402
from kfp.local import config as local_config  # noqa: E402
from kfp.local import (  # noqa: E402
    executor_input_utils,
    executor_output_utils,
    importer_handler,
    placeholder_utils,
    status,
    task_dispatcher,
)
from kfp.local import io as local_io  # noqa: E402
from kfp.local import utils as local_utils  # noqa: E402
from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

log = logging.getLogger(__name__)

#: Artifact properties that carry what stepcache does not model itself.
PROP_SCHEMA_VERSION = "kfp.schema_version"
PROP_METADATA = "kfp.metadata"
#: Context types of the run and of the pipeline.
CONTEXT_PIPELINE_RUN = "system.PipelineRun"
CONTEXT_PIPELINE = "system.Pipeline"
#: The importer's parameters in its interface: its spec, and the digest of the
#: local file or directory it imports ("" when not local).
PARAM_IMPORTER = "kfp.importer"
PARAM_IMPORTED_DIGEST = "kfp.imported_digest"
#: Lookups of one task before giving up when its entry keeps changing under it.
_LOOKUP_ATTEMPTS = 4
_ALL_UPSTREAM_COMPLETED = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED

_COMPONENT_PREFIX = "comp-"


class TaskFailedError(RuntimeError):
    """A task of the pipeline failed (recorded FAILED, never served from cache)."""

    def __init__(self, task: str, message: str) -> None:
        super().__init__(f"task {task!r}: {message}")
        self.task = task


@dataclass(frozen=True)
class ArtifactBinding:
    """One output artifact on both sides: its stepcache ID and the kfp artifact.

    Downstream interfaces name ``artifact_id``; downstream executors receive
    ``kfp_artifact`` (a ``dsl.Dataset``, ``dsl.Model``, ``dsl.Metrics``...)
    whose ``uri`` and ``metadata`` are the recorded ones.
    """

    artifact_id: int
    kfp_artifact: Any

    @property
    def uri(self) -> str:
        return str(self.kfp_artifact.uri)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.kfp_artifact.metadata)


@dataclass(frozen=True)
class TaskRun:
    """How one task of one run was satisfied, and what it handed downstream."""

    task: str
    #: The stepcache component name (see ``component_names``).
    component: str
    #: HIT: nothing ran. MISS, RESERVED or DISABLED: the task ran.
    outcome: Outcome
    #: The first lookup's answer: IN_PROGRESS when the task waited for an
    #: identical one that was running (then ``outcome`` is HIT, or RESERVED
    #: when the holder gave up and this task ran instead).
    first_outcome: Outcome
    cache_key: str
    #: The execution recorded for this task: the new one when it ran; on a HIT
    #: the CACHED execution recorded for this run (else the original).
    execution_id: int
    #: The original execution whose outputs these are (this one when it ran).
    source_execution_id: int
    interface: types_pb2.TaskInterface
    artifacts: dict[str, list[ArtifactBinding]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def ran(self) -> bool:
        """True when the component was executed in this run."""
        return self.outcome != Outcome.HIT

    @property
    def waited(self) -> bool:
        """True when an identical task held the reservation at lookup time."""
        return self.first_outcome == Outcome.IN_PROGRESS

    def artifact_id(self, name: str) -> int:
        """The stepcache ID of the single artifact of output ``name``."""
        (only,) = self.artifacts[name]
        return only.artifact_id

    def artifact(self, name: str) -> Any:
        """The kfp artifact of the single artifact of output ``name``."""
        (only,) = self.artifacts[name]
        return only.kfp_artifact


@dataclass(frozen=True)
class PipelineRun:
    """One run of a pipeline: its tasks and the pipeline's outputs."""

    run_id: str
    pipeline_name: str
    #: ``<pipeline_root>/<pipeline name>-<timestamp>``: where this run's tasks write.
    run_root: str
    #: The run's context (0 when the server has no contexts).
    context_id: int
    tasks: dict[str, TaskRun]
    #: The pipeline's outputs (kfp artifacts and parameter values) by name.
    outputs: dict[str, Any]

    @property
    def executed(self) -> list[str]:
        """The names of the tasks that ran (sorted)."""
        return sorted(t.task for t in self.tasks.values() if t.ran)

    @property
    def outcomes(self) -> dict[str, Outcome]:
        return {name: t.outcome for name, t in self.tasks.items()}


# -- the PipelineSpec --------------------------------------------------------


def load_pipeline(pipeline: Any) -> Any:
    """The pipeline as kfp loads a compiled one: a component with its ``pipeline_spec``.

    ``pipeline`` is a pipeline function (compiled with ``kfp.compiler.Compiler``
    to YAML first) or the path of a compiled pipeline YAML.
    """
    if isinstance(pipeline, (str, os.PathLike)):
        return kfp_components.load_component_from_file(os.fspath(pipeline))
    with tempfile.TemporaryDirectory(prefix="stepcache-kfp-") as tmp:
        path = os.path.join(tmp, "pipeline.yaml")
        kfp_compiler.Compiler().compile(pipeline_func=pipeline, package_path=path)
        return kfp_components.load_component_from_file(path)


def load_pipeline_spec(pipeline: Any) -> Any:
    """The ``PipelineSpec`` of a pipeline function, or of a compiled pipeline YAML (path)."""
    return load_pipeline(pipeline).pipeline_spec


def check_arguments(pipeline: Any, arguments: Mapping[str, Any]) -> None:
    """Checks the pipeline's arguments as calling the pipeline in kfp does, before anything runs.

    Unknown names and missing required inputs (parameters without a default,
    input artifacts not optional) raise ``TypeError`` with kfp's message; a
    value of the wrong type raises kfp's ``InconsistentTypeException``, an
    artifact (kfp.local takes none as a pipeline argument) ``ValueError``.
    """
    name = pipeline.name
    inputs = pipeline.component_spec.inputs or {}
    for key in arguments:
        if key not in inputs:
            raise TypeError(f'{name}() got an unexpected keyword argument "{key}".')
    missing = [arg for arg in pipeline.required_inputs if arg not in arguments]
    if missing:
        plural = "argument" if len(missing) == 1 else "arguments"
        raise TypeError(f"{name}() missing {len(missing)} required {plural}: {', '.join(missing)}.")
    for key, value in arguments.items():
        type_utils.verify_type_compatibility(
            given_value=value,
            expected_spec=inputs[key],
            error_message_prefix=f"Incompatible argument passed to the input {key!r} of component {name!r}: ",
        )


def _executor_spec(pipeline_spec: Any, component_spec: Any) -> Any:
    raw = pipeline_spec.deployment_spec["executors"][component_spec.executor_label]
    return local_utils.struct_to_executor_spec(raw)


def component_names(pipeline_spec: Any) -> dict[str, str]:
    """The stepcache component name of each ``comp-*`` of the spec.

    The compiler gives every use of a component its own ``comp-NAME-N`` even
    when the uses are identical; such copies get one name (the shortest, then
    the first in order, without ``comp-``), so that identical tasks have
    identical interfaces. Different components keep their own names. The name
    salts the key; the container spec in the interface still tells any two
    different components apart.
    """
    groups: dict[bytes, list[str]] = {}
    for name, spec in pipeline_spec.components.items():
        if spec.WhichOneof("implementation") != "executor_label":
            continue
        bare = pipeline_spec_pb2.ComponentSpec()
        bare.CopyFrom(spec)
        bare.ClearField("executor_label")
        fingerprint = bare.SerializeToString(deterministic=True) + b"\0"
        fingerprint += _executor_spec(pipeline_spec, spec).SerializeToString(deterministic=True)
        groups.setdefault(fingerprint, []).append(name)
    names = {}
    for members in groups.values():
        canonical = min(members, key=lambda n: (len(n), n))
        for member in members:
            names[member] = canonical.removeprefix(_COMPONENT_PREFIX)
    return names


def _dags(pipeline_spec: Any) -> Iterator[tuple[str, Any]]:
    """(component name, spec) of the root DAG (name "") and of every DAG component."""
    yield "", pipeline_spec.root
    for name, spec in pipeline_spec.components.items():
        if spec.WhichOneof("implementation") == "dag":
            yield name, spec


def _refusal(pipeline_spec: Any, task_spec: Any) -> str:
    """Why this task cannot run here ("" when it can)."""
    for name, spec in task_spec.inputs.parameters.items():
        if spec.HasField("task_final_status"):
            return f"input {name!r} is a dsl.PipelineTaskFinalStatus (dsl.ExitHandler): kfp.local 2.16 does not run it"
    component_spec = pipeline_spec.components[task_spec.component_ref.name]
    if component_spec.WhichOneof("implementation") == "dag":
        outputs = component_spec.dag.outputs
        oneof = [k for k, s in outputs.parameters.items() if s.WhichOneof("kind") == "value_from_oneof"]
        oneof += [k for k, s in outputs.artifacts.items() if len(s.artifact_selectors) > 1]
        if oneof:
            return f"output(s) {sorted(oneof)} are dsl.OneOf: kfp.local 2.16 does not run dsl.OneOf"
        return ""
    kind = _executor_spec(pipeline_spec, component_spec).WhichOneof("spec")
    if kind not in ("container", "importer"):
        return f"{kind} executors are not supported"
    for name, spec in component_spec.input_definitions.artifacts.items():
        # kfp.local's construct_executor_input reads every declared input artifact.
        if name not in task_spec.inputs.artifacts:
            return (
                f"optional input artifact {name!r} left unset: kfp.local 2.16 cannot run a component "
                "whose input artifact has no value (KeyError building the executor input)"
            )
        if spec.is_artifact_list:
            return (
                f"input {name!r} is a list of artifacts (dsl.Collected of artifacts): kfp.local 2.16 "
                "cannot hand a list of artifacts to a component"
            )
    return ""


def _check_supported(pipeline_spec: Any) -> None:
    """Refuses, before anything runs, what this runner does not run, naming the construct."""
    for dag_name, dag_spec in _dags(pipeline_spec):
        for task_name, task_spec in dag_spec.dag.tasks.items():
            why = _refusal(pipeline_spec, task_spec)
            if why:
                where = f" (in {dag_name})" if dag_name else ""
                raise NotImplementedError(f"task {task_name!r}{where}: {why}")


def _check_kfp_installs(pipeline_spec: Any, runner: Any) -> None:
    """Refuses components that would pip-install another kfp into this environment.

    A lightweight component compiled with ``install_kfp_package=True`` starts
    with ``pip install kfp==<the compiling version>``; with
    ``SubprocessRunner(use_venv=False)`` that replaces the kfp installed here.
    """
    if not isinstance(runner, local_config.SubprocessRunner) or runner.use_venv:
        return
    installed = importlib.metadata.version("kfp")
    for name, raw in pipeline_spec.deployment_spec["executors"].items():
        spec = local_utils.struct_to_executor_spec(raw)
        if spec.WhichOneof("spec") != "container":
            continue
        for line in [*spec.container.command, *spec.container.args]:
            for wanted in re.findall(r"kfp==([0-9][^'\"\s]*)", line):
                if wanted != installed:
                    raise RuntimeError(
                        f"executor {name!r} pip-installs kfp=={wanted} into this environment "
                        f"(SubprocessRunner(use_venv=False)), where kfp {installed} is installed: "
                        f"compile it with kfp {installed}, or with install_kfp_package=False, "
                        "or run it with SubprocessRunner(use_venv=True)"
                    )


def _is_artifact(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, dsl.Artifact) for v in value)
    return isinstance(value, dsl.Artifact)


def task_interface(
    pipeline_spec: Any,
    component_spec: Any,
    arguments: Mapping[str, Any],
    input_artifact_ids: Mapping[str, list[int]],
    component: str,
) -> types_pb2.TaskInterface:
    """The stepcache interface of one task running ``component_spec``.

    ``arguments`` are the task's resolved kfp arguments (parameters and input
    artifacts, as ``OrchestratorUtils.make_task_arguments`` gives them);
    ``input_artifact_ids`` are the stepcache IDs bound to each input artifact.
    An importer's interface is its importer spec and, for a local URI, the
    content digest of what it imports: a changed file is a new artifact.
    """
    executor = _executor_spec(pipeline_spec, component_spec)
    parameters: dict[str, Any] = {}
    # A declared parameter the task does not set takes the component's default,
    # which is not in the container spec: it has to be in the key.
    for name, spec in component_spec.input_definitions.parameters.items():
        if spec.HasField("default_value"):
            parameters[name] = executor_output_utils.pb2_value_to_python(spec.default_value)
    for name, value in arguments.items():
        if not _is_artifact(value):
            parameters[name] = value
    iface = types_pb2.TaskInterface(
        component=component,
        input_artifacts={name: types_pb2.ArtifactIds(ids=ids) for name, ids in input_artifact_ids.items()},
        output_artifacts={
            name: spec.artifact_type.schema_title for name, spec in component_spec.output_definitions.artifacts.items()
        },
        output_parameters={
            name: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(spec.parameter_type)
            for name, spec in component_spec.output_definitions.parameters.items()
        },
    )
    if executor.WhichOneof("spec") == "importer":
        parameters[PARAM_IMPORTER] = json_format.MessageToDict(executor.importer)
        uri = executor.importer.artifact_uri.constant.string_value or str(arguments.get("uri", ""))
        parameters[PARAM_IMPORTED_DIGEST] = content_digest(_local_path(uri) or "")
    else:
        container = executor.container
        iface.container.CopyFrom(
            types_pb2.ContainerSpec(
                image=container.image,
                command=list(container.command),
                args=list(container.args),
                env={e.name: e.value for e in container.env},
            )
        )
    for name, value in parameters.items():
        json_format.ParseDict(value, iface.parameters[name])
    return iface


# -- artifacts: kfp <-> stepcache ----------------------------------------------


def content_digest(uri: str) -> str:
    """``sha256:<hex>`` of a local file or directory (relative paths and bytes); "" if not local."""
    path = Path(uri)
    if not path.is_absolute() or not path.exists():
        return ""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def to_stepcache_artifact(kfp_artifact: Any, namespace: str) -> types_pb2.Artifact:
    """A new stepcache artifact (id 0) for a kfp output artifact.

    type = the kfp schema title (``system.Dataset``...), uri = kfp's URI as is
    (a path under the pipeline root with kfp.local), name = the kfp artifact
    name; the schema version and the metadata go into the properties.
    """
    artifact = types_pb2.Artifact(
        namespace=namespace,
        type=kfp_artifact.schema_title,
        name=kfp_artifact.name or "",
        uri=kfp_artifact.uri,
        content_digest=content_digest(kfp_artifact.uri),
    )
    json_format.ParseDict(kfp_artifact.schema_version, artifact.properties[PROP_SCHEMA_VERSION])
    json_format.ParseDict(dict(kfp_artifact.metadata), artifact.properties[PROP_METADATA])
    return artifact


def to_kfp_artifact(artifact: types_pb2.Artifact) -> Any:
    """The kfp artifact (``dsl.Dataset``...) of a recorded stepcache artifact, by kfp's own conversion."""
    runtime = pipeline_spec_pb2.RuntimeArtifact(
        name=artifact.name,
        type=pipeline_spec_pb2.ArtifactTypeSchema(schema_title=artifact.type),
        uri=artifact.uri,
    )
    if PROP_SCHEMA_VERSION in artifact.properties:
        runtime.type.schema_version = artifact.properties[PROP_SCHEMA_VERSION].string_value
    if PROP_METADATA in artifact.properties:
        runtime.metadata.CopyFrom(artifact.properties[PROP_METADATA].struct_value)
    return executor_output_utils.runtime_artifact_to_dsl_artifact(runtime)


def _output_parameters(execution: types_pb2.Execution, component_spec: Any) -> dict[str, Any]:
    values = {name: executor_output_utils.pb2_value_to_python(v) for name, v in execution.output_parameters.items()}
    return cast(
        dict[str, Any],
        executor_output_utils.cast_protobuf_numbers(values, component_spec.output_definitions.parameters),
    )


# -- running -------------------------------------------------------------------


@contextlib.contextmanager
def _restore_kfp_globals() -> Iterator[None]:
    """kfp.local swaps the root logger's handlers and ``builtins.print`` around
    each task; with tasks in threads those swaps interleave. Put both back
    as they were once the run is over."""
    root = logging.getLogger()
    handlers, level, printer = root.handlers[:], root.level, builtins.print
    try:
        yield
    finally:
        builtins.print = printer
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _heartbeat(client: Client, cache_key: str, owner: str, lease: timedelta) -> Iterator[None]:
    """Extends ``owner``'s reservation every third of ``lease`` while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease.total_seconds() / 3):
            try:
                client.extend_reservation(cache_key, owner, lease)
            except grpc.RpcError as e:
                log.warning("reservation of %s by %s not extended: %s", cache_key[:12], owner, e)
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{owner}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _upstream(task_spec: Any) -> set[str]:
    """The tasks this one waits for: ``dependentTasks`` and every producer its inputs name.

    The compiler leaves a producer out of ``dependentTasks`` in some cases
    (task outputs feeding resource limits); the inputs still name it.
    """
    deps = set(task_spec.dependent_tasks)
    for spec in task_spec.inputs.parameters.values():
        if spec.HasField("task_output_parameter"):
            deps.add(spec.task_output_parameter.producer_task)
    for spec in task_spec.inputs.artifacts.values():
        if spec.HasField("task_output_artifact"):
            deps.add(spec.task_output_artifact.producer_task)
    return deps


def _run_all(
    items: Collection[str],
    deps: Mapping[str, set[str]],
    work: Callable[[str], None],
    max_workers: int,
    tolerant: Collection[str] = (),
) -> None:
    """Calls ``work(name)`` for every item once its ``deps`` are done, up to ``max_workers`` at once.

    After a failure nothing new starts but the ``tolerant`` items (KFP's
    ``ALL_UPSTREAM_TASKS_COMPLETED``: ``dsl.ExitHandler``'s exit task,
    ``ignore_upstream_failure()``), each once its deps have finished either
    way; what runs finishes; then the first error is raised.
    """
    pending = {name: set(deps.get(name, ())) for name in items}
    done: set[str] = set()
    finished: set[str] = set()
    errors: list[BaseException] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="kfp-task") as pool:
        futures: dict[concurrent.futures.Future[None], str] = {}

        def submit_ready() -> None:
            for name in sorted(pending):
                ready = pending[name] <= finished if name in tolerant else not errors and pending[name] <= done
                if ready:
                    del pending[name]
                    futures[pool.submit(work, name)] = name

        submit_ready()
        while futures:
            completed, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in completed:
                name = futures.pop(future)
                finished.add(name)
                error = future.exception()
                if error is not None:
                    errors.append(error)
                else:
                    done.add(name)
            submit_ready()
    if errors:
        raise errors[0]


def _condition_holds(condition: str, arguments: Mapping[str, Any]) -> bool:
    """Evaluates a ``triggerPolicy.condition`` (the CEL the compiler writes) on the task's inputs.

    The compiler writes comparisons of ``inputs.parameter_values['<input>']``
    (possibly wrapped in ``int()``/``double()``) with literals, joined by
    ``!``, ``&&`` and ``||`` (``dsl.Elif``/``dsl.Else`` negate the earlier
    branches). Those map one to one onto Python; string literals are kept
    as they are.
    """
    values: dict[str, Any] = {}

    def reference(match: re.Match[str]) -> str:
        key = f"_v{len(values)}"
        values[key] = arguments[match.group(2)]
        return key

    expr = re.sub(r"inputs\.parameter_values\[(['\"])(.*?)\1\]", reference, condition)
    # Odd parts are string literals; operators are translated in the others only.
    parts = re.split(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", expr)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"!(?!=)", " not ", parts[i].replace("&&", " and ").replace("||", " or "))
    names = {"int": int, "double": float, "string": str, "true": True, "false": False, "null": None}
    return bool(eval("".join(parts), {"__builtins__": {}, **names}, values))  # noqa: S307 - operators and literals only


def _local_path(uri: str) -> str | None:
    """The local path of a ``file://`` or absolute-path URI; None for anything else (gs://...)."""
    if uri.startswith("file://"):
        return urllib.parse.urlparse(uri).path
    return uri if os.path.isabs(uri) else None


def _gone(artifact: types_pb2.Artifact) -> bool:
    """True when the artifact was a local file or directory (it had a content
    digest when recorded) that is no longer there. Artifacts that never had a
    file (``Metrics``, whose values are metadata) are never gone."""
    path = _local_path(artifact.uri)
    return bool(artifact.content_digest) and path is not None and not os.path.exists(path)


@dataclass(frozen=True)
class _Dag:
    """One running instance of a DAG: the root, a nested pipeline, a branch, or one loop iteration."""

    #: "" for the root; "<parent path>/<task>" below it, "<...>/<loop task>/<index>" for an iteration.
    path: str
    io: Any

    def qualify(self, task: str) -> str:
        return f"{self.path}/{task}" if self.path else task


class _Run:
    """The state of one pipeline run (one per ``run_pipeline`` call)."""

    def __init__(
        self,
        client: Client,
        pipeline_spec: Any,
        *,
        pipeline_root: str,
        runner: Any,
        enable_caching: bool | None,
        rerun: Collection[str],
        run_id: str,
        lease: timedelta,
        wait_timeout: timedelta,
        max_workers: int,
    ) -> None:
        self.client = client
        self.spec = pipeline_spec
        self.pipeline_root = pipeline_root
        self.runner = runner
        self.enable_caching = enable_caching
        self.rerun = set(rerun)
        self.run_id = run_id
        self.lease = lease
        self.wait_timeout = wait_timeout
        #: Bounds the tasks that run (or wait) at once, over all DAGs of the run.
        self.slots = threading.BoundedSemaphore(max_workers)
        self.pipeline_name = str(pipeline_spec.pipeline_info.name)
        self.resource_name = str(executor_input_utils.get_local_pipeline_resource_name(self.pipeline_name))
        self.unique_id = str(placeholder_utils.make_random_id())
        self.names = component_names(pipeline_spec)
        self.lock = threading.Lock()
        #: The explicit kfp <-> stepcache map: a kfp artifact's URI -> its stepcache ID.
        self.artifact_ids: dict[str, int] = {}
        self.tasks: dict[str, TaskRun] = {}
        self.context_ids = self.contexts()

    def contexts(self) -> list[int]:
        """The pipeline's and the run's contexts, or none on a server without contexts."""
        try:
            return [
                self.client.put_context(CONTEXT_PIPELINE, self.pipeline_name),
                self.client.put_context(
                    CONTEXT_PIPELINE_RUN, self.run_id, {"pipeline": self.pipeline_name, "run_root": self.run_root}
                ),
            ]
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            log.info("the server has no contexts: executions are not grouped by run")
            return []

    @property
    def run_root(self) -> str:
        return os.path.join(self.pipeline_root, self.resource_name)

    def policy(self, task_name: str, task_spec: Any) -> tuple[Trigger, bool | None]:
        if task_name in self.rerun:
            return Trigger.MANUAL, None  # MANUAL reads no cache: the task runs on purpose
        if self.enable_caching is not None:
            return Trigger.PIPELINE, None if self.enable_caching else False
        return Trigger.PIPELINE, None if task_spec.caching_options.enable_cache else False

    # -- DAGs ------------------------------------------------------------------

    def run_dag(self, path: str, dag_component: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Runs one DAG instance to the end; returns its outputs (kfp values by output name)."""
        dag = _Dag(path, local_io.IOStore())
        for name, spec in dag_component.input_definitions.parameters.items():
            if name not in arguments and spec.HasField("default_value"):
                dag.io.put_parent_input(name, executor_output_utils.pb2_value_to_python(spec.default_value))
        for name, value in arguments.items():
            dag.io.put_parent_input(name, value)
        tasks = dag_component.dag.tasks
        deps = {name: _upstream(spec) & set(tasks) for name, spec in tasks.items()}
        tolerant = {name for name, spec in tasks.items() if spec.trigger_policy.strategy == _ALL_UPSTREAM_COMPLETED}
        _run_all(list(tasks), deps, lambda name: self.run_node(dag, name, tasks[name]), len(tasks), tolerant)
        return dict(OrchestratorUtils.get_dag_outputs(dag_outputs_spec=dag_component.dag.outputs, io_store=dag.io))

    def run_node(self, dag: _Dag, task_name: str, task_spec: Any) -> None:
        """One task of a DAG: a branch (condition), a loop, a nested DAG or a component."""
        component_spec = self.spec.components[task_spec.component_ref.name]
        with self.lock:
            arguments = OrchestratorUtils.make_task_arguments(task_inputs_spec=task_spec.inputs, io_store=dag.io)
        condition = task_spec.trigger_policy.condition
        if condition and not _condition_holds(condition, arguments):
            log.info("%s: condition %r is false: skipped", dag.qualify(task_name), condition)
            return  # a branch not taken runs and records nothing; its outputs stay unset
        if task_spec.WhichOneof("iterator"):
            outputs = self.run_loop(dag, task_name, task_spec, component_spec, arguments)
        elif component_spec.WhichOneof("implementation") == "dag":
            outputs = self.run_dag(dag.qualify(task_name), component_spec, arguments)
        else:
            with self.slots:
                run = self.run_task(dag, task_name, task_spec, component_spec, arguments)
            outputs = self.publish(component_spec, run)
        with self.lock:
            for key, value in outputs.items():
                dag.io.put_task_output(task_name, key, value)

    def run_loop(
        self, dag: _Dag, task_name: str, task_spec: Any, component_spec: Any, arguments: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A ``dsl.ParallelFor``: one DAG instance per item, at most ``parallelism`` at once.

        Each output of the loop is the list of its iterations' outputs, in item
        order (what ``dsl.Collected`` hands on).
        """
        if task_spec.WhichOneof("iterator") == "parameter_iterator":
            iterator = task_spec.parameter_iterator
            source = iterator.items
            items = json.loads(source.raw) if source.HasField("raw") else arguments[source.input_parameter]
        else:  # over a list of artifacts (a nested pipeline's collected outputs)
            iterator = task_spec.artifact_iterator
            items = arguments[iterator.items.input_artifact]
        if isinstance(items, str):
            items = json.loads(items)
        limit = task_spec.iterator_policy.parallelism_limit or len(items)
        results: dict[int, dict[str, Any]] = {}
        path = dag.qualify(task_name)

        def iteration(index: str) -> None:
            i = int(index)
            results[i] = self.run_dag(f"{path}/{i}", component_spec, {**arguments, iterator.item_input: items[i]})

        _run_all([str(i) for i in range(len(items))], {}, iteration, limit)
        keys = [*component_spec.output_definitions.parameters, *component_spec.output_definitions.artifacts]
        return {key: [results[i][key] for i in range(len(items))] for key in keys}

    # -- one component -----------------------------------------------------------

    def artifact_id(self, kfp_artifact: Any) -> int:
        """The stepcache ID of an input artifact: always the output of a task of this run
        (kfp refuses artifacts as pipeline arguments, see ``check_arguments``)."""
        with self.lock:
            return self.artifact_ids[kfp_artifact.uri]

    def mark_gone(self, artifacts: list[types_pb2.Artifact]) -> None:
        """Records that these local artifacts are gone (DELETED): the server serves no hit holding them."""
        deleted = []
        for artifact in artifacts:
            copy = types_pb2.Artifact()
            copy.CopyFrom(artifact)
            copy.state = types_pb2.ARTIFACT_STATE_DELETED
            deleted.append(copy)
        request = metadata_store_service_pb2.PutArtifactsRequest(artifacts=deleted)
        self.client.metadata.PutArtifacts(request, timeout=self.client.timeout)

    def lookup(
        self, task: str, iface: types_pb2.TaskInterface, trigger: Trigger, enabled: bool | None, owner: str
    ) -> tuple[Outcome, CacheResult]:
        """The first lookup's outcome and the answer to act on.

        A hit is accepted only when its local outputs are all still there;
        gone ones are marked DELETED and the task looked up again (then it
        misses and runs). The CACHED execution of this run is recorded only
        for an accepted hit.
        """
        first: Outcome | None = None
        for _ in range(_LOOKUP_ATTEMPTS):
            kwargs: dict[str, Any] = {"trigger": trigger, "enabled": enabled, "context_ids": self.context_ids}
            result = self.client.get_cached(iface, reservation_owner=owner, lease=self.lease, **kwargs)
            first = first or result.outcome
            if result.outcome == Outcome.IN_PROGRESS:
                log.info("%s: an identical task holds %s; waiting for its result", task, result.cache_key[:12])
                result = self.client.wait(
                    result.cache_key, self.wait_timeout, reservation_owner=owner, lease=self.lease
                )
                if result.outcome == Outcome.IN_PROGRESS:
                    raise TaskFailedError(task, f"still in progress elsewhere after {self.wait_timeout}")
            if not result.hit:
                return first, result
            assert result.execution is not None
            gone = [a for artifacts in result.outputs.values() for a in artifacts if _gone(a)]
            if gone:
                log.warning("%s: the hit's outputs %s are gone: marked DELETED", task, [a.uri for a in gone])
                self.mark_gone(gone)
                continue
            recorded = self.client.get_cached(
                iface, record_cached=True, reservation_owner=owner, lease=self.lease, **kwargs
            )
            if not recorded.hit or (recorded.execution is not None and recorded.execution.id == result.execution.id):
                return first, recorded
        raise TaskFailedError(task, f"no stable answer after {_LOOKUP_ATTEMPTS} lookups")

    def run_task(
        self, dag: _Dag, task_name: str, task_spec: Any, component_spec: Any, arguments: dict[str, Any]
    ) -> TaskRun:
        input_ids = {
            name: [self.artifact_id(a) for a in (value if isinstance(value, list) else [value])]
            for name, value in arguments.items()
            if _is_artifact(value)
        }
        component = self.names[task_spec.component_ref.name]
        iface = task_interface(self.spec, component_spec, arguments, input_ids, component)
        qualified = dag.qualify(task_name)
        owner = f"{self.run_id}/{qualified}"
        trigger, enabled = self.policy(task_name, task_spec)
        first, result = self.lookup(qualified, iface, trigger, enabled, owner)
        if result.hit:
            assert result.execution is not None
            return TaskRun(
                task=qualified,
                component=component,
                outcome=Outcome.HIT,
                first_outcome=first,
                cache_key=result.cache_key,
                execution_id=(result.cached_execution or result.execution).id,
                source_execution_id=result.execution.id,
                interface=iface,
                artifacts={
                    name: [ArtifactBinding(a.id, to_kfp_artifact(a)) for a in artifacts]
                    for name, artifacts in result.outputs.items()
                },
                parameters=_output_parameters(result.execution, component_spec),
                reason=result.reason,
            )
        held = result.outcome == Outcome.RESERVED
        run = self.execute(dag, task_name, task_spec, component_spec, arguments, iface, owner, held, result.cache_key)
        return dataclasses.replace(run, outcome=result.outcome, first_outcome=first, reason=result.reason)

    def dispatch(self, dag: _Dag, task_name: str, component_spec: Any, arguments: dict[str, Any]) -> Any:
        """kfp.local's own executor for the task: (outputs, status)."""
        executor_spec = _executor_spec(self.spec, component_spec)
        common: dict[str, Any] = {
            # kfp derives the task's directory from these: one per DAG instance
            # and task, so that no two tasks (or iterations) share files.
            "pipeline_resource_name": os.path.join(self.resource_name, dag.path) if dag.path else self.resource_name,
            "component_name": _COMPONENT_PREFIX + task_name,
            "component_spec": component_spec,
            "executor_spec": executor_spec,
            "arguments": arguments,
            "pipeline_root": self.pipeline_root,
            "unique_pipeline_id": self.unique_id,
        }
        if executor_spec.WhichOneof("spec") == "importer":
            return importer_handler.run_importer(**common)
        return task_dispatcher.run_single_task_implementation(
            runner=self.runner, raise_on_error=False, block_input_artifact=False, **common
        )

    def execute(
        self,
        dag: _Dag,
        task_name: str,
        task_spec: Any,
        component_spec: Any,
        arguments: dict[str, Any],
        iface: types_pb2.TaskInterface,
        owner: str,
        held: bool,
        cache_key: str,
    ) -> TaskRun:
        """Runs the task with kfp's local executor and records it."""
        qualified = dag.qualify(task_name)
        properties = {"kfp.task": qualified, "kfp.pipeline": self.pipeline_name, "kfp.run_id": self.run_id}
        record: dict[str, Any] = {"reservation_owner": owner, "properties": properties, "context_ids": self.context_ids}
        heartbeat = _heartbeat(self.client, cache_key, owner, self.lease) if held else contextlib.nullcontext()
        retry = task_spec.retry_policy
        attempts = 1 + max(0, retry.max_retry_count)
        with heartbeat:
            for attempt in range(attempts):
                try:
                    outputs, task_status = self.dispatch(dag, task_name, component_spec, arguments)
                except BaseException:
                    self.client.put_execution(iface, state=ExecutionState.FAILED, **record)
                    raise
                if task_status == status.Status.SUCCESS:
                    break
                if attempt == attempts - 1:
                    self.client.put_execution(iface, state=ExecutionState.FAILED, **record)
                    raise TaskFailedError(qualified, f"finished with status {task_status.name}")
                # A failed attempt (set_retry) is recorded; the reservation stays with this run.
                self.client.put_execution(iface, state=ExecutionState.FAILED, **{**record, "reservation_owner": ""})
                delay = retry.backoff_duration.ToTimedelta().total_seconds() * (retry.backoff_factor or 2.0) ** attempt
                if retry.HasField("backoff_max_duration"):
                    delay = min(delay, retry.backoff_max_duration.ToTimedelta().total_seconds())
                log.info("%s: attempt %d of %d failed; retrying in %.1f s", qualified, attempt + 1, attempts, delay)
                time.sleep(delay)

        artifact_outputs: dict[str, list[Any]] = {}
        for name, spec in component_spec.output_definitions.artifacts.items():
            value = outputs[name]
            artifact_outputs[name] = list(value) if spec.is_artifact_list else [value]
        parameters = {name: outputs[name] for name in component_spec.output_definitions.parameters if name in outputs}
        put = self.client.put_execution(
            iface,
            outputs={
                name: [to_stepcache_artifact(a, self.client.namespace) for a in arts]
                for name, arts in artifact_outputs.items()
            },
            output_parameters=parameters,
            **record,
        )
        return TaskRun(
            task=qualified,
            component=iface.component,
            outcome=Outcome.MISS,
            first_outcome=Outcome.MISS,
            cache_key=put.cache_key,
            execution_id=put.execution_id,
            source_execution_id=put.execution_id,
            interface=iface,
            artifacts={
                name: [
                    ArtifactBinding(artifact_id, kfp_artifact)
                    for artifact_id, kfp_artifact in zip(put.outputs.get(name, []), arts, strict=True)
                ]
                for name, arts in artifact_outputs.items()
            },
            parameters=parameters,
        )

    def publish(self, component_spec: Any, run: TaskRun) -> dict[str, Any]:
        """Records the task's run and artifact IDs; returns its outputs for kfp's IOStore."""
        outputs: dict[str, Any] = dict(run.parameters)
        with self.lock:
            self.tasks[run.task] = run
            for name, spec in component_spec.output_definitions.artifacts.items():
                bound = run.artifacts[name]
                for binding in bound:
                    self.artifact_ids[binding.uri] = binding.artifact_id
                outputs[name] = [b.kfp_artifact for b in bound] if spec.is_artifact_list else bound[0].kfp_artifact
        return outputs

    def run(self, arguments: Mapping[str, Any]) -> PipelineRun:
        with _restore_kfp_globals():
            outputs = self.run_dag("", self.spec.root, arguments)
        return PipelineRun(
            run_id=self.run_id,
            pipeline_name=self.pipeline_name,
            run_root=self.run_root,
            context_id=self.context_ids[1] if self.context_ids else 0,
            tasks={name: self.tasks[name] for name in sorted(self.tasks)},
            outputs=outputs,
        )


def run_pipeline(
    client: Client,
    pipeline: Any,
    arguments: Mapping[str, Any] | None = None,
    *,
    pipeline_root: str | os.PathLike[str],
    runner: Any = None,
    enable_caching: bool | None = None,
    rerun: Collection[str] = (),
    run_id: str | None = None,
    max_workers: int = 4,
    lease: DurationLike = timedelta(seconds=60),
    wait_timeout: DurationLike = timedelta(minutes=10),
) -> PipelineRun:
    """Runs ``pipeline`` locally with kfp's executor, every task behind stepcache.

    Args:
        client: the stepcache client (its namespace scopes the cache).
        pipeline: a ``@dsl.pipeline`` function, or the path of a compiled
            pipeline YAML.
        arguments: the pipeline's inputs (parameters with defaults from the
            spec, and input artifacts), checked as kfp checks them.
        pipeline_root: where the tasks write their outputs; each run gets
            ``<pipeline_root>/<pipeline name>-<timestamp>/<task>/`` (tasks of
            nested DAGs and loop iterations one directory per level below).
        runner: a ``kfp.local.SubprocessRunner`` or ``DockerRunner``; default
            the one given to ``kfp.local.init`` if any, else
            ``SubprocessRunner(use_venv=False)`` (the current interpreter).
        enable_caching: ``False`` disables every lookup of the run (kfp's
            flag); ``True`` enables them all; ``None`` follows each task's
            ``set_caching_options``.
        rerun: task names (as in the compiled spec) to run on purpose (trigger
            ``MANUAL``): they read no cache and emit new artifact IDs, so the
            tasks that consume their artifacts miss.
        run_id: the run's ID (default a fresh UUID); reservation owners are
            ``<run_id>/<task>``.
        max_workers: how many tasks may run at once (independent branches,
            loop iterations).
        lease: how long a reservation lasts without a heartbeat; a running
            task extends it every third of that.
        wait_timeout: how long a task waits for an identical running one.

    Raises:
        TypeError, kfp's InconsistentTypeException: the arguments do not fit
            the pipeline (before anything runs).
        TaskFailedError: a task failed; it is recorded FAILED (never served),
            its reservation released, tasks that had started are finished.
        NotImplementedError: the pipeline uses what this runner does not
            support (before anything runs; the message names the construct).
        RuntimeError: a component would pip-install another kfp here.
    """
    loaded = load_pipeline(pipeline)
    spec = loaded.pipeline_spec
    _check_supported(spec)
    arguments = dict(arguments or {})
    check_arguments(loaded, arguments)
    if runner is None:
        configured = local_config.LocalExecutionConfig.instance
        runner = configured.runner if configured is not None else local_config.SubprocessRunner(use_venv=False)
    _check_kfp_installs(spec, runner)
    lease_td = lease if isinstance(lease, timedelta) else timedelta(seconds=lease)
    wait_td = wait_timeout if isinstance(wait_timeout, timedelta) else timedelta(seconds=wait_timeout)
    task_names = {name for _, dag in _dags(spec) for name in dag.dag.tasks}
    unknown = set(rerun) - task_names
    if unknown:
        raise ValueError(f"rerun: no task named {sorted(unknown)} (tasks: {sorted(task_names)})")
    run = _Run(
        client,
        spec,
        pipeline_root=os.path.abspath(os.fspath(pipeline_root)),
        runner=runner,
        enable_caching=enable_caching,
        rerun=rerun,
        run_id=run_id or uuid.uuid4().hex,
        lease=lease_td,
        wait_timeout=wait_td,
        max_workers=max_workers,
    )
    return run.run(arguments)
