"""Upload the runs recorded offline (mlflow-offline.db) to their tracking server.

    python -m pipeline.tracking.sync                     # every pending run, to the server it was meant for
    python -m pipeline.tracking.sync --to http://mlflow.example.com:5000
    python -m pipeline.tracking.sync --list              # what is pending, nothing uploaded

A run that `train` started offline (mlflow.required=false) becomes a new run on the server; the
records of a run that lost its server mid-run are added to the server's run. Params, tags,
every metric's history, dataset inputs, artifacts and logged models are copied, and a model that
evaluate would have registered is registered (alias `candidate`). A synced run is marked
`sync.status=done` with its server run in `sync.remote_run_id`, so a second sync skips it.
No TensorFlow import.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mlflow.entities import LoggedModelOutput, Metric, Run
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.core.errors import run_command

METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def pending_runs(offline: MlflowClient) -> list[Run]:
    """The offline store's runs not yet uploaded, oldest first (an export's logged model goes up
    before the evaluate record that registers it)."""
    experiments = [e.experiment_id for e in offline.search_experiments()]
    if not experiments:
        return []
    runs = offline.search_runs(
        experiments,
        f"tags.`{tracking.SYNC_STATUS}` = 'pending'",
        order_by=["attributes.start_time ASC"],
        max_results=50000,
    )
    return list(runs)


def copy_metrics(offline: MlflowClient, server: MlflowClient, run: Run, remote_run_id: str) -> None:
    """Every metric's whole history (values, steps, timestamps)."""
    history = [m for key in run.data.metrics for m in offline.get_metric_history(run.info.run_id, key)]
    for start in range(0, len(history), METRICS_PER_BATCH):
        batch = [Metric(m.key, m.value, m.timestamp, m.step) for m in history[start : start + METRICS_PER_BATCH]]
        server.log_batch(remote_run_id, metrics=batch)


def copy_artifacts(offline: MlflowClient, server: MlflowClient, run: Run, remote_run_id: str) -> None:
    if not offline.list_artifacts(run.info.run_id):
        return
    with tempfile.TemporaryDirectory() as folder:
        local = offline.download_artifacts(run.info.run_id, "", folder)
        server.log_artifacts(remote_run_id, local)


def copy_logged_models(offline: MlflowClient, server: MlflowClient, run: Run, remote_run_id: str) -> None:
    """Each model the run logged (the ONNX model), as a logged model of the server's run."""
    remote = server.get_run(remote_run_id)
    models = offline.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    for model in sorted(models, key=lambda m: m.creation_timestamp):
        copy = server.create_logged_model(
            remote.info.experiment_id,
            name=model.name,
            source_run_id=remote_run_id,
            params=model.params,
            tags={k: v for k, v in model.tags.items() if not k.startswith("mlflow.")},
            model_type=model.model_type,
        )
        server.log_outputs(remote_run_id, [LoggedModelOutput(copy.model_id, step=0)])
        with tempfile.TemporaryDirectory() as folder:
            server.log_model_artifacts(copy.model_id, download_logged_model(model.model_id, folder))


def download_logged_model(model_id: str, folder: str) -> str:
    """The artifacts of the offline store's logged model `model_id`, downloaded into `folder`."""
    import mlflow
    import mlflow.artifacts

    mlflow.set_tracking_uri(tracking.offline_uri())  # models:/ URIs resolve in the fluent store
    return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=folder)


def sync_run(offline: MlflowClient, run: Run, target: str) -> str:
    """Upload one offline run to the server `target`; returns the server's run id."""
    server = MlflowClient(target)
    tags = run.data.tags
    remote_run_id = tags.get(tracking.SYNC_REMOTE_RUN)
    if remote_run_id:
        server.get_run(remote_run_id)  # raises if the server does not know it
    else:
        experiment_name = offline.get_experiment(run.info.experiment_id).name
        remote_run_id = server.create_run(
            tracking.experiment_id(target, experiment_name),
            start_time=run.info.start_time,
            run_name=run.info.run_name,
        ).info.run_id
    tracking.merge_params(server, remote_run_id, run.data.params)
    for key, value in tags.items():
        if not key.startswith("sync.") and key != "mlflow.runName":
            server.set_tag(remote_run_id, key, value)
    copy_metrics(offline, server, run, remote_run_id)
    if run.inputs and run.inputs.dataset_inputs:
        server.log_inputs(remote_run_id, datasets=run.inputs.dataset_inputs)
    copy_artifacts(offline, server, run, remote_run_id)
    copy_logged_models(offline, server, run, remote_run_id)
    if tags.get(tracking.SYNC_REGISTER):
        tracking.register_model_of_run(target, remote_run_id, tags[tracking.SYNC_REGISTER])
    if run.info.status != "RUNNING":
        server.set_terminated(remote_run_id, run.info.status, run.info.end_time)
    offline.set_tag(run.info.run_id, tracking.SYNC_REMOTE_RUN, remote_run_id)
    offline.set_tag(run.info.run_id, tracking.SYNC_STATUS, "done")
    return remote_run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", help="upload here instead of each run's own server (sync.target)")
    parser.add_argument("--list", action="store_true", help="list the pending runs, upload nothing")
    args = parser.parse_args(argv)
    if not Path(tracking.offline_uri().removeprefix("sqlite:///")).exists():
        print(f"nothing to sync: no offline store {tracking.offline_uri()}")
        return
    offline = MlflowClient(tracking.offline_uri())
    runs = pending_runs(offline)
    if not runs:
        print("nothing to sync: every offline run is uploaded")
        return
    failed = 0
    for run in runs:
        target = args.to or run.data.tags[tracking.SYNC_TARGET]
        label = f"{run.info.run_id} ({run.info.run_name or 'continuation'} -> {target})"
        if args.list:
            print(f"pending {label}")
            continue
        try:
            tracking.check_reachable(target)
            remote_run_id = sync_run(offline, run, target)
        except Exception as err:  # one run's failure must not stop the others
            failed += 1
            print(f"error: {label}: {err}", file=sys.stderr)
            continue
        print(f"synced {label}: server run {remote_run_id}")
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    run_command(main)
