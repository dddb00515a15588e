"""Where a pipeline run's records go and whether that store answers: the SQLite store at the
repository root, a tracking server, or the offline store that keeps records while a server is
down; the file lock of a SQLite store; an experiment by name."""

from __future__ import annotations

import contextlib
import os
from contextlib import nullcontext
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.core.config import MlflowConfig
from pipeline.core.errors import StageFailed

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# Records of runs whose tracking server was unreachable wait here for `python -m pipeline.tracking.sync`.
OFFLINE_STORE = "mlflow-offline.db"
OFFLINE_ARTIFACTS = "mlartifacts-offline"
ARTIFACT_FOLDERS = {DEFAULT_STORE: DEFAULT_ARTIFACTS, OFFLINE_STORE: OFFLINE_ARTIFACTS}
SERVER_PROBE_SECONDS = 5
# MLflow's client retries a failed request for minutes by default; a stage should notice an
# outage in seconds and keep its records locally (recorder.Recorder). Users may still override.
CLIENT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# The kind of experiment MLflow records for its clients (a training one, not GenAI). MLflow 3.17's
# UI no longer picks its view from it but from the address: pipeline/tracking/ui.py prints those.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def repository_root() -> Path:
    """The real repository root, also from inside DVC's temporary experiment copies."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(cfg: MlflowConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repository_root() / DEFAULT_STORE}"


def offline_uri() -> str:
    return f"sqlite:///{repository_root() / OFFLINE_STORE}"


def _fail_fast() -> None:
    """MLflow's clients in this process give up on a server in seconds (CLIENT_RETRIES, unless the
    environment sets them)."""
    for variable, value in CLIENT_RETRIES.items():
        os.environ.setdefault(variable, value)


def client(uri: str) -> MlflowClient:
    """An MLflow client of the store `uri` that gives up on a server in seconds."""
    _fail_fast()
    return MlflowClient(uri)


def store_lock(uri: str):
    """A file lock beside a SQLite store: creating and migrating its schema, and creating an
    experiment, must not run in two processes at once (`dvc queue start -j 2`); a server
    store handles that itself."""
    from filelock import FileLock

    if uri.startswith("sqlite:///"):
        return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300)
    return nullcontext()


def server_problem(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer its health check; None when it does,
    or when `uri` is no server."""
    if not uri.startswith(("http://", "https://")):
        return None
    _fail_fast()  # the records that follow fail fast too
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_PROBE_SECONDS) as reply:
            return None if reply.status == 200 else f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_reachable(uri: str) -> None:
    """Fail fast, before any training, when a tracking server does not answer its health
    check (MLflow's own client would retry for minutes)."""
    problem = server_problem(uri)
    if problem:
        raise StageFailed(
            f"MLflow tracking server {uri} is unreachable ({problem}); start it, point "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI at a reachable store, or set "
            "mlflow.required=false to keep this run's records locally and `python -m pipeline.tracking.sync` them later"
        )


def experiment_id(uri: str, name: str) -> str:
    """The id of the experiment `name` in the store `uri`, created if new (artifacts of a
    SQLite store go beside it, not into the working directory), tagged as a training experiment."""
    with store_lock(uri):  # the client's first call creates a new store's schema
        mlflow_client = client(uri)
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            artifact_location = None
            if uri.startswith("sqlite:///"):
                store = Path(uri.removeprefix("sqlite:///"))
                artifact_location = (store.parent / ARTIFACT_FOLDERS.get(store.name, DEFAULT_ARTIFACTS)).as_uri()
            with contextlib.suppress(MlflowException):  # another client created it first
                mlflow_client.create_experiment(
                    name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
                )
            experiment = mlflow_client.get_experiment_by_name(name)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # made before the tag was set
            mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id
