"""Every MLflow call of the pipeline goes through here.

One pipeline run is one MLflow run: `train` opens it and writes its id to reports/mlflow_run.json;
`export` and `evaluate` reopen it by that id. The store is, in order of precedence:
`mlflow.tracking_uri` in params.yaml, the MLFLOW_TRACKING_URI variable, or the SQLite file
mlflow.db at the repository root, with artifacts in mlartifacts/ beside it. The root is DVC_ROOT
when DVC runs the stage (so queued and temporary experiments log to the real repository), else the
working directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import stage
from pipeline.config import Config, MlflowConfig

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def repository_root() -> Path:
    """The real repository root, also from inside DVC's temporary experiment copies."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(cfg: MlflowConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repository_root() / DEFAULT_STORE}"


def _store_lock(uri: str):
    """A file lock beside a SQLite store: creating and migrating its schema, and creating an
    experiment, must not run in two processes at once (`dvc queue start -j 2`); a server
    store handles that itself."""
    from filelock import FileLock

    if uri.startswith("sqlite:///"):
        return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300)
    return nullcontext()


SERVER_PROBE_SECONDS = 5


def check_reachable(uri: str) -> None:
    """Fail fast, before any training, when a tracking server does not answer its health
    check (MLflow's own client would retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_PROBE_SECONDS) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise stage.StageFailed(
        f"MLflow tracking server {uri} is unreachable ({problem}); start it, or point "
        "mlflow.tracking_uri / MLFLOW_TRACKING_URI at a reachable store"
    )


def _connect(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id, creating it if new."""
    uri = tracking_uri(cfg)
    check_reachable(uri)
    with _store_lock(uri):
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
        if experiment is None:
            artifact_location = None
            if uri.startswith("sqlite:"):  # artifacts beside the store, not in the working directory
                artifact_location = (repository_root() / DEFAULT_ARTIFACTS).as_uri()
            try:
                experiment_id = mlflow.create_experiment(cfg.experiment_name, artifact_location=artifact_location)
            except MlflowException:  # another client created it first
                experiment_id = mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id
        else:
            experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)  # the run we resume must match it
    return experiment_id


@contextmanager
def start_pipeline_run(cfg: Config, run_name: str) -> Iterator[str]:
    """Open a new MLflow run for this pipeline run, record its id for the later stages."""
    experiment_id = _connect(cfg.mlflow)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"task": cfg.data.name, "model": cfg.model.name, "seed": cfg.seed,
                         **lineage_tags()})
        yield run.info.run_id
    stage.write_json(
        stage.MLFLOW_RUN_FILE,
        {"run_id": run.info.run_id, "experiment_name": cfg.mlflow.experiment_name},
    )


def lineage_tags() -> dict[str, str]:
    """What leads a run back to its code and `dvc exp apply`: the DVC experiment name and
    baseline (set by DVC during `dvc exp run`) and the git commit of the working copy."""
    tags = {}
    for variable, tag in (("DVC_EXP_NAME", "dvc.experiment"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        tags["git.commit"] = tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass  # not a git working copy
    return tags


def log_prepared_data(split_files: list[Path], name: str) -> str:
    """The prepared splits as the run's training dataset input, identified by the sha256 of
    their files (the tag `data.digest`): runs on the same data share it. Returns the digest."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    digest = hashlib.sha256()
    for path in split_files:
        digest.update(Path(path).read_bytes())
    hexdigest = digest.hexdigest()
    source = LocalArtifactDatasetSource(str(stage.PREPARED_DIR.resolve()))
    mlflow.log_input(MetaDataset(source, name=name, digest=hexdigest[:16]), context="training")
    mlflow.set_tag("data.digest", hexdigest)
    return hexdigest


CANDIDATE, CHAMPION = "candidate", "champion"


def register_candidate(run_id: str, name: str) -> str:
    """Register the run's logged ONNX model as a new version of `name` and point the alias
    `candidate` at it; returns the version."""
    logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'",
                                         output_format="list")
    onnx_models = [m for m in logged if m.name == "onnx_model"]
    if not onnx_models:
        raise stage.StageFailed(f"MLflow run {run_id} has no logged onnx_model; rerun `dvc repro export`")
    latest = max(onnx_models, key=lambda m: m.creation_timestamp)
    with _store_lock(mlflow.get_tracking_uri()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parallel runs must not race to create the model
        version = mlflow.register_model(f"models:/{latest.model_id}", name).version
        client = MlflowClient()
        client.set_registered_model_alias(name, CANDIDATE, version)
        client.set_model_version_tag(name, version, "run_id", run_id)
    return str(version)


@contextmanager
def resume_pipeline_run(cfg: Config) -> Iterator[str]:
    """Reopen the run that `train` started (its id is in reports/mlflow_run.json)."""
    run_id = stage.read_json(stage.MLFLOW_RUN_FILE)["run_id"]
    _connect(cfg.mlflow)
    with mlflow.start_run(run_id=run_id):
        yield run_id


def log_params(params: dict[str, Any]) -> None:
    """Log params; a value that differs from one already logged (a stage rerun with new params
    on the same run) is kept as the tag `param.<key>`, since MLflow params are immutable."""
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in logged}
    changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
    if fresh:
        mlflow.log_params(fresh)
    if changed:
        warnings.warn(f"params changed since this run logged them, kept as tags: {sorted(changed)}")
        mlflow.set_tags({f"param.{k}": v for k, v in changed.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_labels(labels: list[str]) -> None:
    """The class labels (index i is class i): labels.json and the tag `labels`."""
    mlflow.log_dict({"labels": labels}, "labels.json")
    mlflow.set_tag("labels", ",".join(labels))


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_onnx_model(onnx_model, input_example, outputs: dict) -> None:
    """The ONNX model as an MLflow model (flavor onnx), with its signature and an input example."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    mlflow.onnx.log_model(
        onnx_model,
        name="onnx_model",
        signature=infer_signature(input_example, outputs),
        input_example=input_example,
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
    )
