"""Every MLflow call of the pipeline goes through here.

One pipeline run is one MLflow run: `train` opens it and writes its id to reports/mlflow_run.json;
`export` and `evaluate` reopen it by that id. The store is, in order of precedence:
`mlflow.tracking_uri` in params.yaml, the MLFLOW_TRACKING_URI variable, or the SQLite file
mlflow.db at the repository root, with artifacts in mlartifacts/ beside it. The root is DVC_ROOT
when DVC runs the stage (so queued and temporary experiments log to the real repository), else the
working directory.

Outages: a tracking server that does not answer when `train` starts fails the stage before any
training (mlflow.required, the default) or, with mlflow.required=false, the run is recorded in the
offline store mlflow-offline.db at the repository root. A server that stops answering mid-run
never fails a stage: its records continue in the offline store. `python -m pipeline.tracking.sync`
uploads the offline records to their server later.

The modules, each one concern: store (where records go, whether it answers), recorder (a run's
records, offline when the server is down), runs (the pipeline run and what stages log into it),
registry, queries (finished runs and their models), host (CPU, code and DVC lineage). This file
only re-exports their public names; importing it sets nothing.
"""

from pipeline.tracking.host import CPU_TAG, cpu_model, cpuinfo_field, lineage_tags
from pipeline.tracking.queries import evaluated_runs, latest_onnx_model, logged_onnx_file
from pipeline.tracking.recorder import SYNC_REGISTER, SYNC_REMOTE_RUN, SYNC_STATUS, SYNC_TARGET, open_offline_run
from pipeline.tracking.registry import CANDIDATE, CHAMPION, register_model_of_run
from pipeline.tracking.runs import (
    current_run,
    log_artifacts,
    log_dataset_input,
    log_labels,
    log_metrics,
    log_onnx_model,
    log_params,
    log_prepared_data,
    merge_params,
    register_candidate,
    resume_pipeline_run,
    set_tags,
    start_pipeline_run,
)
from pipeline.tracking.store import (
    ARTIFACT_FOLDERS,
    DEFAULT_ARTIFACTS,
    DEFAULT_STORE,
    EXPERIMENT_KIND_TAG,
    OFFLINE_ARTIFACTS,
    OFFLINE_STORE,
    SERVER_PROBE_SECONDS,
    TRAINING_KIND,
    check_reachable,
    experiment_id,
    offline_uri,
    repository_root,
    server_problem,
    tracking_uri,
)

__all__ = [
    "ARTIFACT_FOLDERS",
    "CANDIDATE",
    "CHAMPION",
    "CPU_TAG",
    "DEFAULT_ARTIFACTS",
    "DEFAULT_STORE",
    "EXPERIMENT_KIND_TAG",
    "OFFLINE_ARTIFACTS",
    "OFFLINE_STORE",
    "SERVER_PROBE_SECONDS",
    "SYNC_REGISTER",
    "SYNC_REMOTE_RUN",
    "SYNC_STATUS",
    "SYNC_TARGET",
    "TRAINING_KIND",
    "check_reachable",
    "cpu_model",
    "cpuinfo_field",
    "current_run",
    "evaluated_runs",
    "experiment_id",
    "latest_onnx_model",
    "lineage_tags",
    "log_artifacts",
    "log_dataset_input",
    "log_labels",
    "log_metrics",
    "log_onnx_model",
    "log_params",
    "log_prepared_data",
    "logged_onnx_file",
    "merge_params",
    "offline_uri",
    "open_offline_run",
    "register_candidate",
    "register_model_of_run",
    "repository_root",
    "resume_pipeline_run",
    "server_problem",
    "set_tags",
    "start_pipeline_run",
    "tracking_uri",
]
