"""The stage modules run in-process on tiny data: outputs, the parity gate, TensorFlow-free stages."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
import yaml

from pipeline.core import stage
from tests.conftest import REPO_ROOT, subprocess_env

TENSORFLOW_FREE = (
    "pipeline.stages.prepare",
    "pipeline.stages.evaluate",
    "pipeline.serving.inference",
    "pipeline.core.config",
    "pipeline.core.metrics",
    "pipeline.core.faithfulness",
    "pipeline.tracking",
    "pipeline.data",
    "pipeline.data.splits",
    "pipeline.tools.params",
    "pipeline.tools.compare",
    "pipeline.serving.predict",
    "pipeline.onnx.variants",
    "pipeline.serving.serve",
    "pipeline.tracking.promote",
    "pipeline.tracking.sync",
    "pipeline.tracking.team_server",
    "pipeline.experiments.stability",
    "pipeline.tools.study",
    "pipeline.tools.sweep",
)


@pytest.mark.e2e
def test_stages_that_do_not_train_do_not_import_tensorflow():
    code = (
        f"import sys, {', '.join(TENSORFLOW_FREE)}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf2onnx'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.fixture
def pipeline_run(trained_runs, tmp_path):
    """A copy of the session's tiny run of every stage on the default config."""
    return trained_runs.copy(tmp_path)


@pytest.mark.integration
def test_stages_write_their_outputs_and_one_mlflow_run(pipeline_run, monkeypatch):
    monkeypatch.chdir(pipeline_run)
    metrics = json.loads(stage.METRICS_FILE.read_text())
    faithfulness = {
        "deletion_top1",
        "deletion_random1",
        "deletion_aopc",
        "deletion_aopc_random",
        "deletion_aopc_gain",
        "sufficiency_top1",
        "sufficiency_top5pct",
        "sufficiency_top10pct",
        "sufficiency_top20pct",
        "sufficiency_top50pct",
        "occlusion_spearman",
        "uniform_score",
        "uniform_drop",
        "ndcg_attention",  # a fixed-length model has no AOPCR, its attention's NDCG on the planted step
    }
    assert set(metrics) == {
        "test/accuracy",
        "test/loss",
        "attention/mass_at_target",
        "attention/argmax_hit",
        "attention/lift",
        "attention/entropy",
        "attention/topk_precision",
        "attention/above_uniform_precision",
        "attention/above_uniform_recall",
        "export/parity_max_abs",
        *(f"faithfulness/{name}" for name in faithfulness),
    }
    curve = stage.DELETION_CSV.read_text().splitlines()
    assert curve[0] == "size,attended,random,kept,attended_drop,random_drop" and len(curve) == 6
    assert metrics["export/parity_max_abs"] <= 1e-5
    for picture in (stage.ATTENTION_PNG, stage.ATTENTION_SERIES_PNG, stage.DELETION_PNG):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    rows = stage.ATTENTION_CSV.read_text().splitlines()
    assert rows[0] == "position,mean_attention,is_target" and len(rows) == 21
    run_id = json.loads(stage.MLFLOW_RUN_FILE.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_run / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.data.params["model.name"] == "lstm_attention"
    assert run.data.params["export.opset"] == "17"
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert "epoch/val_loss" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "reports")}
    assert {
        "reports/attention.png",
        "reports/metrics.json",
        "reports/history.csv",
        "reports/deletion.csv",
        "reports/deletion.png",
        "reports/attention_series.png",
        "reports/contribution_series.png",
    } <= artifacts
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [m.name for m in logged] == ["onnx_model"]


@pytest.mark.e2e
def test_failed_parity_gate_exits_2_and_keeps_the_previous_model(pipeline_run):
    params = pipeline_run / "params.yaml"
    onnx_before = (pipeline_run / stage.ONNX_MODEL).read_bytes()
    report_before = (pipeline_run / stage.EXPORT_REPORT).read_bytes()
    original = params.read_text()
    try:
        strict = yaml.safe_load(original)
        strict["export"]["parity_tolerance"] = 1e-15
        params.write_text(yaml.safe_dump(strict, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.stages.export"],
            cwd=pipeline_run,
            env={
                **subprocess_env(),
                "PYTHONPATH": str(REPO_ROOT),
                "MLFLOW_TRACKING_URI": f"sqlite:///{pipeline_run / 'mlflow.db'}",
            },
            capture_output=True,
            text=True,
        )
    finally:
        params.write_text(original)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ONNX parity failed" in result.stderr and "export.parity_tolerance" in result.stderr
    assert (pipeline_run / stage.ONNX_MODEL).read_bytes() == onnx_before
    assert (pipeline_run / stage.EXPORT_REPORT).read_bytes() == report_before


@pytest.mark.e2e
def test_bad_params_exit_2_with_the_key_and_write_nothing(pipeline_run):
    params = pipeline_run / "params.yaml"
    before = {p: p.read_bytes() for p in (pipeline_run / "data/prepared").iterdir()}
    original = params.read_text()
    try:
        params.write_text(original.replace("n_samples: 300", "n_samples: many"))
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.stages.prepare"],
            cwd=pipeline_run,
            env={**subprocess_env(), "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
        )
    finally:
        params.write_text(original)
    assert result.returncode == 2
    assert "params.yaml: invalid config" in result.stderr and "data.n_samples" in result.stderr
    assert {p: p.read_bytes() for p in (pipeline_run / "data/prepared").iterdir()} == before
