"""Model registry: evaluate registers each run's ONNX model as `candidate`, promote moves
`champion` to the best version, and the Predictor loads models:/NAME@champion."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.serving.inference import Predictor
from pipeline.tracking.promote import main as promote
from tests.conftest import stages_run

pytestmark = pytest.mark.integration

NAME = "attention-planted_step"


@pytest.fixture(scope="module")
def registry(trained_runs, tmp_path_factory):
    """Two pipeline runs (two models) into one store: a copy of the session's default run
    (lstm_attention), then lstm_baseline in the same folder."""
    workdir = trained_runs.copy(tmp_path_factory.mktemp("registry"))
    run_ids = [json.loads((workdir / "reports/mlflow_run.json").read_text())["run_id"]]
    assert yaml.safe_load((workdir / "params.yaml").read_text())["model"]["name"] == "lstm_attention"
    with stages_run(workdir, "model=lstm_baseline") as folder:
        run_ids.append(json.loads((folder / "reports/mlflow_run.json").read_text())["run_id"])
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri, run_ids


def test_each_evaluated_run_is_a_version_and_the_last_is_candidate(registry):
    _, run_ids = registry
    client = MlflowClient()
    versions = sorted(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))
    assert [v.run_id for v in versions] == run_ids
    assert client.get_model_version_by_alias(NAME, "candidate").version == versions[-1].version


def test_promote_moves_champion_to_the_best_run_and_the_predictor_loads_it(registry, monkeypatch, capsys):
    uri, run_ids = registry
    client = MlflowClient()
    accuracy = [client.get_run(r).data.metrics["test/accuracy"] for r in run_ids]
    best = max(range(2), key=lambda i: (accuracy[i], i))  # ties: the newest version
    worst = min(range(2), key=lambda i: (accuracy[i], -i))
    promote(["--name", NAME, "--tracking-uri", uri])
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == run_ids[best]
    assert f"{NAME}@champion -> version {champion.version}" in capsys.readouterr().out
    promote(["--name", NAME, "--tracking-uri", uri, "--metric", "test/accuracy", "--lower-is-better"])
    assert client.get_model_version_by_alias(NAME, "champion").run_id == run_ids[worst]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    predictor = Predictor(f"models:/{NAME}@champion")
    assert predictor.metadata["mlflow_run_id"] == run_ids[worst]
    result = predictor.predict(np.zeros((2, 20, 2), np.float32))
    assert result.prediction.shape == (2, 1)
