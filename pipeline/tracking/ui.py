"""`make ui`: MLflow's UI on the local store, with the addresses that open its training view.

    python -m pipeline.tracking.ui                  # the store mlflow.db, http://127.0.0.1:5000
    python -m pipeline.tracking.ui --port 5001 --store other.db

MLflow 3's UI opens in its GenAI view (traces, judges) unless the address asks for the training
view (`workflowType=machine_learning`) or the browser switched to it once ("Model training" at
the top). This prints the training-view address of each of the store's experiments (the runs
table with their metrics), then runs `mlflow ui` on the store until stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.core.errors import ConfigError, run_command
from pipeline.tracking import DEFAULT_STORE

TRAINING_VIEW = "workflowType=machine_learning"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The runs table of one experiment, in the UI's training view."""
    return f"{base_url}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def compare_url(base_url: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's comparison of `run_ids` (params and metrics side by side), in the training view."""
    runs = ",".join(f'"{run_id}"' for run_id in run_ids)
    return f'{base_url}/#/compare-runs?runs=[{runs}]&experiments=["{experiment_id}"]&{TRAINING_VIEW}'


def experiment_lines(store: Path, base_url: str) -> list[str]:
    """One line per experiment of the store that holds runs: its name, run count and address."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store.resolve()}")
    lines = []
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        if runs:
            url = experiment_url(base_url, experiment.experiment_id)
            lines.append(f"  {experiment.name} ({len(runs)} runs): {url}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(DEFAULT_STORE), help="the SQLite store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    if not args.store.is_file():
        raise ConfigError(f"--store {args.store}: no such MLflow store; `make repro` creates it")
    base_url = f"http://{args.host}:{args.port}"
    lines = experiment_lines(args.store, base_url)
    print("MLflow UI, training view of each experiment:" if lines else f"MLflow UI: {base_url} (no runs yet)")
    print("\n".join(lines), flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    uri = f"sqlite:///{args.store.resolve()}"
    os.execv(mlflow, [str(mlflow), "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    run_command(main)
