"""Run Kubeflow Pipelines v2 pipelines locally, with stepcache in front of every task.

``kfp.local`` (``SubprocessRunner``) executes a ``@dsl.pipeline`` on one machine
but has no cache. ``run_pipeline`` gives it one:

1. The pipeline (a pipeline function, or the path of a compiled pipeline YAML)
   is compiled with ``kfp.compiler`` to its ``PipelineSpec``.
2. Every task of the root DAG becomes a stepcache ``TaskInterface`` built from
   that spec (``task_interface``): the component name, the executor's container
   image/command/args/env, the task's input parameter values (with the
   component's defaults), the stepcache artifact IDs of the upstream outputs
   that feed its input artifacts, and its output spec.
3. Tasks run in topological order, independent branches concurrently
   (threads). Each task is looked up with a reservation (owner ``<run id>/<task>``):

   - ``HIT``: nothing runs. The recorded output artifacts (same IDs, same URIs
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
interfaces name the ``artifact_id``, downstream executors receive the
``kfp_artifact``.

Policy: a normal run looks every task up with trigger ``PIPELINE``; the tasks
named in ``rerun`` are run on purpose with trigger ``MANUAL`` (they read no
cache, run, and emit new artifact IDs, so every consumer misses);
``enable_caching=False`` disables the lookups of the whole run, as kfp's own
flag does (``None`` follows each task's ``set_caching_options``). Every
successful execution is recorded and published either way, so later runs can
hit it.

Scope: container executors (``@dsl.component`` lightweight components with
``SubprocessRunner``, or ``DockerRunner``) in a flat root DAG. Nested pipelines,
``dsl.Condition``/``ParallelFor``/``ExitHandler`` and importers are refused
with ``NotImplementedError``.

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
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import json_format
from stepcache.client import Client, DurationLike, ExecutionState, Outcome, Trigger
from stepcache.v1 import types_pb2

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
from kfp.local import config as local_config  # noqa: E402
from kfp.local import (  # noqa: E402
    executor_input_utils,
    executor_output_utils,
    graph_utils,
    placeholder_utils,
    status,
    task_dispatcher,
)
from kfp.local import io as local_io  # noqa: E402
from kfp.local import utils as local_utils  # noqa: E402
from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

__all__ = [
    "ArtifactBinding",
    "PipelineRun",
    "TaskFailedError",
    "TaskRun",
    "component_names",
    "content_digest",
    "load_pipeline_spec",
    "run_pipeline",
    "task_interface",
    "to_kfp_artifact",
    "to_stepcache_artifact",
]

log = logging.getLogger(__name__)

#: Artifact properties that carry what stepcache does not model itself.
PROP_SCHEMA_VERSION = "kfp.schema_version"
PROP_METADATA = "kfp.metadata"
#: Context types of the run and of the pipeline.
CONTEXT_PIPELINE_RUN = "system.PipelineRun"
CONTEXT_PIPELINE = "system.Pipeline"

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


def load_pipeline_spec(pipeline: Any) -> Any:
    """The ``PipelineSpec`` of a pipeline function, or of a compiled pipeline YAML (path).

    A pipeline function is compiled with ``kfp.compiler.Compiler`` to YAML and
    loaded back, exactly as a compiled file is.
    """
    if isinstance(pipeline, (str, os.PathLike)):
        return kfp_components.load_component_from_file(os.fspath(pipeline)).pipeline_spec
    with tempfile.TemporaryDirectory(prefix="stepcache-kfp-") as tmp:
        path = os.path.join(tmp, "pipeline.yaml")
        kfp_compiler.Compiler().compile(pipeline_func=pipeline, package_path=path)
        return kfp_components.load_component_from_file(path).pipeline_spec


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


def _check_supported(pipeline_spec: Any) -> None:
    for task_name, task_spec in pipeline_spec.root.dag.tasks.items():
        if task_spec.trigger_policy.condition or task_spec.WhichOneof("iterator"):
            raise NotImplementedError(f"task {task_name!r}: dsl.Condition/ParallelFor are not supported")
        component_spec = pipeline_spec.components[task_spec.component_ref.name]
        if component_spec.WhichOneof("implementation") != "executor_label":
            raise NotImplementedError(f"task {task_name!r}: nested pipelines are not supported")
        kind = _executor_spec(pipeline_spec, component_spec).WhichOneof("spec")
        if kind != "container":
            raise NotImplementedError(f"task {task_name!r}: {kind} executors are not supported")


def _is_artifact(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, dsl.Artifact) for v in value)
    return isinstance(value, dsl.Artifact)


def task_interface(
    pipeline_spec: Any,
    task_name: str,
    arguments: Mapping[str, Any],
    input_artifact_ids: Mapping[str, list[int]],
    component: str,
) -> types_pb2.TaskInterface:
    """The stepcache interface of one task of ``pipeline_spec``.

    ``arguments`` are the task's resolved kfp arguments (parameters and input
    artifacts, as ``OrchestratorUtils.make_task_arguments`` gives them);
    ``input_artifact_ids`` are the stepcache IDs bound to each input artifact.
    """
    task_spec = pipeline_spec.root.dag.tasks[task_name]
    component_spec = pipeline_spec.components[task_spec.component_ref.name]
    container = _executor_spec(pipeline_spec, component_spec).container

    parameters: dict[str, Any] = {}
    # A declared parameter the task does not set takes the component's default,
    # which is not in the container spec: it has to be in the key.
    for name, spec in component_spec.input_definitions.parameters.items():
        if spec.HasField("default_value"):
            parameters[name] = executor_output_utils.pb2_value_to_python(spec.default_value)
    for name, value in arguments.items():
        if not _is_artifact(value):
            parameters[name] = value
    missing = set(component_spec.input_definitions.artifacts) - set(input_artifact_ids)
    if missing:
        raise ValueError(f"task {task_name!r}: no stepcache artifact for input(s) {sorted(missing)}")

    iface = types_pb2.TaskInterface(
        component=component,
        container=types_pb2.ContainerSpec(
            image=container.image,
            command=list(container.command),
            args=list(container.args),
            env={e.name: e.value for e in container.env},
        ),
        input_artifacts={name: types_pb2.ArtifactIds(ids=ids) for name, ids in input_artifact_ids.items()},
        output_artifacts={
            name: spec.artifact_type.schema_title for name, spec in component_spec.output_definitions.artifacts.items()
        },
        output_parameters={
            name: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(spec.parameter_type)
            for name, spec in component_spec.output_definitions.parameters.items()
        },
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


class _Run:
    """The state of one pipeline run (one per ``run_pipeline`` call)."""

    def __init__(
        self,
        client: Client,
        pipeline_spec: Any,
        arguments: Mapping[str, Any],
        *,
        pipeline_root: str,
        runner: Any,
        enable_caching: bool | None,
        rerun: Collection[str],
        run_id: str,
        lease: timedelta,
        wait_timeout: timedelta,
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
        self.pipeline_name = str(pipeline_spec.pipeline_info.name)
        self.resource_name = str(executor_input_utils.get_local_pipeline_resource_name(self.pipeline_name))
        self.unique_id = str(placeholder_utils.make_random_id())
        self.names = component_names(pipeline_spec)
        self.lock = threading.Lock()
        self.io_store = local_io.IOStore()
        with_defaults = OrchestratorUtils.join_user_inputs_and_defaults(
            dag_arguments=dict(arguments), dag_inputs_spec=pipeline_spec.root.input_definitions
        )
        for name, value in with_defaults.items():
            self.io_store.put_parent_input(name, value)
        #: (producer task, output key) -> its bindings: the explicit kfp <-> stepcache map.
        self.bindings: dict[tuple[str, str], list[ArtifactBinding]] = {}
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

    def policy(self, task_name: str) -> tuple[Trigger, bool | None]:
        if task_name in self.rerun:
            return Trigger.MANUAL, None  # MANUAL reads no cache: the task runs on purpose
        if self.enable_caching is not None:
            return Trigger.PIPELINE, None if self.enable_caching else False
        task_spec = self.spec.root.dag.tasks[task_name]
        return Trigger.PIPELINE, None if task_spec.caching_options.enable_cache else False

    def run_task(self, task_name: str) -> TaskRun:
        task_spec = self.spec.root.dag.tasks[task_name]
        component_spec = self.spec.components[task_spec.component_ref.name]
        with self.lock:
            arguments = OrchestratorUtils.make_task_arguments(task_inputs_spec=task_spec.inputs, io_store=self.io_store)
            input_ids: dict[str, list[int]] = {}
            for name, input_spec in task_spec.inputs.artifacts.items():
                if not input_spec.HasField("task_output_artifact"):
                    raise NotImplementedError(f"task {task_name!r}: input artifact {name!r} is not a task output")
                producer = input_spec.task_output_artifact
                bound = self.bindings[(producer.producer_task, producer.output_artifact_key)]
                input_ids[name] = [b.artifact_id for b in bound]
        component = self.names[task_spec.component_ref.name]
        iface = task_interface(self.spec, task_name, arguments, input_ids, component)
        owner = f"{self.run_id}/{task_name}"
        trigger, enabled = self.policy(task_name)

        result = self.client.get_cached(
            iface,
            trigger=trigger,
            enabled=enabled,
            record_cached=True,
            reservation_owner=owner,
            lease=self.lease,
            context_ids=self.context_ids,
        )
        first = result.outcome
        if result.outcome == Outcome.IN_PROGRESS:
            log.info("%s: an identical task holds %s; waiting for its result", task_name, result.cache_key[:12])
            result = self.client.wait(result.cache_key, self.wait_timeout, reservation_owner=owner, lease=self.lease)
            if result.outcome == Outcome.IN_PROGRESS:
                raise TaskFailedError(task_name, f"still in progress elsewhere after {self.wait_timeout}")
            if result.hit:
                # The wait does not record a CACHED execution for this run: one more lookup does.
                again = self.client.get_cached(
                    iface, trigger=trigger, enabled=enabled, record_cached=True, context_ids=self.context_ids
                )
                if again.hit:
                    result = again

        if result.hit:
            assert result.execution is not None
            run = TaskRun(
                task=task_name,
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
        else:
            held = result.outcome == Outcome.RESERVED
            run = self.execute(task_name, component_spec, arguments, iface, owner, held, result.cache_key)
            run = dataclasses.replace(run, outcome=result.outcome, first_outcome=first, reason=result.reason)
        self.publish(task_name, component_spec, run)
        return run

    def execute(
        self,
        task_name: str,
        component_spec: Any,
        arguments: dict[str, Any],
        iface: types_pb2.TaskInterface,
        owner: str,
        held: bool,
        cache_key: str,
    ) -> TaskRun:
        """Runs the task with kfp's local executor and records it."""
        properties = {"kfp.task": task_name, "kfp.pipeline": self.pipeline_name, "kfp.run_id": self.run_id}
        heartbeat = _heartbeat(self.client, cache_key, owner, self.lease) if held else contextlib.nullcontext()
        try:
            with heartbeat:
                outputs, task_status = task_dispatcher.run_single_task_implementation(
                    pipeline_resource_name=self.resource_name,
                    # kfp derives the task's directory from this name: one per task, not
                    # per component, so that two uses of a component never share files.
                    component_name=_COMPONENT_PREFIX + task_name,
                    component_spec=component_spec,
                    executor_spec=_executor_spec(self.spec, component_spec),
                    arguments=arguments,
                    pipeline_root=self.pipeline_root,
                    runner=self.runner,
                    raise_on_error=False,
                    block_input_artifact=False,
                    unique_pipeline_id=self.unique_id,
                )
        except BaseException:
            self.client.put_execution(
                iface, state=ExecutionState.FAILED, reservation_owner=owner, properties=properties
            )
            raise
        if task_status != status.Status.SUCCESS:
            self.client.put_execution(
                iface,
                state=ExecutionState.FAILED,
                reservation_owner=owner,
                properties=properties,
                context_ids=self.context_ids,
            )
            raise TaskFailedError(task_name, f"finished with status {task_status.name}")

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
            properties=properties,
            reservation_owner=owner,
            context_ids=self.context_ids,
        )
        return TaskRun(
            task=task_name,
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

    def publish(self, task_name: str, component_spec: Any, run: TaskRun) -> None:
        """Hands the task's outputs to the downstream tasks (kfp's IOStore) and records the bindings."""
        with self.lock:
            for name, spec in component_spec.output_definitions.artifacts.items():
                bound = run.artifacts[name]
                self.bindings[(task_name, name)] = bound
                kfp_value = [b.kfp_artifact for b in bound] if spec.is_artifact_list else bound[0].kfp_artifact
                self.io_store.put_task_output(task_name, name, kfp_value)
            for name, value in run.parameters.items():
                self.io_store.put_task_output(task_name, name, value)

    def run(self, max_workers: int) -> PipelineRun:
        dag = self.spec.root.dag
        pending: dict[str, list[str]] = {t: list(d) for t, d in graph_utils.build_dependency_map(dag.tasks).items()}
        done: dict[str, TaskRun] = {}
        errors: list[BaseException] = []
        with (
            _restore_kfp_globals(),
            concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="kfp-task") as pool,
        ):
            futures: dict[concurrent.futures.Future[TaskRun], str] = {}

            def submit_ready() -> None:
                for task in sorted(pending):
                    if all(d in done for d in pending[task]):
                        del pending[task]
                        futures[pool.submit(self.run_task, task)] = task

            submit_ready()
            while futures:
                finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    task = futures.pop(future)
                    error = future.exception()
                    if error is not None:
                        errors.append(error)
                    else:
                        done[task] = future.result()
                if not errors:
                    submit_ready()
        if errors:
            raise errors[0]
        outputs = OrchestratorUtils.get_dag_outputs(dag_outputs_spec=dag.outputs, io_store=self.io_store)
        return PipelineRun(
            run_id=self.run_id,
            pipeline_name=self.pipeline_name,
            run_root=self.run_root,
            context_id=self.context_ids[1] if self.context_ids else 0,
            tasks={name: done[name] for name in sorted(done)},
            outputs=dict(outputs),
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
        arguments: the pipeline's input parameters (defaults from the spec).
        pipeline_root: where the tasks write their outputs; each run gets
            ``<pipeline_root>/<pipeline name>-<timestamp>/<task>/``.
        runner: a ``kfp.local.SubprocessRunner`` or ``DockerRunner``; default
            the one given to ``kfp.local.init`` if any, else
            ``SubprocessRunner(use_venv=False)`` (the current interpreter).
        enable_caching: ``False`` disables every lookup of the run (kfp's
            flag); ``True`` enables them all; ``None`` follows each task's
            ``set_caching_options``.
        rerun: task names to run on purpose (trigger ``MANUAL``): they read
            no cache and emit new artifact IDs, so all their consumers miss.
        run_id: the run's ID (default a fresh UUID); reservation owners are
            ``<run_id>/<task>``.
        max_workers: how many tasks may run at once (independent branches).
        lease: how long a reservation lasts without a heartbeat; a running
            task extends it every third of that.
        wait_timeout: how long a task waits for an identical running one.

    Raises:
        TaskFailedError: a task failed; it is recorded FAILED (never served),
            its reservation released, tasks that had started are finished.
        NotImplementedError: the pipeline uses what this runner does not support.
    """
    spec = load_pipeline_spec(pipeline)
    _check_supported(spec)
    if runner is None:
        configured = local_config.LocalExecutionConfig.instance
        runner = configured.runner if configured is not None else local_config.SubprocessRunner(use_venv=False)
    lease_td = lease if isinstance(lease, timedelta) else timedelta(seconds=lease)
    wait_td = wait_timeout if isinstance(wait_timeout, timedelta) else timedelta(seconds=wait_timeout)
    unknown = set(rerun) - set(spec.root.dag.tasks)
    if unknown:
        raise ValueError(f"rerun: no task named {sorted(unknown)} (tasks: {sorted(spec.root.dag.tasks)})")
    run = _Run(
        client,
        spec,
        arguments or {},
        pipeline_root=os.path.abspath(os.fspath(pipeline_root)),
        runner=runner,
        enable_caching=enable_caching,
        rerun=rerun,
        run_id=run_id or uuid.uuid4().hex,
        lease=lease_td,
        wait_timeout=wait_td,
    )
    return run.run(max_workers)
