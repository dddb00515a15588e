"""Attention agreement between seeds: rank correlations on known rows, and on ONNX models logged
to a real MLflow store."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.experiments.stability import cell_agreement, rank_agreement, seed_agreement
from tests.test_faithfulness import _data, known_onnx


def test_rank_agreement_on_known_rows():
    first = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    valid = np.ones((2, 4), dtype=bool)
    assert rank_agreement(first, first[:, ::-1].copy(), valid) == pytest.approx(-1.0)  # row 2 is constant: left out
    assert rank_agreement(first, first, valid) == pytest.approx(1.0)
    padded = np.array([[0.5, 0.3, 0.2, 0.0]])
    other = np.array([[0.4, 0.35, 0.25, 0.0]])
    assert rank_agreement(padded, other, np.array([[True, True, True, False]])) == pytest.approx(1.0)
    assert np.isnan(rank_agreement(first[1:], first[1:], valid[1:]))


def test_seed_agreement_averages_each_run_over_the_others():
    valid = np.ones((1, 3), dtype=bool)
    rows = {"a": np.array([[0.1, 0.2, 0.7]]), "b": np.array([[0.2, 0.3, 0.5]]), "c": np.array([[0.7, 0.2, 0.1]])}
    got = seed_agreement(rows, valid)
    assert got == pytest.approx({"a": 0.0, "b": 0.0, "c": -1.0})  # a~b +1, a~c -1, b~c -1


def test_cell_agreement_reads_each_runs_logged_onnx_model(tmp_path):
    import mlflow.onnx

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("stability", artifact_location=(tmp_path / "artifacts").as_uri())
    )
    runs = {}
    for name, attended in (("same1", 2), ("same2", 2), ("other", 4)):
        with mlflow.start_run(run_name=name) as run:
            mlflow.onnx.log_model(known_onnx(attended), name="onnx_model")
        runs[run.info.run_id] = mlflow.get_run(run.info.run_id)
    x, _ = _data(6)
    got = cell_agreement(uri, runs, x)
    ids = list(runs)
    assert got[ids[0]] == pytest.approx((1.0 - 0.2) / 2) and got[ids[2]] == pytest.approx(-0.2)
