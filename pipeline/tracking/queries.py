"""Finished runs of a store and the ONNX models they logged."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

import pipeline.tracking.store as store
from pipeline.core.errors import ConfigError


def evaluated_runs(uri: str, experiments: list[str] | None = None) -> list:
    """The finished runs of the store `uri` that reached the evaluate stage, in the named
    experiments (default: all)."""
    mlflow.set_tracking_uri(uri)
    if experiments:
        found = [mlflow.get_experiment_by_name(name) for name in experiments]
        missing = [n for n, e in zip(experiments, found) if e is None]
        if missing:
            raise ConfigError(f"{uri}: no experiment named {missing}")
        ids = [e.experiment_id for e in found]
    else:
        ids = [e.experiment_id for e in mlflow.search_experiments()]
    if not ids:
        return []
    runs = mlflow.search_runs(ids, filter_string="attributes.status = 'FINISHED'", output_format="list")
    return [run for run in runs if "attention/entropy" in run.data.metrics]


def latest_onnx_model(client: MlflowClient, run):
    """The newest `onnx_model` that `run` logged (an MLflow LoggedModel), or None."""
    logged = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    onnx_models = [m for m in logged if m.name == "onnx_model"]
    return max(onnx_models, key=lambda m: m.creation_timestamp) if onnx_models else None


def logged_onnx_file(uri: str, run) -> Path | None:
    """The model.onnx that `run` of the store `uri` logged, downloaded; None if it logged none."""
    latest = latest_onnx_model(store.client(uri), run)
    if latest is None:
        return None
    return (
        Path(mlflow.artifacts.download_artifacts(artifact_uri=latest.artifact_location, tracking_uri=uri))
        / "model.onnx"
    )
