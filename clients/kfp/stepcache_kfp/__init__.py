"""stepcache-kfp: Kubeflow Pipelines v2 pipelines run locally, every task behind stepcache.

``run_pipeline`` runs a ``@dsl.pipeline`` (or a compiled pipeline YAML) with
kfp.local's executor, looking every task up in stepcache first; see
``stepcache_kfp.runner`` (this package exports its public names).
"""

from stepcache_kfp.runner import (
    ArtifactBinding,
    PipelineRun,
    TaskFailedError,
    TaskRun,
    check_arguments,
    check_kfp_version,
    component_names,
    content_digest,
    load_pipeline,
    load_pipeline_spec,
    run_pipeline,
    task_interface,
    to_kfp_artifact,
    to_stepcache_artifact,
)

__all__ = [
    "ArtifactBinding",
    "PipelineRun",
    "TaskFailedError",
    "TaskRun",
    "check_arguments",
    "check_kfp_version",
    "component_names",
    "content_digest",
    "load_pipeline",
    "load_pipeline_spec",
    "run_pipeline",
    "task_interface",
    "to_kfp_artifact",
    "to_stepcache_artifact",
]
