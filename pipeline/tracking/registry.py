"""The model registry: each run's ONNX model as a version, the aliases candidate and champion."""

from __future__ import annotations

import contextlib
import warnings

from mlflow.exceptions import MlflowException

import pipeline.tracking.store as store
from pipeline.core.errors import StageFailed
from pipeline.tracking.queries import latest_onnx_model
from pipeline.tracking.store import store_lock

CANDIDATE, CHAMPION = "candidate", "champion"


def register_model_of_run(uri: str, run_id: str, name: str) -> str:
    """Register the newest `onnx_model` logged by run `run_id` in the store `uri` as a new
    version of `name`, alias `candidate`; returns the version."""
    mlflow_client = store.client(uri)
    latest = latest_onnx_model(mlflow_client, mlflow_client.get_run(run_id))
    if latest is None:
        raise StageFailed(f"MLflow run {run_id} has no logged onnx_model; rerun `dvc repro export`")
    with store_lock(uri), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parallel runs must not race to create the model
        with contextlib.suppress(MlflowException):  # it exists
            mlflow_client.create_registered_model(name)
        version = mlflow_client.create_model_version(
            name, f"models:/{latest.model_id}", run_id=run_id, model_id=latest.model_id
        ).version
        mlflow_client.set_registered_model_alias(name, CANDIDATE, version)
        mlflow_client.set_model_version_tag(name, version, "run_id", run_id)
    return str(version)
